"""The training-side view: temporal windows declared by the consumer, padding flags, split by episode.

A policy declares `deltas = {"observation.state": [-1, 0], "action": range(0, K)}` (frame offsets; or seconds
through `deltas_from_timestamps`). Sample j is frame r of its episode; each key returns the frames r + d,
clamped to the episode, with `<key>_is_pad` marking the clamped positions, as lerobot's delta_timestamps do.

Video frames are decoded once into a uint8 memmap cache (`FrameCache`) so random access never waits on the
codec: decoding per sample would cap the loader near the codec's ~2k frames/s, far below what training needs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vla_distill.data import disk_cache
from vla_distill.data.dataset import RobotDataset
from vla_distill.data.format import INFO_PATH, cache_root, is_visual
from vla_distill.errors import ConfigError
from vla_distill.types import PAD_SUFFIX, TASK_INDEX, images_to_float


def deltas_from_timestamps(delta_timestamps: dict[str, Sequence[float]], fps: float,
                           tolerance_s: float = 1e-4) -> dict[str, list[int]]:
    """lerobot-style seconds -> frame offsets; each must land on a frame."""
    out = {}
    for key, ts in delta_timestamps.items():
        offsets = [round(t * fps) for t in ts]
        for t, d in zip(ts, offsets):
            if abs(t - d / fps) > tolerance_s:
                raise ConfigError(f"{t}s is not a multiple of 1/fps ({1 / fps:.5f}s)", field=f"delta_timestamps.{key}")
        out[key] = offsets
    return out


def split_episodes(ds: RobotDataset, val_fraction: float = 0.1, seed: int = 0) -> tuple[list[int], list[int]]:
    """Train/validation split by episode, stratified by task so every task with >= 2 episodes has one in each."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError("must be in [0, 1)", field="val_fraction")
    rng = np.random.default_rng(seed)
    by_task: dict[str, list[int]] = {}
    for pos, ep in enumerate(ds.episodes):
        by_task.setdefault(ep.tasks[0] if ep.tasks else "", []).append(pos)
    train, val = [], []
    for task in sorted(by_task):
        eps = list(rng.permutation(by_task[task]))
        n_val = int(round(val_fraction * len(eps)))
        if val_fraction > 0 and n_val == 0 and len(eps) >= 2:
            n_val = 1
        val += eps[:n_val]
        train += eps[n_val:]
    return sorted(int(e) for e in train), sorted(int(e) for e in val)


class FrameCache:
    """All frames of one camera as a (N, H, W, 3) uint8 memmap, decoded once and reused across runs.

    A video camera's cache is keyed by what decoding reads (frame_identity): the files and the spans of them each
    episode plays, so the annotated, corrupted or audited copies of one recording, which hard-link its videos, share
    one cache, and a changed file never reads stale frames. Frames stored in the data files are keyed by the
    dataset's path and the size/mtime of its info.json. Written to a temporary name and renamed when complete."""

    def __init__(self, ds: RobotDataset, key: str, cache_dir: Path | None = None):
        self.path = Path(cache_dir or cache_root()) / "frames" / frame_identity(ds, key) / f"{key}.npy"
        if not self.path.exists():
            self._build(ds, key)
        disk_cache.touch(self.path.parent)
        self.frames = np.load(self.path, mmap_mode="r")

    def _build(self, ds: RobotDataset, key: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = disk_cache.tmp_path(self.path)
        h, w = ds.frames(key, np.array([0])).shape[1:3]
        disk_cache.make_room(self.path.parent, ds.num_frames * h * w * 3)
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(ds.num_frames, h, w, 3))
        for e in tqdm(range(ds.num_episodes), desc=f"decoding {key} into cache", unit="ep", leave=False):
            rows = ds.episode_rows(e)
            out[rows] = ds.frames(key, rows)
        out.flush()
        del out
        os.replace(tmp, self.path)


