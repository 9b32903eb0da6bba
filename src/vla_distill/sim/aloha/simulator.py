"""ALOHA's description for the simulator registry (sim.base.Simulator)."""

from __future__ import annotations

import numpy as np

from vla_distill.errors import ConfigError
from vla_distill.sim.aloha.env import (
    CAMERAS,
    ENV_STATE_NAMES,
    EVAL_SEED_BASE,
    FPS,
    INSTRUCTIONS,
    MAX_STEPS,
    MOTORS,
    RESOLUTION,
    TASKS,
    unavailable,
)
from vla_distill.sim.base import Env, Expert
from vla_distill.sim.kinematics import Kinematics
from vla_distill.types import ACTION, OBS_CONTACT, OBS_ENV_STATE, OBS_STATE, camera_key


class Aloha:
    """Evaluation episode i of a task places its objects from seed EVAL_SEED_BASE + ...; collection from seeds below
    it (the package's sampler either way)."""

    name = "aloha"
    fps = FPS
    robot_type = "aloha"
    cameras = CAMERAS
    default_cameras = CAMERAS[:1]  # lerobot's aloha_sim datasets: the top view alone; the wrists on request
    default_camera = camera_key("top")
    default_image_size = RESOLUTION
    step_limit = f"{MAX_STEPS} steps (lerobot's)"
    held_out_seeds = True
    noise_dims = tuple(i for i in range(len(MOTORS)) if not MOTORS[i].endswith("gripper"))  # the arm joints
    rotation_dims = ()  # joint targets: a wrist's joints are among noise_dims
    preload = ("vla_distill.sim.aloha.env",)

    def features(self) -> dict[str, dict]:
        return {
            OBS_STATE: {"dtype": "float32", "shape": [len(MOTORS)], "names": list(MOTORS)},
            OBS_ENV_STATE: {"dtype": "float32", "shape": [len(ENV_STATE_NAMES)], "names": list(ENV_STATE_NAMES)},
            OBS_CONTACT: {"dtype": "float32", "shape": [2], "names": ["left_contact", "right_contact"]},
            ACTION: {"dtype": "float32", "shape": [len(MOTORS)], "names": list(MOTORS)},
        }

    def has_task(self, task: str) -> bool:
        return task in TASKS

    def task_of(self, instruction: str) -> str | None:
        return next((t for t, text in INSTRUCTIONS.items() if text == instruction), None)

    def expert(self, task: str) -> Expert:
        from vla_distill.sim.aloha.expert import AlohaExpert

        return AlohaExpert(task)

    def expert_source(self) -> str:
        return "vla-distill's ALOHA scripted bimanual expert (privileged state, IK on the scene's MJCF)"

    def resolve_tasks(self, spec: str) -> list[str]:
        tasks = [t.strip() for t in spec.split(",") if t.strip()]
        tasks = list(TASKS) if tasks == ["aloha"] else tasks
        bad = [t for t in tasks if t not in TASKS]
        if bad or not tasks:
            raise ConfigError(f"unknown ALOHA task {bad[0] if bad else spec!r}; tasks: {', '.join(TASKS)} (or aloha)",
                              field="tasks")
        return list(dict.fromkeys(tasks))

    def group_of(self, task: str) -> str:
        return "aloha"

    def instruction(self, task: str) -> str | None:
        return INSTRUCTIONS.get(task)

    def eval_seeds(self, task: str, episodes: int, seed: int) -> list[int]:
        return [EVAL_SEED_BASE + seed * 100_003 + TASKS.index(task) * 10_007 + i for i in range(episodes)]

    def make_env(self, task: str, image_keys: tuple[str, ...], image_size: tuple[int, int]) -> Env:
        from vla_distill.sim.aloha.env import AlohaEnv

        return AlohaEnv(task, image_keys, tuple(image_size))

    def unavailable(self) -> str | None:
        return unavailable()

    def robot_description(self) -> tuple[str, str, str]:
        """The scene's MJCF (gym-aloha's), each arm's fingertip site, radians."""
        from vla_distill.sim.aloha.env import SCENES, assets_dir

        return str(assets_dir() / SCENES["transfer_cube"]), "left=cali_left_site1,right=cali_right_site1", "rad"

    def ground_truth_phases(self, task: str, env_state: np.ndarray | None, kin: Kinematics) -> np.ndarray | None:
        return None  # the bimanual expert's stages are per arm; annotate's phases come from the generic path
