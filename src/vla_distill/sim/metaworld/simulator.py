"""MetaWorld's description for the simulator registry (sim.base.Simulator). Nothing heavy is imported until an
environment, an expert or a ground-truth timeline is asked for."""

from __future__ import annotations

import numpy as np

from vla_distill.sim.base import Env, Expert
from vla_distill.sim.kinematics import Kinematics
from vla_distill.sim.metaworld.tasks import (
    CAMERAS,
    DEFAULT_CAMERAS,
    EVAL_SEED_BASE,
    FPS,
    INSTRUCTIONS,
    MAX_STEPS,
    difficulty_of,
    resolve_tasks,
)
from vla_distill.types import ACTION, OBS_CONTACT, OBS_ENV_STATE, OBS_IMAGES, OBS_STATE, camera_key

STATE_NAMES = ["hand_x", "hand_y", "hand_z", "gripper_opening"]
ACTION_NAMES = ["dx", "dy", "dz", "gripper"]
_TASK_OF_INSTRUCTION = {v: k for k, v in INSTRUCTIONS.items()}


class MetaWorld:
    name = "metaworld"
    fps = FPS
    robot_type = "sawyer"
    cameras = tuple(CAMERAS)
    default_cameras = DEFAULT_CAMERAS
    default_camera = camera_key("corner2")
    default_image_size = 128
    step_limit = f"{MAX_STEPS} (the simulator's)"
    held_out_seeds = True
    noise_dims = (0, 1, 2)  # xyz; the gripper stays the expert's (a dropped object teaches no path back)
    rotation_dims = ()  # the hand does not turn
    preload = ("vla_distill.sim.metaworld.env", "metaworld.policies")

    def features(self) -> dict[str, dict]:
        return {
            OBS_STATE: {"dtype": "float32", "shape": [4], "names": STATE_NAMES},
            OBS_ENV_STATE: {"dtype": "float32", "shape": [39], "names": None},
            OBS_CONTACT: {"dtype": "float32", "shape": [1], "names": ["gripper_object_contact"]},
            ACTION: {"dtype": "float32", "shape": [4], "names": ACTION_NAMES},
        }

    def has_task(self, task: str) -> bool:
        return task in INSTRUCTIONS

    def task_of(self, instruction: str) -> str | None:
        return _TASK_OF_INSTRUCTION.get(instruction)

    def expert(self, task: str) -> Expert:
        from vla_distill.sim.metaworld.expert import MetaWorldExpert

        return MetaWorldExpert(task)

    def expert_source(self) -> str:
        from importlib.metadata import version

        return f"metaworld {version('metaworld')} scripted experts"

    def resolve_tasks(self, spec: str) -> list[str]:
        return resolve_tasks(spec)

    def group_of(self, task: str) -> str:
        return difficulty_of(task)

    def instruction(self, task: str) -> str | None:
        return INSTRUCTIONS.get(task)

    def eval_seeds(self, task: str, episodes: int, seed: int) -> list[int]:
        task_id = sorted(INSTRUCTIONS).index(task)
        return [EVAL_SEED_BASE + seed * 100_003 + task_id * 1_009 + i for i in range(episodes)]

    def make_env(self, task: str, image_keys: tuple[str, ...], image_size: tuple[int, int]) -> Env:
        from vla_distill.sim.base import CameraConfig
        from vla_distill.sim.metaworld.env import MetaWorldEnv

        names = tuple(k[len(OBS_IMAGES) + 1:] for k in image_keys)
        return MetaWorldEnv(task, CameraConfig(names=names, height=image_size[0], width=image_size[1]))

    def unavailable(self) -> str | None:
        return None

    def robot_description(self) -> None:
        return None  # the state has the hand's position

    def ground_truth_phases(self, task: str, env_state: np.ndarray | None, kin: Kinematics) -> np.ndarray | None:
        if env_state is None:
            return None
        from vla_distill.sim.metaworld.phases import ARM_ROLES, ground_truth_phases

        if task not in ARM_ROLES:
            return None
        return ground_truth_phases(task, np.asarray(env_state, np.float64), kin)