def frame_identity(ds: RobotDataset, key: str) -> str:
    """16 hex digits naming the frames of camera `key` in row order: for a video camera each episode's length and
    span (the file's device, inode, size and mtime, and the timestamps played); otherwise the dataset's path and
    its info.json's size and mtime."""
    h = hashlib.sha1(key.encode())
    if ds.features[key]["dtype"] == "video":
        for ep in ds.episodes:
            span = ep.videos[key]
            st = span.path.stat()
            h.update(f"{ep.length}:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:"
                     f"{span.from_timestamp}:{span.to_timestamp};".encode())
    else:
        st = (ds.root / INFO_PATH).stat()
        h.update(f"{ds.root.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


class WindowedDataset(torch.utils.data.Dataset):
    """Samples = frames of the chosen episodes. Item: {key: (T, ...) tensor, key_is_pad: (T,) bool, "task": str, ...};
    keys without declared deltas give the current frame without a time axis. Images come as (..., 3, H, W) float32
    in [0, 1] (types.images_to_float)."""

    def __init__(
        self,
        ds: RobotDataset,
        deltas: dict[str, Sequence[int]],
        episodes: Sequence[int] | None = None,
        keys: Sequence[str] | None = None,
        cache_dir: Path | None = None,
        use_cache: bool = True,
        row_arrays: dict[str, np.ndarray] | None = None,
        columns: dict[str, np.ndarray] | None = None,
    ):
        """row_arrays: {name: (N, ...) array by dataset row}, e.g. a frozen encoder's features of every frame;
        each item gets name: the current frame's row, as float32. columns: {feature key: (N, ...) array by dataset
        row} read instead of that column, windowed as the column would be (a target derived from it)."""
        self.ds = ds
        self.row_arrays = dict(row_arrays or {})
        self.columns = dict(columns or {})
        for key, values in self.columns.items():
            if key not in ds.features or len(values) != ds.num_frames:
                raise ConfigError(f"a replacement column needs the feature and one row per frame ({ds.num_frames})",
                                  field=f"columns.{key}")
        self.deltas = {k: np.asarray(list(v), dtype=np.int64) for k, v in deltas.items()}
        for key in self.deltas:
            if key not in ds.features:
                raise ConfigError(f"no such feature in {ds.root}", field=f"deltas.{key}")
        self.keys = list(keys) if keys is not None else [k for k in ds.features if ds.features[k]["dtype"] != "string"]
        self.episodes = list(range(ds.num_episodes)) if episodes is None else list(episodes)
        # Per sample: its row, and the [start, end) rows of its episode that windows are clamped to.
        spans = [ds.episode_rows(e) for e in self.episodes]
        self.rows = np.concatenate(spans) if spans else np.zeros(0, np.int64)
        self.ep_start = np.concatenate([np.full(len(r), r[0]) for r in spans]) if spans else self.rows
        self.ep_end = np.concatenate([np.full(len(r), r[-1] + 1) for r in spans]) if spans else self.rows
        visual = [k for k in self.keys if is_visual(ds.features[k])]
        self.caches = {k: FrameCache(ds, k, cache_dir).frames for k in visual} if use_cache else {}

    def __len__(self) -> int:
        return len(self.rows)

    def _window(self, js: np.ndarray, key: str) -> tuple[np.ndarray, np.ndarray | None]:
        """Rows (B, T) clamped to each sample's episode and the (B, T) pad flags; (B,) rows and None without deltas."""
        r = self.rows[js]
        if key not in self.deltas:
            return r, None
        want = r[:, None] + self.deltas[key][None]
        lo, hi = self.ep_start[js][:, None], self.ep_end[js][:, None]
        return np.clip(want, lo, hi - 1), (want < lo) | (want >= hi)

    def _values(self, key: str, rows: np.ndarray) -> torch.Tensor:
        if is_visual(self.ds.features[key]):
            flat = rows.reshape(-1)
            imgs = self.caches[key][np.sort(flat)] if key in self.caches else self.ds.frames(key, np.sort(flat))
            imgs = imgs[np.argsort(np.argsort(flat))]  # memmap fancy indexing is fastest in row order
            t = images_to_float(imgs)
            return t.reshape(*rows.shape, *t.shape[1:])
        column = self.columns[key] if key in self.columns else self.ds.column(key)
        return torch.from_numpy(np.asarray(column[rows]))

    def batch(self, js: Sequence[int] | np.ndarray) -> dict:
        """Samples js stacked: {key: (B, T, ...) or (B, ...), key_is_pad: (B, T), "task": list[str],
        "task_index": (B,)}."""
        js = np.asarray(js, dtype=np.int64)
        item: dict = {}
        for key in self.keys:
            rows, pad = self._window(js, key)
            item[key] = self._values(key, rows)
            if pad is not None:
                item[key + PAD_SUFFIX] = torch.from_numpy(pad)
        rows = self.rows[js]
        order = np.argsort(rows)  # memmap fancy indexing is fastest in row order
        for name, arr in self.row_arrays.items():
            values = np.empty((len(rows), *arr.shape[1:]), arr.dtype)
            values[order] = arr[rows[order]]
            item[name] = torch.from_numpy(values).float()
        task_index = np.asarray(self.ds.column(TASK_INDEX)[rows]).reshape(-1)
        item[TASK_INDEX] = torch.from_numpy(task_index)
        item["task"] = [self.ds.tasks[int(t)] for t in task_index]
        return item

    def __getitem__(self, j: int) -> dict:
        item = self.batch([j])
        return {k: v[0] for k, v in item.items()}
