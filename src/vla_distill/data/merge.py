"""`vla-distill merge`: LeRobotDatasets v3.0 with the same features into one (lerobot's `edit-dataset` merge), e.g.
demonstrations and the rollouts of a DAgger round before they are annotated together.

Episodes are renumbered in the order given and tasks united; per-frame columns are copied, each episode's video
segment is copied packet for packet (no re-encode: every episode starts on a keyframe, as this writer and lerobot's
write them), and per-episode stats and extra episode columns (seed, success frame, ...) travel with their episodes.
The output is written beside `out` and renamed into place when complete; meta/merge.json says which source each
episode range came from. A feature only some datasets have (a derived column recorded since a later version, such as
observation.contact) is refused unless it is named in `drop`, which leaves it out of the merge for all of them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vla_distill.data.dataset import RobotDataset
from vla_distill.data.format import INFO_PATH, collection_config, read_json, single_writer, write_json_atomic
from vla_distill.data.writer import DatasetWriter, EncodedVideo, Episode
from vla_distill.errors import ConfigError, DatasetError
from vla_distill.types import ANNOTATION_PATH, DEFAULT_FEATURES, TASK_INDEX

MERGE_PATH = "meta/merge.json"


def merge(sources: list[str | Path], out: str | Path, drop: tuple[str, ...] = ()) -> Path:
    """drop: features left out of the merged dataset (each must be one of some source's)."""
    out = Path(out)
    if len(sources) < 2:
        raise ConfigError("merge needs at least two datasets", field="datasets")
    if out.exists() and any(out.iterdir()):
        raise ConfigError("output directory exists and is not empty; choose another", field=str(out))
    for src in sources:  # each annotation has its own cue vocabulary and phase files: annotate the merge instead
        if (Path(src) / ANNOTATION_PATH).exists():
            raise DatasetError("an annotated dataset; merge the datasets it was annotated from, then annotate the "
                               "merge", path=src)
    datasets = [RobotDataset(s) for s in sources]
    features = _common_features(datasets, drop)
    building = out.with_name(out.name + ".building")
    ranges = []
    with single_writer(building):
        for leftover in building.iterdir():  # a killed earlier merge starts over
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
        bar = tqdm(total=sum(ds.num_episodes for ds in datasets), desc="merge", unit="ep", dynamic_ncols=True)
        with bar, DatasetWriter(building, int(datasets[0].fps), features, datasets[0].info.get("robot_type")) as writer:
            for ds in datasets:
                first = len(writer.episode_rows)
                for e in range(ds.num_episodes):
                    writer.add_episode(_episode(ds, e, features))
                    bar.update()
                ranges.append({"dataset": str(ds.root), "fingerprint": ds.fingerprint(),
                               "episodes": [first, len(writer.episode_rows)],
                               "driven": [first + e for e in driven_episodes(ds.root)]})
        dropped = {"dropped_features": list(drop)} if drop else {}
        write_json_atomic(building / MERGE_PATH, {"sources": ranges, **dropped})
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.rmdir()  # empty, checked above
    os.replace(building, out)
    print(f"wrote {sum(r['episodes'][1] - r['episodes'][0] for r in ranges)} episodes to {out}")
    return out


def driven_episodes(root: str | Path) -> list[int]:
    """The episodes of a dataset a policy drove (DAgger rollouts): all of a policy's own collection (its
    collection.json names the policy), none of an expert's; of a merge, what merge.json records per source, or for a
    merge written before it did, what its sources say (a gone source: a one-line error naming merge.json)."""
    root = Path(root)
    merged, n = root / MERGE_PATH, RobotDataset(root).num_episodes
    if not merged.exists():
        return list(range(n)) if collection_config(root).get("policy") else []
    out = []
    for src in _merge_sources(merged):
        if "driven" in src:
            out += src["driven"]
        elif (Path(src["dataset"]) / INFO_PATH).exists():
            out += [src["episodes"][0] + e for e in driven_episodes(src["dataset"])]
        else:
            raise DatasetError(f"source {src['dataset']} is gone: which episodes a policy drove is unknown",
                               path=merged)
    if not all(isinstance(e, int) and 0 <= e < n for e in out):
        raise DatasetError(f"the driven episodes must be episode numbers of this dataset's {n}", path=merged,
                           field="driven")
    return out


def _merge_sources(path: Path) -> list[dict]:
    """merge.json's sources, each checked to name its dataset and its [first, end) episode range (a file that says
    otherwise: a one-line error naming it)."""
    record = read_json(path)
    sources = record.get("sources") if isinstance(record, dict) else None
    ok = isinstance(sources, list) and all(
        isinstance(s, dict) and isinstance(s.get("dataset"), str) and isinstance(s.get("episodes"), list)
        and len(s["episodes"]) == 2 and all(isinstance(e, int) for e in s["episodes"])
        and isinstance(s.get("driven", []), list) for s in sources)
    if not ok:
        raise DatasetError("each source must name its dataset, its [first, end) episodes and, if recorded, the "
                           "episodes a policy drove", path=path, field="sources")
    return sources


def _common_features(datasets: list[RobotDataset], drop: tuple[str, ...] = ()) -> dict[str, dict]:
    """The first dataset's own features less `drop`; every other must declare the same keys, dtypes and shapes, at one
    fps."""
    ref = datasets[0]
    unknown = [k for k in drop if k in DEFAULT_FEATURES or not any(k in ds.features for ds in datasets)]
    if unknown:
        raise ConfigError(f"{unknown[0]!r} is not a feature of these datasets that can be dropped",
                          field="drop_features")
    own = {k: v for k, v in ref.features.items() if k not in DEFAULT_FEATURES and k not in drop}
    for ds in datasets[1:]:
        if ds.fps != ref.fps:
            raise DatasetError(f"{ds.fps:g} fps where {ref.root} has {ref.fps:g}", path=ds.root, field="fps")
        theirs = {k: v for k, v in ds.features.items() if k not in DEFAULT_FEATURES and k not in drop}
        for key in sorted(set(own) | set(theirs)):
            a, b = own.get(key), theirs.get(key)
            if a is None or b is None:
                raise DatasetError(f"feature present in only one of the datasets (see {ref.root}); leave it out of the "
                                   f"merge with --drop-features {key}", path=ds.root, field=key)
            if (a["dtype"], list(a["shape"])) != (b["dtype"], list(b["shape"])):
                raise DatasetError(f"{b['dtype']} {list(b['shape'])} where {ref.root} has {a['dtype']} "
                                   f"{list(a['shape'])}", path=ds.root, field=key)
    return own


def _episode(ds: RobotDataset, e: int, features: dict[str, dict]) -> Episode:
    ep, rows = ds.episodes[e], ds.episode_rows(e)
    frames: dict = {}
    for key, ft in features.items():
        if ft["dtype"] == "video":
            frames[key] = EncodedVideo(ep.videos[key].path, ep.videos[key].from_timestamp)
        elif ft["dtype"] == "image":
            frames[key] = ds.frames(key, rows)
        else:
            frames[key] = np.asarray(ds.column(key)[rows])
    task = [ds.tasks[int(i)] for i in ds.column(TASK_INDEX)[rows]]
    stats = {k: v for k, v in ds.episode_stats([e]).items() if k in features or k in DEFAULT_FEATURES}
    return Episode(frames, task, stats=stats, meta=dict(ep.extra))
