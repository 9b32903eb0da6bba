"""The one chunk scheduler: which action each control step executes, from the (K, ...) chunks a policy predicts.

Used by every consumer of action chunks: `Policy.select_action` (lerobot's queue) and the evaluator's actors step
it consecutively through `next`; the real-time control loop passes the pacer's tick indices, where overrun ticks are
skipped.

  queue     one chunk at a time; its first n_action_steps actions run on consecutive steps, then the policy is asked
            again (lerobot's n_action_steps; openpi's replan_steps)
  ensemble  the policy is asked every step; every live prediction for the step is averaged with ACT's weights
            exp(-m * i), the oldest weighing most (numpy chunks)
  ahead     the real-time loop's inference-ahead control (deploy.control_loop): the next chunk is computed while
            the current one executes and merged when it arrives (`merge`): the steps that passed during the inference
            are dropped, and where the two chunks overlap the executed action moves from the old chunk's to the new
            one's with linearly falling weights (real-time chunking, Black et al. 2025, for regression heads)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

CHUNK_MODES = ("queue", "ensemble")  # the modes of consumers that step consecutively (select_action, the evaluator)
AHEAD = "ahead"


def check_n_action_steps(n: int, horizon: int) -> None:
    """A queue's n_action_steps must lie in 0 (the whole chunk) .. horizon; raises ValueError naming the field."""
    if not 0 <= n <= horizon:
        raise ValueError(f"n_action_steps: must be 0 (all) to the horizon ({horizon}), got {n}")


class ChunkScheduler:
    def __init__(self, mode: str = "queue", n_action_steps: int = 0, coeff: float = 0.01):
        if mode not in (*CHUNK_MODES, AHEAD):
            raise ValueError(f"chunk: {mode!r} is not one of {[*CHUNK_MODES, AHEAD]}")
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

    def needs_inference(self, step: int, lead: int = 0) -> bool:
        """Whether a chunk must be asked for at `step`; ahead: when `lead` or fewer queued actions are left (the
        steps an inference is expected to take, so the next chunk arrives before the queue runs dry)."""
        if self.mode == AHEAD:
            return self.remaining(step) <= lead
        return self.mode == "ensemble" or self._queued(step) is None

    def remaining(self, step: int) -> int:
        """Queued actions due at `step` or later (queue and ahead)."""
        if not self.chunks:
            return 0
        t0, chunk = self.chunks[0]
        return max(0, t0 + len(chunk) - max(step, t0))

    def merge(self, obs_step: int, chunk: np.ndarray, step: int) -> None:
        """ahead: a (K, D) chunk predicted from the observation of `obs_step` arrives at `step`. Its actions due before
        `step` are dropped; where the queued chunk still has actions, the two are blended, the queued one's weight
        falling linearly from 1 towards 0 over the overlap; past it the new chunk runs alone."""
        new = np.asarray(chunk, np.float32)[max(0, step - obs_step):]
        if len(new) == 0:
            return
        start = max(step, obs_step)
        if self.chunks:
            t0, old = self.chunks[0]
            overlap = np.asarray(old[start - t0 :], np.float32)[: len(new)]
            if len(overlap):
                w = 1.0 - np.arange(1, len(overlap) + 1, dtype=np.float32) / (len(overlap) + 1)  # (L,), 1 -> 0
                new = new.copy()
                new[: len(overlap)] = w[:, None] * overlap + (1 - w[:, None]) * new[: len(overlap)]
        self.chunks = [(start, new[: self.n] if self.n else new)]

    def add(self, step: int, chunk) -> None:
        """A chunk predicted from the observation of `step`: its i-th action is due at step + i. n_action_steps = 0
        executes the whole chunk."""
        if self.mode in ("queue", AHEAD):
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
        if self.mode in ("queue", AHEAD):
            if self.chunks and step - last_step > 1:
                t0, chunk = self.chunks[0]
                self.dropped += max(0, min(step, t0 + len(chunk)) - max(last_step + 1, t0))
            return self._queued(step)
        live = [c[step - t] for t, c in self.chunks if 0 <= step - t < len(c)]
        if not live:
            return None
        w = np.exp(-self.coeff * np.arange(len(live)))  # live is oldest first
        return (np.stack(live) * w[:, None]).sum(0) / w.sum()
