"""Write a LeRobotDataset v3.0 episode by episode.

Layout and rules follow lerobot's writer (shared/FORMATS.md 1.1-1.10): many episodes per data parquet and per
mp4, files roll over at a size limit, per-episode stats in the episodes table, info.json written last so a
directory without it is never mistaken for a finished dataset.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vla_distill.data import stats as stats_lib
from vla_distill.data.arrow import check_values, to_arrow
from vla_distill.data.format import (
    CHUNKS_SIZE,
    DATA_FILE_SIZE_MB,
    EPISODES_PATH,
    INFO_PATH,
    STATS_PATH,
    TASKS_PATH,
    VIDEO_FILE_SIZE_MB,
    arrow_type,
    new_info,
    next_chunk_file,
    validate_features,
    with_default_features,
    write_json_atomic,
)
from vla_distill.data.video import DEFAULT_CODEC, VideoConcatenator, encode_video
from vla_distill.errors import DatasetError
from vla_distill.types import DEFAULT_FEATURES, TASK_INDEX


@dataclass(frozen=True)
class EncodedVideo:
    """An mp4 holding this episode's frames at the dataset fps from `start_s` on (appended without re-encoding): a
    whole per-episode file, or an episode's segment of a dataset's video file."""

    path: Path
    start_s: float = 0.0


@dataclass
class Episode:
    """One episode to write.

    frames: feature key -> (T, *shape) array; video features as (T, H, W, 3) uint8 or an EncodedVideo.
    task: the instruction, or one per frame.
    stats: per-episode stats when the caller has them (needed for EncodedVideo features, whose pixels
        the writer never sees); computed otherwise.
    meta: extra per-episode columns for the episodes table (seed, success step, ...).
    """

    frames: dict[str, Any]
    task: str | list[str]
    stats: dict[str, dict[str, np.ndarray]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        for v in self.frames.values():
            if not isinstance(v, EncodedVideo):
                return len(v)
        raise ValueError("an episode needs at least one non-video feature")


class _RollingFile:
    """(chunk, file) indices of the file currently written for one stream, rolling at a size limit."""

    def __init__(self, limit_mb: float, chunks_size: int):
        self.chunk, self.file = 0, 0
        self.limit_mb = limit_mb
        self.chunks_size = chunks_size
        self.started = False

    def advance(self) -> None:
        self.chunk, self.file = next_chunk_file(self.chunk, self.file, self.chunks_size)


class DatasetWriter:
    def __init__(
        self,
        root: str | Path,
        fps: int,
        features: dict[str, dict],
        robot_type: str | None = None,
        *,
        video_codec: str = DEFAULT_CODEC,
        data_file_mb: float = DATA_FILE_SIZE_MB,
        video_file_mb: float = VIDEO_FILE_SIZE_MB,
        chunks_size: int = CHUNKS_SIZE,
    ):
        self.root = Path(root)
        if (self.root / INFO_PATH).exists():
            raise DatasetError("a dataset already exists here; choose another output directory", path=self.root)
        validate_features(features)
        self.features = with_default_features(features)
        self.fps = int(fps)
        self.info = new_info(fps, self.features, robot_type)
        self.info["chunks_size"] = chunks_size
        self.info["data_files_size_in_mb"] = data_file_mb
        self.info["video_files_size_in_mb"] = video_file_mb
        self.video_codec = video_codec
        self.video_keys = [k for k, ft in self.features.items() if ft["dtype"] == "video"]
        self.column_keys = [k for k, ft in self.features.items() if ft["dtype"] != "video"]
        self.tasks: dict[str, int] = {}
        self.episode_rows: list[dict[str, Any]] = []
        self.episode_stats: list[dict] = []
        self.total_frames = 0
        self._schema = pa.schema([(k, arrow_type(self.features[k])) for k in self.column_keys])
        self._data = _RollingFile(data_file_mb, chunks_size)
        self._data_writer: pq.ParquetWriter | None = None
        self._videos = {k: _RollingFile(video_file_mb, chunks_size) for k in self.video_keys}
        self._concat: dict[str, VideoConcatenator] = {}
        self._tmp = Path(tempfile.mkdtemp(prefix=".writer-", dir=self._ensure_root()))
        self._finalized = False

    def _ensure_root(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root

    # ----------------------------------------------------------------------------------------------- episodes
    def add_episode(self, episode: Episode) -> int:
        if self._finalized:
            raise RuntimeError("writer is finalized")
        n = episode.length
        if n == 0:
            raise DatasetError("episode has no frames", path=self.root)
        ep_index = len(self.episode_rows)
        arrays = self._check_episode(episode, n)
        task_per_frame = [episode.task] * n if isinstance(episode.task, str) else list(episode.task)
        if len(task_per_frame) != n:
            raise DatasetError(f"{len(task_per_frame)} task strings for {n} frames", path=self.root, field="task")
        for t in task_per_frame:
            self.tasks.setdefault(t, len(self.tasks))
        frame_index = np.arange(n, dtype=np.int64)
        arrays.update(
            timestamp=(frame_index / self.fps).astype(np.float32),
            frame_index=frame_index,
            episode_index=np.full(n, ep_index, dtype=np.int64),
            index=np.arange(self.total_frames, self.total_frames + n, dtype=np.int64),
            task_index=np.array([self.tasks[t] for t in task_per_frame], dtype=np.int64),
        )
        ep_stats = self._episode_stats(episode, arrays)
        row: dict[str, Any] = {
            "episode_index": ep_index,
            "tasks": list(dict.fromkeys(task_per_frame)),
            "length": n,
            **self._write_data(arrays),
            "dataset_from_index": self.total_frames,
            "dataset_to_index": self.total_frames + n,
        }
        for key in self.video_keys:
            row.update(self._write_video(key, episode.frames[key], n))
        for key, st in ep_stats.items():
            for name, value in st.items():
                row[f"stats/{key}/{name}"] = np.asarray(value).tolist()
        row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        row.update(episode.meta)
        self.episode_rows.append(row)
        self.episode_stats.append(ep_stats)
        self.total_frames += n
        return ep_index

    def _check_episode(self, episode: Episode, n: int) -> dict[str, np.ndarray]:
        declared = set(self.features) - set(DEFAULT_FEATURES)
        missing = declared - set(episode.frames)
        extra = set(episode.frames) - declared
        if missing or extra:
            which = sorted(missing)[0] if missing else sorted(extra)[0]
            raise DatasetError("missing from the episode" if missing else "not declared in features", field=which)
        arrays = {}
        for key, values in episode.frames.items():
            if isinstance(values, EncodedVideo):
                if self.features[key]["dtype"] != "video":
                    raise DatasetError("an encoded video was given for a non-video feature", field=key)
                continue
            arrays[key] = check_values(key, values, self.features[key], n)
        return arrays

    def _episode_stats(self, episode: Episode, arrays: dict[str, np.ndarray]) -> dict:
        given = dict(episode.stats or {})
        need = {k: v for k, v in arrays.items() if k not in given}
        need.update({k: episode.frames[k] for k in self.video_keys if k not in given})
        for key, v in need.items():
            if isinstance(v, EncodedVideo):
                raise DatasetError("stats are required for a pre-encoded video", field=key)
        return {**stats_lib.episode_stats(need, self.features), **given}

    def _write_data(self, arrays: dict[str, np.ndarray]) -> dict[str, int]:
        roll = self._data
        path = self.root / self.info["data_path"].format(chunk_index=roll.chunk, file_index=roll.file)
        if self._data_writer is not None and path.stat().st_size / 1e6 >= roll.limit_mb:
            self._data_writer.close()
            self._data_writer = None
            roll.advance()
            path = self.root / self.info["data_path"].format(chunk_index=roll.chunk, file_index=roll.file)
        if self._data_writer is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data_writer = pq.ParquetWriter(path, self._schema, compression="snappy", use_dictionary=True)
        table = pa.table([to_arrow(arrays[k], self.features[k]) for k in self.column_keys], schema=self._schema)
        self._data_writer.write_table(table)
        return {"data/chunk_index": roll.chunk, "data/file_index": roll.file}

    def _write_video(self, key: str, values: Any, n: int) -> dict[str, Any]:
        roll = self._videos[key]
        concat = self._concat.get(key)
        if concat is not None and concat.size_mb() >= roll.limit_mb:
            concat.close()
            roll.advance()
            concat = None
        if concat is None:
            path = self.root / self.info["video_path"].format(video_key=key, chunk_index=roll.chunk,
                                                              file_index=roll.file)
            concat = self._concat[key] = VideoConcatenator(path)
        start_s = 0.0
        if isinstance(values, EncodedVideo):
            src, start_s = Path(values.path), values.start_s
        else:
            frames = check_values(key, values, self.features[key], n)
            src = self._tmp / f"{key}.mp4"
            encode_video(frames, src, self.fps, self.video_codec)
        start, end = concat.append(src, n, self.fps, start_s)
        return {
            f"videos/{key}/chunk_index": roll.chunk,
            f"videos/{key}/file_index": roll.file,
            f"videos/{key}/from_timestamp": start,
            f"videos/{key}/to_timestamp": end,
        }

    # ----------------------------------------------------------------------------------------------- finish
    def finalize(self) -> Path:
        """Closes every file and writes the metadata; info.json last."""
        if self._finalized:
            return self.root
        if self._data_writer is not None:
            self._data_writer.close()
        for concat in self._concat.values():
            concat.close()
        shutil.rmtree(self._tmp, ignore_errors=True)
        n_eps = len(self.episode_rows)
        if n_eps:
            episodes_path = self.root / EPISODES_PATH.format(chunk_index=0, file_index=0)
            episodes_path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(self.episode_rows), episodes_path, compression="snappy")
        tasks = pd.DataFrame({TASK_INDEX: list(self.tasks.values())}, index=list(self.tasks.keys()))
        (self.root / TASKS_PATH).parent.mkdir(parents=True, exist_ok=True)
        tasks.to_parquet(self.root / TASKS_PATH)
        write_json_atomic(self.root / STATS_PATH, stats_lib.to_json(stats_lib.aggregate_all(self.episode_stats)))
        self.info.update(
            total_episodes=n_eps,
            total_frames=self.total_frames,
            total_tasks=len(self.tasks),
            splits={"train": f"0:{n_eps}"},
        )
        write_json_atomic(self.root / INFO_PATH, self.info)
        self._finalized = True
        return self.root

    def abort(self) -> None:
        if self._data_writer is not None:
            self._data_writer.close()
        for concat in self._concat.values():
            concat.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()
