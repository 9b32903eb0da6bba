"""Annotation sharded by episode: staged episodes survive a killed job, and Ray (a local 2-CPU cluster) gives the
same dataset as one process even when a worker is killed mid-run. The Ray tests skip where the extra is missing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_teachers import NO_CUES, _policy_on_states, server  # noqa: F401  (fixture)

from conftest import popen_interruptible
from vla_distill.annotate.annotate import annotate
from vla_distill.annotate.config import AnnotateConfig
from vla_distill.annotate.episode import staged_episodes
from vla_distill.data.dataset import RobotDataset
from vla_distill.errors import ConfigError

LABEL_COLUMNS = ("action.teacher", "phase_index", "direction_index")
META_TABLES = ("meta/phases.parquet", "meta/directions.parquet", "meta/direction_windows.parquet",
               "meta/task_embeddings.parquet")


def assert_same_annotation(a, b, columns=LABEL_COLUMNS, tables=META_TABLES):
    da, db = RobotDataset(a), RobotDataset(b)
    for key in columns:
        np.testing.assert_array_equal(da.column(key), db.column(key), err_msg=key)
    for rel in tables:
        assert pq.read_table(a / rel).equals(pq.read_table(b / rel)), rel


class Interrupt(Exception):
    pass


def test_killed_annotation_keeps_finished_episodes(metaworld_dataset, annotated, tmp_path):
    out, seen = tmp_path / "ann", []

    def stop_after_two(result):
        seen.append(result.episode)
        if len(seen) == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        annotate(metaworld_dataset, out, AnnotateConfig(), hook=stop_after_two)
    partial = tmp_path / "ann.partial"
    assert staged_episodes(partial) == {0, 1} and not out.exists()
    resumed = []
    annotate(metaworld_dataset, out, AnnotateConfig(), hook=lambda r: resumed.append(r.episode))
    assert resumed == [2, 3]  # the two finished episodes were not annotated again
    assert_same_annotation(annotated, out)
    assert not partial.exists()


def test_second_run_on_the_same_output_is_refused(metaworld_dataset, tmp_path):
    from vla_distill.data.format import single_writer

    partial = tmp_path / "ann.partial"
    partial.mkdir()
    (partial / "plan.json").write_text("{}")
    with single_writer(partial):  # as a first run holds it
        with pytest.raises(ConfigError, match="another vla-distill run is writing"):
            annotate(metaworld_dataset, tmp_path / "ann", AnnotateConfig())
    assert (partial / "plan.json").read_text() == "{}"  # the first run's work is left alone


def test_executor_choice_errors(metaworld_dataset, tmp_path, monkeypatch):
    from vla_distill.annotate.executors import RayExecutor, make_executor

    r = subprocess.run([sys.executable, "-m", "vla_distill.cli", "annotate", "--dataset", str(metaworld_dataset),
                        "--out", str(tmp_path / "o"), "--workers", "2"], capture_output=True, text=True)
    assert r.returncode == 2 and "--executor ray" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    with pytest.raises(ConfigError, match="worker_cpus"):
        RayExecutor(worker_cpus=0)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r"pip install 'vla-distill\[ray\]'"):
        make_executor("ray")


# ---------------------------------------------------------------- on a local Ray cluster
@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def test_ray_annotation_equals_single_process(ray_cluster, metaworld_dataset, annotated, tmp_path):
    from vla_distill.annotate.executors import RayExecutor

    out = annotate(metaworld_dataset, tmp_path / "ann", AnnotateConfig(), RayExecutor(workers=2))
    assert_same_annotation(annotated, out)
    run = json.loads((out / "meta/annotation.json").read_text())["run"]
    assert run["executor"] == "ray" and run["workers"] == 2 and run["lost_workers"] == 0


@pytest.mark.slow  # the default suite keeps Ray's equivalence with one process and its errors
def test_ray_worker_killed_mid_run_is_recovered(ray_cluster, metaworld_dataset, state_policy_dir, tmp_path,
                                                server):  # noqa: F811
    from vla_distill.annotate.executors import RayExecutor

    s = server("openpi", state_policy_dir)
    executor, killed = RayExecutor(workers=2), []

    def kill_a_busy_worker(result):
        if not killed:
            (pid, episode), = executor.busy.items()  # the other worker, still on its episode
            os.kill(pid, signal.SIGKILL)
            killed.append(episode)

    cfg = AnnotateConfig(teacher=f"openpi://127.0.0.1:{s.port}", **NO_CUES)
    out = annotate(metaworld_dataset, tmp_path / "ann", cfg, executor, hook=kill_a_busy_worker)
    ds = RobotDataset(out)
    expected = _policy_on_states(state_policy_dir, ds.column("observation.state").astype(np.float32))
    np.testing.assert_allclose(ds.column("action.teacher"), expected, atol=1e-5)
    assert killed and executor.lost == 1
    assert json.loads((out / "meta/annotation.json").read_text())["run"]["lost_workers"] == 1
    # Only the killed worker's episode was asked again, and only the frames it had reached.
    longest = max(ep.length for ep in ds.episodes)
    assert ds.num_frames <= len(s.lines()) <= ds.num_frames + longest


def test_errors_inside_ray_workers_arrive_as_themselves(ray_cluster, metaworld_dataset, tmp_path):
    from vla_distill.annotate.executors import RayExecutor
    from vla_distill.teachers.remote import TeacherError

    with pytest.raises(ConfigError, match="teacher"):  # raised while the actor builds its teacher
        annotate(metaworld_dataset, tmp_path / "a", AnnotateConfig(teacher="opnepi://x:1", **NO_CUES),
                 RayExecutor(workers=1))
    cfg = AnnotateConfig(teacher="openpi://127.0.0.1:9", teacher_options=(("retries", "0"),), **NO_CUES)
    with pytest.raises(TeacherError, match="no answer after 1 attempts"):  # raised while annotating an episode
        annotate(metaworld_dataset, tmp_path / "b", cfg, RayExecutor(workers=1))
    with pytest.raises(ConfigError, match="a worker asks for 1 CPU and 1 GPU; the cluster has 2 CPU and 0 GPU"):
        annotate(metaworld_dataset, tmp_path / "c", AnnotateConfig(**NO_CUES), RayExecutor(worker_gpus=1))
    assert not list(tmp_path.iterdir())  # nothing half-written, nothing to resume from


@pytest.mark.slow  # a Ray cluster of its own and a server: the default suite keeps the other Ray cases
def test_vlm_labels_on_ray_workers_share_one_answer_cache(ray_cluster, metaworld_dataset, tmp_path,
                                                          server):  # noqa: F811
    from vla_distill.annotate.directions import windows
    from vla_distill.annotate.executors import RayExecutor
    from vla_distill.annotate.vlm import VLMConfig

    s = server("vlm", "good")
    vlm = VLMConfig(url=f"http://127.0.0.1:{s.port}/v1", model="test-vlm", retries=0)

    def cfg(cache):
        return AnnotateConfig(teacher="none", phases="vlm", directions="vlm", vlm=vlm, window=16, stride=8,
                              vlm_cache=str(tmp_path / cache), audit=False)

    local = annotate(metaworld_dataset, tmp_path / "local", cfg("local.sqlite"))
    asked = len(s.lines())
    on_ray = annotate(metaworld_dataset, tmp_path / "ray", cfg("ray.sqlite"), RayExecutor(workers=2))
    n_windows = sum(len(windows(ep.length, cfg("").cue_config)) for ep in RobotDataset(local).episodes)
    assert len(s.lines()) - asked == n_windows  # both workers wrote one cache file; no window asked twice
    assert_same_annotation(local, on_ray, columns=("phase_index", "direction_index"), tables=META_TABLES)
    annotate(metaworld_dataset, tmp_path / "again", cfg("ray.sqlite"), RayExecutor(workers=2))
    assert len(s.lines()) - asked == n_windows  # everything from the cache


@pytest.mark.slow  # a Ray cluster of its own and a server: the default suite keeps the other Ray cases
def test_interrupted_ray_job_resumes_from_the_cli(ray_cluster, metaworld_dataset, state_policy_dir, tmp_path,
                                                  server):  # noqa: F811
    s = server("openpi", state_policy_dir, env={"DELAY_S": "0.01"})
    out = tmp_path / "ann"
    cmd = [sys.executable, "-m", "vla_distill.cli", "annotate", "--dataset", str(metaworld_dataset), "--out", str(out),
           "--teacher", f"openpi://127.0.0.1:{s.port}", "--teacher-opt", "concurrency=1", "--phases", "none",
           "--directions", "none", "--executor", "ray", "--workers", "2"]
    proc = popen_interruptible(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    partial = tmp_path / "ann.partial"
    deadline = time.time() + 120
    while not staged_episodes(partial) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)  # Ctrl-C: the driver stops its workers and Ray, and keeps what is staged
    assert proc.wait(timeout=60) == 130
    staged = staged_episodes(partial)
    assert 0 < len(staged) < 4 and not out.exists()
    asked_before = len(s.lines())
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming: {len(staged)} of 4 episodes" in r.stderr
    ds = RobotDataset(out)
    expected = _policy_on_states(state_policy_dir, ds.column("observation.state").astype(np.float32))
    np.testing.assert_allclose(ds.column("action.teacher"), expected, atol=1e-5)
    done_frames = sum(ds.episodes[e].length for e in staged)
    assert len(s.lines()) - asked_before <= ds.num_frames - done_frames  # staged episodes were not asked again


@pytest.mark.slow
def test_job_started_in_process_finishes_on_ray(ray_cluster, metaworld_dataset, annotated, tmp_path):
    from vla_distill.annotate.executors import RayExecutor

    out, seen = tmp_path / "ann", []

    def stop_after_one(result):
        seen.append(result.episode)
        raise Interrupt

    with pytest.raises(Interrupt):
        annotate(metaworld_dataset, out, AnnotateConfig(), hook=stop_after_one)
    on_ray = []
    annotate(metaworld_dataset, out, AnnotateConfig(), RayExecutor(workers=2), hook=lambda r: on_ray.append(r.episode))
    assert sorted(on_ray) == [1, 2, 3]
    assert_same_annotation(annotated, out)
