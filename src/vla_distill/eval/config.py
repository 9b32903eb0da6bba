"""`vla-distill eval`'s configuration (eval/evaluate.py runs it): which policy, which tasks of which simulator,
how many episodes on which held-out seed stream, and how the policy's chunks are executed."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from vla_distill.errors import ConfigError
from vla_distill.eval.observe import ObserveConfig
from vla_distill.models.chunking import CHUNK_MODES
from vla_distill.sim.registry import DEFAULT_ENV, Simulator, get_simulator


@dataclass(frozen=True)
class EvalConfig:
    policy: str  # checkpoint path or teacher kind
    out: str
    tasks: tuple[str, ...]
    env: str = DEFAULT_ENV
    episodes: int = 10  # per task
    seed: int = 0  # picks the held-out seed stream
    max_steps: int = 0  # 0: the simulator's limit (MetaWorld 500; LIBERO per suite)
    steps_after_success: int = 10  # frames run after the first success (the phase timeline's release), then stop
    workers: int = 0  # 0: one per core, at most one per episode
    videos: int = 2  # per task: the first N episodes are recorded
    video_failures: bool = False  # also record every failed episode
    n_action_steps: int = 0  # queue: actions executed per predicted chunk; 0 = the policy's own (else the whole chunk)
    chunk: str = "queue"  # queue: execute the chunk, then replan | ensemble: infer every step, ACT temporal ensembling
    image_size: int = 0  # camera size for actors without their own (teachers); 0 = 128 (LIBERO 256)
    latency_steps: int = 100  # control steps of the batch-1 latency measurement; 0 = skip
    teacher_options: tuple[tuple[str, str], ...] = ()
    device: str = "cpu"
    backend: str = "auto"  # for policies: auto | torch | torch-bf16 | onnx | onnx-int8 (models.backends)
    observe: ObserveConfig = field(default_factory=ObserveConfig)
    # (task, wordings): the prompt given instead of the task's own instruction, episode i taking wording i mod n
    # (unseen paraphrases: what a policy makes of words it was not trained on); () = the simulator's instructions
    instructions: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __post_init__(self):
        get_simulator(self.env)  # a one-line error naming the known envs
        if self.episodes < 1:
            raise ConfigError("must be >= 1", field="episodes")
        if self.chunk not in CHUNK_MODES:
            raise ConfigError(f"{self.chunk!r} is not one of {list(CHUNK_MODES)}", field="chunk")
        for name in ("max_steps", "workers", "videos", "n_action_steps", "image_size", "latency_steps",
                     "steps_after_success"):
            if getattr(self, name) < 0:
                raise ConfigError("must be >= 0", field=name)
        if self.seed < 0:  # a negative stream lands among the seeds demonstrations are collected from
            raise ConfigError(f"must be >= 0, got {self.seed}", field="seed")
        given = dict(self.instructions)
        missing = [t for t in self.tasks if self.instructions and not given.get(t)]
        if missing:
            raise ConfigError(f"no wording for {missing[0]!r} (every evaluated task needs at least one)",
                              field="instructions")

    def instruction(self, task: str, episode: int) -> str | None:
        """The prompt of the task's episode when `instructions` replaces the simulator's, else None."""
        wordings = dict(self.instructions).get(task)
        return wordings[episode % len(wordings)] if wordings else None

    @property
    def sim(self) -> Simulator:
        return get_simulator(self.env)

    @property
    def num_workers(self) -> int:
        return max(1, min(self.workers or os.cpu_count() or 1, self.episodes * len(self.tasks)))

    def plan(self) -> dict:
        """What must match for a rerun to resume (workers, videos and the latency pass may differ)."""
        d = asdict(self)
        for k in ("workers", "videos", "video_failures", "latency_steps", "device", "observe", "out"):
            d.pop(k)
        return json.loads(json.dumps(d))
