"""The action path as an ONNX graph, run by ONNX Runtime behind the same Policy interface as torch.

Graph inputs (B is dynamic):   <state key> (B, S) float32, <camera key> (B, 3, H, W) float32 in [0, 1],
                               task_embedding (B, E) float32 (students only; looked up from the bundle)
Graph outputs:                 actions (B, K, D) float32 raw units; students add phase_logits (B, P), direction (B, E)
The int8 variant quantizes the weights of MatMul/Gemm (transformer and linear layers) dynamically, as torch's
dynamic quantization does; convolutions stay fp32 (ONNX Runtime's ConvInteger was slower than fp32 here).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vla_distill.errors import ConfigError
from vla_distill.models.base import Policy

ONNX_FILE, INT8_FILE = "model.onnx", "model.int8.onnx"
INSTALL_HINT = "ONNX export and the ONNX Runtime backends need: pip install 'vla-distill[onnx]'"


def _uses_instruction(policy: Policy) -> bool:
    return hasattr(policy, "task_embeddings")


class ExportModule(nn.Module):
    """Positional tensors in, the graph outputs out: what the exporter traces."""

    def __init__(self, policy: Policy):
        super().__init__()
        self.policy, self.keys = policy, policy.input_keys
        self.student = hasattr(policy, "encode")

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batch = dict(zip(self.keys, inputs))
        if _uses_instruction(self.policy):
            batch["task_embedding"] = inputs[len(self.keys)]
        if not self.student:
            return (self.policy.predict_action_chunk(batch),)
        out = self.policy.encode(batch)
        actions = self.policy.unnormalize_action(self.policy.decode_action(out["action"]).float())
        return actions, out["phase_logits"], out["direction"]


def input_names(policy: Policy) -> list[str]:
    return list(policy.input_keys) + (["task_embedding"] if _uses_instruction(policy) else [])


def output_names(policy: Policy) -> list[str]:
    return ["actions", "phase_logits", "direction"] if hasattr(policy, "encode") else ["actions"]


def graph_inputs(policy: Policy, batch: dict) -> dict[str, np.ndarray]:
    """A policy batch (observation_to_batch / frames_to_batch layout) -> the graph's named inputs."""
    feed = {k: batch[k].detach().float().cpu().numpy() for k in policy.input_keys}
    if _uses_instruction(policy):
        feed["task_embedding"] = policy._task_tokens(batch).detach().float().cpu().numpy()
    return feed


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
    """Traces the fp32 policy on `batch` and writes the graph, batch axis dynamic. The TorchScript-based
    exporter is used: the dynamo exporter's graph failed ONNX Runtime's shape inference for int8 (REFERENCE)."""
    import warnings

    feed = graph_inputs(policy, batch)
    args = tuple(torch.from_numpy(feed[k]) for k in input_names(policy))
    outputs = output_names(policy)
    axes = {name: {0: "batch"} for name in input_names(policy) + outputs}
    module = ExportModule(policy.float().eval())
    with _no_fastpath(), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's TracerWarnings about Python ints (image sizes are fixed)
        torch.onnx.export(module, args, str(path), dynamo=False, input_names=input_names(policy), output_names=outputs,
                          dynamic_axes=axes, opset_version=17, do_constant_folding=True)


def quantize_int8(src: str | Path, dst: str | Path) -> None:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # its "consider pre-processing" advice is printed on every call
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])


def session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session with torch's thread count; its threads wait passively when OpenMP's do (the
    evaluator's setting: spinning threads starve a renderer sharing the cores)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class OnnxPolicy(Policy):
    """A bundle's ONNX graph behind lerobot's policy interface. The torch policy object (weightless, see
    runtime.load_policy) serves only its config, observation spec and instruction lookup."""

    name = "onnx"

    def __init__(self, torch_policy: Policy, graph: str | Path, threads: int | None = None):
        super().__init__(torch_policy.config)
        self._policy = [torch_policy]  # a list: not a registered submodule, its parameters are not ours
        self.session = session(graph, threads)
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.observes = "phase_logits" in self.outputs  # students' graphs carry the phase and direction heads
        self.weights_bytes = Path(graph).stat().st_size
        self.provenance = getattr(torch_policy, "provenance", {})

    @property
    def input_keys(self) -> tuple[str, ...]:
        return self._policy[0].input_keys

    @property
    def observation_spec(self) -> dict[str, dict]:
        return self._policy[0].observation_spec

    def reset(self, task: str | None = None) -> None:
        super().reset()
        self._policy[0].reset(task=task)

    def run(self, batch: dict) -> dict[str, np.ndarray]:
        return dict(zip(self.outputs, self.session.run(None, graph_inputs(self._policy[0], batch))))

    def predict_action_chunk(self, batch: dict) -> torch.Tensor:
        return torch.from_numpy(self.run(batch)["actions"])

    def predict_observed(self, batch: dict) -> dict[str, torch.Tensor]:
        out = self.run(batch)
        return {"actions": torch.from_numpy(out["actions"]), "phase": torch.from_numpy(out["phase_logits"].argmax(-1)),
                "direction": torch.from_numpy(out["direction"])}

    def num_parameters(self, deployed: bool = False) -> int:
        p = self._policy[0]
        return p.num_parameters(deployed) if hasattr(p, "num_parameters") else sum(t.numel() for t in p.parameters())
