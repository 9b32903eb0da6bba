"""Direction cues: a short sentence describing the motion over a sliding window of frames.

Axes follow the robot base frame (MetaWorld/LIBERO): +x right, +y forward (away from the robot), +z up; an arm given
by forward kinematics speaks in its model's base frame. An arm known only by its joints gets cues that name the
joints that move ("moving the arm: shoulder pan increasing, elbow flex decreasing"). On a multi-arm robot the cue
follows the acting arm and adds what each other hand does meanwhile ("... while the left gripper moves up, closing").
Windows: start = 0, S, 2S, ... each covering [start, start + W) clipped to the episode; frame t takes the cue of
window min(t // S, last), which always contains it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from vla_distill.sim.kinematics import Kinematics
from vla_distill.types import PHASES_4, to_phase4

AXIS_WORDS = (("left", "right"), ("backward", "forward"), ("down", "up"))


@dataclass(frozen=True)
class DirectionConfig:
    window: int = 8
    stride: int = 4
    min_move: float = 0.01  # m over the window; less is "still"
    secondary: float = 0.5  # another axis is named when its motion is at least this fraction of the largest
    gripper_change: float = 0.1  # opening change over the window that counts as opening/closing
    min_joint_move: float = 0.05  # joint-space arms: fraction of the widest joint's range in the window; less: "still"

    def __post_init__(self):
        if self.window < 2 or self.stride < 1:
            raise ValueError("direction cues need window >= 2 and stride >= 1")


def windows(length: int, cfg: DirectionConfig) -> np.ndarray:
    """(K, 2) [start, end) frame ranges covering an episode of `length` frames."""
    starts = np.arange(0, max(length - 1, 1), cfg.stride)
    starts = starts[(starts == 0) | (starts + 1 < length)]
    return np.stack([starts, np.minimum(starts + cfg.window, length)], axis=1)


def frame_windows(length: int, cfg: DirectionConfig) -> np.ndarray:
    """(T,) index of the window each frame takes its cue from."""
    k = len(windows(length, cfg))
    return np.minimum(np.arange(length) // cfg.stride, k - 1)


def object_noun(instruction: str) -> str:
    """'pick up the puck and place it ...' -> 'puck': the first object named after 'the' (not the gripper)."""
    for m in re.finditer(r"\bthe ([a-z]+)", instruction.lower()):
        if m.group(1) not in ("gripper", "goal", "top", "side", "robot"):
            return m.group(1)
    return "object"


def axis_phrase(delta: np.ndarray, cfg: DirectionConfig) -> str:
    """(3,) displacement -> 'left and down' ('' when below min_move); at most the two largest axes."""
    mag = np.abs(delta)
    if np.linalg.norm(delta) < cfg.min_move:
        return ""
    order = np.argsort(-mag)
    words = [AXIS_WORDS[i][int(delta[i] > 0)] for i in order[:2] if mag[i] >= cfg.secondary * mag[order[0]]]
    return " and ".join(words)


def window_motion(kin: Kinematics, start: int, end: int) -> tuple[np.ndarray, float]:
    """(end-effector displacement (3,), gripper opening change) from the first to the last frame of [start, end);
    zero displacement where the end effector is unknown."""
    end = max(end, start + 1)
    delta = kin.ee[end - 1] - kin.ee[start] if kin.ee is not None else np.zeros(3)
    return delta, float(kin.gripper[end - 1] - kin.gripper[start])


def joint_motion(kin: Kinematics, start: int, end: int) -> np.ndarray:
    """(J,) change of each joint over [start, end) as a fraction of the widest joint's range (Kinematics.joints);
    (0,) without joints."""
    if kin.joints is None:
        return np.zeros(0)
    end = max(end, start + 1)
    return kin.joints[end - 1] - kin.joints[start]


def joint_word(name: str) -> str:
    """'shoulder_pan.pos' -> 'shoulder pan'."""
    return re.sub(r"[._](pos|position)$", "", name).replace("_", " ").replace(".", " ").strip()


def joint_phrase(delta: np.ndarray, names: tuple[str, ...], cfg: DirectionConfig) -> str:
    """(J,) joint changes -> 'shoulder pan increasing, elbow flex decreasing' ('' when below min_joint_move); at most
    the two largest."""
    mag = np.abs(delta)
    if len(delta) == 0 or mag.max() < cfg.min_joint_move:
        return ""
    order = np.argsort(-mag)
    return ", ".join(f"{joint_word(names[i])} {'increasing' if delta[i] > 0 else 'decreasing'}"
                     for i in order[:2] if mag[i] >= max(cfg.secondary * mag[order[0]], cfg.min_joint_move))


def joint_claims(text: str, names: tuple[str, ...]) -> dict[int, int]:
    """Joint -> sign claimed by a joint-space cue ('elbow flex decreasing' -> {2: -1}); used by the audit."""
    claims = {}
    for j, name in enumerate(names):
        m = re.search(rf"\b{re.escape(joint_word(name))} (increasing|decreasing)\b", text)
        if m:
            claims[j] = 1 if m.group(1) == "increasing" else -1
    return claims


def describe(kin: Kinematics, phases4: np.ndarray, start: int, end: int, noun: str, cfg: DirectionConfig) -> str:
    """One window -> one cue. phases4 are indices into PHASES_4 (collapse 9-phase labels first). On a multi-arm
    robot the cue is the acting arm's, plus what each other arm does meanwhile (other_hands)."""
    return _describe_track(kin, phases4, start, end, noun, cfg) + other_hands(kin, start, end, cfg)


