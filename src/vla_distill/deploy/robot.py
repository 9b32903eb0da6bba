"""What the real-time loop drives: lerobot's Robot names (connect, get_observation, send_action, disconnect), plus
the two things a policy loop needs from the hardware side, its action bounds and a safe hold action.

A real robot implements `Robot` (a driver or a lerobot robot wrapped in ~20 lines); SimRobot makes a simulated task
one, which is what the demo and the tests drive.

Shapes: get_observation() -> {camera key: (H, W, 3) uint8, state key: (S,) float32}; send_action((D,) float32).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from vla_distill.sim.registry import get_simulator


@runtime_checkable
class Robot(Protocol):
    action_low: np.ndarray  # (D,) the hardware's limits: actions are clipped into them
    action_high: np.ndarray

    def connect(self) -> None: ...

    def get_observation(self) -> dict[str, np.ndarray]: ...

    def send_action(self, action: np.ndarray) -> None: ...

    def hold_action(self) -> np.ndarray:
        """(D,) an action that keeps the robot where it is (sent instead of a bad or late one)."""
        ...

    def disconnect(self) -> None: ...


class SimRobot:
    """A simulated task (any simulator of sim.registry) as a Robot. send_action steps the
    simulation, so its time includes physics and rendering; `success` and `steps` say how the episode goes."""

    def __init__(self, env: str, task: str, image_keys: tuple[str, ...], image_size: tuple[int, int] | None, seed: int):
        self.env_name, self.task, self.seed = env, task, seed
        self.image_keys, self.image_size = image_keys, image_size
        self.env = None
        self.steps, self.first_success = 0, None
        self.instruction = ""

    def connect(self) -> None:
        self.env = get_simulator(self.env_name).make_env(self.task, self.image_keys, self.image_size or (0, 0))
        self.instruction = self.env.instruction
        self._obs = self.env.reset(self.seed)
        self.action_low, self.action_high = self.env.action_bounds()
        self._last = np.zeros_like(self.action_low)

    def get_observation(self) -> dict[str, np.ndarray]:
        return self._obs

    def send_action(self, action: np.ndarray) -> None:
        self._obs, _, success = self.env.step(np.asarray(action, np.float32))
        self._last = np.asarray(action, np.float32)
        if success and self.first_success is None:
            self.first_success = self.steps
        self.steps += 1

    @property
    def success(self) -> bool:
        return self.first_success is not None

    def hold_action(self) -> np.ndarray:
        """No motion, gripper command unchanged (a held object stays held): the last dim is the gripper in both
        MetaWorld (4-d) and LIBERO (7-d) actions."""
        hold = np.zeros_like(self._last)
        hold[-1] = self._last[-1]
        return hold

    def disconnect(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None
