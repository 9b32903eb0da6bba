"""Fault injection: a corpus of corrupt datasets through every stage that reads one. Each case must end in one line
naming the file (and field), exit 2, before any work, with nothing written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
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
VIDEO_FIELD = "chunk-000/file-000.mp4: field 'observation.images."  # the file and its camera key


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
                              VIDEO_FIELD),
    "video truncated": (lambda r: _video(r).write_bytes(_video(r).read_bytes()[: _video(r).stat().st_size // 3]),
                        VIDEO_FIELD),
    "video missing": (lambda r: _video(r).unlink(), VIDEO_FIELD),
    "info.json missing": (lambda r: (r / INFO).unlink(), INFO),
    "info.json not JSON": (lambda r: (r / INFO).write_text("{\"fps\": 80,"), INFO),
    "info total_frames too many": (lambda r: _edit_info(r, lambda i: i.update(total_frames=99999)),
                                   "meta/info.json: field 'total_frames': says 99999,"),
    "info total_frames too few": (lambda r: _edit_info(r, lambda i: i.update(total_frames=1)),
                                  "meta/info.json: field 'total_frames': says 1,"),
    "info total_episodes lies": (lambda r: _edit_info(r, lambda i: i.update(total_episodes=99)),
                                 "meta/info.json: field 'total_episodes': says 99,"),
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


# ---------------------------------------------------------------- kill -9 at seeded random moments
def trials(default: list) -> list:
    """The kill moments of a stage: `default` in the default suite, 20 seeded ones in all under `make test-slow`."""
    extra = [s for s in range(20) if s not in default][: 20 - len(default)]
    return default + [pytest.param(s, marks=pytest.mark.slow) for s in extra]


def _collect_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "vla_distill.cli", "collect", "--tasks", "reach-v3", "--episodes", "3",
            "--image-size", "48", "--steps-after-success", "2", "--workers", "1", "--out", str(out)]


def _content(root: Path) -> dict:
    """What a dataset holds, for comparing two runs: every parquet column and every decoded video frame."""
    from vla_distill.data.dataset import RobotDataset

    ds = RobotDataset(root)
    out = {k: ds.column(k) for k, ft in ds.features.items() if ft["dtype"] not in ("video", "image", "string")}
    out |= {k: ds.frames(k, np.arange(ds.num_frames)) for k in ds.video_keys}
    out["episodes"] = np.array([(ep.index, ep.length, ep.from_index, ep.extra.get("seed", -1)) for ep in ds.episodes])
    return out


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """An uninterrupted collection and how long it took."""
    out = tmp_path_factory.mktemp("collect") / "ds"
    t0 = time.perf_counter()
    subprocess.run(_collect_cmd(out), check=True, capture_output=True, timeout=300)
    return _content(out), time.perf_counter() - t0


@pytest.mark.parametrize("trial", trials([0, "assembly"]))
def test_collect_killed_at_a_random_moment_reruns_to_the_same_dataset(collected, tmp_path, trial):
    """kill -9 at a seeded moment of the run (or as the last attempt lands, when the dataset is being assembled);
    the same command then finishes with exactly the dataset an uninterrupted run wrote."""
    reference, seconds = collected
    out = tmp_path / "ds"
    proc = subprocess.Popen(_collect_cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if trial == "assembly":
        deadline = time.time() + 300
        while time.time() < deadline and len(list((out / ".partial/attempts").glob("*.json"))) < 3:
            time.sleep(0.01)
    else:
        time.sleep(np.random.default_rng(trial).uniform(0.3, 0.95) * seconds)
    proc.kill()
    proc.wait()
    r = subprocess.run(_collect_cmd(out), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = _content(out)
    assert got.keys() == reference.keys()
    for key, value in reference.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def _annotate_cmd(dataset: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "vla_distill.cli", "annotate", "--dataset", str(dataset), "--out", str(out),
            "--teacher", "scripted"]


def _annotation(root: Path) -> dict:
    tables = {name: pq.read_table(root / "meta" / name).to_pydict() for name in ("phases.parquet", "directions.parquet")}
    return {**_content(root), **{f"{n}/{k}": np.asarray(v, dtype=object) for n, t in tables.items() for k, v in t.items()}}


@pytest.fixture(scope="module")
def annotated_once(metaworld_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("annotate") / "ann"
    t0 = time.perf_counter()
    subprocess.run(_annotate_cmd(metaworld_dataset, out), check=True, capture_output=True, timeout=300)
    return _annotation(out), time.perf_counter() - t0


@pytest.mark.parametrize("trial", trials([0]) + [pytest.param("assembly", marks=pytest.mark.slow)])
def test_annotate_killed_at_a_random_moment_reruns_to_the_same_dataset(metaworld_dataset, annotated_once, tmp_path, trial):
    from vla_distill.annotate.episode import staged_episodes

    reference, seconds = annotated_once
    out = tmp_path / "ann"
    proc = subprocess.Popen(_annotate_cmd(metaworld_dataset, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if trial == "assembly":  # every episode staged: the output dataset is being written
        deadline = time.time() + 300
        while time.time() < deadline and len(staged_episodes(out.with_name("ann.partial"))) < 4:
            time.sleep(0.01)
    else:
        time.sleep(np.random.default_rng(trial).uniform(0.3, 0.95) * seconds)
    proc.kill()
    proc.wait()
    r = subprocess.run(_annotate_cmd(metaworld_dataset, out), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = _annotation(out)
    assert got.keys() == reference.keys()
    for key, value in reference.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_annotate_killed_after_writing_its_output_finishes_on_the_rerun(metaworld_dataset, annotated_once, tmp_path):
    """The window a random kill rarely hits: the dataset renamed into place, its staging and audit not yet done. The
    same command finishes them; another command on that output is still refused."""
    reference, _ = annotated_once
    out = tmp_path / "ann"
    subprocess.run(_annotate_cmd(metaworld_dataset, out), check=True, capture_output=True, timeout=300)
    for name in ("audit.json", "audit.md"):
        (out / "meta" / name).unlink()
    (tmp_path / "ann.partial" / "staging").mkdir(parents=True)
    r = subprocess.run(_annotate_cmd(metaworld_dataset, out), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "meta/audit.json").is_file() and (out / "meta/audit.md").is_file()
    assert not (tmp_path / "ann.partial").exists()
    got = _annotation(out)
    for key, value in reference.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    r = subprocess.run([*_annotate_cmd(metaworld_dataset, out)[:-1], "noisy:scripted"], capture_output=True, text=True)
    assert r.returncode == 2 and "output directory already exists" in r.stderr and len(r.stderr.strip().splitlines()) == 1
