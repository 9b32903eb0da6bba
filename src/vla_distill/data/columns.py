"""Add per-frame columns (teacher actions, annotations) to an existing v3.0 dataset without touching videos.

The new dataset is assembled in a temporary directory (videos hard-linked, or copied across filesystems),
then moved into place with info.json last, so a reader never sees a half-updated dataset.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vla_distill.data import stats as stats_lib
from vla_distill.data.arrow import check_values, to_arrow
from vla_distill.data.dataset import RobotDataset, read_parquet
from vla_distill.data.format import (
    INFO_PATH,
    STATS_PATH,
    arrow_type,
    removed_on_failure,
    validate_features,
    write_json_atomic,
)
from vla_distill.errors import DatasetError


def add_columns(
    root: str | Path,
    columns: dict[str, np.ndarray],
    features: dict[str, dict],
    out: str | Path | None = None,
    overwrite: bool = False,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """columns: key -> (N, *shape) values in global frame order; features: their declarations.
    extra_files: relative path -> content, written with the dataset (annotation tables under meta/).
    Writes to `out` (a new directory) or, when out is None, replaces `root` in place."""
    ds = RobotDataset(root)
    if not ds.version.startswith("v3"):
        raise DatasetError("columns can only be added to v3.0 datasets", path=ds.root / INFO_PATH,
                           field="codebase_version")
    validate_features(features)
    for key in columns:
        if key not in features:
            raise DatasetError("no feature declaration given", field=key)
        if key in ds.features and not overwrite:
            raise DatasetError("already in the dataset (pass overwrite=True to replace it)", path=ds.root, field=key)
        columns[key] = check_values(key, columns[key], features[key], ds.num_frames)
    src = ds.root
    dst = Path(out) if out is not None else src
    if out is not None and dst.exists():
        raise DatasetError("output directory already exists", path=dst)
    tmp = dst.with_name(dst.name + ".tmp-columns")
    shutil.rmtree(tmp, ignore_errors=True)
    info = dict(ds.info)
    info["features"] = {**ds.features, **{k: features[k] for k in columns}}
    with removed_on_failure(tmp):
        _write_data_files(ds, columns, info["features"], tmp)
        _write_meta(ds, columns, info, tmp)
        for rel, content in (extra_files or {}).items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(content)
        if out is not None:
            _link_tree(src / "videos", tmp / "videos")
            _link_tree(src / "images", tmp / "images")
    if out is None:
        _replace_in_place(tmp, src)
    else:
        os.replace(tmp, dst)
    return dst


def _write_data_files(ds: RobotDataset, columns: dict[str, np.ndarray], features: dict, tmp: Path) -> None:
    row_of = {int(ix): r for r, ix in enumerate(ds.column("index"))}
    for path in dict.fromkeys(ep.data_path for ep in ds.episodes):
        table = read_parquet(path)
        rows = np.array([row_of[int(i)] for i in table.column("index").to_numpy()])
        for key, values in columns.items():
            arr = to_arrow(values[rows], features[key])
            if key in table.column_names:
                table = table.set_column(table.column_names.index(key), pa.field(key, arrow_type(features[key])), arr)
            else:
                table = table.append_column(pa.field(key, arrow_type(features[key])), arr)
        target = tmp / path.relative_to(ds.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, target, compression="snappy")


def _write_meta(ds: RobotDataset, columns: dict[str, np.ndarray], info: dict, tmp: Path) -> None:
    features = info["features"]
    per_ep = []
    for e in range(ds.num_episodes):
        rows = ds.episode_rows(e)
        per_ep.append(stats_lib.episode_stats({k: v[rows] for k, v in columns.items()}, features))
    position_of = {ep.index: p for p, ep in enumerate(ds.episodes)}
    for path in sorted((ds.root / "meta/episodes").glob("chunk-*/file-*.parquet")):
        table = read_parquet(path)
        positions = [position_of[int(i)] for i in table.column("episode_index").to_numpy()]
        for key in columns:
            for stat in per_ep[0].get(key, {}):
                name = f"stats/{key}/{stat}"
                arr = pa.array([np.asarray(per_ep[p][key][stat]).tolist() for p in positions])
                if name in table.column_names:
                    table = table.set_column(table.column_names.index(name), name, arr)
                else:
                    table = table.append_column(name, arr)
        target = tmp / path.relative_to(ds.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, target, compression="snappy")
    for path in (ds.root / "meta").rglob("*"):  # tasks, collection provenance, anything else: unchanged
        rel = path.relative_to(ds.root)
        if path.is_file() and rel.parts[1] != "episodes" and path.name not in ("info.json", "stats.json"):
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, tmp / rel)
    stats = {**ds.stats, **stats_lib.aggregate_all(per_ep)}
    write_json_atomic(tmp / STATS_PATH, stats_lib.to_json(stats))
    write_json_atomic(tmp / INFO_PATH, info)


def _link_tree(src: Path, dst: Path) -> None:
    if not src.exists():
        return
    for path in src.rglob("*"):
        if path.is_file():
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)


def _replace_in_place(tmp: Path, root: Path) -> None:
    files = sorted(p for p in tmp.rglob("*") if p.is_file() and p.name != "info.json")
    for path in files:
        os.replace(path, root / path.relative_to(tmp))
    os.replace(tmp / INFO_PATH, root / INFO_PATH)
    shutil.rmtree(tmp, ignore_errors=True)