def other_hands(kin: Kinematics, start: int, end: int, cfg: DirectionConfig) -> str:
    """' while the left gripper moves up, closing': what the arms the track does not follow do over the window
    ('' when they keep still, or on a one-arm robot). Two hands at work at once (insertion: each brings its
    object) would otherwise be described as one."""
    acting = kin.acting(start, end)
    if acting is None:
        return ""
    clauses = [f"the {kin.arm_names[i]} gripper {what}" for i, hand in enumerate(kin.hands)
               if i != acting and (what := hand_motion(hand, start, end, cfg))]
    return f" while {' and '.join(clauses)}" if clauses else ""


def hand_motion(hand: Kinematics, start: int, end: int, cfg: DirectionConfig) -> str:
    """'moves right and up, closing', 'moves up', 'opens' or '' for one arm over [start, end)."""
    delta, dg = window_motion(hand, start, end)
    dirs = axis_phrase(delta, cfg) if hand.ee is not None else ""
    closing, opening = dg < -cfg.gripper_change, dg > cfg.gripper_change
    if not dirs:
        return "closes" if closing else "opens" if opening else ""
    return f"moves {dirs}" + (", closing" if closing else ", opening" if opening else "")


def split_hands(text: str) -> tuple[str, dict[str, str]]:
    """A cue -> (the acting arm's part, {other arm's name: what it does}); the audit checks each against its arm."""
    main, *rest = text.split(" while the ", 1)
    if not rest:
        return text, {}
    others = {}
    for clause in rest[0].split(" and the "):
        m = re.match(r"(\w+) gripper (.*)$", clause)
        if m:
            others[m.group(1)] = m.group(2)
    return main, others


def _describe_track(kin: Kinematics, phases4: np.ndarray, start: int, end: int, noun: str,
                    cfg: DirectionConfig) -> str:
    delta, dg = window_motion(kin, start, end)
    end = max(end, start + 1)
    hand = kin.arm_word(start, end)  # "gripper", or which one on a robot with two
    phase = PHASES_4[int(np.bincount(phases4[start:end], minlength=4).argmax())]
    if kin.ee is None:
        return _describe_joints(kin, phase, dg, joint_motion(kin, start, end), noun, cfg, hand)
    dirs = axis_phrase(delta, cfg)
    if not dirs:
        return _gripper_cue(dg, phase, noun, cfg, hand) or f"holding the {hand} still"
    if phase == "transport":
        carrying = bool((phases4[:start] == PHASES_4.index("grasp")).any())  # grasped earlier: holding, not pushing
        verb = "carrying" if carrying else "pushing"
        return f"{verb} the {noun} {dirs}"
    if phase == "release":
        return f"moving the {hand} {dirs} away from the {noun}"
    if kin.obj is not None:
        before = np.linalg.norm(kin.ee[start] - kin.obj[start])
        after = np.linalg.norm(kin.ee[end - 1] - kin.obj[end - 1])
        if after < before - 0.5 * cfg.min_move:
            return f"moving the {hand} {dirs} toward the {noun}"
    return f"moving the {hand} {dirs}"


def _gripper_cue(dg: float, phase: str, noun: str, cfg: DirectionConfig, hand: str = "gripper") -> str:
    """The cue of a window whose hand does not move: what the fingers do, or '' when they keep still too."""
    if dg < -cfg.gripper_change:
        return f"closing the {hand} on the {noun}" if phase in ("grasp", "transport") else f"closing the {hand}"
    if dg > cfg.gripper_change:
        return f"opening the {hand} to release the {noun}" if phase in ("transport",
                                                                        "release") else f"opening the {hand}"
    return ""


def _describe_joints(kin: Kinematics, phase: str, dg: float, dq: np.ndarray, noun: str, cfg: DirectionConfig,
                     hand: str = "gripper") -> str:
    """describe() for an arm known only by its joints: the gripper as usual, motion named by joint."""
    moves = joint_phrase(dq, kin.joint_names, cfg)
    if not moves:
        return _gripper_cue(dg, phase, noun, cfg, hand) or "holding the arm still"
    if phase == "transport":
        return f"carrying the {noun}: {moves}"
    if phase == "release":
        return f"moving the arm away from the {noun}: {moves}"
    return f"moving the arm: {moves}"


def kinematic_cues(kin: Kinematics, phases: np.ndarray, taxonomy: tuple[str, ...], noun: str,
                   cfg: DirectionConfig) -> list[str]:
    """One cue per window of the episode."""
    phases4 = to_phase4(phases, taxonomy)
    return [describe(kin, phases4, int(s), int(e), noun, cfg) for s, e in windows(len(kin), cfg)]


def cue_direction(text: str) -> dict[int, int]:
    """Axis -> sign claimed by a cue ('left' -> {0: -1}); used by the audit to check cues against motion. A hand's
    name ('the right gripper') is not a direction."""
    text = re.sub(r"\b(?:left|right) (?:gripper|arm)\b", "", text)
    claims = {}
    for axis, (neg, pos) in enumerate(AXIS_WORDS):
        if re.search(rf"\b{neg}\b", text):
            claims[axis] = -1
        if re.search(rf"\b{pos}\b", text):
            claims[axis] = 1
    return claims
