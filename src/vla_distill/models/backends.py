"""The backend loader: one way to load a policy for inference, whatever runs it (the evaluator, the control loop
and the policy server all load through here).

  load_policy(PATH, backend)   PATH: a bundle (vla-distill export) or a checkpoint (torch backends only)
  backends: torch (fp32) | torch-bf16 (bf16 weights and compute) | onnx (ONNX Runtime fp32) | onnx-int8
            auto (the default): torch, or onnx for a bundle that carries ONNX graphs only

Every backend answers lerobot's interface (reset, select_action, predict_action_chunk) on the same batch layout
(models.base.observation_to_batch), so its callers never branch on it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from vla_distill.errors import ConfigError, did_you_mean
from vla_distill.models import bundle
from vla_distill.models.base import Policy
from vla_distill.models.checkpoint import load_pretrained, read_config, read_provenance

BACKENDS = ("torch", "torch-bf16", "onnx", "onnx-int8")


def policy_threads(asked: int = 0, cpus: int | None = None) -> int:
    """A batch-1 policy's threads beside a simulated robot (`run`, and `eval`'s own process): as asked, else half the
    cores (at most 4). The simulator renders in the same process, and on 2 cores an ALOHA student's 2-thread ONNX
    session beside the renderer missed 10-13 of 400 ticks at 50 Hz per episode, one thread none; with every core busy
    elsewhere, two threads made the demo student's calls 1.0-1.4 s where one took 7-11 ms (BENCHMARKS.md)."""
    return asked or max(1, min(4, (cpus or os.cpu_count() or 1) // 2))


def resolve_backend(path: str | Path, backend: str = "auto") -> str:
    """"auto" -> torch where the bundle or checkpoint has torch weights, else the bundle's first ONNX backend."""
    if backend != "auto":
        return backend
    return "torch" if not bundle.is_bundle(path) else bundle.read_manifest(path)["backends"][0]


def load_policy(path: str | Path, backend: str = "auto", device: str = "cpu", threads: int | None = None) -> Policy:
    backend = resolve_backend(path, backend)
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}{did_you_mean(backend, BACKENDS)}; backends: "
                          f"{', '.join(BACKENDS)}", field="backend")
    dtype = "bf16" if backend == "torch-bf16" else "fp32"
    if not bundle.is_bundle(path):
        if backend.startswith("onnx"):
            raise ConfigError(f"backend {backend} needs a bundle exported with `vla-distill export --format onnx`",
                              path=path)
        policy = load_pretrained(path, device)
        return policy.to(torch.bfloat16) if dtype == "bf16" else policy
    if not backend.startswith("onnx"):
        return bundle.load_bundle(path, dtype, device)
    from vla_distill.models.onnx_policy import INT8_FILE, ONNX_FILE, OnnxPolicy

    manifest = bundle.read_manifest(path)
    graph = INT8_FILE if backend == "onnx-int8" else ONNX_FILE
    if backend not in manifest["backends"]:
        raise ConfigError(f"this bundle has no {graph}: export it with --format onnx", path=path, field="backend")
    tables = bundle.WEIGHTS_FILE if bundle.WEIGHTS_FILE in manifest["files"] else bundle.EMBEDDINGS_FILE
    bundle.verify(path, manifest, (graph, *((tables,) if tables in manifest["files"] else ())))
    policy = OnnxPolicy(_without_weights(path, tables), Path(path) / graph, threads)
    policy.bundle = manifest
    return policy


def _without_weights(path: str | Path, tables: str) -> Policy:
    """The torch policy object for its config, observation spec and instruction lookup only: built on the meta
    device (no memory for weights, which ONNX Runtime holds), with the instruction embeddings loaded."""
    from safetensors import SafetensorError, safe_open

    cls, config = read_config(path)
    with torch.device("meta"):
        policy = cls(config)
    if hasattr(policy, "task_embeddings"):
        weights = Path(path) / tables
        try:
            with safe_open(str(weights), "pt") as f:
                policy.task_embeddings = f.get_tensor("task_embeddings").float()
        except SafetensorError as e:
            raise ConfigError(f"cannot read the weights ({e}): truncated or corrupt", path=weights) from None
    policy.provenance = read_provenance(path)
    return policy.eval()


def weights_bytes(policy: Policy) -> int:
    """What the backend holds in memory for its weights (the graph file for ONNX)."""
    if hasattr(policy, "weights_bytes"):
        return int(policy.weights_bytes)
    return sum(t.numel() * t.element_size() for t in policy.state_dict().values())
