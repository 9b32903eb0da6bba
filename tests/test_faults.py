"""Fault injection: a corpus of corrupt datasets through every stage that reads one. Each case must end in one line
naming the file (and field), exit 2, before any work, with nothing written."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vla_distill.cli import main

DATA = "data/chunk-000/file-000.parquet"
EPISODES = "meta/episodes/chunk-000/file-000.parquet"
INFO = "meta/info.json"


def _video(root: Path) -> Path:
    return sorted(root.glob("videos/*/chunk-000/file-000.mp4"))[0]


def _edit_info(root: Path, change: Callable[[dict], None]) -> None:
    info = json.loads((root / INFO).read_text())
    change(info)
    (root / INFO).write_text(json.dumps(info))


def _edit_column(path: Path, name: str, change: Callable[[np.ndarray], np.ndarray]) -> None:
    table = pq.read_table(path)
    col = table.column(name)
    values = np.stack(col.to_numpy(zero_copy_only=False)) if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(
        col.type) else col.to_numpy()
    values = change(values.copy())
    arrow = (pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1]) if values.ndim == 2
             else pa.array(values))
    pq.write_table(table.set_column(table.column_names.index(name), table.schema.field(name).with_type(arrow.type),
                                    arrow), path)


def _nan_state(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.float32)
    v[3, 0] = np.nan
    return v


# name: (what it does to the dataset, a fragment the error must contain)
CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing parquet": (lambda r: (r / DATA).unlink(), DATA),
    "truncated parquet": (lambda r: (r / DATA).write_bytes((r / DATA).read_bytes()[:2000]), DATA),
    "video of random bytes": (lambda r: _video(r).write_bytes(np.random.default_rng(0).bytes(_video(r).stat().st_size)),
                              "file-000.mp4"),
    "video truncated": (lambda r: _video(r).write_bytes(_video(r).read_bytes()[: _video(r).stat().st_size // 3]),
                        "file-000.mp4"),
    "video missing": (lambda r: _video(r).unlink(), "file-000.mp4"),
    "info.json missing": (lambda r: (r / INFO).unlink(), INFO),
    "info.json not JSON": (lambda r: (r / INFO).write_text("{\"fps\": 80,"), INFO),
    "info total_frames lies": (lambda r: _edit_info(r, lambda i: i.update(total_frames=i["total_frames"] + 100)),
                               "total_frames"),
    "info shape lies": (lambda r: _edit_info(r, lambda i: i["features"]["action"].update(shape=[3])), "action"),
    "NaN in the state": (lambda r: _edit_column(r / DATA, "observation.state", _nan_state), "observation.state"),
    "episode offsets lie": (lambda r: _edit_column(r / EPISODES, "dataset_from_index", lambda v: v + 1), "index"),
}
STAGES = {
    "inspect": lambda ds, out: ["inspect", str(ds)],
    "inspect --quick": lambda ds, out: ["inspect", "--quick", str(ds)],
    "annotate": lambda ds, out: ["annotate", "--dataset", str(ds), "--out", str(out), "--teacher", "scripted"],
    "train": lambda ds, out: ["train", "--dataset", str(ds), "--out", str(out), "--steps", "2", "--batch-size", "4"],
}


@pytest.fixture(scope="module")
def corrupt(annotated, tmp_path_factory):
    """One corrupted copy of the small annotated MetaWorld dataset per case."""
    base = tmp_path_factory.mktemp("corrupt")
    roots = {}
    for i, (name, (damage, _)) in enumerate(CORRUPTIONS.items()):
        root = base / f"case{i}" / "ds"
        shutil.copytree(annotated, root)
        damage(root)
        roots[name] = root
    return roots


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_a_corrupt_dataset_is_one_line_before_any_work(corrupt, case, stage, capsys):
    ds = corrupt[case]
    before = sorted(p.relative_to(ds.parent) for p in ds.parent.rglob("*"))
    code = main(STAGES[stage](ds, ds.parent / "out"))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err
    assert CORRUPTIONS[case][1] in err, err
    assert sorted(p.relative_to(ds.parent) for p in ds.parent.rglob("*")) == before  # nothing written, nothing removed
