"""LIBERO's description for the simulator registry (sim.base.Simulator)."""

from __future__ import annotations

import numpy as np

from vla_distill.sim.base import Env, Expert
from vla_distill.sim.kinematics import Kinematics
from vla_distill.sim.libero.env import CAMERAS, ENV_STATE_NAMES, FPS, LEGACY_ENV_STATE, RESOLUTION, unavailable
from vla_distill.sim.libero.tasks import EVAL_SEED_BASE, SUITES, resolve_tasks
from vla_distill.types import ACTION, OBS_CONTACT, OBS_ENV_STATE, OBS_STATE, PHASES_4, camera_key


class Libero:
    """Evaluation episode i starts from the task's fixed initial state i % 50 (other eval streams, and collection,
    draw new placements)."""

    name = "libero"
    fps = FPS
    robot_type = "panda"
    cameras = tuple(CAMERAS)  # lerobot/libero's names: image (agent view), image2 (wrist)
    default_cameras = cameras
    default_camera = camera_key("image")
    default_image_size = RESOLUTION
    step_limit = "the suite's (control steps: spatial 220 as openpi, 280 as lerobot; object 280; goal 300)"
    held_out_seeds = True  # collection's seeds draw placements; evaluation's are the fixed initial states
    noise_dims = (0, 1, 2)  # the end effector's xyz; rotation and the gripper stay the expert's
    rotation_dims = (3, 4, 5)  # the OSC's axis-angle delta
    preload = ("vla_distill.sim.libero.env",)

    def features(self) -> dict[str, dict]:
        return {
            OBS_STATE: {"dtype": "float32", "shape": [8], "names": ["eef_x", "eef_y", "eef_z", "eef_ax", "eef_ay",
                                                                   "eef_az", "gripper_left", "gripper_right"]},
            OBS_ENV_STATE: {"dtype": "float32", "shape": [len(ENV_STATE_NAMES)], "names": list(ENV_STATE_NAMES)},
            OBS_CONTACT: {"dtype": "float32", "shape": [1], "names": ["gripper_target_contact"]},
            ACTION: {"dtype": "float32", "shape": [7], "names": ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]},
        }

    def has_task(self, task: str) -> bool:
        suite, _, idx = task.partition("/")
        return suite in SUITES and idx.isdigit()

    def task_of(self, instruction: str) -> str | None:
        return None  # the instructions live in the libero package's benchmark, read only when an env is built

    def expert(self, task: str) -> Expert:
        from vla_distill.sim.libero.expert import LiberoExpert

        return LiberoExpert(task)

    def expert_source(self) -> str:
        return "vla-distill's LIBERO scripted experts (privileged state, BDDL goals)"

    def resolve_tasks(self, spec: str) -> list[str]:
        return resolve_tasks(spec)

    def group_of(self, task: str) -> str:
        return task.partition("/")[0]

    def instruction(self, task: str) -> str | None:
        if unavailable():
            return None
        from vla_distill.sim.libero.env import suite_of

        suite_name, _, idx = task.partition("/")
        return suite_of(suite_name).get_task(int(idx)).language

    def eval_seeds(self, task: str, episodes: int, seed: int) -> list[int]:
        """Stream 0: the benchmark's fixed initial states, what every LIBERO rate is measured on. Streams >= 1 (a
        validation set, e.g. for choosing checkpoints): new placements, drawn as a collection draws them, from seeds
        just below the base, which no collection with --seed below 2,000 reaches (collect.config.attempt_seed); up to
        1,000 episodes a stream. (Before, stream 1 started from the same fixed initial states as stream 0.)"""
        if seed == 0:
            return [EVAL_SEED_BASE + i for i in range(episodes)]
        return [EVAL_SEED_BASE - 1 - seed * 1_000 - i for i in range(episodes)]

    def make_env(self, task: str, image_keys: tuple[str, ...], image_size: tuple[int, int]) -> Env:
        from vla_distill.sim.libero.env import LiberoEnv

        return LiberoEnv(task, image_keys, image_size[0])

    def unavailable(self) -> str | None:
        return unavailable()

    def robot_description(self) -> None:
        return None  # the state has the hand's position

    def ground_truth_phases(self, task: str, env_state: np.ndarray | None, kin: Kinematics) -> np.ndarray | None:
        """The scripted expert's own stage on each stored frame (PHASES_4 indices); None where it has no expert."""
        from vla_distill.errors import ConfigError
        from vla_distill.sim.libero.expert import LiberoExpert

        if env_state is None or np.shape(env_state)[1:] not in ((len(ENV_STATE_NAMES),), (LEGACY_ENV_STATE,)):
            return None
        try:
            expert = LiberoExpert(task)
        except ConfigError:
            return None
        phase = np.array([PHASES_4.index(expert.decide(s)[0]) for s in env_state], np.int64)
        # once it has let go over the destination, the rest is release (the object settles, the hand backs off)
        release = PHASES_4.index("release")
        return np.where(np.maximum.accumulate(phase == release), release, phase)
