"""Readers of what `vla-distill annotate` and `vla-distill audit` add under a dataset's meta/ (file names: types.py).

  meta/phases.parquet            phase_index, phase, taxonomy         -> read_phase_names: (P,) names
  meta/directions.parquet        direction_index, text, embedding     -> read_directions: Q texts, (Q, E) embeddings
  meta/task_embeddings.parquet   task_index, task, embedding          -> read_task_embeddings: tasks, (T_tasks, E)
  meta/annotation.json           provenance and settings              -> read_annotation
  meta/audit.json                the audit report                     -> dropped_episodes
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from vla_distill.types import (ANNOTATION_PATH, AUDIT_PATH, DIRECTIONS_PATH, PHASE_INDEX, PHASES_PATH,
                               TASK_EMBEDDINGS_PATH)


def _read_embeddings(path: Path, text_column: str) -> tuple[list[str], np.ndarray]:
    t = pq.read_table(path)
    emb = np.asarray(t.column("embedding").combine_chunks().flatten().to_numpy(), np.float32)
    texts = t.column(text_column).to_pylist()
    return texts, emb.reshape(len(texts), -1)


def read_directions(root: str | Path) -> tuple[list[str], np.ndarray]:
    """Distinct cue texts and their (Q, E) embeddings, indexed by direction_index."""
    return _read_embeddings(Path(root) / DIRECTIONS_PATH, "text")


def read_task_embeddings(root: str | Path) -> tuple[list[str], np.ndarray] | None:
    """Instructions and their (T_tasks, E) embeddings by task_index, or None for datasets annotated without cues."""
    path = Path(root) / TASK_EMBEDDINGS_PATH
    return _read_embeddings(path, "task") if path.exists() else None


def read_phase_names(root: str | Path) -> tuple[str, ...] | None:
    """The phase taxonomy phase_index points into, or None for a dataset without phase labels."""
    path = Path(root) / PHASES_PATH
    if not path.exists():
        return None
    return tuple(pq.read_table(path).sort_by(PHASE_INDEX).column("phase").to_pylist())


def read_annotation(root: str | Path) -> dict:
    """meta/annotation.json (teacher provenance, annotation settings), or {} for a dataset never annotated."""
    path = Path(root) / ANNOTATION_PATH
    return json.loads(path.read_text()) if path.exists() else {}


def dropped_episodes(root: str | Path) -> list[int]:
    """Episodes a `vla-distill audit --drop` excluded from training (none when never audited that way)."""
    path = Path(root) / AUDIT_PATH
    return list(json.loads(path.read_text()).get("dropped_episodes", [])) if path.exists() else []
