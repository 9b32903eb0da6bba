"""Fake-data factories shared by the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

from vla_distill.data.format import video_feature  # noqa: E402
from vla_distill.data.writer import DatasetWriter, Episode  # noqa: E402

FPS = 10


def popen_interruptible(cmd: list[str], **kwargs) -> subprocess.Popen:
    """Popen of a command that takes SIGINT as Ctrl-C, even when this test run was started in the background by a
    non-interactive shell: that shell ignores SIGINT for it, the ignore is inherited, and Python then installs no
    KeyboardInterrupt handler."""
    return subprocess.Popen(cmd, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs)


def serve_process(policy_path, *flags: str) -> tuple[subprocess.Popen, str]:
    """`vla-distill serve POLICY --port 0 FLAGS` as a process, and the HOST:PORT it printed."""
    proc = subprocess.Popen([sys.executable, "-m", "vla_distill.cli", "serve", "--policy", str(policy_path),
                             "--port", "0", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert "serving" in line, line + proc.stderr.read()
    return proc, line.split("ws://")[1].split()[0]


def fake_features(video: bool = True, image: bool = True, size: int = 32) -> dict[str, dict]:
    feats = {
        "observation.state": {"dtype": "float32", "shape": [3], "names": ["a", "b", "c"]},
        "action": {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
    }
    if video:
        feats["observation.images.cam"] = video_feature(size, size, FPS, "libsvtav1")
    if image:
        feats["observation.images.png"] = {"dtype": "image", "shape": [size, size, 3],
                                           "names": ["height", "width", "channels"]}
    return feats


def smooth_frames(n: int, size: int, phase: float) -> np.ndarray:
    """Frames a video codec keeps close to the original (smooth gradients, moving square) yet all distinct."""
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.zeros((n, size, size, 3), dtype=np.uint8)
    for t in range(n):
        out[t, ..., 0] = (xx * 255 // size + 7 * t + phase) % 256
        out[t, ..., 1] = (yy * 255 // size) % 256
        out[t, ..., 2] = 60
        c = (3 * t) % (size - 8)
        out[t, c : c + 8, c : c + 8] = 255
    return out


def fake_episode_frames(n: int, features: dict, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    frames = {
        "observation.state": rng.normal(size=(n, 3)).astype(np.float32),
        "action": rng.normal(size=(n, 2)).astype(np.float32),
    }
    for key, ft in features.items():
        if ft["dtype"] == "video":
            frames[key] = smooth_frames(n, ft["shape"][0], phase=40 * seed)
        elif ft["dtype"] == "image":
            frames[key] = rng.integers(0, 256, (n, *ft["shape"]), dtype=np.uint8)
    return frames


def write_fake_dataset(root: Path, lengths=(6, 9, 5, 8), video=True, image=True, **writer_kwargs):
    """Returns the per-episode frame dicts written, for comparison."""
    features = fake_features(video, image)
    episodes = []
    with DatasetWriter(root, FPS, features, robot_type="fake", **writer_kwargs) as w:
        for e, n in enumerate(lengths):
            frames = fake_episode_frames(n, features, seed=e)
            episodes.append(frames)
            w.add_episode(Episode(frames, task=f"task {e % 2}", meta={"seed": e}))
    return episodes


@pytest.fixture
def fake_dataset(tmp_path):
    root = tmp_path / "ds"
    episodes = write_fake_dataset(root)
    return root, episodes


@pytest.fixture(autouse=True)
def _frame_cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("VLA_DISTILL_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def metaworld_dataset(tmp_path_factory):
    """A small real MetaWorld dataset (reach + pick-place, 2 episodes each, 64 px), collected once per session."""
    from vla_distill.collect.collect import collect
    from vla_distill.collect.config import CollectConfig
    from vla_distill.sim.base import CameraConfig

    root = tmp_path_factory.mktemp("mw") / "ds"
    cfg = CollectConfig(tasks=("reach-v3", "pick-place-v3"), episodes=2, seed=3,
                        cameras=CameraConfig(height=64, width=64), workers=1)
    collect(cfg, root)
    return root


@pytest.fixture(scope="session")
def annotated(metaworld_dataset, tmp_path_factory):
    """metaworld_dataset annotated with the defaults (scripted teacher, kinematic phases and cues, audit)."""
    from vla_distill.annotate.annotate import annotate
    from vla_distill.annotate.config import AnnotateConfig

    return annotate(metaworld_dataset, tmp_path_factory.mktemp("ann") / "ds", AnnotateConfig())


@pytest.fixture(scope="session")
def state_policy_dir(tmp_path_factory):
    """A small torch policy checkpoint (state MLP, random weights) to serve and to teach with."""
    import torch

    from vla_distill.models.checkpoint import save_pretrained
    from vla_distill.models.state_mlp import StateMLPConfig, StateMLPPolicy

    torch.manual_seed(0)
    policy = StateMLPPolicy(StateMLPConfig(hidden=32, depth=2))
    return save_pretrained(policy, tmp_path_factory.mktemp("policy") / "pretrained_model", {"note": "test policy"})


@pytest.fixture(scope="session")
def tiny_student(annotated, tmp_path_factory):
    """A tiny student trained for 4 steps on `annotated` (64 px): real architecture, untrained behaviour."""
    from vla_distill.train.config import TrainConfig
    from vla_distill.train.student import train

    run = tmp_path_factory.mktemp("student") / "run"
    train(TrainConfig(dataset=str(annotated), out=str(run), preset="tiny", steps=4, batch_size=4, warmup_steps=1,
                      save_every=4, log_every=2, val_batches=1))
    return run


@pytest.fixture(scope="session")
def onnx_bundle(tiny_student, tmp_path_factory):
    """tiny_student exported with --format onnx (its reference observations and actions inside)."""
    from vla_distill.deploy import export as export_mod

    out = tmp_path_factory.mktemp("export") / "bundle"
    export_mod.export(tiny_student, out, "onnx", log=lambda *_: None)
    return out


def bundle_reference(bundle: Path) -> tuple[dict, list[str], np.ndarray]:
    """A bundle's recorded parity observations {key: (N, ...)}, their N instructions and the (N, K, D) actions."""
    from vla_distill.models import bundle as bundle_mod

    z = np.load(bundle / bundle_mod.REFERENCE_FILE)
    return {k[4:]: z[k] for k in z.files if k.startswith("obs/")}, list(z["tasks"]), z["actions"]


