"""LIBERO environment with openpi's and lerobot's evaluation conventions; used where the `libero` package and its
scene assets are installed. Nothing here imports libero until an environment is built.

Conventions (examples/libero/main.py in openpi, LiberoProcessorStep in lerobot):
  suites libero_spatial / libero_object / libero_goal / libero_10 / libero_90; task "libero_spatial/3" = task 3
  cameras agentview and wrist at 256 px, rotated 180 degrees (the datasets store them rotated)
    -> "observation.images.image" and "observation.images.image2" (lerobot/libero's keys)
  "observation.state" (8,) float32 = eef position 3 + axis-angle 3 + gripper finger joints 2
  action (7,) = 6-d end-effector delta + gripper, robosuite's sign: -1 open, +1 close (no conversion here; remote
      teachers convert with their `gripper` option)
  10 settle steps of the no-op [0, 0, 0, 0, 0, 0, -1] before control; per-suite step limits; episode i starts from
      the task's fixed initial state i % 50
"""

from __future__ import annotations

import math
import os

import numpy as np

from vla_distill.sim.base import SimulatorUnavailable
from vla_distill.sim.libero.tasks import MAX_STEPS
from vla_distill.types import OBS_STATE, camera_key

SETTLE_STEPS = 10
NOOP = np.array([0, 0, 0, 0, 0, 0, -1], np.float32)
RESOLUTION = 256
FPS = 20  # robosuite's control_freq in LIBERO's scenes (the datasets declare 10)
CAMERA_KEYS = {camera_key("image"): "agentview_image", camera_key("image2"): "robot0_eye_in_hand_image"}
INSTALL_HINT = ("LIBERO is not installed here: pip install hf-libero 'robosuite==1.4.0' (Python <= 3.11), then run "
                "`python -c 'import libero.libero'` once on a machine with network so it fetches its scene assets into "
                "~/.libero")


class LiberoUnavailable(SimulatorUnavailable):
    pass


def unavailable() -> str | None:
    """None when LIBERO can run here, else why not (with the install hint)."""
    try:
        from libero.libero import benchmark, get_libero_path  # noqa: F401
    except Exception as e:  # ImportError, or the package asking for its config/assets
        return f"{INSTALL_HINT} ({type(e).__name__}: {e})"
    assets = get_libero_path("assets")
    if not assets or not os.path.isdir(assets):
        return f"{INSTALL_HINT} (no assets at {assets!r})"
    return None


def quat_to_axis_angle(q: np.ndarray) -> np.ndarray:
    """robosuite's quat2axisangle: (x, y, z, w) -> (3,) axis * angle."""
    x, y, z, w = (float(v) for v in q)
    w = min(max(w, -1.0), 1.0)
    den = math.sqrt(max(1.0 - w * w, 0.0))
    if den < 1e-10:
        return np.zeros(3, np.float32)
    return np.array([x, y, z], np.float32) * (2.0 * math.acos(w) / den)


class LiberoEnv:
    """One LIBERO task; `reset(seed)` starts from fixed initial state `seed % 50`."""

    def __init__(self, task: str, image_keys: tuple[str, ...] = tuple(CAMERA_KEYS), resolution: int = RESOLUTION):
        why = unavailable()
        if why:
            raise LiberoUnavailable(why)
        from libero.libero import benchmark, get_libero_path
        from libero.libero.envs import OffScreenRenderEnv

        suite_name, _, idx = task.partition("/")
        suite = benchmark.get_benchmark_dict()[suite_name]()
        t = suite.get_task(int(idx))
        self.task, self.instruction = task, t.language
        self.init_states = suite.get_task_init_states(int(idx))
        bddl = os.path.join(get_libero_path("bddl_files"), t.problem_folder, t.bddl_file)
        self.env = OffScreenRenderEnv(bddl_file_name=bddl, camera_heights=resolution, camera_widths=resolution)
        self.image_keys = image_keys
        self.max_steps = MAX_STEPS[suite_name]

    def _observation(self, raw: dict) -> dict[str, np.ndarray]:
        out = {k: np.ascontiguousarray(raw[CAMERA_KEYS[k]][::-1, ::-1]) for k in self.image_keys}
        out[OBS_STATE] = np.concatenate(
            [raw["robot0_eef_pos"], quat_to_axis_angle(raw["robot0_eef_quat"]),
             raw["robot0_gripper_qpos"]]).astype(np.float32)
        return out

    def reset(self, seed: int) -> dict[str, np.ndarray]:
        self.env.seed(seed)
        self.env.reset()
        raw = self.env.set_init_state(self.init_states[seed % len(self.init_states)])
        for _ in range(SETTLE_STEPS):  # objects drop and settle; the policy does not see these frames
            raw, _, _, _ = self.env.step(NOOP.tolist())
        return self._observation(raw)

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool]:
        raw, reward, done, _ = self.env.step(np.asarray(action, np.float64).tolist())
        return self._observation(raw), float(reward), bool(done or self.env.check_success())

    def action_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(7,) low and high: 6-d end-effector delta and the gripper, all in [-1, 1] (robosuite's OSC_POSE)."""
        return -np.ones(len(NOOP), np.float32), np.ones(len(NOOP), np.float32)

    def close(self) -> None:
        self.env.close()
