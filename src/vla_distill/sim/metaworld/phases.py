"""Ground-truth phases on MetaWorld, recovered from the scripted expert's own branches (what the kinematic
labeller and the evaluator's phase agreement are measured against).

Each expert picks its sub-goal in the if/elif arms of `_desired_pos` (drawer-open: of `get_action`). Replaying the
stored 39-d observation through the expert while tracing which `return` (arm) runs tells us, per frame, what the
expert was doing. ARM_ROLES maps each arm, in source order, to a role read off the expert's code:
  A  approach: moving to a pre-contact pose relative to the object
  G  grasp: waiting in place for the fingers to close
  T  transport / operate: moving the object, or pushing/pulling/pressing it, toward the goal
Phases then follow: approach arms become `grasp` while the expert commands the fingers closed near the object and
they are still closing, and every frame from the first recorded success on is `release` (the experts never open the
gripper: the task is done and the episode ends a few frames later).

Where the dataset records contact (observation.contact), the arms' intent is checked against what happened: an
operate arm whose hand has not touched anything yet is still an approach (door-close switches to its push target
10 cm before the door), and an approach arm whose hand already moves the object is transport (lever-pull and
soccer re-aim at an object that is already moving in their hand).
"""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
from functools import lru_cache

import numpy as np

from vla_distill.sim.kinematics import Kinematics, gripper_rate, runs, speed, sustained
from vla_distill.sim.metaworld.expert import expert_policy
from vla_distill.types import PHASES_4

ARM_ROLES: dict[str, str] = {
    "assembly-v3": "ATATT", "basketball-v3": "AATT", "bin-picking-v3": "AATTT", "box-close-v3": "AATT",
    "button-press-topdown-v3": "AT", "button-press-topdown-wall-v3": "AT", "button-press-v3": "AT",
    "button-press-wall-v3": "AATT", "coffee-button-v3": "AT", "coffee-pull-v3": "AAT", "coffee-push-v3": "AAT",
    "dial-turn-v3": "AAT", "disassemble-v3": "AAT", "door-close-v3": "AAAT", "door-lock-v3": "AAAT",
    "door-open-v3": "AAT", "door-unlock-v3": "AAT", "drawer-close-v3": "AAAT", "drawer-open-v3": "AAT",
    "faucet-close-v3": "AAT", "faucet-open-v3": "AAT", "hammer-v3": "AATT", "hand-insert-v3": "AATT",
    "handle-press-side-v3": "AT", "handle-press-v3": "AT", "handle-pull-side-v3": "AAT", "handle-pull-v3": "AAT",
    "lever-pull-v3": "AAT", "peg-insert-side-v3": "AATT", "peg-unplug-side-v3": "AAT", "pick-out-of-hole-v3": "AATT",
    "pick-place-v3": "AAGT", "pick-place-wall-v3": "AATTTT", "plate-slide-back-side-v3": "AAT",
    "plate-slide-back-v3": "AATTT", "plate-slide-side-v3": "AATT", "plate-slide-v3": "AAT", "push-back-v3": "AAT",
    "push-v3": "AAT", "push-wall-v3": "AATTT", "reach-v3": "A", "reach-wall-v3": "AA", "shelf-place-v3": "AATTT",
    "soccer-v3": "AT", "stick-pull-v3": "AATTTT", "stick-push-v3": "AATTTT", "sweep-into-v3": "AAT", "sweep-v3": "AAT",
    "window-close-v3": "AAT", "window-open-v3": "AAT",
}
GRASP_RADIUS = 0.08  # m: a close command farther than this from the object is not a grasp (door-open closes at start)
MOVING_SPEED = 0.05  # m/s: the object is being moved above this speed ...
MOVING_FRAMES = 4  # ... for this many frames in a row (a brushed object jiggles for one or two)


