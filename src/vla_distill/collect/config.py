"""Collection configuration (frozen; saved next to the output as meta/collection.json)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace

from vla_distill.errors import ConfigError
from vla_distill.sim.base import CameraConfig, Simulator
from vla_distill.sim.registry import DEFAULT_ENV, get_simulator


@dataclass(frozen=True)
class CollectConfig:
    tasks: tuple[str, ...]
    env: str = DEFAULT_ENV
    episodes: int = 10  # successful episodes kept per task (with a policy driving: rollouts per task)
    seed: int = 0
    steps_after_success: int = 10  # frames recorded after the first success, then the episode stops
    # DART (Laskey et al. 2017): Gaussian noise of this std added to the expert's xyz action before it is executed, so
    # the demonstrations visit the off-course states a student will reach, and the teacher's relabels
    # (annotate) show the way back. The action column records what was executed.
    action_noise: float = 0.0
    # the same for the end effector's rotation commands (the simulator's rotation_dims), its own std: without it the
    # demonstrations hold the hand's orientation exactly and never show it corrected, and a student whose small
    # rotation outputs add up drifts (BENCHMARKS.md, "LIBERO")
    rotation_noise: float = 0.0
    # DAgger (Ross et al. 2011): a trained policy (a run or checkpoint directory) drives instead of the expert, so the
    # dataset holds the states the policy itself reaches, its failures included; `annotate --teacher scripted` labels
    # every one with the expert's action. Every rollout is kept: `episodes` counts rollouts, not successes.
    policy: str = ""
    max_attempts_factor: float = 3.0  # give up on a task after episodes x this many attempts
    cameras: CameraConfig = field(default_factory=CameraConfig)  # no names: the simulator's default cameras
    image_format: str = "video"  # "video" (AV1 mp4, lerobot's default) or "image" (PNG in parquet)
    video_codec: str = "libsvtav1"
    workers: int = 0  # 0: one per core

    def __post_init__(self):
        if not self.tasks:
            raise ConfigError("no task given", field="tasks")
        sim = self.sim
        unknown = [t for t in self.tasks if not sim.has_task(t)]
        if unknown:
            raise ConfigError(f"{unknown[0]!r} is not a {sim.name} task", field="tasks")
        if not self.cameras.names:  # resolved here, so the saved plan names the cameras recorded
            object.__setattr__(self, "cameras", replace(self.cameras, names=sim.default_cameras))
        for name in self.cameras.names:
            if name not in sim.cameras:
                raise ConfigError(f"unknown camera '{name}'; valid: {', '.join(sim.cameras)}", field="cameras")
        if self.episodes < 1:
            raise ConfigError("must be >= 1", field="episodes")
        if self.seed < 0:
            raise ConfigError(f"must be >= 0, got {self.seed}", field="seed")
        if self.steps_after_success < 0:
            raise ConfigError("must be >= 0", field="steps_after_success")
        if not 0 <= self.action_noise <= 2:
            raise ConfigError("must be between 0 and 2 (action units)", field="action_noise")
        if self.policy and self.action_noise:
            raise ConfigError("the expert's action noise has no effect when a policy drives", field="action_noise")
        if not 0 <= self.rotation_noise <= 1:
            raise ConfigError("must be between 0 and 1 (action units)", field="rotation_noise")
        if self.rotation_noise and (self.policy or not sim.rotation_dims):
            why = "a policy drives" if self.policy else f"{sim.name}'s actions do not turn the end effector"
            raise ConfigError(f"has no effect: {why}", field="rotation_noise")
        if self.max_attempts_factor < 1:
            raise ConfigError("must be >= 1", field="max_attempts_factor")
        if self.image_format not in ("video", "image"):
            raise ConfigError("must be 'video' or 'image'", field="image_format")
        if self.workers < 0:
            raise ConfigError("must be >= 0", field="workers")

    @property
    def sim(self) -> Simulator:
        return get_simulator(self.env)

    @property
    def num_workers(self) -> int:
        return self.workers or os.cpu_count() or 1

    @property
    def max_attempts(self) -> int:
        if self.policy:  # every rollout is kept
            return self.episodes
        return max(self.episodes, int(round(self.episodes * self.max_attempts_factor)))

    def attempt_seed(self, task_pos: int, attempt: int) -> int:
        """Deterministic per (task, attempt) so a resumed run collects exactly what an uninterrupted one would."""
        return self.seed * 1_000_003 + task_pos * 10_007 + attempt

    def plan(self) -> dict:
        """What must match for a resume to continue an earlier run (workers may differ)."""
        d = asdict(self)
        d.pop("workers")
        for key in ("action_noise", "rotation_noise", "policy"):  # absent from plans written before they existed
            if not d[key]:
                d.pop(key)
        if d["env"] == DEFAULT_ENV:
            d.pop("env")
        d["tasks"] = list(self.tasks)
        d["cameras"]["names"] = list(self.cameras.names)
        return d
