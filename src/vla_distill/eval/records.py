"""One evaluation episode on disk: its record (what eval_info, the report and a resumed run read) and its arrays.

  OUT/episodes/<task>/<i>.npz    phase (T,), success (T,), hand (T, 3), actions (T, D), directions (C, E),
                                 direction_steps (C,), latency_ms (C,), reference_<source> (T,) phase timelines
  OUT/episodes/<task>/<i>.json   EpisodeRecord, written last: the marker a resumed run skips the episode by
(<task> with "/" as "_": LIBERO's suite/index names.)
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vla_distill.data.format import write_json_atomic

EPISODES = "episodes"


@dataclass
class EpisodeRecord:
    task: str
    task_group: str
    episode: int  # position in the task's seed list
    seed: int
    success: bool
    first_success: int | None  # step of the first success
    steps: int
    sum_reward: float
    max_reward: float
    calls: int  # model calls (chunks inferred)
    seconds: float
    video_path: str | None  # relative to OUT
    phase_agreement: dict[str, float] = field(default_factory=dict)  # reference source -> agreement of predicted phases
    flags: list[dict] = field(default_factory=list)  # observe.phase_flags
    instruction: str = ""  # the prompt given, when EvalConfig.instructions replaced the task's own

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> EpisodeRecord:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def task_dir(out: str | Path, task: str) -> Path:
    return Path(out) / EPISODES / task.replace("/", "_")


def arrays_path(out: str | Path, task: str, episode: int) -> Path:
    return task_dir(out, task) / f"{episode:04d}.npz"


def write_episode(out: str | Path, record: EpisodeRecord, arrays: dict[str, np.ndarray]) -> None:
    """The arrays, then the record (the marker), each written whole."""
    d = task_dir(out, record.task)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f"{record.episode:04d}.tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, arrays_path(out, record.task, record.episode))
    write_json_atomic(d / f"{record.episode:04d}.json", record.to_json())


def read_records(out: str | Path) -> dict[tuple[str, int], EpisodeRecord]:
    """Every finished episode's record, by (task, episode)."""
    import json

    records = (EpisodeRecord.from_json(json.loads(p.read_text())) for p in (Path(out) / EPISODES).glob("*/*.json"))
    return {(r.task, r.episode): r for r in records}
