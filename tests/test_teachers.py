"""Teachers over their real protocols: loopback servers in separate processes, our real clients."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import popen_interruptible
from vla_distill.annotate.annotate import annotate
from vla_distill.annotate.config import AnnotateConfig
from vla_distill.data.dataset import RobotDataset
from vla_distill.data.msgpack_numpy import packb, unpackb
from vla_distill.models.checkpoint import load_pretrained
from vla_distill.teachers import make_teacher
from vla_distill.teachers.noisy import NoiseConfig, corrupt

SERVERS = Path(__file__).parent / "servers.py"
NO_CUES = dict(phases="none", directions="none", audit=False)


class Server:
    def __init__(self, kind: str, arg: str, log: Path, env: dict | None = None):
        self.log = log
        self.proc = subprocess.Popen([sys.executable, str(SERVERS), kind, arg], stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "SERVER_LOG": str(log), **(env or {})})
        line = self.proc.stdout.readline()
        assert line.startswith("PORT "), line
        self.port = int(line.split()[1])

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def stop(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def server(tmp_path):
    started = []

    def start(kind, arg, env=None):
        s = Server(kind, str(arg), tmp_path / f"{kind}-{len(started)}.log", env)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def _policy_on_states(policy_dir, states):
    policy = load_pretrained(policy_dir)
    with torch.no_grad():
        return policy.predict_action_chunk({"observation.state": torch.from_numpy(states)})[:, 0].numpy()


def test_msgpack_numpy_roundtrip_matches_openpi_layout():
    obs = {"observation/state": np.arange(4, dtype=np.float32), "prompt": "pick", "x": np.float64(2.5),
           "img": np.zeros((2, 3, 3), np.uint8)}
    raw = packb(obs)
    back = unpackb(raw)
    assert back["prompt"] == "pick" and back["x"] == 2.5 and back["img"].shape == (2, 3, 3)
    np.testing.assert_array_equal(back["observation/state"], obs["observation/state"])
    import msgpack

    plain = msgpack.unpackb(raw)  # what openpi's decoder sees before its object_hook
    assert plain["observation/state"][b"__ndarray__"] is True and plain["observation/state"][b"dtype"] == "<f4"
    with pytest.raises(ValueError):
        packb({"bad": np.zeros(2, complex)})


def test_scripted_teacher_reproduces_recorded_expert(metaworld_dataset, tmp_path):
    out = annotate(metaworld_dataset, tmp_path / "ann", AnnotateConfig(**NO_CUES))
    ds = RobotDataset(out)
    np.testing.assert_allclose(ds.column("action.teacher"), ds.column("action"), atol=1e-5)
    assert ds.features["action.teacher"]["shape"] == [4]
    assert "teacher" in (out / "meta/annotation.json").read_text()


def test_noisy_teacher_is_seeded_and_corrupts():
    clean = np.zeros((400, 1, 4), np.float32)
    cfg = NoiseConfig(std=0.05, toggle=0.05, stale=0.1, seed=1)
    a, b = corrupt(clean, 7, cfg), corrupt(clean, 7, cfg)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, corrupt(clean, 8, cfg))
    g = a[:, 0, -1]
    assert (np.abs(np.diff(g)) > 1.5).sum() >= 10  # sign flips frame to frame inside toggle bursts
    assert (np.all(a[1:] == a[:-1], axis=(1, 2))).sum() >= 20  # stale repeats
    assert abs(float(np.std(a[:, 0, 0])) - 0.05) < 0.02 and np.abs(a).max() <= 1.0


def test_checkpoint_teacher_matches_policy(metaworld_dataset, state_policy_dir, tmp_path):
    out = annotate(metaworld_dataset, tmp_path / "ann",
                   AnnotateConfig(teacher=f"checkpoint:{state_policy_dir}", **NO_CUES))
    ds = RobotDataset(out)
    expected = _policy_on_states(state_policy_dir, ds.column("observation.state").astype(np.float32))
    np.testing.assert_allclose(ds.column("action.teacher"), expected, atol=1e-5)


def test_openpi_teacher_over_websocket(metaworld_dataset, state_policy_dir, tmp_path, server):
    s = server("openpi", state_policy_dir)
    teacher = f"openpi://127.0.0.1:{s.port}"
    out = annotate(metaworld_dataset, tmp_path / "ann", AnnotateConfig(teacher=teacher, **NO_CUES))
    ds = RobotDataset(out)
    expected = _policy_on_states(state_policy_dir, ds.column("observation.state").astype(np.float32))
    np.testing.assert_allclose(ds.column("action.teacher"), expected, atol=1e-5)
    lines = s.lines()
    assert len(lines) == ds.num_frames  # one request per frame, each frame asked once
    assert "observation/image:(224, 224, 3)" in lines[0] and "observation/wrist_image:(224, 224, 3)" in lines[0]
    import json

    prov = json.loads((out / "meta/annotation.json").read_text())["teacher"]
    served = prov["server_metadata"]
    assert served["policy_type"] == "state_mlp" and served["provenance"]["note"] == "test policy"


def test_openpi_teacher_retries_server_errors(metaworld_dataset, state_policy_dir, tmp_path, server):
    s = server("openpi", state_policy_dir, env={"FAIL_EVERY": "1"})
    cfg = AnnotateConfig(teacher=f"openpi://127.0.0.1:{s.port}",
                         teacher_options=(("backoff_s", "0.01"), ("retries", "8")), **NO_CUES)
    ds = RobotDataset(annotate(metaworld_dataset, tmp_path / "ann", cfg))
    expected = _policy_on_states(state_policy_dir, ds.column("observation.state").astype(np.float32))
    np.testing.assert_allclose(ds.column("action.teacher"), expected, atol=1e-5)
    assert len(s.lines()) > ds.num_frames  # some requests failed and were asked again


def test_openvla_teacher_over_rest(metaworld_dataset, state_policy_dir, tmp_path, server):
    s = server("openvla", state_policy_dir)
    cfg = AnnotateConfig(teacher=f"openvla://127.0.0.1:{s.port}", teacher_options=(("unnorm_key", "metaworld"),),
                         **NO_CUES)
    ds = RobotDataset(annotate(metaworld_dataset, tmp_path / "ann", cfg))
    assert ds.features["action.teacher"]["shape"] == [4]  # OpenVLA's 7-d answer cut to our 4 dims
    lines = s.lines()
    assert len(lines) == ds.num_frames
    assert all(x in lines[0] for x in ("image=(224, 224, 3)uint8", "unnorm_key=metaworld", "reach the goal"))


def test_remote_teacher_unreachable_is_one_clear_error(metaworld_dataset, tmp_path):
    from vla_distill.teachers.remote import TeacherError

    cfg = AnnotateConfig(teacher="openpi://127.0.0.1:9", teacher_options=(("retries", "1"), ("backoff_s", "0.01")),
                         **NO_CUES)
    with pytest.raises(TeacherError, match="no answer after 2 attempts"):
        annotate(metaworld_dataset, tmp_path / "ann", cfg)
    assert not (tmp_path / "ann").exists() and not (tmp_path / "ann.partial").exists()  # nothing to resume from


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_remote_annotation_resumes_without_asking_twice(metaworld_dataset, state_policy_dir, tmp_path,
                                                                    server, sig):
    s = server("openpi", state_policy_dir)
    out = tmp_path / "ann"
    cmd = [sys.executable, "-m", "vla_distill.cli", "annotate", "--dataset", str(metaworld_dataset), "--out", str(out),
           "--teacher", f"openpi://127.0.0.1:{s.port}", "--teacher-opt", "concurrency=2", "--phases", "none",
           "--directions", "none"]
    proc = popen_interruptible(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    n_frames = RobotDataset(metaworld_dataset).num_frames
    deadline = time.time() + 60
    while len(s.lines()) < n_frames // 3 and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(sig)
    proc.wait()
    asked_before = len(s.lines())
    assert 0 < asked_before < n_frames and not out.exists()
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    ds = RobotDataset(out)
    expected = _policy_on_states(state_policy_dir, ds.column("observation.state").astype(np.float32))
    np.testing.assert_allclose(ds.column("action.teacher"), expected, atol=1e-5)
    # At most the requests in flight when it was killed are asked again.
    assert n_frames <= len(s.lines()) <= n_frames + 2
    assert not (tmp_path / "ann.partial").exists()


def test_teacher_spec_errors():
    from vla_distill.errors import ConfigError

    with pytest.raises(ConfigError, match="did you mean 'scripted'"):
        make_teacher("scriptd")
    with pytest.raises(ConfigError, match="HOST:PORT"):
        make_teacher("openpi://nohostport")
    with pytest.raises(ConfigError, match="unknown noisy option"):
        make_teacher("noisy[sigma=1]:scripted")
    with pytest.raises(ConfigError, match="unknown teacher option"):
        make_teacher("openpi://h:1", {"colour": "red"})
    with pytest.raises(ConfigError, match="field 'colour': unknown option of the scripted teacher"):
        make_teacher("scripted", {"colour": "red"})
    with pytest.raises(ConfigError, match="field 'horizon': must be an integer >= 1, got '0'"):
        make_teacher("scripted", {"horizon": "0"})
    assert make_teacher("scripted", {"horizon": "5"}).horizon == 5


def test_a_scripted_teacher_without_a_plan_refuses_chunks(metaworld_dataset, tmp_path):
    """MetaWorld's experts answer single actions: asking for chunks is a one-line error, and nothing is written."""
    from vla_distill.errors import ConfigError

    cfg = AnnotateConfig(**NO_CUES, teacher_options=(("horizon", "5"),))
    with pytest.raises(ConfigError, match="field 'horizon': reach-v3: its scripted expert answers single actions"):
        annotate(metaworld_dataset, tmp_path / "ann", cfg)
    assert not (tmp_path / "ann").exists()


