"""The Teacher protocol: anything that, given a dataset frame, returns the action it would take.

Shapes at this boundary:
  EpisodeFrames.state       (T, S) float32       observation.state of one episode, in frame order
  EpisodeFrames.env_state   (T, E) float32|None  observation.environment_state (privileged; scripted teacher only)
  EpisodeFrames.images      {camera key: (T, H, W, 3) uint8}, decoded only for teachers that look at pixels
  Teacher.label(...)        (T', K, D) float32   an action chunk of K steps per requested frame
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from vla_distill.types import OBS_ENV_STATE, OBS_STATE, TASK


@dataclass
class EpisodeFrames:
    episode_index: int
    task: str  # natural-language instruction
    task_name: str | None  # simulator task id when the dataset records one (MetaWorld "task_name")
    frame_index: np.ndarray  # (T,)
    state: np.ndarray
    env_state: np.ndarray | None = None
    images: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frame_index)

    def observation(self, t: int) -> dict:
        """Frame t as a flat observation dict in our key names (images HWC uint8, vectors float32, task str)."""
        obs = {OBS_STATE: self.state[t], TASK: self.task}
        if self.env_state is not None:
            obs[OBS_ENV_STATE] = self.env_state[t]
        obs.update({k: v[t] for k, v in self.images.items()})
        return obs


OnResult = Callable[[int, np.ndarray], None]  # (position in the requested rows, (K, D) action) as each one arrives


class Teacher(Protocol):
    spec: str  # the KIND string it was built from
    needs_images: bool
    horizon: int  # K; 1 for single-step teachers
    action_dim: int  # D

    def label(self, episode: EpisodeFrames, rows: np.ndarray, on_result: OnResult | None = None) -> np.ndarray:
        """Actions (len(rows), K, D) for the given positions within the episode."""
        ...

    def provenance(self) -> dict: ...

    def close(self) -> None: ...