@lru_cache(maxsize=None)
def _arm_lines(task: str) -> tuple[str, tuple[int, ...]]:
    """(code file, first line of each arm in source order) of the expert's sub-goal choice."""
    cls = type(expert_policy(task))
    fn = cls.__dict__.get("_desired_pos")
    fn = fn.__func__ if isinstance(fn, staticmethod) else fn
    if fn is None:  # drawer-open branches inside get_action; reach has a single target
        fn = cls.get_action
    src_lines, start = inspect.getsourcelines(fn)
    tree = ast.parse(textwrap.dedent("".join(src_lines)))
    returns = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Return)]
    if fn.__name__ == "get_action":
        ifs = [n for n in ast.walk(tree) if isinstance(n, ast.If)]
        returns = [arm[0].lineno for n in ifs for arm in (n.body, n.orelse) if arm and not isinstance(arm[0], ast.If)]
        if not returns:
            returns = [tree.body[0].body[0].lineno]
    return inspect.getsourcefile(fn), tuple(sorted(start + ln - 1 for ln in returns))


def expert_arms(task: str, env_state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """env_state: (T, 39) stored observations. Returns (arm index (T,), commanded grab effort (T,))."""
    filename, lines = _arm_lines(task)
    line_to_arm = {ln: i for i, ln in enumerate(lines)}
    policy = expert_policy(task)
    arms = np.zeros(len(env_state), np.int64)
    efforts = np.zeros(len(env_state), np.float32)
    hit: list[int] = []

    def tracer(frame, event, arg):
        if frame.f_code.co_filename != filename:
            return None
        if event == "line" and frame.f_lineno in line_to_arm:
            hit.append(line_to_arm[frame.f_lineno])
        return tracer

    old = sys.gettrace()
    sys.settrace(tracer)
    try:
        for t, obs in enumerate(env_state.astype(np.float64)):
            hit.clear()
            efforts[t] = policy.get_action(obs)[3]
            arms[t] = hit[-1] if hit else 0
    finally:
        sys.settrace(old)
    return arms, efforts


def ground_truth_phases(task: str, env_state: np.ndarray, kin: Kinematics) -> np.ndarray:
    """Per-frame 4-phase ground truth (indices into PHASES_4) for one MetaWorld episode."""
    if task not in ARM_ROLES:
        raise KeyError(f"no expert arm roles for {task!r}")
    arms, efforts = expert_arms(task, env_state)
    roles = np.array(list(ARM_ROLES[task]))[np.minimum(arms, len(ARM_ROLES[task]) - 1)]
    phase = np.where(roles == "T", PHASES_4.index("transport"), PHASES_4.index("approach"))
    near = np.linalg.norm(kin.ee - kin.obj, axis=1) < GRASP_RADIUS if kin.obj is not None else np.zeros(len(arms), bool)
    closing = (efforts > 0) & (gripper_rate(kin) < 0) & near
    grasp = PHASES_4.index("grasp")
    phase[(roles == "G") | ((roles == "A") & closing)] = grasp
    # An approach arm still commanding the fingers shut after they closed near the object is waiting on its grasp.
    holding = (roles == "A") & (efforts > 0) & near & np.maximum.accumulate(phase == grasp)
    phase[holding] = grasp
    if kin.contact is not None and kin.obj is not None:
        phase = _checked_by_contact(phase, kin, closing)
    # Once the expert has started transporting, a brief return to an earlier arm is still transport.
    started = np.maximum.accumulate(phase == PHASES_4.index("transport"))
    phase[started] = PHASES_4.index("transport")
    if kin.success is not None and kin.success.any():
        phase[int(np.argmax(kin.success)):] = PHASES_4.index("release")
    return phase


def _checked_by_contact(phase: np.ndarray, kin: Kinematics, closing: np.ndarray) -> np.ndarray:
    """The arms' phases corrected by recorded contact: transport frames before the first touch of their run become
    approach (grasp while the fingers close); approach or holding frames that touch an object moving for
    MOVING_FRAMES in a row, the fingers not closing (a squeeze shifts the object), become transport."""
    approach, grasp, transport = (PHASES_4.index(p) for p in ("approach", "grasp", "transport"))
    out = phase.copy()
    for s, e in ((s, e) for v, s, e in runs(phase) if v == transport):
        touched = np.flatnonzero(kin.contact[s:e])
        before = slice(s, s + (touched[0] if len(touched) else e - s))
        out[before] = np.where(closing[before], grasp, approach)
    moved = sustained(speed(kin.obj, kin.fps) > MOVING_SPEED, MOVING_FRAMES)
    out[((phase == approach) | (phase == grasp) & ~closing) & kin.contact & moved] = transport
    return out
