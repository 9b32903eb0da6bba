"""A bundle's ONNX graph (written by deploy/export.py), run by ONNX Runtime behind the same Policy interface as
torch.

Graph inputs (B is dynamic):   <state key> (B, S) float32, <camera key> (B, 3, H, W) float32 in [0, 1],
                               task_embedding (B, E) float32 (students only; looked up from the bundle)
                               prompt_ids (B, L) int64 (VITA-VLA policies: the instruction tokenized on the host)
                               An input nothing reads is dropped by the tracer (graph_feed leaves it out)
Graph outputs:                 actions (B, K, D) float32 raw units; students add phase_logits (B, P), direction (B, E)
The int8 variant (model.int8.onnx) has the same inputs and outputs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from vla_distill.errors import ConfigError
from vla_distill.models.base import Policy
from vla_distill.types import PROMPT_IDS, TASK_EMBEDDING

ONNX_FILE, INT8_FILE = "model.onnx", "model.int8.onnx"
INSTALL_HINT = "ONNX export and the ONNX Runtime backends need: pip install 'vla-distill[onnx]'"


def uses_prompt_ids(policy: Policy) -> bool:
    return hasattr(policy, "prompt_ids")


def uses_instruction(policy: Policy) -> bool:
    return hasattr(policy, "task_embeddings")


def input_names(policy: Policy) -> list[str]:
    return (list(policy.input_keys) + ([TASK_EMBEDDING] if uses_instruction(policy) else [])
            + ([PROMPT_IDS] if uses_prompt_ids(policy) else []))


def output_names(policy: Policy) -> list[str]:
    return ["actions", "phase_logits", "direction"] if hasattr(policy, "encode") else ["actions"]


def graph_inputs(policy: Policy, batch: dict) -> dict[str, np.ndarray]:
    """A policy batch (observation_to_batch / frames_to_batch layout) -> the graph's named inputs."""
    feed = {k: batch[k].detach().float().cpu().numpy() for k in policy.input_keys}
    if uses_instruction(policy):
        feed[TASK_EMBEDDING] = policy.task_tokens(batch).detach().float().cpu().numpy()
    if uses_prompt_ids(policy):
        feed[PROMPT_IDS] = policy.prompt_ids(batch).cpu().numpy()
    return feed


def graph_feed(sess, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inputs the graph kept: the tracer drops an input nothing reads (a VITA policy's VLM sees one camera, its
    expert's others only trained it)."""
    names = {i.name for i in sess.get_inputs()}
    return {k: v for k, v in feed.items() if k in names}


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
    backends.load_policy) serves only its config, observation spec and instruction lookup."""

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
    def horizon(self) -> int:  # the twin's: a VITA policy's comes from its expert, not its own config
        return self._policy[0].horizon

    @property
    def action_dim(self) -> int:
        return self._policy[0].action_dim

    @property
    def observation_spec(self) -> dict[str, dict]:
        return self._policy[0].observation_spec

    def reset(self, task: str | None = None) -> None:
        super().reset()
        self._policy[0].reset(task=task)

    def run(self, batch: dict) -> dict[str, np.ndarray]:
        feed = graph_feed(self.session, graph_inputs(self._policy[0], batch))
        return dict(zip(self.outputs, self.session.run(None, feed)))

    def predict_action_chunk(self, batch: dict) -> torch.Tensor:
        return torch.from_numpy(self.run(batch)["actions"])

    def predict_observed(self, batch: dict) -> dict[str, torch.Tensor]:
        out = self.run(batch)
        return {"actions": torch.from_numpy(out["actions"]), "phase": torch.from_numpy(out["phase_logits"].argmax(-1)),
                "direction": torch.from_numpy(out["direction"])}

    def num_parameters(self, deployed: bool = False) -> int:
        p = self._policy[0]
        return p.num_parameters(deployed) if hasattr(p, "num_parameters") else sum(t.numel() for t in p.parameters())


def instruction_table(policy: Policy) -> Policy | None:
    """The student whose instruction embeddings `policy` acts on: the policy itself, or an ONNX student graph's torch
    twin; None for a policy that reads no instruction embedding."""
    inner = policy._policy[0] if isinstance(policy, OnnxPolicy) else policy
    return inner if uses_instruction(inner) else None
