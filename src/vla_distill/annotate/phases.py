"""Phase anchors from kinematics: gripper opening and its rate, end-effector motion, and the object's motion
relative to the gripper.

Two taxonomies (types.py). PHASES_4 is the seed's (approach, grasp, transport, release). PHASES_9 is the finer
rule-based one (idle ... completed); it collapses onto PHASES_4 through TO_4 so both can be compared with one
ground truth. All signals are per episode, (T, ...) arrays (sim.layout decodes them); thresholds are in metres and
seconds, and, for an arm known only by its joints, in fractions of its widest joint's range per second.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from vla_distill.sim.kinematics import Kinematics, arm_moving, gripper_rate, rate, runs, speed, sustained
from vla_distill.types import PHASES_9, TAXONOMIES


@dataclass(frozen=True)
class PhaseConfig:
    taxonomy: str = "4"
    closing_rate: float = 0.5  # opening units/s below which the fingers count as closing
    cycle_depth: float = 0.5  # opening units: a close this deep is a grasp attempt even if the fingers reopen at once
    grasp_radius: float = 0.08  # m, object within this of the gripper for a close to be a grasp
    moving_speed: float = 0.05  # m/s, object speed above which it is being moved
    moving_frames: int = 4  # consecutive frames of object motion that start transport (a brushed object jiggles)
    contact_radius: float = 0.15  # m, object motion farther than this from the gripper is settling, not manipulation
    contact_frames: int = 5  # with recorded contact: object motion this many frames after the last touch is the hand's
    still_speed: float = 0.01  # m/s, end-effector speed below which it is idle / holding
    min_frames: int = 2  # a phase shorter than this is merged into its neighbours
    push_alignment: float = 0.5  # cosine between hand velocity and object->goal above which a close-in is a push
    joint_moving_speed: float = 0.15  # joint-space arms without forward kinematics: widest-range fractions/s
    joint_still_speed: float = 0.05

    def __post_init__(self):
        if self.taxonomy not in TAXONOMIES:
            raise ValueError(f"taxonomy: {self.taxonomy!r} is not one of {sorted(TAXONOMIES)}")

    @property
    def names(self) -> tuple[str, ...]:
        return TAXONOMIES[self.taxonomy]


def label_phases(kin: Kinematics, cfg: PhaseConfig = PhaseConfig()) -> np.ndarray:
    """(T,) phase indices into cfg.names. On a multi-arm track each arm's turn is a task of its own (a hand-over
    is one arm's approach, grasp and carry, then the other's)."""
    if kin.arm is not None and len(runs(kin.arm)) > 1:
        out = np.empty(len(kin), np.int64)
        for _, start, end in runs(kin.arm):
            out[start:end] = label_phases(replace(kin.span(start, end), arm=None), cfg)
        return out
    phases4 = _label_4(kin, cfg)
    if cfg.taxonomy == "4":
        return phases4
    return _refine_9(kin, phases4, cfg)


def _signals(kin: Kinematics, cfg: PhaseConfig) -> dict[str, np.ndarray]:
    n = len(kin)
    closing = _grasping_closes(kin.gripper.astype(np.float64), kin.fps, cfg)
    if kin.obj is not None:
        dist = np.linalg.norm(kin.ee - kin.obj, axis=1)
        near = dist < cfg.grasp_radius
        # Recorded contact says who moves the object; without it, nearness stands in for touch.
        touching = _recent(kin.contact, cfg.contact_frames) if kin.contact is not None else dist < cfg.contact_radius
        obj_moving = (speed(kin.obj, kin.fps) > cfg.moving_speed) & touching
    else:  # without object state, a close is taken as a grasp and any closed-gripper motion as transport
        near = np.ones(n, bool)
        obj_moving = (kin.gripper < kin.gripper[:1] - 0.1) & arm_moving(kin, cfg.moving_speed, cfg.joint_moving_speed)
    done = np.zeros(n, bool)
    if kin.success is not None and kin.success.any():
        done[int(np.argmax(kin.success)):] = True
    return {"closing": closing, "near": near, "obj_moving": obj_moving, "done": done}


def _grasping_closes(gripper: np.ndarray, fps: float, cfg: PhaseConfig) -> np.ndarray:
    """(T,) bool: the closing frames of the closes that are grasp attempts. A shallow close (under cycle_depth) whose
    fingers win back half of it within as long again is the gripper cycling; a deep one is an attempt even if it
    reopens at once (a miss: shut on nothing), and fingers that bounce off the object win back little.

    Cycling happens on robosuite's Panda gripper (1.4), which takes only the sign of its action: an expert
    approaching with the fingers part-open makes them oscillate, and every close near a handle would read as a grasp.
    """
    closing = rate(gripper, fps) < -cfg.closing_rate
    out = closing.copy()
    for value, start, end in runs(closing):
        if not value:
            continue
        low = gripper[start : end + 1].min()
        depth = gripper[max(start - 1, 0)] - low
        regain = gripper[end : 2 * end - start + 1].max(initial=low) - low
        out[start:end] = depth >= cfg.cycle_depth or regain < depth / 2
    return out


def _label_4(kin: Kinematics, cfg: PhaseConfig) -> np.ndarray:
    s = _signals(kin, cfg)
    approach, grasp, transport, release = range(4)
    phase = np.full(len(kin), approach, np.int64)
    phase[s["closing"] & s["near"]] = grasp
    # Transport starts at the first sustained object motion and never goes back to approach.
    moving = sustained(s["obj_moving"], cfg.moving_frames)
    start = int(np.argmax(moving)) if moving.any() else len(kin)
    _hold(phase, (gripper_rate(kin) > cfg.closing_rate) | ~s["near"], start)
    if moving.any():
        start = _contact_onset(kin, start, phase, cfg)
        phase[start:] = np.where(phase[start:] == grasp, grasp, transport)
        # After transport started, the fingers closing again is a regrasp; that's a grasp only if the object stops.
        phase[start:][s["obj_moving"][start:]] = transport
        if kin.success is None:  # no recorded success to start the release: the fingers opening after transport do
            opens = np.flatnonzero((gripper_rate(kin) > cfg.closing_rate) & (phase == transport))
            if len(opens):
                phase[opens[0]:] = release
    phase[s["done"]] = release
    return _merge_short(phase, cfg.min_frames)


def _hold(phase: np.ndarray, released: np.ndarray, end: int) -> None:
    """In place: approach frames before `end` that follow a grasp, the fingers not opened nor the hand gone since
    (`released`), are still the grasp: the fingers closed on the object and the hand waits before moving it."""
    approach, grasp = 0, 1
    p = phase[:end]
    last = np.maximum.accumulate(np.where((p == grasp) | released[:end], np.arange(end), -1))
    p[(last >= 0) & (p[np.maximum(last, 0)] == grasp) & (p == approach)] = grasp


def _recent(x: np.ndarray, k: int) -> np.ndarray:
    """x true at t or in the k - 1 frames before it."""
    out = x.copy()
    for i in range(1, k):
        out[i:] |= x[:-i]
    return out


def _contact_onset(kin: Kinematics, start: int, phase: np.ndarray, cfg: PhaseConfig) -> int:
    """Walk the transport start back over the close-in that already pushes toward the goal (or, where contact is
    recorded, over the touch before the object gave).

    A pushing hand (door, drawer, button) moves along object->goal for several frames before the object gives;
    that close-in is the push, not the approach. Needs object and goal state; grasps are never walked over.
    """
    if kin.contact is not None:  # the push began at the touch that set the object moving
        while start > 0 and phase[start - 1] == 0 and kin.contact[start - 1]:
            start -= 1
        return start
    if kin.obj is None or kin.goal is None:
        return start
    vel = rate(kin.ee.astype(np.float64), kin.fps)
    to_goal = kin.goal - kin.obj
    cos = (vel * to_goal).sum(1) / (np.linalg.norm(vel, axis=1) * np.linalg.norm(to_goal, axis=1) + 1e-9)
    dist = np.linalg.norm(kin.ee - kin.obj, axis=1)
    pushing = (cos > cfg.push_alignment) & (dist < cfg.contact_radius) & (np.linalg.norm(vel, axis=1) > cfg.still_speed)
    while start > 0 and phase[start - 1] == 0 and pushing[start - 1]:
        start -= 1
    return start


def _refine_9(kin: Kinematics, phases4: np.ndarray, cfg: PhaseConfig) -> np.ndarray:
    idx = {name: i for i, name in enumerate(PHASES_9)}
    moving = arm_moving(kin, cfg.still_speed, cfg.joint_still_speed)
    holding = kin.gripper < (kin.gripper.max() - 0.15) if len(kin) else np.zeros(0, bool)
    out = np.empty(len(kin), np.int64)
    seen_transport = np.maximum.accumulate(phases4 == 2) if len(kin) else phases4.astype(bool)
    out[phases4 == 0] = idx["approaching"]
    first_move = int(np.argmax(moving)) if moving.any() else len(kin)
    out[:first_move][phases4[:first_move] == 0] = idx["idle"]
    grasp = phases4 == 1
    out[grasp] = idx["grasping"]
    out[grasp & np.roll(seen_transport, 1) & (np.arange(len(kin)) > 0)] = idx["regrasping"]
    tr = phases4 == 2
    carried = tr & holding
    out[tr & ~holding] = idx["operating"]
    out[carried] = idx["transporting"]
    out[carried & ~moving] = idx["holding"]
    if kin.goal is not None and kin.obj is not None:
        near_goal = np.linalg.norm(kin.obj - kin.goal, axis=1) < 0.05
        out[carried & near_goal] = idx["placing"]
    out[phases4 == 3] = idx["completed"]
    return out


def _merge_short(phase: np.ndarray, min_frames: int) -> np.ndarray:
    """Relabel runs shorter than min_frames with the preceding run's label (flicker from noisy thresholds)."""
    if min_frames <= 1:
        return phase
    out = phase.copy()
    for _, s, e in runs(phase)[1:]:
        if e - s < min_frames and e != len(phase):
            out[s:e] = out[s - 1]
    return out
