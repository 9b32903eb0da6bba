"""Standalone deployment bundles: the folder that goes to the robot's computer.

bundle/
  bundle.json          format and version, policy type, weight dtype, observation spec, action shape, instructions,
                       backends it can run on, parity results, sha256 of every file
  config.json          the policy config (as in pretrained_model/)
  model.safetensors    weights; normalization stats and instruction embeddings are buffers inside (fp32 or bf16)
  normalization.json   the same stats, readable
  provenance.json      the checkpoint's provenance, plus how and when it was exported
  train_config.json    when the checkpoint had one (says which auxiliary heads were trained)
  reference_io.npz     recorded observations and the fp32 torch outputs on them (parity, benchmarks, self-checks)
  model.onnx, model.int8.onnx   --format onnx

Loading (load_bundle, runtime.load_policy) imports torch, safetensors, numpy and vla_distill.models only: no
training, data, simulator or text-encoder code (tests/test_deploy.py runs it with those blocked).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from vla_distill.errors import ConfigError
from vla_distill.models.base import Policy, frames_to_batch

FORMAT, VERSION = "vla-distill-bundle", 1
BUNDLE_FILE, REFERENCE_FILE = "bundle.json", "reference_io.npz"
FORMATS, DTYPES = ("bundle", "onnx"), ("fp32", "bf16")
PARITY_TOLERANCE = 1e-4  # max |onnx - torch| over the recorded observations, raw action units
_NORM_BUFFERS = ("state_mean", "state_std", "action_mean", "action_std", "action_min", "action_max",
                 "image_mean", "image_std", "in_mean", "in_std", "act_mean", "act_std")


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / BUNDLE_FILE).is_file()


def read_manifest(path: str | Path) -> dict:
    f = Path(path) / BUNDLE_FILE
    try:
        manifest = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"unreadable bundle manifest ({e})", path=f) from None
    if manifest.get("format") != FORMAT:
        raise ConfigError(f"not a {FORMAT} (format {manifest.get('format')!r})", path=f, field="format")
    if manifest.get("version", 0) > VERSION:
        raise ConfigError(f"bundle version {manifest['version']} is newer than this vla-distill reads ({VERSION})",
                          path=f, field="version")
    return manifest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: str | Path, manifest: dict, names: tuple[str, ...]) -> None:
    """The files a backend reads are the ones that were exported (a truncated copy fails here, not mid-run)."""
    for name in names:
        f = Path(path) / name
        if not f.is_file():
            raise ConfigError("missing from the bundle", path=f)
        if manifest["files"].get(name) != _sha256(f):
            raise ConfigError("sha256 differs from bundle.json: the file is corrupt or was changed", path=f)


def load_bundle(path: str | Path, dtype: str | None = None, device: str = "cpu") -> Policy:
    """A bundle -> the torch policy, in the bundle's weight dtype unless `dtype` ("fp32" | "bf16") says otherwise."""
    from vla_distill.models.checkpoint import load_pretrained

    manifest = read_manifest(path)
    verify(path, manifest, ("config.json", "model.safetensors"))
    policy = load_pretrained(path, device)
    if (dtype or manifest["dtype"]) == "bf16":
        policy = policy.to(torch.bfloat16)
    policy.bundle = manifest
    return policy


# ---------------------------------------------------------------- export
def recorded_observations(policy: Policy, dataset: str | Path, n: int, seed: int = 0) -> tuple[dict, list[str]]:
    """n frames spread over a dataset's episodes: {input key: (n, ...)} in observation layout, and their tasks."""
    from vla_distill.data.dataset import RobotDataset

    ds = RobotDataset(dataset)
    missing = [k for k in policy.input_keys if k not in ds.features]
    if missing:
        raise ConfigError(f"the dataset lacks the policy's input {missing[0]!r}", path=dataset)
    rows = np.sort(np.random.default_rng(seed).choice(ds.num_frames, min(n, ds.num_frames), replace=False))
    frames = {k: ds.frames(k, rows) if k in ds.camera_keys else ds.column(k)[rows].astype(np.float32)
              for k in policy.input_keys}
    tasks = [ds.tasks[int(i)] for i in ds.column("task_index")[rows]]
    ds.close()
    return frames, tasks


def _observations_source(policy: Policy, observations: str | None) -> str:
    source = observations or getattr(policy, "provenance", {}).get("dataset", "")
    if not source or not Path(source).exists():
        raise ConfigError("parity needs recorded observations: pass --observations DATASET (the policy's training "
                          f"dataset {source!r} is not here)" if source else
                          "parity needs recorded observations: pass --observations DATASET", field="observations")
    return source


def _normalization(policy: Policy) -> dict:
    buffers = dict(policy.named_buffers())
    return {k: buffers[k].float().cpu().numpy().round(7).tolist() for k in _NORM_BUFFERS if k in buffers}


