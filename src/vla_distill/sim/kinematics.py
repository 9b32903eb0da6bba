"""Kinematics: what the phase labeller, the direction cues, the audit and the evaluator's reference timelines read
out of a trajectory, decoded from each simulator's state layout.

Layouts understood (first match wins):
  metaworld  observation.state (4,) hand xyz + gripper opening, and observation.environment_state (39,) with the
             manipulated object at [4:7] and the goal at [36:39]
  libero     observation.state (8,) = eef xyz, axis-angle, two finger joints (opening = their difference); no object
             state (openpi's and lerobot's LIBERO layout)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vla_distill.errors import DatasetError
from vla_distill.types import OBS_STATE


@dataclass(frozen=True)
class Kinematics:
    """One episode's kinematic signals.

    ee: (T, 3) end-effector position; gripper: (T,) opening, larger = more open; obj: (T, 3) position of the
    manipulated object, or None where the dataset has no object state; goal: (T, 3) or None;
    success: (T,) bool or None; fps: frames per second; contact: (T,) bool, the gripper touching a movable object,
    or None where the dataset does not record it (observation.contact; simulators only).
    """

    ee: np.ndarray
    gripper: np.ndarray
    fps: float
    obj: np.ndarray | None = None
    goal: np.ndarray | None = None
    success: np.ndarray | None = None
    contact: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ee)


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


@dataclass(frozen=True)
class StateLayout:
    name: str
    matches: Callable[[int, int | None], bool]  # (S, S_env or None) -> this layout
    decode: Callable[[np.ndarray, np.ndarray | None, np.ndarray | None, float], Kinematics]  # (state, env, success, fps)


def _metaworld(state: np.ndarray, env: np.ndarray | None, success: np.ndarray | None, fps: float) -> Kinematics:
    return Kinematics(ee=state[:, :3], gripper=state[:, 3], fps=fps, obj=env[:, 4:7], goal=env[:, 36:39], success=success)


def _libero(state: np.ndarray, env: np.ndarray | None, success: np.ndarray | None, fps: float) -> Kinematics:
    return Kinematics(ee=state[:, :3], gripper=state[:, 6] - state[:, 7], fps=fps, success=success)


LAYOUTS = (
    StateLayout("metaworld", lambda s, e: s == 4 and e == 39, _metaworld),
    StateLayout("libero", lambda s, e: s == 8, _libero),
)


def kinematics(state: np.ndarray, env: np.ndarray | None, success: np.ndarray | None, fps: float,
               contact: np.ndarray | None = None) -> Kinematics:
    """state (T, S), env (T, S_env) or None, success (T,) or None, contact (T,) bool or None -> Kinematics, by the
    first layout that matches."""
    state = np.asarray(state, np.float64)
    env = None if env is None else np.asarray(env, np.float64)
    for layout in LAYOUTS:
        if layout.matches(state.shape[1], None if env is None else env.shape[1]):
            kin = layout.decode(state, env, success, fps)
            return kin if contact is None else dataclasses.replace(kin, contact=np.asarray(contact, bool))
    raise DatasetError(f"unknown state layout of {state.shape[1]} values: kinematic phases and cues support MetaWorld "
                       "(4 + 39-d environment state) and LIBERO (8); use --phases vlm --directions vlm", field=OBS_STATE)
