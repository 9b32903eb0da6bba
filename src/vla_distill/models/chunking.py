"""The one chunk scheduler: which action each control step executes, from the (K, ...) chunks a policy predicts.

Used by every consumer of action chunks: `Policy.select_action` (lerobot's queue) and the evaluator's actors step
it consecutively through `next`; the real-time control loop passes the pacer's tick indices, where overrun ticks are
skipped.

  queue     one chunk at a time; its first n_action_steps actions run on consecutive steps, then the policy is asked
            again (lerobot's n_action_steps; openpi's replan_steps)
  ensemble  the policy is asked every step; every live prediction for the step is averaged with ACT's weights
            exp(-m * i), the oldest weighing most (numpy chunks)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

CHUNK_MODES = ("queue", "ensemble")


class ChunkScheduler:
    def __init__(self, mode: str = "queue", n_action_steps: int = 0, coeff: float = 0.01):
        if mode not in CHUNK_MODES:
            raise ValueError(f"chunk: {mode!r} is not one of {list(CHUNK_MODES)}")
        self.mode, self.n, self.coeff = mode, n_action_steps, coeff
        self.chunks: list[tuple[int, object]] = []  # (step of its observation, (K, ...) chunk), oldest first
        self.dropped = 0  # queued actions whose steps were skipped
        self.step = 0  # the next step `next` serves

    def clear(self) -> None:
        self.chunks = []
        self.step = 0

    def next(self, predict: Callable[[], object]) -> tuple[object, bool]:
        """Consecutive steps: this step's action, and whether `predict()` was called for a new chunk to cover it."""
        step, self.step = self.step, self.step + 1
        inferred = self.needs_inference(step)
        if inferred:
            self.add(step, predict())
        return self.action(step, step - 1), inferred

    def needs_inference(self, step: int) -> bool:
        return self.mode == "ensemble" or self._queued(step) is None

    def add(self, step: int, chunk) -> None:
        """A chunk predicted from the observation of `step`: its i-th action is due at step + i. n_action_steps = 0
        executes the whole chunk."""
        if self.mode == "queue":
            self.chunks = [(step, chunk[: self.n] if self.n else chunk)]
        else:
            self.chunks = [(t, c) for t, c in self.chunks if step - t < len(c)] + [(step, chunk)]

    def _queued(self, step: int):
        if not self.chunks:
            return None
        t0, chunk = self.chunks[0]
        return chunk[step - t0] if 0 <= step - t0 < len(chunk) else None

    def action(self, step: int, last_step: int):
        """The action due at `step` (None when no chunk covers it); `last_step` is the step executed before, so the
        queued actions of the steps in between are counted as dropped."""
        if self.mode == "queue":
            if self.chunks and step - last_step > 1:
                t0, chunk = self.chunks[0]
                self.dropped += max(0, min(step, t0 + len(chunk)) - max(last_step + 1, t0))
            return self._queued(step)
        live = [c[step - t] for t, c in self.chunks if 0 <= step - t < len(c)]
        if not live:
            return None
        w = np.exp(-self.coeff * np.arange(len(live)))  # live is oldest first
        return (np.stack(live) * w[:, None]).sum(0) / w.sum()
