"""Read a LeRobotDataset (v3.0, or the legacy v2.1 layout) with pyarrow + PyAV.

`RobotDataset(root)` validates the metadata against the files on open (missing/truncated parquet, shapes that
disagree with info.json, NaN in float features) and decodes video frames lazily by timestamp:
frame time = episode's `videos/<key>/from_timestamp` + the row's `timestamp` (v2.1: the row's timestamp).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vla_distill.data import stats as stats_lib
from vla_distill.data.arrow import decode_png, first_nonfinite_row, from_arrow
from vla_distill.data.format import (
    EPISODES_PATH,
    INFO_PATH,
    STATS_PATH,
    TASKS_PATH,
    TOLERANCE_S,
    is_visual,
    read_json,
)
from vla_distill.data.video import VideoReader
from vla_distill.errors import DatasetError
from vla_distill.types import DEFAULT_FEATURES, TASK_INDEX


@dataclass(frozen=True)
class VideoSpan:
    path: Path
    from_timestamp: float
    to_timestamp: float


@dataclass(frozen=True)
class EpisodeInfo:
    index: int
    length: int
    tasks: list[str]
    from_index: int  # global [from, to) range of `index`
    to_index: int
    data_path: Path
    videos: dict[str, VideoSpan] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # any other episodes-table column, stats excluded
    meta_path: Path | None = None  # the episodes-table file of its row (v3.0)


def read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    if not path.exists():
        raise DatasetError("parquet file is missing", path=path)
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, OSError) as e:
        raise DatasetError(f"cannot read parquet (truncated or corrupt: {e})", path=path) from None


class RobotDataset:
    """A LeRobot-format dataset on local disk. Frame i is `ds[i]`: a dict of numpy arrays, images HWC uint8."""

    def __init__(self, root: str | Path, tolerance_s: float = TOLERANCE_S):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError("dataset directory does not exist", path=self.root)
        self.info: dict[str, Any] = read_json(self.root / INFO_PATH)
        self.version = str(self.info.get("codebase_version", ""))
        for required in ("fps", "features", "data_path"):
            if required not in self.info:
                raise DatasetError(f"info.json lacks '{required}'", path=self.root / INFO_PATH, field=required)
        self.fps = float(self.info["fps"])
        self.features: dict[str, dict] = self.info["features"]
        self.tolerance_s = tolerance_s
        if self.version.startswith("v3"):
            self.tasks = self._read_tasks_v3()
            self.episodes = self._read_episodes_v3()
        elif self.version.startswith("v2"):
            self.tasks = self._read_tasks_v2()
            self.episodes = self._read_episodes_v2()
        else:
            raise DatasetError(f"unsupported codebase_version {self.version!r}", path=self.root / INFO_PATH,
                               field="codebase_version")
        self._columns = self._read_frames()
        self._videos: dict[Path, VideoReader] = {}

    # ------------------------------------------------------------------------------------------ metadata
    @property
    def video_keys(self) -> list[str]:
        return [k for k, ft in self.features.items() if ft["dtype"] == "video"]

    @property
    def image_keys(self) -> list[str]:
        return [k for k, ft in self.features.items() if ft["dtype"] == "image"]

    @property
    def camera_keys(self) -> list[str]:
        return [k for k, ft in self.features.items() if is_visual(ft)]

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def num_frames(self) -> int:
        return len(self._columns["index"])

    def __len__(self) -> int:
        return self.num_frames

    @cached_property
    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        path = self.root / STATS_PATH
        if path.exists():
            return stats_lib.from_json(read_json(path))
        if (self.root / "meta/episodes_stats.jsonl").exists():
            lines = self._jsonl("meta/episodes_stats.jsonl")
            per_ep = [stats_lib.from_json(json.loads(line)["stats"]) for line in lines]
            return stats_lib.aggregate_all(per_ep)
        raise DatasetError("no stats.json or episodes_stats.jsonl", path=self.root / "meta")

    def episode_stats(self, episode_indices: list[int]) -> dict[str, dict[str, np.ndarray]]:
        """Stats aggregated over some episodes only (e.g. the training split), from the episodes table."""
        if not self.version.startswith("v3"):
            raise DatasetError("per-episode stats are read from v3.0 datasets only", path=self.root)
        table = self._episodes_table
        per_ep = []
        for i in episode_indices:
            ep: dict[str, dict] = {}
            for name in table.column_names:
                if name.startswith("stats/"):
                    _, key, stat = name.split("/")
                    value = table.column(name)[i].as_py()
                    if value is not None:
                        ep.setdefault(key, {})[stat] = np.asarray(value)
            per_ep.append(ep)
        return stats_lib.aggregate_all(per_ep)

    def _jsonl(self, rel: str) -> list[str]:
        path = self.root / rel
        if not path.exists():
            raise DatasetError("file is missing", path=path)
        return [line for line in path.read_text().splitlines() if line.strip()]

    def _read_tasks_v3(self) -> list[str]:
        table = read_parquet(self.root / TASKS_PATH)
        name = next((c for c in ("task", "__index_level_0__") if c in table.column_names), None)
        if name is None or TASK_INDEX not in table.column_names:
            raise DatasetError("needs 'task_index' and the task text ('task' or the pandas index)",
                               path=self.root / TASKS_PATH)
        order = np.asarray(table.column(TASK_INDEX).to_pylist())
        texts = table.column(name).to_pylist()
        out = [""] * (int(order.max()) + 1 if len(order) else 0)
        for i, t in zip(order, texts):
            out[int(i)] = t
        return out

    def _read_tasks_v2(self) -> list[str]:
        rows = [json.loads(line) for line in self._jsonl("meta/tasks.jsonl")]
        out = [""] * (max((r[TASK_INDEX] for r in rows), default=-1) + 1)
        for r in rows:
            out[r[TASK_INDEX]] = r["task"]
        return out

    def _read_episodes_v3(self) -> list[EpisodeInfo]:
        files = sorted((self.root / "meta/episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise DatasetError("no episode metadata",
                               path=self.root / EPISODES_PATH.format(chunk_index=0, file_index=0))
        tables = [read_parquet(f) for f in files]
        if any("episode_index" not in t.column_names for t in tables):
            bad = next(f for f, t in zip(files, tables) if "episode_index" not in t.column_names)
            raise DatasetError("column is missing", path=bad, field="episode_index")
        source = {e: f for f, t in zip(files, tables) for e in t.column("episode_index").to_pylist()}
        table = pa.concat_tables(tables, promote_options="default")
        # in row order, so that a wrong episode_index is reported as such rather than moving its episode
        table = table.sort_by([("dataset_from_index", "ascending"), ("episode_index", "ascending")])
        self._episodes_table = table
        keep = [c for c in table.column_names if not c.startswith("stats/")]
        rows = table.select(keep).to_pylist()
        known = {"episode_index", "tasks", "length", "dataset_from_index", "dataset_to_index", "data/chunk_index",
                 "data/file_index"}
        episodes = []
        for row in rows:
            data_path = self.root / self.info["data_path"].format(
                chunk_index=row["data/chunk_index"], file_index=row["data/file_index"]
            )
            videos = {}
            for key in self.video_keys:
                prefix = f"videos/{key}/"
                videos[key] = VideoSpan(
                    self.root / self.info["video_path"].format(
                        video_key=key, chunk_index=row[prefix + "chunk_index"], file_index=row[prefix + "file_index"]
                    ),
                    float(row[prefix + "from_timestamp"]),
                    float(row[prefix + "to_timestamp"]),
                )
            extra = {k: v for k, v in row.items() if k not in known and not k.startswith(("videos/", "meta/episodes/"))}
            episodes.append(
                EpisodeInfo(
                    index=int(row["episode_index"]),
                    length=int(row["length"]),
                    tasks=list(row["tasks"] or []),
                    from_index=int(row["dataset_from_index"]),
                    to_index=int(row["dataset_to_index"]),
                    data_path=data_path,
                    videos=videos,
                    extra=extra,
                    meta_path=source[row["episode_index"]],
                )
            )
        return episodes

    def _read_episodes_v2(self) -> list[EpisodeInfo]:
        rows = sorted((json.loads(line) for line in self._jsonl("meta/episodes.jsonl")),
                      key=lambda r: r["episode_index"])
        chunks_size = int(self.info.get("chunks_size", 1000))
        episodes, start = [], 0
        for row in rows:
            e = int(row["episode_index"])
            chunk = e // chunks_size
            videos = {
                key: VideoSpan(
                    self.root / self.info["video_path"].format(episode_chunk=chunk, video_key=key, episode_index=e),
                    0.0, 0.0
                )
                for key in self.video_keys
            }
            data_path = self.root / self.info["data_path"].format(episode_chunk=chunk, episode_index=e)
            n = int(row["length"])
            extra = {k: v for k, v in row.items() if k not in ("episode_index", "tasks", "length")}
            episodes.append(EpisodeInfo(e, n, list(row.get("tasks", [])), start, start + n, data_path, videos, extra))
            start += n
        return episodes

    # ------------------------------------------------------------------------------------------ frames
    def _read_frames(self) -> dict[str, np.ndarray]:
        """Loads every parquet column once; numeric ones as arrays, image ones as lists of PNG bytes."""
        keys = [k for k, ft in self.features.items() if ft["dtype"] != "video"]
        missing = [k for k in DEFAULT_FEATURES if k not in keys]
        if missing:
            raise DatasetError("info.json does not declare this default feature", path=self.root / INFO_PATH,
                               field=missing[0])
        paths = list(dict.fromkeys(ep.data_path for ep in self.episodes))
        parts: dict[str, list] = {k: [] for k in keys}
        for path in paths:
            table = read_parquet(path)
            for key in keys:
                if key not in table.column_names:
                    raise DatasetError("column declared in info.json is missing", path=path, field=key)
                ft = self.features[key]
                col = table.column(key)
                if ft["dtype"] == "image":
                    parts[key].append([(v or {}).get("bytes") for v in col.to_pylist()])
                elif ft["dtype"] == "string":
                    parts[key].append(np.asarray(col.to_pylist(), dtype=object))
                else:
                    values = from_arrow(col, ft, key, path)
                    bad = first_nonfinite_row(values)
                    if bad is not None:
                        frame = int(table.column("index")[bad].as_py())
                        raise DatasetError(f"holds NaN/inf (frame index {frame})", path=path, field=key)
                    parts[key].append(values)
        columns: dict[str, Any] = {}
        for key, chunks in parts.items():
            if self.features[key]["dtype"] == "image":
                columns[key] = [b for chunk in chunks for b in chunk]
            else:
                columns[key] = np.concatenate(chunks) if chunks else np.zeros((0,))
        order = np.argsort(columns["index"].reshape(-1), kind="stable")
        if not np.array_equal(order, np.arange(len(order))):
            columns = {k: (np.asarray(v, dtype=object)[order].tolist() if isinstance(v, list) else v[order]) for k,
                       v in columns.items()}
        for key in DEFAULT_FEATURES:
            columns[key] = columns[key].reshape(-1)
        self._check_frames_match_episodes(columns)
        return columns

    def _check_frames_match_episodes(self, columns: dict[str, np.ndarray]) -> None:
        total = sum(ep.length for ep in self.episodes)
        for name, actual in (("total_frames", len(columns["index"])), ("total_episodes", len(self.episodes))):
            declared = self.info.get(name)
            if declared is not None and declared != actual:
                raise DatasetError(f"says {declared}, the dataset holds {actual}", path=self.root / INFO_PATH,
                                   field=name)
        if len(columns["index"]) != total:
            raise DatasetError(
                f"data files hold {len(columns['index'])} frames, the episodes table says {total}",
                path=self.root / "data"
            )
        first = int(columns["index"][0]) if total else 0
        self._check_spans(first)
        for ep in self.episodes:
            ep_index = columns["episode_index"][ep.from_index - first : ep.to_index - first]
            if len(ep_index) == ep.length and len(set(ep_index.tolist())) == 1 and ep_index[0] != ep.index:
                raise DatasetError(f"says {ep.index} for rows [{ep.from_index}, {ep.to_index}), which the data files "
                                   f"give to episode {ep_index[0]}", path=ep.meta_path or ep.data_path,
                                   field="episode_index")
            if len(ep_index) != ep.length or (ep_index != ep.index).any():
                raise DatasetError(f"episode {ep.index} rows are not at index [{ep.from_index}, {ep.to_index})",
                                   path=ep.data_path, field="index")
        self._index_offset = first

    def _check_spans(self, first: int) -> None:
        """The episodes table (v3.0) against itself: each episode's rows follow the one before it and number its length,
        and each video span lasts its length (lerobot writes to_timestamp = from_timestamp + the clip's duration)."""
        if not self.version.startswith("v3"):
            return
        start, frame = first, 1.0 / self.fps
        for ep in self.episodes:
            if ep.from_index != start:
                raise DatasetError(f"episode {ep.index} starts at row {ep.from_index}; the rows before it end at "
                                   f"{start}", path=ep.meta_path, field="dataset_from_index")
            if ep.to_index - ep.from_index != ep.length:
                raise DatasetError(f"episode {ep.index} ends at row {ep.to_index}, not at dataset_from_index "
                                   f"{ep.from_index} + length {ep.length}", path=ep.meta_path, field="dataset_to_index")
            start = ep.to_index
            for key, span in ep.videos.items():
                seconds = span.to_timestamp - span.from_timestamp
                if not abs(seconds - ep.length * frame) <= frame + self.tolerance_s:
                    raise DatasetError(f"episode {ep.index} spans {seconds:.3f} s of video ({span.from_timestamp:.3f} "
                                       f"to {span.to_timestamp:.3f}); its {ep.length} frames at {self.fps:g} fps last "
                                       f"{ep.length * frame:.3f} s", path=ep.meta_path,
                                       field=f"videos/{key}/to_timestamp")

    def column(self, key: str) -> np.ndarray:
        """All frames of a numeric feature, (N, *shape)."""
        if key not in self._columns:
            raise DatasetError("no such parquet feature", path=self.root, field=key)
        return self._columns[key]

    def episode_of(self, i: int) -> EpisodeInfo:
        return self.episodes[self._episode_row(i)]

    def _episode_row(self, i: int) -> int:
        """Row position -> position of its episode in self.episodes."""
        return int(np.searchsorted(self._episode_starts, i, side="right") - 1)

    @cached_property
    def _episode_starts(self) -> np.ndarray:
        return np.array([ep.from_index - self._index_offset for ep in self.episodes])

    def episode_rows(self, e: int) -> np.ndarray:
        """Row positions of episode e (by position in self.episodes)."""
        ep = self.episodes[e]
        start = ep.from_index - self._index_offset
        return np.arange(start, start + ep.length)

    def frames(self, key: str, rows: np.ndarray) -> np.ndarray:
        """(N,) row positions -> (N, H, W, 3) uint8 for an image or video feature."""
        rows = np.asarray(rows).reshape(-1)
        ft = self.features.get(key)
        if ft is None or not is_visual(ft):
            raise DatasetError("not an image or video feature", path=self.root, field=key)
        if ft["dtype"] == "image":
            return np.stack([decode_png(self._columns[key][r], key) for r in rows])
        out = [None] * len(rows)
        by_episode: dict[int, list[int]] = {}
        for j, r in enumerate(rows):
            by_episode.setdefault(self._episode_row(int(r)), []).append(j)
        for e, js in by_episode.items():
            span = self.episodes[e].videos[key]
            ts = span.from_timestamp + self._columns["timestamp"][rows[js]].astype(np.float64)
            imgs = self._video(span.path, key).frames_at(ts, self.tolerance_s)
            for j, img in zip(js, imgs):
                out[j] = img
        return np.stack(out)

    def _video(self, path: Path, key: str) -> VideoReader:
        if path not in self._videos:
            self._videos[path] = VideoReader(path, key)
        return self._videos[path]

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.num_frames:
            raise IndexError(i)
        item: dict[str, Any] = {}
        for key, ft in self.features.items():
            if is_visual(ft):
                item[key] = self.frames(key, np.array([i]))[0]
            else:
                item[key] = self._columns[key][i]
        item["task"] = self.tasks[int(self._columns[TASK_INDEX][i])]
        return item

    def check_videos(self) -> None:
        """The cheap part of validate, run before any work: every video file opens as a container and decodes the last
        frame the episodes table places in it (a file of random bytes, a truncated one or a lying table fails here)."""
        for key in self.video_keys:
            last: dict[Path, tuple[float, int]] = {}  # file -> (end, episode position) of its latest episode
            for e, ep in enumerate(self.episodes):
                span = ep.videos[key]
                last[span.path] = max(last.get(span.path, (-1.0, e)), (span.to_timestamp, e))
            for _, e in last.values():
                self.frames(key, self.episode_rows(e)[-1:])

    def validate(self, decode_videos: bool = True) -> None:
        """Full check beyond what opening does: every video decodes and covers its episodes' frames."""
        for key in self.video_keys:
            for e in range(self.num_episodes):
                rows = self.episode_rows(e)
                self.frames(key, rows[[0, -1]] if not decode_videos else rows)
        for key in self.image_keys:
            self.frames(key, np.arange(self.num_frames) if decode_videos else np.array([0]))

    def fingerprint(self) -> str:
        """sha256 over info.json and every data file: identifies the exact frames a result was derived from."""
        h = hashlib.sha256((self.root / INFO_PATH).read_bytes())
        for path in sorted(dict.fromkeys(ep.data_path for ep in self.episodes)):
            h.update(path.read_bytes())
        return h.hexdigest()[:16]

    def close(self) -> None:
        for reader in self._videos.values():
            reader.close()
        self._videos.clear()
