"""The LeRobotDataset on-disk format: path templates, feature declarations, arrow types.

Follows lerobot's `datasets/utils.py` (v3.0) and v0.3.3 (v2.1); see shared/FORMATS.md section 1.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from vla_distill.errors import ConfigError, DatasetError
from vla_distill.types import COLLECTION_PATH, DEFAULT_FEATURES

CODEBASE_VERSION = "v3.0"
CHUNK_FILE_PATTERN = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE_PATTERN + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE_PATTERN + ".mp4"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE_PATTERN + ".parquet"
TASKS_PATH = "meta/tasks.parquet"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
CHUNKS_SIZE = 1000
DATA_FILE_SIZE_MB = 100
VIDEO_FILE_SIZE_MB = 200
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS = tuple(f"q{int(q * 100):02d}" for q in QUANTILES)
VISUAL_DTYPES = ("image", "video")
# lerobot's default frame-lookup tolerance between a requested timestamp and a decoded pts.
TOLERANCE_S = 1e-4


def is_visual(feature: dict) -> bool:
    return feature["dtype"] in VISUAL_DTYPES


def feature_shape(feature: dict) -> tuple[int, ...]:
    """The per-frame array shape; `[1]` means a scalar column, as in lerobot."""
    return tuple(int(d) for d in feature["shape"])


def image_hwc(feature: dict) -> tuple[int, int, int]:
    """(H, W, C) of an image/video feature, accepting the CHW variant some ported datasets declare."""
    shape = feature_shape(feature)
    names = feature.get("names")
    if isinstance(names, list) and len(names) == 3 and names[0] in ("channel", "channels"):
        return shape[1], shape[2], shape[0]
    return shape[0], shape[1], shape[2]


def arrow_type(feature: dict) -> pa.DataType:
    """The parquet column type lerobot (through HF datasets) gives a feature."""
    dtype = feature["dtype"]
    if dtype == "image":
        return pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    if dtype == "string":
        return pa.string()
    scalar = pa.from_numpy_dtype(np.dtype(dtype))
    shape = feature_shape(feature)
    if shape == (1,):
        return scalar
    inner = scalar
    for dim in reversed(shape):
        inner = pa.list_(inner, dim)
    return inner


def validate_features(features: dict[str, dict]) -> None:
    for key, ft in features.items():
        if "/" in key:
            raise DatasetError("feature names must not contain '/'", field=key)
        for required in ("dtype", "shape"):
            if required not in ft:
                raise DatasetError(f"feature declaration lacks '{required}'", field=key)
        if is_visual(ft) and len(ft["shape"]) != 3:
            raise DatasetError(f"image/video features need a 3-d shape, got {ft['shape']}", field=key)


def with_default_features(features: dict[str, dict]) -> dict[str, dict]:
    out = {k: v for k, v in features.items() if k not in DEFAULT_FEATURES}
    out.update(DEFAULT_FEATURES)
    return out


def video_feature(height: int, width: int, fps: int, codec: str) -> dict:
    return {
        "dtype": "video",
        "shape": [height, width, 3],
        "names": ["height", "width", "channels"],
        "info": {
            "video.height": height,
            "video.width": width,
            "video.codec": {"libsvtav1": "av1", "libx264": "h264"}.get(codec, codec),
            "video.pix_fmt": "yuv420p",
            "video.is_depth_map": False,
            "video.fps": fps,
            "video.channels": 3,
            "has_audio": False,
        },
    }


def new_info(fps: int, features: dict[str, dict], robot_type: str | None) -> dict[str, Any]:
    has_video = any(ft["dtype"] == "video" for ft in features.values())
    return {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type,
        "total_episodes": 0,
        "total_frames": 0,
        "total_tasks": 0,
        "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": DATA_FILE_SIZE_MB,
        "video_files_size_in_mb": VIDEO_FILE_SIZE_MB,
        "fps": int(fps),
        "splits": {},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if has_video else None,
        "features": features,
    }


def next_chunk_file(chunk_index: int, file_index: int, chunks_size: int = CHUNKS_SIZE) -> tuple[int, int]:
    file_index += 1
    if file_index >= chunks_size:
        return chunk_index + 1, 0
    return chunk_index, file_index


def cache_root() -> Path:
    """Where reusable caches live (decoded frames, VLM answers): $VLA_DISTILL_CACHE or ~/.cache/vla_distill."""
    return Path(os.environ.get("VLA_DISTILL_CACHE", Path.home() / ".cache" / "vla_distill"))


@contextmanager
def single_writer(directory: Path) -> Iterator[None]:
    """Creates an output directory if needed and holds an exclusive lock on it for the life of a resumable run
    (collect, annotate, train, eval): a second run started on the same output would interleave its files with this
    one's and finish or delete them under it. The lock is the kernel's (flock on the directory itself): it goes with
    the process, so a killed run never leaves a stale lock, and no lock file is added to the output."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError("another vla-distill run is writing this output; wait for it or stop it",
                              path=directory) from None
        yield
    finally:
        os.close(fd)


@contextmanager
def removed_on_failure(path: Path) -> Iterator[Path]:
    """Yields `path` (a staging file or directory, renamed into place once complete); if the body fails (a full disk,
    Ctrl-C), removes what it wrote there, so that nothing half-written is left and the space is given back."""
    try:
        yield path
    except BaseException:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any, indent: int | None = 4) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with removed_on_failure(path.with_name(path.name + ".tmp")) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, default=_json_default))
    os.replace(tmp, path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serializable: {type(obj)}")


def read_json(path: Path) -> Any:
    if not path.exists():
        raise DatasetError("file is missing", path=path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"not valid JSON ({e})", path=path) from None


def collection_config(root: Path) -> dict:
    """The config a dataset of ours was collected with (meta/collection.json), or {} for one from elsewhere."""
    path = Path(root) / COLLECTION_PATH
    plan = read_json(path) if path.exists() else {}  # a file that is not JSON: a one-line error naming it
    config = plan.get("config") if isinstance(plan, dict) else None
    return config if isinstance(config, dict) else {}


def feature_names(feature: dict) -> list[str] | None:
    """info.json's names of a feature: a list, or lerobot's {"motors": [...]} / {"axes": [...]} dict."""
    names = feature.get("names")
    if isinstance(names, dict):
        names = next(iter(names.values()), None) if len(names) == 1 else None
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        return names
    return None
