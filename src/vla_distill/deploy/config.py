"""The real-time control loop's configuration (deploy/control_loop.py runs it; `vla-distill run` sets it)."""

from __future__ import annotations

from dataclasses import dataclass

from vla_distill.models.chunking import AHEAD, CHUNK_MODES

LOOP_CHUNK_MODES = (*CHUNK_MODES, AHEAD)


@dataclass(frozen=True)
class LoopConfig:
    hz: float = 12.5
    max_steps: int = 500
    chunk: str = "queue"  # queue: execute n_action_steps of a chunk, then replan | ensemble: ACT temporal ensembling
                          # | ahead: the next chunk computed while the current one executes, the seam blended
    n_action_steps: int = 0  # queue: actions used per chunk (0 = the policy's own, else all K)
    ensemble_coeff: float = 0.01  # ACT's m: weight exp(-m * i) for the i-th oldest prediction of a tick
    overlap: int = 2  # ahead: steps the queued and the new chunk should overlap (blended; the margin for a slow call)
    max_latency_ms: float = 0.0  # an action later than this after its tick started is dropped (0 = one period)
    spin_ms: float = 2.0  # busy-wait this last stretch before each deadline
    steps_after_success: int = 10  # simulated robots: stop this many ticks after the first success

    def __post_init__(self):
        if not self.hz > 0:
            raise ValueError(f"hz: must be > 0 (got {self.hz})")
        if self.chunk not in LOOP_CHUNK_MODES:
            raise ValueError(f"chunk: {self.chunk!r} is not one of {list(LOOP_CHUNK_MODES)}")
        if self.max_steps < 1 or self.n_action_steps < 0 or self.overlap < 1:
            raise ValueError("max_steps and overlap must be >= 1 and n_action_steps >= 0")

    @property
    def period(self) -> float:
        return 1.0 / self.hz

    @property
    def max_latency(self) -> float:
        return self.max_latency_ms / 1e3 if self.max_latency_ms > 0 else self.period