def test_openpi_teacher_drives_the_closed_loop_evaluator(state_policy_dir, tmp_path, server):
    """The evaluator's remote actor asks the server once per step with live observations, and acts exactly as the
    served checkpoint does when evaluated directly."""
    from vla_distill.eval.config import EvalConfig
    from vla_distill.eval.evaluate import evaluate

    s = server("openpi", state_policy_dir)
    common = dict(tasks=("reach-v3",), episodes=1, max_steps=20, workers=1, videos=0, latency_steps=0)
    remote = evaluate(EvalConfig(policy=f"openpi://127.0.0.1:{s.port}", out=str(tmp_path / "remote"), **common))
    direct = evaluate(EvalConfig(policy=str(state_policy_dir), out=str(tmp_path / "direct"), **common))
    assert direct["per_task"][0]["metrics"]["successes"] == remote["per_task"][0]["metrics"]["successes"]
    assert remote["policy"]["kind"] == "remote" and remote["overall"]["n_episodes"] == 1
    a = np.load(tmp_path / "remote" / "episodes" / "reach-v3" / "0000.npz")["actions"]
    b = np.load(tmp_path / "direct" / "episodes" / "reach-v3" / "0000.npz")["actions"]
    assert a.shape == (20, 4)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert len(s.lines()) == 20 and "observation/image:(224, 224, 3)" in s.lines()[0]
