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


class NoiseStream:
    """The corruption of one episode, one frame at a time (the closed-loop evaluator applies it online)."""

    def __init__(self, cfg: NoiseConfig, episode_index: int):
        self.cfg = cfg
        self.rng = np.random.default_rng([cfg.seed, episode_index])
        self.t = 0
        self.burst_left = 0
        self.prev: np.ndarray | None = None

    def step(self, clean: np.ndarray) -> np.ndarray:
        """clean: (K, D) actions for the next frame -> the emitted (K, D)."""
        cfg, rng = self.cfg, self.rng
        out = np.clip(clean + rng.normal(0.0, cfg.std, clean.shape), -1.0, 1.0).astype(np.float32)
        if rng.random() < cfg.toggle:
            self.burst_left = cfg.burst
        if self.burst_left:  # the gripper command alternates sign every frame inside a burst
            out[:, cfg.gripper_dim] = 1.0 if self.t % 2 == 0 else -1.0
            self.burst_left -= 1
        if rng.random() < cfg.stale and self.prev is not None:
            out = self.prev.copy()
        self.prev, self.t = out, self.t + 1
        return out


def corrupt(actions: np.ndarray, episode_index: int, cfg: NoiseConfig) -> np.ndarray:
    """actions: (T, K, D) clean actions of one whole episode in frame order -> corrupted copy."""
    stream = NoiseStream(cfg, episode_index)
    return np.stack([stream.step(a) for a in actions]) if len(actions) else actions.copy()


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
