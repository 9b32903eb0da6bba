"""`vla-distill export`: a checkpoint -> a standalone bundle (layout: models/bundle.py, which reads it), optionally
with ONNX graphs (fp32 and int8) checked against torch on recorded observations.

The ONNX graph's interface (inputs, outputs) is models/onnx_policy.py's, which runs it. The int8 variant quantizes
the weights of MatMul/Gemm (transformer and linear layers) dynamically by default, as torch's dynamic quantization
does; convolutions stay fp32 (ONNX Runtime's ConvInteger was slower than fp32 here). `int8="static"` quantizes
convolutions and matrix multiplies with activation ranges calibrated on a second draw of recorded observations:
faster for large presets, slower for small ones (BENCHMARKS.md, "Batch-1 inference").
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vla_distill.deploy.onnx_graph import fold_pads, traceable
from vla_distill.errors import ConfigError
from vla_distill.models.base import Policy, frames_to_batch
from vla_distill.models.bundle import (
    BUNDLE_FILE,
    EMBEDDINGS_FILE,
    FORMAT,
    REFERENCE_FILE,
    VERSION,
    WEIGHTS_FILE,
    sha256,
)
from vla_distill.models.checkpoint import load_pretrained, resolve_pretrained_dir, save_pretrained
from vla_distill.models.onnx_policy import (
    INSTALL_HINT,
    INT8_FILE,
    ONNX_FILE,
    graph_feed,
    graph_inputs,
    input_names,
    output_names,
    session,
    uses_instruction,
    uses_prompt_ids,
)
from vla_distill.types import PROMPT_IDS, TASK_EMBEDDING, TASK_INDEX

FORMATS, DTYPES, INT8 = ("bundle", "onnx", "onnx-only"), ("fp32", "bf16"), ("dynamic", "static", "none")
# max |onnx - torch| over the recorded observations in the policy's normalized action units (Policy.action_scale): a
# raw tolerance was 1e-6 of the range of joints in lerobot's -100..100 units and refused fp32 round-off
PARITY_TOLERANCE = 1e-4
_NORM_BUFFERS = ("state_mean", "state_std", "action_mean", "action_std", "action_min", "action_max",
                 "image_mean", "image_std", "in_mean", "in_std", "act_mean", "act_std")


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
    tasks = [ds.tasks[int(i)] for i in ds.column(TASK_INDEX)[rows]]
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
           observations: str | None = None, n_observations: int = 32, int8: str = "dynamic", log=print,
           n_action_steps: int | None = None) -> dict:
    """Checkpoint -> bundle folder, written to a temporary sibling and renamed (nothing half-written).
    `n_action_steps` replaces the checkpoint's (how the bundle's chunks are executed: a deployment choice measured
    after training). Returns the manifest. Raises ConfigError when ONNX parity fails."""
    if fmt not in FORMATS:
        raise ConfigError(f"{fmt!r} is not one of {list(FORMATS)}", field="format")
    if dtype not in DTYPES:
        raise ConfigError(f"{dtype!r} is not one of {list(DTYPES)}", field="dtype")
    if int8 not in INT8:
        raise ConfigError(f"{int8!r} is not one of {list(INT8)}", field="int8")
    out = Path(out)
    if out.is_file() or (out.is_dir() and any(out.iterdir()) and not (out / BUNDLE_FILE).is_file()):
        # an earlier bundle is replaced; anything else may be a user's work, which a rename would delete
        raise ConfigError(f"{out} exists and is not a bundle (no {BUNDLE_FILE}): give a new or empty directory",
                          field="out")
    src = resolve_pretrained_dir(policy_dir)
    policy = load_pretrained(src)
    if n_action_steps is not None:
        policy = _with_n_action_steps(policy, n_action_steps)
    source = _observations_source(policy, observations)
    frames, tasks = recorded_observations(policy, source, n_observations)
    batch = frames_to_batch(frames, policy.input_keys, tasks)
    with torch.inference_mode():
        reference = policy.predict_action_chunk(batch).float().numpy()
    calibration = None
    if fmt != "bundle" and int8 == "static":  # a second draw: int8 parity is checked on frames it was not fitted to
        c_frames, c_tasks = recorded_observations(policy, source, n_observations, seed=1)
        calibration = frames_to_batch(c_frames, policy.input_keys, c_tasks)

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        manifest = _write(policy, src, tmp, fmt, dtype, batch, frames, tasks, reference, source, int8, calibration,
                          log)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _with_n_action_steps(policy: Policy, n: int) -> Policy:
    if not hasattr(policy.config, "n_action_steps"):
        raise ConfigError(f"a {policy.name} policy has no n_action_steps to set", field="n_action_steps")
    try:
        policy.config = dataclasses.replace(policy.config, n_action_steps=n)  # the config checks it against K
    except ValueError as e:
        raise ConfigError(str(e)) from None
    policy.reset()  # select_action's queue follows the config
    return policy


def _write(policy, src: Path, tmp: Path, fmt: str, dtype: str, batch: dict, frames: dict, tasks: list[str],
           reference: np.ndarray, source: str, int8: str, calibration: dict | None, log) -> dict:
    onnx = fmt != "bundle"
    exported = {"from": str(src), "format": fmt, "dtype": dtype, **({"int8": int8} if onnx else {}),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "observations": source}
    provenance = {**getattr(policy, "provenance", {}), "exported": exported}
    save_pretrained(copy.deepcopy(policy).to(torch.bfloat16) if dtype == "bf16" else policy, tmp, provenance)
    if (src / "train_config.json").exists():
        shutil.copy(src / "train_config.json", tmp / "train_config.json")
    (tmp / "normalization.json").write_text(json.dumps(_normalization(policy), indent=1))
    np.savez_compressed(tmp / REFERENCE_FILE, **{f"obs/{k}": v for k, v in frames.items()},
                        tasks=np.array(tasks), actions=reference)
    backends = ["torch", "torch-bf16"]
    parity = {}
    if onnx:
        parity = _export_onnx(policy, batch, reference, tmp, int8, calibration, log)
        backends += ["onnx"] + (["onnx-int8"] if int8 != "none" else [])
    if fmt == "onnx-only":  # the graphs hold the weights; the instruction table is all torch's file still carried
        _keep_only_instructions(policy, tmp)
        backends = [b for b in backends if b.startswith("onnx")]
    manifest = {
        "format": FORMAT, "version": VERSION, "policy_type": policy.name, "dtype": dtype,
        "observation_spec": policy.observation_spec,
        "action": {"shape": [policy.horizon, policy.action_dim], "dtype": "float32",
                   "n_action_steps": policy.n_action_steps or policy.horizon},
        "instructions": list(getattr(policy.config, "tasks", ())),
        "backends": backends, "parity": parity, **({"int8": int8} if onnx else {}),
        "files": {f.name: sha256(f) for f in sorted(tmp.iterdir()) if f.is_file()},
    }
    (tmp / BUNDLE_FILE).write_text(json.dumps(manifest, indent=2))
    return manifest


def _keep_only_instructions(policy: Policy, tmp: Path) -> None:
    from safetensors.torch import save_file

    (tmp / WEIGHTS_FILE).unlink()
    if uses_instruction(policy):
        save_file({"task_embeddings": policy.task_embeddings.detach().float().contiguous()}, tmp / EMBEDDINGS_FILE)


def _export_onnx(policy: Policy, batch: dict, reference: np.ndarray, tmp: Path, int8: str, calibration: dict | None,
                 log) -> dict:
    try:
        import onnx  # noqa: F401  (torch's exporter writes through it)
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ConfigError(INSTALL_HINT, field="format") from None
    export_onnx(policy, batch, tmp / ONNX_FILE)
    products = activation_products(tmp / ONNX_FILE)  # on the traced graph, where constants are not yet weights
    if int8 == "none":
        fold_pads(tmp / ONNX_FILE)
    elif calibration is None:
        quantize_int8(tmp / ONNX_FILE, tmp / INT8_FILE, products)
        fold_pads(tmp / ONNX_FILE)
        fold_pads(tmp / INT8_FILE)
    else:  # after the fold: a Pad left before a quantized Conv would keep ONNX Runtime off its blocked layout
        fold_pads(tmp / ONNX_FILE)
        quantize_int8_static(tmp / ONNX_FILE, tmp / INT8_FILE, products, graph_inputs(policy, calibration))
    feed = graph_inputs(policy, batch)
    scale = policy.action_scale().detach().cpu().numpy().astype(np.float64)
    parity = {"observations": int(reference.shape[0]), "tolerance": PARITY_TOLERANCE, "units": "normalized actions",
              "action_scale": scale.round(7).tolist()}
    for name, graph in (("onnx", ONNX_FILE), ("onnx-int8", INT8_FILE))[: 1 if int8 == "none" else 2]:
        sess = session(tmp / graph)
        # the recorded observations as one batch, and the first alone: a batch size fixed by the trace fails here
        try:
            kept = graph_feed(sess, feed)
            one = sess.run(["actions"], {k: v[:1] for k, v in kept.items()})[0]
            actions = np.concatenate([one, sess.run(["actions"], kept)[0][1:]])
        except Exception as e:  # noqa: BLE001 (ONNX Runtime's errors have no common type)
            raise ConfigError(f"the exported {graph} does not run: {str(e).splitlines()[0][:300]}",
                              field="format") from None
        parity[name] = parity_error(actions, reference, scale)
        log(f"parity {name:9s} vs torch fp32 on {len(reference)} recorded observations: max |diff| "
            f"{parity[name]['max_normalized']:.2e} normalized ({parity[name]['max_abs']:.2e} raw)")
    check_parity(parity["onnx"])
    return parity


def parity_error(actions: np.ndarray, reference: np.ndarray, scale: np.ndarray) -> dict:
    """(N, K, D) actions against the (N, K, D) reference, both raw; scale (D,) raw units per normalized unit."""
    err = np.abs(actions.astype(np.float64) - reference)
    normalized = err / np.maximum(scale, 1e-12)
    worst = np.unravel_index(np.argmax(np.nan_to_num(normalized, nan=np.inf)), normalized.shape)
    return {"max_normalized": float(normalized.max()), "max_abs": float(err.max()), "mean_abs": float(err.mean()),
            "worst_dim": int(worst[-1])}


def check_parity(err: dict) -> None:
    if not err["max_normalized"] <= PARITY_TOLERANCE:  # `not <=` also catches NaN
        raise ConfigError(f"ONNX parity failed: max |diff| {err['max_normalized']:.3g} in the policy's normalized "
                          f"action units (action dimension {err['worst_dim']}; {err['max_abs']:.3g} raw) > "
                          f"{PARITY_TOLERANCE} against torch on the recorded observations; nothing was written",
                          field="format")


# ---------------------------------------------------------------- ONNX
class ExportModule(nn.Module):
    """Positional tensors in, the graph outputs out: what the exporter traces."""

    def __init__(self, policy: Policy):
        super().__init__()
        self.policy, self.keys = policy, policy.input_keys
        self.student = hasattr(policy, "encode")

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batch = dict(zip(self.keys, inputs))
        if uses_instruction(self.policy):
            batch[TASK_EMBEDDING] = inputs[len(self.keys)]
        if uses_prompt_ids(self.policy):
            batch[PROMPT_IDS] = inputs[len(self.keys)]
        if not self.student:
            return (self.policy.predict_action_chunk(batch),)
        out = self.policy.encode(batch)
        return self.policy.actions(out, batch), out["phase_logits"], out["direction"]


@contextlib.contextmanager
def _no_fastpath():
    """nn.TransformerEncoder's fused inference kernel has no ONNX symbolic: trace the composite ops instead."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def export_onnx(policy: Policy, batch: dict, path: str | Path) -> None:
    """Traces the fp32 policy on `batch` and writes the graph, batch axis dynamic, its attention traceable with
    constant shapes (onnx_graph.py). The TorchScript-based exporter is used: the dynamo exporter's graph failed ONNX
    Runtime's shape inference for int8 (REFERENCE)."""
    import warnings

    feed = graph_inputs(policy, batch)
    args = tuple(torch.from_numpy(feed[k]) for k in input_names(policy))
    outputs = output_names(policy)
    axes = {name: {0: "batch"} for name in input_names(policy) + outputs}
    module = ExportModule(traceable(policy.float().eval()))
    with _no_fastpath(), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's TracerWarnings about Python ints (image sizes are fixed)
        torch.onnx.export(module, args, str(path), dynamo=False, input_names=input_names(policy), output_names=outputs,
                          dynamic_axes=axes, opset_version=17, do_constant_folding=True)


