"""The two protocols every simulator implements: an environment (one task, stepped by the evaluator, the collector
and the control loop's simulated robot) and the simulator's description (its tasks, seeds and conventions).

Shapes at this boundary (one environment, batch 1):
  observation  {camera key: (H, W, 3) uint8, "observation.state": (S,) float32,
                "observation.environment_state": (S_env,) float32 where the simulator exposes it}
  action       (D,) float32 within action_bounds()
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from vla_distill.errors import VlaDistillError
from vla_distill.sim.kinematics import Kinematics


class SimulatorUnavailable(VlaDistillError):
    """The simulator, or its assets, are not installed here."""


class Env(Protocol):
    instruction: str  # the task's natural-language instruction
    max_steps: int  # the simulator's step limit for this task

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
    default_camera: str  # the camera a video records when the policy looks at none
    default_image_size: int  # camera side for actors that bring no size of their own (teachers)
    step_limit: str  # how an episode's length is bounded, as eval_info states it
    held_out_seeds: bool  # evaluation seeds are drawn apart from collection's, so a dataset's seeds can be checked

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

    def ground_truth_phases(self, task: str, env_state: np.ndarray | None, kin: Kinematics) -> np.ndarray | None:
        """(T,) PHASES_4 indices of what the task's expert was doing, where the simulator can tell; else None."""
        ...
