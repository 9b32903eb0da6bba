"""LIBERO's description for the simulator registry (sim.base.Simulator)."""

from __future__ import annotations

import numpy as np

from vla_distill.errors import ConfigError
from vla_distill.sim.base import Env, Expert
from vla_distill.sim.kinematics import Kinematics
from vla_distill.sim.libero.env import CAMERA_KEYS, FPS, RESOLUTION, LiberoEnv, unavailable
from vla_distill.sim.libero.tasks import SUITES, resolve_tasks
from vla_distill.types import ACTION, OBS_STATE, camera_key


class Libero:
    """Episode i starts from the task's fixed initial state i % 50."""

    name = "libero"
    fps = FPS
    robot_type = "panda"
    cameras = tuple(k.rsplit(".", 1)[-1] for k in CAMERA_KEYS)  # lerobot/libero's names: image, image2
    default_cameras = cameras
    default_camera = camera_key("image")
    default_image_size = RESOLUTION
    step_limit = "the suite's"
    held_out_seeds = False  # seeds index the suite's fixed initial states
    noise_dims = (0, 1, 2)
    preload = ("vla_distill.sim.libero.env",)

    def features(self) -> dict[str, dict]:
        return {
            OBS_STATE: {"dtype": "float32", "shape": [8], "names": ["eef_x", "eef_y", "eef_z", "eef_ax", "eef_ay",
                                                                   "eef_az", "gripper_left", "gripper_right"]},
            ACTION: {"dtype": "float32", "shape": [7], "names": ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]},
        }

    def has_task(self, task: str) -> bool:
        suite, _, idx = task.partition("/")
        return suite in SUITES and idx.isdigit()

    def task_of(self, instruction: str) -> str | None:
        return None  # the instructions live in the libero package's benchmark, read only when an env is built

    def expert(self, task: str) -> Expert:
        raise ConfigError(f"no scripted expert for LIBERO's {task} yet", field="teacher")

    def expert_source(self) -> str:
        return "vla-distill's LIBERO scripted experts"

    def resolve_tasks(self, spec: str) -> list[str]:
        return resolve_tasks(spec)

    def group_of(self, task: str) -> str:
        return task.partition("/")[0]

    def instruction(self, task: str) -> str | None:
        if unavailable():
            return None
        from libero.libero import benchmark

        suite_name, _, idx = task.partition("/")
        return benchmark.get_benchmark_dict()[suite_name]().get_task(int(idx)).language

    def eval_seeds(self, task: str, episodes: int, seed: int) -> list[int]:
        return [seed * 1_000 + i for i in range(episodes)]

    def make_env(self, task: str, image_keys: tuple[str, ...], image_size: tuple[int, int]) -> Env:
        return LiberoEnv(task, image_keys, image_size[0])

    def unavailable(self) -> str | None:
        return unavailable()

    def ground_truth_phases(self, task: str, env_state: np.ndarray | None, kin: Kinematics) -> np.ndarray | None:
        return None
