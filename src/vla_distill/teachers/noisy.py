"""`noisy[...]:INNER`: the imperfections of real VLA teachers, seeded, on top of any teacher.

Real 7B teachers toggle the gripper at high frequency, jitter, and now and then repeat a stale action (a late
server reply). Corruption depends only on (seed, episode index, frame) and the clean actions, so a resumed run
and a fresh run produce identical labels, and the clean answers can be cached before corruption.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from vla_distill.teachers.base import EpisodeFrames, OnResult, Teacher


@dataclass(frozen=True)
class NoiseConfig:
    std: float = 0.1  # Gaussian noise on every action dimension, before clipping to [-1, 1]
    toggle: float = 0.02  # per-frame probability that a burst of gripper toggling starts
    burst: int = 6  # frames per toggling burst; the gripper command alternates sign every frame inside it
    stale: float = 0.05  # per-frame probability of repeating the previous emitted action
    seed: int = 0
    gripper_dim: int = -1

    def __post_init__(self):
        for name in ("std", "toggle", "stale"):
            if getattr(self, name) < 0:
                raise ValueError(f"noisy teacher: {name} must be >= 0")
        if not 0 <= self.toggle <= 1 or not 0 <= self.stale <= 1:
            raise ValueError("noisy teacher: toggle and stale are probabilities in [0, 1]")
        if self.burst < 1:
            raise ValueError("noisy teacher: burst must be >= 1")


def corrupt(actions: np.ndarray, episode_index: int, cfg: NoiseConfig) -> np.ndarray:
    """actions: (T, H, D) clean actions of one whole episode in frame order -> corrupted copy."""
    rng = np.random.default_rng([cfg.seed, episode_index])
    t_len = len(actions)
    noise = rng.normal(0.0, cfg.std, actions.shape).astype(np.float32)
    starts = rng.random(t_len) < cfg.toggle
    stale = rng.random(t_len) < cfg.stale
    out = np.clip(actions + noise, -1.0, 1.0)
    toggling = np.zeros(t_len, bool)
    for s in np.flatnonzero(starts):
        toggling[s : s + cfg.burst] = True
    sign = np.where(np.arange(t_len) % 2 == 0, 1.0, -1.0).astype(np.float32)
    out[toggling, :, cfg.gripper_dim] = sign[toggling, None]
    for t in np.flatnonzero(stale):
        if t > 0:
            out[t] = out[t - 1]
    return out


class NoisyTeacher:
    needs_images = False

    def __init__(self, inner: Teacher, cfg: NoiseConfig, spec: str):
        self.inner, self.cfg, self.spec = inner, cfg, spec
        self.needs_images = inner.needs_images
        self.horizon, self.action_dim = inner.horizon, inner.action_dim

    def label(self, episode: EpisodeFrames, rows: np.ndarray, on_result: OnResult | None = None) -> np.ndarray:
        """rows must be the whole episode in order: stale actions and bursts are sequential."""
        if not np.array_equal(rows, np.arange(len(episode))):
            raise ValueError("the noisy teacher labels whole episodes")
        return corrupt(self.inner.label(episode, rows, on_result), episode.episode_index, self.cfg)

    def provenance(self) -> dict:
        return {"kind": "noisy", "noise": asdict(self.cfg), "inner": self.inner.provenance()}

    def close(self) -> None:
        self.inner.close()
