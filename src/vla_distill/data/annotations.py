"""The tables `vla-distill annotate` adds under a dataset's meta/ (file names: types.py), written and read here, and
the readers of what `vla-distill audit` adds.

  meta/phases.parquet            phase_index, phase, taxonomy         phases_table | read_phase_names: (P,) names
  meta/directions.parquet        direction_index, text, embedding,    directions_table | read_directions: Q texts,
                                 count, source                          (Q, E) embeddings
  meta/task_embeddings.parquet   task_index, task, embedding          task_embeddings_table | read_task_embeddings
  meta/direction_windows.parquet episode_index, start, end,           windows_table (the audit reads it)
                                 direction_index
  meta/annotation.json           provenance and settings              read_annotation
  meta/audit.json                the audit report                     dropped_episodes
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vla_distill.types import (
    ANNOTATION_PATH,
    AUDIT_PATH,
    DIRECTION_INDEX,
    DIRECTIONS_PATH,
    PHASE_INDEX,
    PHASES_PATH,
    TASK_EMBEDDINGS_PATH,
    TASK_INDEX,
    TAXONOMIES,
)


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _fixed_list(emb: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(emb.astype(np.float32).reshape(-1), pa.float32()), emb.shape[1])


def phases_table(taxonomy: str) -> pa.Table:
    names = TAXONOMIES[taxonomy]
    return pa.table({PHASE_INDEX: pa.array(range(len(names)), pa.int64()), "phase": list(names),
                     "taxonomy": [taxonomy] * len(names)})


def directions_table(texts: list[str], embeddings: np.ndarray, counts: list[int], source: str) -> pa.Table:
    """Q distinct cue texts, their (Q, E) embeddings, how many windows carry each, and where they came from."""
    return pa.table({
        DIRECTION_INDEX: pa.array(range(len(texts)), pa.int64()), "text": texts,
        "embedding": _fixed_list(embeddings), "count": pa.array(counts, pa.int64()),
        "source": [source] * len(texts),
    })


def task_embeddings_table(tasks: list[str], embeddings: np.ndarray) -> pa.Table:
    """The dataset's instructions (by task_index) and their (T_tasks, E) embeddings."""
    return pa.table({TASK_INDEX: pa.array(range(len(tasks)), pa.int64()), "task": tasks,
                     "embedding": _fixed_list(embeddings)})


def windows_table(windows: list[tuple[int, int, int]], cue_ids: np.ndarray) -> pa.Table:
    """Every cue window: (episode_index, start, end) frames and its direction_index (-1: no cue)."""
    column = lambda i: pa.array([w[i] for w in windows], pa.int64())  # noqa: E731
    return pa.table({"episode_index": column(0), "start": column(1), "end": column(2),
                     DIRECTION_INDEX: pa.array(cue_ids, pa.int64())})


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
