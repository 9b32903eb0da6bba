"""`checkpoint:PATH`: any policy checkpoint this toolkit trains (a large student can teach a small one)."""

from __future__ import annotations

import numpy as np
import torch

from vla_distill.models.base import frames_to_batch
from vla_distill.models.checkpoint import load_pretrained, resolve_pretrained_dir
from vla_distill.teachers.base import EpisodeFrames, OnResult
from vla_distill.types import OBS_ENV_STATE, OBS_STATE, is_camera

BATCH = 256


class CheckpointTeacher:
    def __init__(self, spec: str, path: str, device: str = "auto"):
        """device: "auto" = the GPU this process was given (a Ray GPU worker), else the CPU."""
        self.spec, self.path = spec, str(resolve_pretrained_dir(path))
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.policy = load_pretrained(path, self.device)
        self.input_keys = self.policy.input_keys
        self.needs_images = any(is_camera(k) for k in self.input_keys)
        self.horizon, self.action_dim = self.policy.horizon, self.policy.action_dim

    def _batch(self, episode: EpisodeFrames, rows: np.ndarray) -> dict:
        columns = {OBS_STATE: episode.state, OBS_ENV_STATE: episode.env_state, **episode.images}
        return frames_to_batch({k: columns[k][rows] for k in self.input_keys}, self.input_keys,
                               [episode.task] * len(rows),
                               self.device)

    @torch.no_grad()
    def label(self, episode: EpisodeFrames, rows: np.ndarray, on_result: OnResult | None = None) -> np.ndarray:
        out = np.empty((len(rows), self.horizon, self.action_dim), np.float32)
        for s in range(0, len(rows), BATCH):
            chunk = self.policy.predict_action_chunk(self._batch(episode, rows[s : s + BATCH]))
            out[s : s + BATCH] = chunk.float().cpu().numpy()
            if on_result is not None:
                for i in range(s, min(s + BATCH, len(rows))):
                    on_result(i, out[i])
        return out

    def provenance(self) -> dict:
        return {"kind": "checkpoint", "path": self.path, "device": self.device, "type": self.policy.name,
                "policy_provenance": self.policy.provenance}

    def close(self) -> None:
        pass