def export(policy_dir: str | Path, out: str | Path, fmt: str = "bundle", dtype: str = "fp32",
           observations: str | None = None, n_observations: int = 32, log=print) -> dict:
    """Checkpoint -> bundle folder, written to a temporary sibling and renamed (nothing half-written).
    Returns the manifest. Raises ConfigError when ONNX parity fails."""
    from vla_distill.models.checkpoint import load_pretrained, resolve_pretrained_dir

    if fmt not in FORMATS:
        raise ConfigError(f"{fmt!r} is not one of {list(FORMATS)}", field="format")
    if dtype not in DTYPES:
        raise ConfigError(f"{dtype!r} is not one of {list(DTYPES)}", field="dtype")
    src = resolve_pretrained_dir(policy_dir)
    policy = load_pretrained(src)
    source = _observations_source(policy, observations)
    frames, tasks = recorded_observations(policy, source, n_observations)
    batch = frames_to_batch(frames, policy.input_keys, tasks)
    with torch.inference_mode():
        reference = policy.predict_action_chunk(batch).float().numpy()

    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        manifest = _write(policy, src, tmp, fmt, dtype, batch, frames, tasks, reference, source, log)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _write(policy, src: Path, tmp: Path, fmt: str, dtype: str, batch: dict, frames: dict, tasks: list[str],
           reference: np.ndarray, source: str, log) -> dict:
    from vla_distill.models.checkpoint import save_pretrained

    provenance = {**getattr(policy, "provenance", {}), "exported": {
        "from": str(src), "format": fmt, "dtype": dtype, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "observations": source}}
    save_pretrained(copy.deepcopy(policy).to(torch.bfloat16) if dtype == "bf16" else policy, tmp, provenance)
    if (src / "train_config.json").exists():
        shutil.copy(src / "train_config.json", tmp / "train_config.json")
    (tmp / "normalization.json").write_text(json.dumps(_normalization(policy), indent=1))
    np.savez_compressed(tmp / REFERENCE_FILE, **{f"obs/{k}": v for k, v in frames.items()},
                        tasks=np.array(tasks), actions=reference)
    backends = ["torch", "torch-bf16"]
    parity = {}
    if fmt == "onnx":
        parity = _export_onnx(policy, batch, reference, tmp, log)
        backends += ["onnx", "onnx-int8"]
    manifest = {
        "format": FORMAT, "version": VERSION, "policy_type": policy.name, "dtype": dtype,
        "observation_spec": policy.observation_spec,
        "action": {"shape": [policy.horizon, policy.action_dim], "dtype": "float32"},
        "instructions": list(getattr(policy.config, "tasks", ())),
        "backends": backends, "parity": parity,
        "files": {f.name: _sha256(f) for f in sorted(tmp.iterdir()) if f.is_file()},
    }
    (tmp / BUNDLE_FILE).write_text(json.dumps(manifest, indent=2))
    return manifest


def _export_onnx(policy: Policy, batch: dict, reference: np.ndarray, tmp: Path, log) -> dict:
    try:
        import onnx  # noqa: F401  (torch's exporter writes through it)
        import onnxruntime  # noqa: F401
    except ImportError:
        from vla_distill.deploy.onnx import INSTALL_HINT

        raise ConfigError(INSTALL_HINT, field="format") from None
    from vla_distill.deploy.onnx import (
        INT8_FILE,
        ONNX_FILE,
        export_onnx,
        graph_inputs,
        quantize_int8,
        session,
    )

    export_onnx(policy, batch, tmp / ONNX_FILE)
    quantize_int8(tmp / ONNX_FILE, tmp / INT8_FILE)
    feed = graph_inputs(policy, batch)
    parity = {"observations": int(reference.shape[0]), "tolerance": PARITY_TOLERANCE}
    for name, graph in (("onnx", ONNX_FILE), ("onnx-int8", INT8_FILE)):
        sess = session(tmp / graph)
        # the recorded observations as one batch, and the first alone: a batch size fixed by the trace fails here
        try:
            one = sess.run(["actions"], {k: v[:1] for k, v in feed.items()})[0]
            actions = np.concatenate([one, sess.run(["actions"], feed)[0][1:]])
        except Exception as e:  # noqa: BLE001 (ONNX Runtime's errors have no common type)
            raise ConfigError(f"the exported {graph} does not run: {str(e).splitlines()[0][:300]}", field="format") from None
        err = np.abs(actions - reference)
        parity[name] = {"max_abs": float(err.max()), "mean_abs": float(err.mean())}
        log(f"parity {name:9s} vs torch fp32 on {len(reference)} recorded observations: "
            f"max |diff| {err.max():.2e}, mean {err.mean():.2e}")
    if not parity["onnx"]["max_abs"] <= PARITY_TOLERANCE:  # `not <=` also catches NaN
        raise ConfigError(f"ONNX parity failed: max |diff| {parity['onnx']['max_abs']:.3g} > {PARITY_TOLERANCE} "
                          "against torch on the recorded observations; nothing was written", field="format")
    return parity
