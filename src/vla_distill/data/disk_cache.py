"""The frame cache's disk budget: whole entries evicted least recently used, so the cache never fills the disk.

An entry is one directory under `$VLA_DISTILL_CACHE/frames`: one recording's decoded frames of a camera and the
frozen encoders' features of them, gigabytes each at LIBERO's sizes. Every new dataset (a DAgger round, an
annotated or audited copy with re-encoded videos, a benchmark's collection) adds one, and nothing removed them:
a busy machine collected 58 GB of them and left no room for a fresh install. Before a file is written into the
cache, `make_room` removes the least recently used other entries until the cache, with the new file, stays under
`$VLA_DISTILL_CACHE_MAX_GB` (default 40) and the disk keeps `MIN_FREE` free after writing it. Entries record their
use in their directory's mtime (`touch`). A process that still reads an evicted entry keeps reading it (an unlinked
file stays readable through an open memmap); the next run decodes it again.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from vla_distill.errors import ConfigError, VlaDistillError

DEFAULT_MAX_GB = 40.0
MAX_GB_ENV = "VLA_DISTILL_CACHE_MAX_GB"
MIN_FREE = 1 << 30  # what a cache file may leave free on its disk: the rest of the run still writes checkpoints
GB = 1e9


def max_cache_bytes() -> int:
    raw = os.environ.get(MAX_GB_ENV, "")
    if not raw:
        return int(DEFAULT_MAX_GB * GB)
    try:
        gb = float(raw)
    except ValueError:
        gb = -1.0
    if not gb >= 0:  # also NaN
        raise ConfigError(f"must be a number of gigabytes >= 0, got {raw!r}", field=MAX_GB_ENV)
    return int(gb * GB)


def touch(entry: Path) -> None:
    """Marks a cache entry as just used: eviction goes by the entry directory's mtime."""
    try:
        os.utime(entry)
    except OSError:  # a read-only cache (shared by a team) is still read, only never evicted from here
        pass


def make_room(entry: Path, nbytes: int) -> None:
    """Evicts other entries of `entry`'s cache, least recently used first, until `nbytes` more fit the budget and
    the disk; raises a one-line error naming the cache when the disk stays too full. `entry` itself is never
    evicted, so one recording larger than the budget is still cached (alone)."""
    cache = entry.parent
    sizes = {e: _size(e) for e in sorted((e for e in _entries(cache) if e != entry), key=_last_use)}
    used = sum(sizes.values()) + _size(entry)
    budget = max_cache_bytes()
    free = shutil.disk_usage(cache).free
    for old, size in sizes.items():  # oldest use first
        if used + nbytes <= budget and free - nbytes >= MIN_FREE:
            break
        if _being_written(old):
            continue
        used -= size
        shutil.rmtree(old, ignore_errors=True)
        free = shutil.disk_usage(cache).free
    if free - nbytes < MIN_FREE:
        raise VlaDistillError(
            f"a {nbytes / GB:.1f} GB cache file does not fit: {free / GB:.1f} GB free after evicting every entry "
            f"not in use, and {MIN_FREE / GB:.0f} GB must stay free; free space on that disk or point "
            "VLA_DISTILL_CACHE at another", path=cache)


def tmp_path(path: Path) -> Path:
    """Where this process writes the cache file `path` before renaming it: `<stem>.<pid>.tmp.npy`. What killed builds
    of the same file left (temporary files of processes no longer running) is deleted first: a cache is gigabytes."""
    for tmp in path.parent.glob(path.stem + ".*.tmp.npy"):
        pid = _tmp_pid(tmp)
        if pid is not None and not _alive(pid):
            tmp.unlink(missing_ok=True)
    return path.with_name(path.stem + f".{os.getpid()}.tmp.npy")


def _entries(cache: Path) -> list[Path]:
    return [e for e in cache.iterdir() if e.is_dir()] if cache.is_dir() else []


def _last_use(entry: Path) -> float:
    try:
        return entry.stat().st_mtime
    except FileNotFoundError:  # evicted by another run meanwhile
        return 0.0


def _size(entry: Path) -> int:
    try:
        return sum(f.stat().st_size for f in entry.iterdir() if f.is_file())
    except FileNotFoundError:
        return 0


def _being_written(entry: Path) -> bool:
    return any((pid := _tmp_pid(t)) is not None and _alive(pid) for t in entry.glob("*.tmp.npy"))


def _tmp_pid(tmp: Path) -> int | None:
    pid = tmp.name[: -len(".tmp.npy")].rsplit(".", 1)[-1]
    return int(pid) if pid.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
