"""Kinematics: what the phase labeller, the direction cues, the audit and the evaluator's reference timelines read
out of a trajectory. How a dataset's observation.state decodes into them is its StateLayout (sim.layout).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np


@dataclass(frozen=True)
class Kinematics:
    """One episode's kinematic signals.

    ee: (T, 3) end-effector position in metres, or None where neither the state nor forward kinematics gives it;
    gripper: (T,) opening, larger = more open; obj: (T, 3) position of the manipulated object, or None where the
    dataset has no object state; goal: (T, 3) or None; success: (T,) bool or None; fps: frames per second;
    contact: (T,) bool, the gripper touching a movable object, or None where the dataset does not record it
    (observation.contact; simulators only); joints: (T, J) arm joint positions from their minimum in the dataset,
    as a fraction of the widest joint's range (unit-free: degrees, radians and lerobot's -100..100 alike), or None;
    joint_names: (J,). A multi-arm robot's track follows the acting arm: arm (T,) is its index into arm_names,
    and hands holds every arm's own kinematics (ee, gripper, contact), in arm_names' order.
    """

    gripper: np.ndarray
    fps: float
    ee: np.ndarray | None = None
    obj: np.ndarray | None = None
    goal: np.ndarray | None = None
    success: np.ndarray | None = None
    contact: np.ndarray | None = None
    joints: np.ndarray | None = None
    joint_names: tuple[str, ...] = ()
    arm: np.ndarray | None = None
    arm_names: tuple[str, ...] = ()
    hands: tuple[Kinematics, ...] = ()

    def acting(self, start: int, end: int) -> int | None:
        """The arm the track follows most over [start, end), or None on a one-arm robot."""
        if self.arm is None:
            return None
        return int(np.bincount(self.arm[start:max(end, start + 1)], minlength=len(self.arm_names)).argmax())

    def arm_word(self, start: int, end: int) -> str:
        """'gripper', or, on a multi-arm robot, the gripper of the arm the track follows most over [start, end):
        'right gripper'."""
        arm = self.acting(start, end)
        return "gripper" if arm is None else f"{self.arm_names[arm]} gripper"

    def __len__(self) -> int:
        return len(self.gripper)

    def span(self, start: int, end: int) -> Kinematics:
        """The frames [start, end) alone."""
        cut = {f.name: getattr(self, f.name)[start:end] for f in fields(self)
               if isinstance(getattr(self, f.name), np.ndarray)}
        return replace(self, **cut, hands=tuple(h.span(start, end) for h in self.hands))


def rate(x: np.ndarray, fps: float) -> np.ndarray:
    """Centered finite difference per second, same length as x."""
    if len(x) < 2:
        return np.zeros_like(x)
    return np.gradient(x, axis=0) * fps


def speed(x: np.ndarray, fps: float) -> np.ndarray:
    """(T, 3) positions -> (T,) speed in units per second."""
    return np.linalg.norm(rate(x.astype(np.float64), fps), axis=1)


def sustained(x: np.ndarray, k: int) -> np.ndarray:
    """(T,) bool -> x[t] and the k - 1 frames after it all true."""
    if k > len(x):  # fewer than k frames from anywhere: none is sustained (a short span, e.g. one arm's turn)
        return np.zeros_like(x)
    out = x.copy()
    for i in range(1, k):
        out[: len(x) - i] &= x[i:]
        out[len(x) - i :] = False
    return out


def runs(x: np.ndarray) -> list[tuple[int, int, int]]:
    """[(value, start, end)] of the constant runs of a label sequence."""
    if len(x) == 0:
        return []
    cut = np.flatnonzero(np.diff(x)) + 1
    return [(int(x[s]), int(s), int(e)) for s, e in zip(np.r_[0, cut], np.r_[cut, len(x)])]


def gripper_rate(kin: Kinematics) -> np.ndarray:
    return rate(kin.gripper.astype(np.float64), kin.fps)


def arm_moving(kin: Kinematics, metres_per_s: float, range_per_s: float) -> np.ndarray:
    """(T,) bool: the hand moves faster than metres_per_s, or, without an end-effector position, the joints faster
    than range_per_s (fraction of the widest joint's range per second, all joints together)."""
    if kin.ee is not None:
        return speed(kin.ee, kin.fps) > metres_per_s
    if kin.joints is not None:
        return joint_speed(kin) > range_per_s
    return np.zeros(len(kin), bool)


def joint_speed(kin: Kinematics) -> np.ndarray:
    """(T,) how fast the joints move together, in fractions of the widest joint's range per second, over ±0.1 s:
    encoder noise on a still arm must not read as motion. kin.joints must be set."""
    k = max(1, round(0.1 * kin.fps))
    q = np.pad(kin.joints.astype(np.float64), ((k, k), (0, 0)), mode="edge")
    return np.linalg.norm(q[2 * k :] - q[: -2 * k], axis=1) * kin.fps / (2 * k)


