"""Fault injection: a corpus of corrupt datasets through every stage that reads one. Each case must end in one line
naming the file (and field), exit 2, before any work, with nothing written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
CAMERA = "observation.images.corner2"


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


def _zero_tail(raw: bytes) -> bytes:
    """The container's header kept, the frames after the first third zeroed."""
    return raw[: len(raw) // 3] + bytes(len(raw) - len(raw) // 3)


def _last_plus(amount):
    """A column edit: the last episode's value moved by `amount`."""
    def change(v: np.ndarray) -> np.ndarray:
        v[-1] += amount
        return v

    return change


def _nan_state(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.float32)
    v[3, 0] = np.nan
    return v


# name: (what it does to the dataset, a fragment the error must contain)
CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing parquet": (lambda r: (r / DATA).unlink(), f"{DATA}: parquet file is missing"),
    "truncated parquet": (lambda r: (r / DATA).write_bytes((r / DATA).read_bytes()[:2000]),
                          f"{DATA}: cannot read parquet (truncated or corrupt"),
    "video of random bytes": (lambda r: _video(r).write_bytes(np.random.default_rng(0).bytes(_video(r).stat().st_size)),
                              VIDEO_FIELD),
    "video truncated": (lambda r: _video(r).write_bytes(_video(r).read_bytes()[: _video(r).stat().st_size // 3]),
                        VIDEO_FIELD),
    "video frames zeroed": (lambda r: _video(r).write_bytes(_zero_tail(_video(r).read_bytes())), VIDEO_FIELD),
    "video missing": (lambda r: _video(r).unlink(), VIDEO_FIELD),
    "info.json missing": (lambda r: (r / INFO).unlink(), f"{INFO}: file is missing"),
    "info.json not JSON": (lambda r: (r / INFO).write_text("{\"fps\": 80,"), f"{INFO}: not valid JSON"),
    "info total_frames too many": (lambda r: _edit_info(r, lambda i: i.update(total_frames=99999)),
                                   "meta/info.json: field 'total_frames': says 99999,"),
    "info total_frames too few": (lambda r: _edit_info(r, lambda i: i.update(total_frames=1)),
                                  "meta/info.json: field 'total_frames': says 1,"),
    "info total_episodes lies": (lambda r: _edit_info(r, lambda i: i.update(total_episodes=99)),
                                 "meta/info.json: field 'total_episodes': says 99,"),
    "info shape lies": (lambda r: _edit_info(r, lambda i: i["features"]["action"].update(shape=[3])),
                        f"{DATA}: field 'action': column holds 4 values per frame, info.json shape is [3]"),
    "NaN in the state": (lambda r: _edit_column(r / DATA, "observation.state", _nan_state),
                         f"{DATA}: field 'observation.state': holds NaN/inf (frame index 3)"),
    "NaN in the actions": (lambda r: _edit_column(r / DATA, "action", _nan_state),
                           f"{DATA}: field 'action': holds NaN/inf (frame index 3)"),
    "episode offsets lie": (lambda r: _edit_column(r / EPISODES, "dataset_from_index", lambda v: v + 1),
                            f"{EPISODES}: field 'dataset_from_index': episode 0 starts at row 1; the rows before it "
                            "end at 0"),
    "last episode ends 1 row past the data": (lambda r: _edit_column(r / EPISODES, "dataset_to_index", _last_plus(1)),
                                              f"{EPISODES}: field 'dataset_to_index': episode 3 ends at row"),
    "last episode ends 500 rows past the data": (lambda r: _edit_column(r / EPISODES, "dataset_to_index",
                                                                        _last_plus(500)),
                                                 f"{EPISODES}: field 'dataset_to_index': episode 3 ends at row"),
    "video span 100 s past its clip": (lambda r: _edit_column(r / EPISODES, f"videos/{CAMERA}/to_timestamp",
                                                              _last_plus(100.0)),
                                       f"{EPISODES}: field 'videos/{CAMERA}/to_timestamp': episode 3 spans 10"),
    "episodes table names the wrong episode": (lambda r: _edit_column(r / EPISODES, "episode_index",
                                                                      lambda v: np.where(v == 1, 7, v)),
                                               f"{EPISODES}: field 'episode_index': says 7 for rows"),
}
STAGES = {
    "inspect": lambda ds, out: ["inspect", str(ds)],
    "inspect --quick": lambda ds, out: ["inspect", "--quick", str(ds)],
    "annotate": lambda ds, out: ["annotate", "--dataset", str(ds), "--out", str(out), "--teacher", "scripted"],
    "audit": lambda ds, out: ["audit", "--dataset", str(ds)],
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


# ---------------------------------------------------------------- bad flags and broken checkpoints
def _truncated_copy(run: Path, dest: Path) -> Path:
    """A copy of a training run whose last checkpoint's model.safetensors lost its second half."""
    shutil.copytree(run, dest)
    weights = dest / "checkpoints" / "last" / "pretrained_model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return dest


# name: (the command's arguments from (annotated dataset, tmp_path, the tiny student run), a fragment of its one line)
BAD_COMMANDS: dict[str, tuple[Callable[[Path, Path, Path], list[str]], str]] = {
    "train --lr nan": (lambda ds, t, run: ["train", "--dataset", str(ds), "--out", str(t / "out"), "--lr", "nan"],
                       "lr: must be a finite number > 0, got nan"),
    "train --dim-weights of the wrong length": (
        lambda ds, t,
        run: ["train", "--dataset", str(ds), "--out", str(t / "out"), "--dim-weights", "1,2", "--steps", "2"],
        "field 'dim_weights': 2 weights given, the action 'action.teacher' has 4 dimensions"),
    "train --dim-weights nan": (lambda ds, t, run: ["train", "--dataset", str(ds), "--out", str(t / "out"),
                                                    "--dim-weights", "1,1,nan,1"],
                                                    "dim_weights: each must be a finite"),
    "train without --dataset": (lambda ds, t, run: ["train", "--out", str(t / "out")], "--dataset is required"),
    "export of truncated weights": (
        lambda ds, t, run: ["export", "--policy", str(_truncated_copy(run, t / "run")), "--out", str(t / "out")],
        "model.safetensors: cannot read the weights"),
    "eval of truncated weights": (
        lambda ds, t, run: ["eval", "--policy", str(_truncated_copy(run, t / "run")), "--tasks", "reach-v3",
                            "--episodes", "1", "--out", str(t / "out")], "model.safetensors: cannot read the weights"),
    "eval --seed=-21475": (lambda ds, t, run: ["eval", "--policy", "scripted", "--tasks", "reach-v3", "--seed=-21475",
                                               "--out", str(t / "out")], "field 'seed': must be >= 0, got -21475"),
    "eval --seed -1": (lambda ds, t, run: ["eval", "--policy", "scripted", "--tasks", "reach-v3", "--seed", "-1",
                                           "--out", str(t / "out")], "field 'seed': must be >= 0, got -1"),
    "collect --seed -3": (lambda ds, t,
                          run: ["collect", "--tasks", "reach-v3", "--seed", "-3", "--out", str(t / "out")],
                          "field 'seed': must be >= 0, got -3"),
}


@pytest.mark.parametrize("case", list(BAD_COMMANDS))
def test_a_bad_flag_or_a_broken_checkpoint_is_one_line_with_nothing_written(case, annotated, tiny_student, tmp_path,
                                                                             capsys):
    args, fragment = BAD_COMMANDS[case]
    code = main(args(annotated, tmp_path, tiny_student))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ") and fragment in err, err
    assert not (tmp_path / "out").exists()  # no train_config.json, eval_plan.json or bundle started


def test_train_resume_needs_only_out_and_steps_and_runs_resolve_their_dataset_from_anywhere(annotated, tmp_path,
                                                                                           monkeypatch):
    """README's `train --out RUN --steps N --resume`, from another directory than the run was started in; the run
    records its dataset absolute, and a run that recorded it relative (before) still finds it from anywhere."""
    shutil.copytree(annotated, tmp_path / "work" / "ds")
    monkeypatch.chdir(tmp_path / "work")
    base = ["--preset", "tiny", "--batch-size", "4", "--warmup-steps", "1", "--val-batches", "1", "--log-every", "1"]
    assert main(["train", "--dataset", "ds", "--out", "runs/r", "--steps", "2", "--save-every", "2", *base]) == 0
    saved = json.loads((tmp_path / "work/runs/r/train_config.json").read_text())
    assert saved["dataset"] == str(tmp_path / "work" / "ds")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--out", "work/runs/r", "--steps", "4", "--resume"]) == 0
    assert json.loads((tmp_path / "work/runs/r/train_config.json").read_text())["steps"] == 4
    assert (tmp_path / "work/runs/r/checkpoints/000004").is_dir() and not (tmp_path / "runs").exists()
    # a run as older versions wrote it: dataset and out relative to where `train` ran (tmp_path/work)
    for f in (tmp_path / "work/runs/r").rglob("*.json"):
        if f.name in ("train_config.json", "provenance.json"):
            d = json.loads(f.read_text())
            d.update({"dataset": "ds"} if "dataset" in d else {}, **({"out": "runs/r"} if "out" in d else {}))
            f.write_text(json.dumps(d))
    from vla_distill.models.checkpoint import read_provenance

    assert read_provenance(tmp_path / "work/runs/r")["dataset"] == str(tmp_path / "work" / "ds")
    assert main(["export", "--policy", "work/runs/r", "--out", "bundle"]) == 0
    assert main(["train", "--out", "work/runs/r", "--steps", "6", "--resume"]) == 0


# ---------------------------------------------------------------- kill -9 at seeded random moments
# Each stage is run once uninterrupted (a module fixture: what it ended with, its seconds, its output); each trial
# kills the same command with SIGKILL at a seeded fraction of those seconds, or at a named moment, reruns it, and
# asserts it ends with exactly the uninterrupted run's result.
def trials(default: list) -> list:
    """The kill moments of a stage: `default` in the default suite, 20 seeded ones in all under `make test-slow`."""
    extra = [s for s in range(20) if s not in default][: 20 - len(default)]
    return default + [pytest.param(s, marks=pytest.mark.slow) for s in extra]


def _uninterrupted(cmd: list[str], out: Path, result: Callable[[Path], dict]) -> tuple[dict, float, Path]:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    return result(out), time.perf_counter() - t0, out


def _kill_and_rerun(cmd: list[str], trial, seconds: float,
                    moments: dict[str, Callable[[], bool]] | None = None) -> None:
    """kill -9 at the seeded moment `trial` (a fraction of the uninterrupted run's seconds), or as soon as the named
    moment's condition holds (polled every millisecond); then the same command, which must finish."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if moments and trial in moments:
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline and not moments[trial]():
            time.sleep(0.001)
    else:
        time.sleep(np.random.default_rng(trial).uniform(0.3, 0.95) * seconds)
    proc.kill()
    proc.wait()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def _assert_same(got: dict, reference: dict) -> None:
    assert got.keys() == reference.keys()
    for key, value in reference.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


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
    out = tmp_path_factory.mktemp("collect") / "ds"
    return _uninterrupted(_collect_cmd(out), out, _content)


@pytest.mark.parametrize("trial", trials([0]) + [pytest.param("assembly", marks=pytest.mark.slow)])
def test_collect_killed_at_a_random_moment_reruns_to_the_same_dataset(collected, tmp_path, trial):
    """kill -9 at a seeded moment of the run, or as the last attempt lands (the dataset is being assembled)."""
    reference, seconds, _ = collected
    out = tmp_path / "ds"
    assembly = lambda: len(list((out / ".partial/attempts").glob("*.json"))) == 3  # noqa: E731
    _kill_and_rerun(_collect_cmd(out), trial, seconds, {"assembly": assembly})
    _assert_same(_content(out), reference)


def _annotate_cmd(dataset: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "vla_distill.cli", "annotate", "--dataset", str(dataset), "--out", str(out),
            "--teacher", "scripted"]


def _annotation(root: Path) -> dict:
    tables = {name: pq.read_table(root / "meta" / name).to_pydict() for name in ("phases.parquet",
                                                                                 "directions.parquet")}
    return {**_content(root),
            **{f"{n}/{k}": np.asarray(v, dtype=object) for n, t in tables.items() for k, v in t.items()}}


@pytest.fixture(scope="module")
def annotated_once(metaworld_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("annotate") / "ann"
    return _uninterrupted(_annotate_cmd(metaworld_dataset, out), out, _annotation)


@pytest.mark.parametrize("trial", trials([]) + [pytest.param("assembly", marks=pytest.mark.slow)])
def test_annotate_killed_at_a_random_moment_reruns_to_the_same_dataset(metaworld_dataset, annotated_once, tmp_path,
                                                                       trial):
    """kill -9 at a seeded moment, or once every episode is staged (the output dataset is being written)."""
    from vla_distill.annotate.episode import staged_episodes

    reference, seconds, _ = annotated_once
    out = tmp_path / "ann"
    assembly = lambda: len(staged_episodes(out.with_name("ann.partial"))) == 4  # noqa: E731
    _kill_and_rerun(_annotate_cmd(metaworld_dataset, out), trial, seconds, {"assembly": assembly})
    _assert_same(_annotation(out), reference)


@pytest.mark.slow
def test_annotate_killed_after_writing_its_output_finishes_on_the_rerun(metaworld_dataset, annotated_once, tmp_path):
    """The window a random kill rarely hits: the dataset renamed into place, its staging and audit not yet done. The
    same command finishes them; another command on that output is still refused."""
    reference, _, _ = annotated_once
    out = tmp_path / "ann"
    subprocess.run(_annotate_cmd(metaworld_dataset, out), check=True, capture_output=True, timeout=300)
    for name in ("audit.json", "audit.md"):
        (out / "meta" / name).unlink()
    (tmp_path / "ann.partial" / "staging").mkdir(parents=True)
    r = subprocess.run(_annotate_cmd(metaworld_dataset, out), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "meta/audit.json").is_file() and (out / "meta/audit.md").is_file()
    assert not (tmp_path / "ann.partial").exists()
    _assert_same(_annotation(out), reference)
    r = subprocess.run([*_annotate_cmd(metaworld_dataset, out)[:-1], "noisy:scripted"], capture_output=True, text=True)
    assert r.returncode == 2 and "output directory already exists" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def _train_cmd(dataset: Path, run: Path) -> list[str]:
    return [sys.executable, "-m", "vla_distill.cli", "train", "--dataset", str(dataset), "--out", str(run), "--steps",
            "12", "--batch-size", "8", "--save-every", "4", "--log-every", "1", "--val-batches", "1"]


def _training(run: Path) -> dict:
    """What a run ends with: every checkpoint's weights and training state, and the logged curve without timings."""
    from safetensors.numpy import load_file

    out = {}
    for f in sorted((run / "checkpoints").glob("[0-9]*/**/*.safetensors")):
        out |= {f"{f.relative_to(run)}/{k}": v for k, v in load_file(str(f)).items()}
    rows = [{k: v for k, v in json.loads(line).items() if not _timing(k)}
            for line in (run / "metrics.jsonl").read_text().splitlines()]
    out["metrics"] = np.array([json.dumps(r, sort_keys=True) for r in rows])
    return out


@pytest.fixture(scope="module")
def trained_once(annotated, tmp_path_factory):
    run = tmp_path_factory.mktemp("train") / "run"
    return _uninterrupted(_train_cmd(annotated, run), run, _training)


@pytest.mark.parametrize("trial", trials(["checkpoint"]) + [pytest.param("first checkpoint", marks=pytest.mark.slow)])
def test_train_killed_at_a_random_moment_reruns_to_the_same_run(annotated, trained_once, tmp_path, trial):
    """kill -9 at a seeded moment, or while a checkpoint's step directory is being written (the first one: nothing to
    continue from, the run starts over; a later one: it continues from the one before); the same command then ends
    with every checkpoint and every logged number of an uninterrupted run."""
    reference, seconds, _ = trained_once
    run = tmp_path / "run"
    writing = lambda step: lambda: (run / "checkpoints" / f".{step:06d}.tmp").exists()  # noqa: E731
    _kill_and_rerun(_train_cmd(annotated, run), trial, seconds,
                    {"first checkpoint": writing(4), "checkpoint": writing(8)})
    _assert_same(_training(run), reference)
    assert not list((run / "checkpoints").glob(".*.tmp"))


def _eval_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "vla_distill.cli", "eval", "--policy", "noisy:scripted", "--tasks",
            "reach-v3,push-v3",
            "--episodes", "3", "--max-steps", "60", "--workers", "1", "--videos", "1", "--latency-steps", "5",
            "--out", str(out)]


def _timing(key: str) -> bool:
    return any(word in key for word in ("latency", "second", "_s", "time"))


def _evaluation(out: Path) -> dict:
    """What an evaluation ends with: each episode's record and arrays, and the results, without timings."""
    got = {}
    for f in sorted((out / "episodes").glob("*/*.npz")):
        with np.load(f) as z:
            got |= {f"{f.relative_to(out)}/{k}": z[k] for k in z.files if not _timing(k)}
    for f in sorted((out / "episodes").glob("*/*.json")):
        record = json.loads(f.read_text())
        got[str(f.relative_to(out))] = np.array(json.dumps({k: v for k, v in record.items() if not _timing(k)},
                                                           sort_keys=True))
    info = json.loads((out / "eval_info.json").read_text())
    got["per_task"] = np.array(json.dumps(info["per_task"], sort_keys=True))
    got["overall"] = np.array(json.dumps({k: v for k, v in info["overall"].items() if not _timing(k)}, sort_keys=True))
    got["videos"] = np.array(sorted(str(p.relative_to(out)) for p in (out / "videos").rglob("*.mp4")))
    return got


@pytest.fixture(scope="module")
def evaluated_once(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "ev"
    return _uninterrupted(_eval_cmd(out), out, _evaluation)


@pytest.mark.parametrize("trial", trials([]))
def test_eval_killed_at_a_random_moment_reruns_to_the_same_results(evaluated_once, tmp_path, trial):
    reference, seconds, _ = evaluated_once
    out = tmp_path / "ev"
    _kill_and_rerun(_eval_cmd(out), trial, seconds)
    _assert_same(_evaluation(out), reference)


# ---------------------------------------------------------------- a full disk and a read-only output
@contextmanager
def _tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A real small or read-only filesystem (root can write through file permissions, not through a mount)."""
    path.mkdir(parents=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def _bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


# stage: (the reference fixture, its command on an output path, what it ends with)
DISK_STAGES = {
    "collect": ("collected", lambda req, out: _collect_cmd(out), _content),
    "annotate": ("annotated_once", lambda req, out: _annotate_cmd(req.getfixturevalue("metaworld_dataset"), out),
                 _annotation),
    "train": ("trained_once", lambda req, out: _train_cmd(req.getfixturevalue("annotated"), out), _training),
    "eval": ("evaluated_once", lambda req, out: _eval_cmd(out), _evaluation),
}


@pytest.mark.parametrize("stage", [s if s == "train" else pytest.param(s, marks=pytest.mark.slow) for s in DISK_STAGES])
def test_a_full_disk_is_one_line_and_the_rerun_after_freeing_space_finishes(stage, request, tmp_path):
    """The disk holds half of what the stage writes: one line naming the output, exit 2, no half-written dataset or
    checkpoint beside it; once there is room the same command ends as an uninterrupted run."""
    fixture, command, ends_with = DISK_STAGES[stage]
    reference, _, reference_out = request.getfixturevalue(fixture)
    with _tmpfs(tmp_path / "disk", f"size={max(_bytes(reference_out) // 2, 64 * 1024)}") as disk:
        out = disk / "out"
        r = subprocess.run(command(request, out), capture_output=True, text=True, timeout=300)
        err = r.stderr.strip().splitlines()[-1]
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert err.startswith(f"error: {out}") and err.endswith(
            "No space left on device; free space, then run the same command again to continue"), err
        left = {p.name for p in disk.rglob("*") if p.name.endswith((".tmp", ".tmp-columns", ".building"))}
        assert not left, left
        subprocess.run(["mount", "-o", "remount,size=1g", str(disk)], check=True)
        r = subprocess.run(command(request, out), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        _assert_same(ends_with(out), reference)


def test_export_on_a_full_disk_is_one_line_and_leaves_nothing(tiny_student, tmp_path):
    with _tmpfs(tmp_path / "disk", "size=1m") as disk:  # the tiny student's weights alone are ~10 MB
        out = disk / "bundle"
        r = subprocess.run([sys.executable, "-m", "vla_distill.cli", "export", "--policy", str(tiny_student), "--out",
                            str(out)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert r.stderr.strip().splitlines()[-1].endswith("No space left on device"), r.stderr
        assert list(disk.iterdir()) == []  # neither the bundle nor bundle.partial nor bundle.partial.tmp


@pytest.mark.parametrize("stage", list(DISK_STAGES) + ["export"])
def test_a_read_only_output_is_one_line_naming_it(stage, request, tiny_student, tmp_path):
    with _tmpfs(tmp_path / "ro", "ro,size=1m") as disk:
        out = disk / "out"
        cmd = ([sys.executable, "-m", "vla_distill.cli", "export", "--policy", str(tiny_student), "--out", str(out)]
               if stage == "export" else DISK_STAGES[stage][1](request, out))
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        err = r.stderr.strip().splitlines()
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert err[-1].startswith(f"error: {out}") and err[-1].endswith(": Read-only file system"), err[-1]


def _children_by_parent() -> dict[int, list[int]]:
    """Every process's children, from one pass over /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return children


def _descendants(pid: int) -> set[int]:
    """Every process started under `pid` (children, theirs, ...), found through /proc."""
    parents = _children_by_parent()
    found, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds processes through /proc")
@pytest.mark.parametrize("stage", ["collect", "eval"])
def test_kill_9_leaves_no_worker_processes_behind(stage, tmp_path):
    """A killed stage's worker pool (forkserver, workers, resource tracker) goes with it, within seconds."""
    cmd = _collect_cmd(tmp_path / "out") if stage == "collect" else _eval_cmd(tmp_path / "out")
    cmd[cmd.index("--workers") + 1] = "2"
    cmd[cmd.index("--episodes") + 1] = "40"  # a pool still busy when it is killed, not one winding down
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, workers = time.time() + 120, set()
    while len(workers) < 3 and time.time() < deadline:  # the server and its two workers
        time.sleep(0.05)
        workers = _descendants(proc.pid)  # the set that was seen, not a second look after a worker may have ended
    assert len(workers) >= 3, workers
    proc.kill()
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in workers):
        time.sleep(0.1)
    left = [p for p in workers if Path(f"/proc/{p}").exists()]
    for p in left:
        os.kill(p, 9)
    assert not left, f"{len(left)} of {len(workers)} processes outlived the killed {stage}"


def _workers_of(pid: int) -> set[int]:
    """The pool's workers: children of the forkserver, itself a child of `pid` (the resource tracker has none)."""
    children = _children_by_parent()
    return {p for child in children.get(pid, []) for p in children.get(child, [])}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds processes through /proc")
@pytest.mark.parametrize("stage", ["collect", "eval"])
def test_a_worker_that_dies_is_replaced_and_the_run_ends_as_an_uninterrupted_one(stage, tmp_path):
    """A worker killed mid-run (as glibc's abort on a corrupted heap or the OOM killer would) costs its unfinished
    jobs a rerun on new workers, not the run."""
    if stage == "collect":
        make, content, progress = _collect_cmd, _content, ".partial/attempts/*.json"
    else:
        make, content, progress = _eval_cmd, _evaluation, "episodes/*/*.json"
    cmds = []
    for name in ("reference", "killed"):
        cmd = make(tmp_path / name)
        cmd[cmd.index("--workers") + 1] = "2"
        if stage == "collect":
            cmd[cmd.index("--episodes") + 1] = "6"
        cmds.append(cmd)
    reference, _, _ = _uninterrupted(cmds[0], tmp_path / "reference", content)
    proc = subprocess.Popen(cmds[1], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline, workers = time.time() + 120, set()
    while time.time() < deadline and not (list((tmp_path / "killed").glob(progress)) and workers):
        time.sleep(0.01)
        workers = _workers_of(proc.pid)
    assert workers, "no worker started"
    os.kill(min(workers), 9)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "warning: a worker process died (" in err, err[-2000:]  # its signal where the forkserver learnt it
    _assert_same(content(tmp_path / "killed"), reference)


def test_a_job_whose_worker_dies_every_time_ends_the_run_in_one_line(capsys):
    from vla_distill.errors import WorkerDied
    from vla_distill.sim.workers import JobPool

    pool = JobPool(1, restarts=1)
    pool.submit("fine", abs, -2)
    pool.submit("dies", os._exit, 3)
    results = []
    with pytest.raises(WorkerDied, match=r"died \(.+\) once more than the run allows; run the same command again"):
        while pool.running():
            results += pool.finished()
    assert results == [("fine", 2)]
    assert "rerunning its 1 unfinished jobs (0 restarts left)" in capsys.readouterr().err
