"""The policy interface every model in vla-distill implements (lerobot's names), and the one conversion from
observations to a policy batch.

Batches are dicts of tensors with a leading batch dim B (shape letters: types.py):
  observation.state           (B, S) float32, raw units (the policy normalizes inside)
  observation.images.<cam>    (B, 3, H, W) float32 in [0, 1]
  task                        list[str] of length B
  action                      (B, K, D) float32, raw units   (training only)
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import nn

from vla_distill.models.chunking import ChunkScheduler
from vla_distill.types import TASK, images_to_float

REGISTRY: dict[str, type["Policy"]] = {}


def register(cls: type["Policy"]) -> type["Policy"]:
    REGISTRY[cls.name] = cls
    return cls


class Policy(nn.Module):
    name: ClassVar[str]
    config_class: ClassVar[type]

    def __init__(self, config):
        super().__init__()
        self.config = config
        # select_action's queue: (K, B, D) chunks, one (B, D) action per call
        self._chunks = ChunkScheduler("queue", self.n_action_steps)

    @property
    def horizon(self) -> int:
        return self.config.horizon

    @property
    def n_action_steps(self) -> int:
        """Actions of each chunk executed before replanning, as trained to be deployed (0 = all K)."""
        return getattr(self.config, "n_action_steps", 0)

    @property
    def action_dim(self) -> int:
        return self.config.action_dim

    @property
    def input_keys(self) -> tuple[str, ...]:
        """Observation keys the policy reads (cameras, state vectors); `task` is always read."""
        raise NotImplementedError

    @property
    def observation_spec(self) -> dict[str, dict]:
        """What one live observation must hold, per input key: {"shape": [...], "dtype": "uint8" | "float32"}
        (cameras (H, W, 3) uint8, vectors (S,) float32), plus "task" {"shape": [], "dtype": "str"}: the
        self-description a server sends and a robot loop checks against."""
        raise NotImplementedError

    def reset(self, task: str | None = None) -> None:
        """Clears the action queue at an episode start (built anew: the config's n_action_steps may have been set
        since); policies that read the instruction prepare it here."""
        self._chunks = ChunkScheduler("queue", self.n_action_steps)

    def predict_action_chunk(self, batch: dict) -> torch.Tensor:
        """(B, K, D) actions in raw units."""
        raise NotImplementedError

    def action_scale(self) -> torch.Tensor:
        """(D,) raw action units per normalized unit: tolerances on actions (export parity) are set in the normalized
        space, so joints in lerobot's -100..100 units get the same one as a gripper in metres."""
        return torch.ones(self.action_dim)

    @torch.no_grad()
    def select_action(self, batch: dict) -> torch.Tensor:
        """(B, D): the next action, replanning when the last chunk is used up."""
        return self._chunks.next(lambda: self.predict_action_chunk(batch).transpose(0, 1))[0]

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError


def frames_to_batch(frames: dict, keys: tuple[str, ...], tasks: list[str], device: str | torch.device = "cpu") -> dict:
    """Frames with a leading batch dim B (cameras (B, H, W, 3) uint8, vectors (B, S)) -> the policy's batch:
    cameras (B, 3, H, W) float in [0, 1], vectors float32, task list[str]."""
    batch: dict = {TASK: list(tasks)}
    for key in keys:
        value = np.asarray(frames[key])
        if value.dtype == np.uint8 and value.ndim == 4:
            batch[key] = images_to_float(value, device)
        else:
            batch[key] = torch.from_numpy(value.astype(np.float32, copy=False)).to(device)
    return batch


def observation_to_batch(obs: dict, keys: tuple[str, ...], task: str, device: str | torch.device = "cpu") -> dict:
    """One live observation (cameras (H, W, 3) uint8, vectors (S,)) -> a batch of one in the policy's layout."""
    return frames_to_batch({k: np.asarray(obs[k])[None] for k in keys}, keys, [task], device)


def policy_cameras(policy: Policy) -> tuple[tuple[str, ...], tuple[int, int] | None]:
    """The cameras an environment must render for a policy, and their (H, W): its config's image_keys, else the
    uint8 images of its observation_spec (a VITA policy reads its expert's)."""
    spec = policy.observation_spec
    keys = tuple(getattr(policy.config, "image_keys", ())) or tuple(k for k, v in spec.items() if v["dtype"] == "uint8")
    return keys, (tuple(spec[keys[0]]["shape"][:2]) if keys else None)