def activation_products(traced: str | Path) -> list[str]:
    """The MatMul/Gemm nodes of a traced graph without a weight: a product of two activations (attention's scores) or
    with a traced constant (the keypoints' coordinate grid, which int8 would blur). They stay fp32; named on the
    traced graph because ONNX Runtime's constant folding (fold_pads) turns such constants into initializers."""
    import onnx

    graph = onnx.load(str(traced)).graph
    weights = {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and not any(i in weights for i in n.input)]


def quantize_int8(src: str | Path, dst: str | Path, products: list[str]) -> None:
    """Weights of the linear layers to int8, activations quantized per call, as torch's dynamic quantization does;
    `products` (activation_products) stay fp32."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # its "consider pre-processing" advice is printed on every call
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                     nodes_to_exclude=products)


def quantize_int8_static(src: str | Path, dst: str | Path, products: list[str], feed: dict[str, np.ndarray]) -> None:
    """Convolutions and linear layers to int8 (QDQ; uint8 activations, int8 weights per tensor), each activation's
    range calibrated (min-max) on `feed`, a batch of recorded observations, fed one at a time as at run time;
    `products` stay fp32."""
    import logging
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Observations(CalibrationDataReader):
        def __init__(self):
            n = len(next(iter(feed.values())))
            self.rows = iter([{k: v[i : i + 1] for k, v in feed.items()} for i in range(n)])

        def get_next(self):
            return next(self.rows, None)

    logging.getLogger().setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(dir=Path(dst).parent) as work:
        pre = Path(work) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(dst), Observations(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv", "MatMul", "Gemm"], nodes_to_exclude=products, per_channel=False)
