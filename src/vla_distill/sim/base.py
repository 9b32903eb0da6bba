"""The protocols every simulator implements: an environment (one task, stepped by the evaluator, the collector and
the control loop's simulated robot), its scripted expert, and the simulator's description (its tasks, seeds,
cameras, recorded features and conventions). Each simulator lives in its own room (sim/metaworld/, sim/libero/)
and is named once, in sim/registry.py: collect, annotate and eval reach it only through these protocols.

Shapes at this boundary (one environment, batch 1):
  observation  {camera key: (H, W, 3) uint8, "observation.state": (S,) float32,
                "observation.environment_state": (S_env,) float32 where the simulator exposes it (privileged: what
                its expert reads), "observation.contact": (1,) float32 where it can tell}
  action       (D,) float32 within action_bounds()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from vla_distill.errors import ConfigError, VlaDistillError
from vla_distill.sim.kinematics import Kinematics
from vla_distill.types import camera_key


class SimulatorUnavailable(VlaDistillError):
    """The simulator, or its assets, are not installed here."""


@dataclass(frozen=True)
class CameraConfig:
    """The cameras an episode records: the simulator's camera names (() = its default ones) and one size."""

    names: tuple[str, ...] = ()
    height: int = 128
    width: int = 128

    def __post_init__(self):
        if self.height < 16 or self.width < 16:
            raise ConfigError("image size must be at least 16 px", field="image_size")

    @property
    def keys(self) -> list[str]:
        return [camera_key(n) for n in self.names]


class Expert(Protocol):
    """A privileged-state scripted expert for one task: it answers from any state (so DART noise, DAgger relabelling
    and the closed-loop teacher all work), reading only observation.environment_state. It may carry `noise_scale`
    (float, 1 when absent): the fraction of collect's DART noise its skill tolerates (collect.rollout scales by it;
    LIBERO's drawer handle and knob: 0.5). One that can answer a chunk has `plan(env_state, k) -> (k, D)`: its own
    next k commands from that state (annotate --teacher scripted --teacher-opt horizon=K)."""

    def __call__(self, env_state: np.ndarray) -> np.ndarray:
        """(S_env,) -> (D,) float32 within the action bounds; a DatasetError naming the field on a wrong layout."""
        ...


class Env(Protocol):
    instruction: str  # the task's natural-language instruction
    max_steps: int  # the simulator's step limit for this task
    env_state: np.ndarray  # (S_env,) the privileged state now, at full precision: what the expert reads (the
    #                        observation's observation.environment_state is it as float32)

    def reset(self, seed: int) -> dict[str, np.ndarray]:
        """Starts an episode whose initial state (placements, LIBERO's fixed state) the seed picks."""
        ...

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool]:
        """(observation after the action, reward, success)."""
        ...

    def action_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(D,) low and high."""
        ...

    def close(self) -> None: ...


class Simulator(Protocol):
    name: str
    fps: float  # control steps per second
    robot_type: str  # info.json's robot_type
    cameras: tuple[str, ...]  # the camera names it renders (camera_key(name) in observations)
    default_cameras: tuple[str, ...]  # what `collect` records when told none
    default_camera: str  # the camera key a video records when the policy looks at none
    default_image_size: int  # camera side for actors that bring no size of their own (teachers)
    step_limit: str  # how an episode's length is bounded, as eval_info states it
    held_out_seeds: bool  # evaluation seeds are drawn apart from collection's, so a dataset's seeds can be checked
    noise_dims: tuple[int, ...]  # the action dimensions DART noise perturbs (the arm's, never the gripper)
    rotation_dims: tuple[int, ...]  # the end effector's rotation commands (collect --rotation-noise); () if none
    preload: tuple[str, ...]  # modules a pool of simulator workers imports once (the environment's heavy imports)

    def features(self) -> dict[str, dict]:
        """The non-camera features its episodes record, in info.json's order: observation.state, the privileged
        observation.environment_state and observation.contact where it has them, and action (dtype, shape, names)."""
        ...

    def has_task(self, task: str) -> bool:
        """Whether `task` is one of its task names."""
        ...

    def task_of(self, instruction: str) -> str | None:
        """The task whose instruction this is, where it can be told without building an environment."""
        ...

    def expert(self, task: str) -> Expert:
        """The task's scripted expert; a ConfigError naming the task where it has none."""
        ...

    def expert_source(self) -> str:
        """Where its experts come from, for provenance ("metaworld 3.1.1 scripted experts")."""
        ...

    def resolve_tasks(self, spec: str) -> list[str]:
        """A task list or group name -> task names, in order, without repeats; a one-line error naming `tasks`."""
        ...

    def group_of(self, task: str) -> str:
        """The group a task is reported under (MetaWorld's difficulty, LIBERO's suite)."""
        ...

    def instruction(self, task: str) -> str | None:
        """The language instruction its environments give the policy; None where it cannot be known without them."""
        ...

    def eval_seeds(self, task: str, episodes: int, seed: int) -> list[int]:
        """The held-out seeds of a task's evaluation episodes; `seed` picks the stream."""
        ...

    def make_env(self, task: str, image_keys: tuple[str, ...], image_size: tuple[int, int]) -> Env:
        """An environment whose observations carry exactly `image_keys` (plus state) at `image_size`."""
        ...

    def unavailable(self) -> str | None:
        """None when the simulator can run here, else why not (with how to install it)."""
        ...

    def robot_description(self) -> tuple[str, str, str] | None:
        """(MJCF or URDF path, end-effector frame(s) as --ee-frame takes them, joint units) where its robot's state
        is joints only, so that annotate finds the hands by forward kinematics; None where the state has them."""
        ...

    def ground_truth_phases(self, task: str, env_state: np.ndarray | None, kin: Kinematics) -> np.ndarray | None:
        """(T,) PHASES_4 indices of what the task's expert was doing, where the simulator can tell; else None."""
        ...


class LazyObservation(dict):
    """An observation whose camera images are rendered when first read, and only while the environment is still in
    the state it was taken in (reading one after a step is an error, never a later frame): rendering is most of a
    step's cost on a CPU, and a policy that acts in K-step chunks reads one frame in K. `env` has a `tick` that
    counts its steps."""

    def __init__(self, values: dict, render, keys: tuple[str, ...], env, tick: int):
        super().__init__(values)
        self._render, self._cameras, self._env, self._tick = render, keys, env, tick

    def __missing__(self, key: str) -> np.ndarray:
        if key not in self._cameras:
            raise KeyError(key)
        if self._env.tick != self._tick:
            raise RuntimeError(f"{key} read after the environment moved on: read images before stepping")
        self[key] = image = self._render(key)
        return image

    def __contains__(self, key) -> bool:
        return super().__contains__(key) or key in self._cameras

    def keys(self):
        return list(dict.keys(self)) + [k for k in self._cameras if not dict.__contains__(self, k)]

    def __iter__(self):
        return iter(self.keys())

    def items(self):
        return [(k, self[k]) for k in self.keys()]

    def values(self):
        return [self[k] for k in self.keys()]

    def __len__(self) -> int:
        return len(self.keys())