def bundle_request(frames: dict, i: int, task: str, slash: bool = False) -> dict:
    """Observation i of bundle_reference as an openpi request (our keys, or openpi's slash form)."""
    obs = {k.replace(".", "/") if slash else k: np.ascontiguousarray(v[i]) for k, v in frames.items()}
    return {**obs, "prompt": task}


@pytest.fixture(scope="session")
def served(served_process):
    """HOST:PORT of served_process."""
    return served_process[1]


@pytest.fixture(scope="session")
def served_process(onnx_bundle):
    """`vla-distill serve` on the bundle (ONNX backend, batching up to 4), as a separate process, and its HOST:PORT."""
    import time
    import urllib.error
    import urllib.request

    proc, host_port = serve_process(onnx_bundle, "--backend", "onnx", "--max-batch", "4", "--batch-wait-ms", "20",
                                    "--max-message-mb", "0.05")
    deadline = time.monotonic() + 120
    while True:  # ready: the text encoder loaded and the first forward pass done (503 until then)
        try:
            urllib.request.urlopen(f"http://{host_port}/healthz", timeout=10)
            break
        except urllib.error.HTTPError:
            assert time.monotonic() < deadline and proc.poll() is None, "serve did not get ready"
            time.sleep(0.2)
    yield proc, host_port
    proc.terminate()
    proc.wait(timeout=30)
