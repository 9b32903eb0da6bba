"""The frame cache's disk budget: least recently used entries go first, nothing in use goes, and a full disk is a
one-line error before anything is written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import namedtuple

import numpy as np
import pytest

from conftest import write_fake_dataset
from vla_distill.data import disk_cache
from vla_distill.data.dataset import RobotDataset
from vla_distill.data.format import cache_root
from vla_distill.data.windows import FrameCache
from vla_distill.errors import ConfigError, VlaDistillError


def _entry(cache, name, nbytes, used_at):
    entry = cache / name
    entry.mkdir(parents=True)
    (entry / "observation.images.cam.npy").write_bytes(b"\0" * nbytes)
    os.utime(entry, (used_at, used_at))
    return entry


def test_least_recently_used_entries_go_first_until_the_new_file_fits(tmp_path, monkeypatch):
    monkeypatch.setenv(disk_cache.MAX_GB_ENV, str(3000 / disk_cache.GB))
    old, mid, new = (_entry(tmp_path, n, 1000, t) for n, t in (("old", 100), ("mid", 200), ("new", 300)))
    writing = tmp_path / "writing"
    writing.mkdir()
    disk_cache.make_room(writing, 500)  # 3000 + 500 > 3000: one entry goes, the least recently used
    assert not old.exists() and mid.exists() and new.exists()
    disk_cache.touch(mid)  # read again: now the most recent
    disk_cache.make_room(writing, 1500)
    assert mid.exists() and not new.exists()
    disk_cache.make_room(writing, 10_000)  # larger than the whole budget: cached alone, never evicting itself
    assert writing.exists() and not mid.exists()


def test_an_entry_another_live_process_is_writing_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv(disk_cache.MAX_GB_ENV, "0")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = _entry(tmp_path, "busy", 10, 100)
        (busy / f"observation.images.cam.{sleeper.pid}.tmp.npy").write_bytes(b"\0")
        dead = _entry(tmp_path, "dead", 10, 200)
        disk_cache.make_room(tmp_path / "new", 1)
        assert busy.exists() and not dead.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    disk_cache.make_room(tmp_path / "new", 1)
    assert not busy.exists()


def test_a_disk_too_full_for_the_file_is_a_one_line_error_naming_the_cache(tmp_path, monkeypatch):
    kept = _entry(tmp_path, "kept", 10, 100)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10 * 2**30, 9 * 2**30, disk_cache.MIN_FREE + 100))
    disk_cache.make_room(tmp_path / "new", 100)  # fits: nothing evicted
    assert kept.exists()
    with pytest.raises(VlaDistillError, match=f"{tmp_path}: a 0.0 GB cache file does not fit") as e:
        disk_cache.make_room(tmp_path / "new", 101)
    assert "\n" not in str(e.value) and "VLA_DISTILL_CACHE" in str(e.value)
    assert not kept.exists()  # evicted trying


@pytest.mark.parametrize("bad", ["lots", "-1", "nan"])
def test_a_bad_budget_names_its_variable(tmp_path, monkeypatch, bad):
    monkeypatch.setenv(disk_cache.MAX_GB_ENV, bad)
    with pytest.raises(ConfigError, match=f"{disk_cache.MAX_GB_ENV}.*{bad}"):
        disk_cache.make_room(tmp_path / "new", 1)


def test_decoding_a_second_dataset_evicts_the_first_when_the_budget_holds_one(tmp_path, monkeypatch):
    cam = "observation.images.cam"
    a, b = (RobotDataset(_written(tmp_path / n)) for n in "ab")
    first = FrameCache(a, cam)
    monkeypatch.setenv(disk_cache.MAX_GB_ENV, str(first.frames.nbytes * 1.5 / disk_cache.GB))
    second = FrameCache(b, cam)
    assert not first.path.exists() and second.path.exists()
    np.testing.assert_array_equal(first.frames, FrameCache(a, cam).frames)  # the open memmap still reads; re-decoded
    assert not second.path.exists()
    assert sorted(p.name for p in (cache_root() / "frames").iterdir()) == [first.path.parent.name]


def _written(root):
    write_fake_dataset(root, image=False)
    return root
