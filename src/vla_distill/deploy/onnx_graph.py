"""What makes an exported graph fast in ONNX Runtime on a CPU, without changing what it computes.

Two things cost the recipe's student a third of its batch-1 time (profiled with ONNX Runtime's node profiler):
- nn.MultiheadAttention's traced form rebuilds every reshape from the dynamic batch size (Shape, Gather, Unsqueeze,
  Concat around each of ~30 Reshapes). The token count is fixed by the model, so an attention written with the batch
  as -1 has constant shapes: `traceable` swaps such a layer in, with the same weights, for the trace only.
- TensorFlow-style SAME padding (EfficientNet's stride-2 convolutions pad more at the bottom and right) is traced as
  Pad before Conv. Each Pad also breaks ONNX Runtime's blocked (NCHWc) convolution layout, adding a reorder on either
  side. ONNX's Conv takes asymmetric pads itself: `fold_pads` moves every constant zero Pad into the Conv it feeds.
The export's parity check against torch runs on the rewritten graph.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn


class TraceableEncoderLayer(nn.Module):
    """nn.TransformerEncoderLayer's inference forward (batch first, no masks), shapes written with the batch as -1.

    (B, T, d) -> (B, T, d)."""

    def __init__(self, layer: nn.TransformerEncoderLayer):
        super().__init__()
        attn = layer.self_attn
        if not (attn.batch_first and attn._qkv_same_embed_dim):
            raise ValueError("TraceableEncoderLayer: needs a batch-first layer with one input projection")
        self.layer, self.heads = layer, attn.num_heads

    @property
    def self_attn(self) -> nn.MultiheadAttention:  # nn.TransformerEncoder reads its first layer's
        return self.layer.self_attn

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.layer.self_attn
        t, d = int(x.shape[1]), int(x.shape[2])  # fixed by the model: traced as constants
        qkv = nn.functional.linear(x, attn.in_proj_weight, attn.in_proj_bias)  # (B, T, 3d)
        q, k, v = qkv.reshape(-1, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, h, T, d/h)
        w = (q @ k.transpose(-1, -2) * (d // self.heads) ** -0.5).softmax(-1)  # (B, h, T, T)
        return attn.out_proj((w @ v).transpose(1, 2).reshape(-1, t, d))

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        lay = self.layer
        return lay.linear2(lay.activation(lay.linear1(x)))

    def forward(self, x: torch.Tensor, src_mask=None, src_key_padding_mask=None,
                is_causal: bool = False) -> torch.Tensor:
        if src_mask is not None or src_key_padding_mask is not None or is_causal:
            raise ValueError("TraceableEncoderLayer: masks are not supported")
        lay = self.layer
        if lay.norm_first:
            x = x + self._attention(lay.norm1(x))
            return x + self._feed_forward(lay.norm2(x))
        x = lay.norm1(x + self._attention(x))
        return lay.norm2(x + self._feed_forward(x))


def traceable(module: nn.Module) -> nn.Module:
    """A copy of `module` whose transformer encoder layers trace with constant shapes (same weights, same outputs)."""
    module = copy.deepcopy(module)
    for m in module.modules():
        if isinstance(m, nn.TransformerEncoder):
            m.layers = nn.ModuleList(TraceableEncoderLayer(layer) for layer in m.layers)
    return module


def fold_pads(path: str | Path) -> int:
    """Rewrites the graph at `path` in place: constants folded (ONNX Runtime's basic, provider-independent level),
    then every Pad of constant zeros that feeds one Conv moved into the Conv's pads. Returns how many were folded."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    path = Path(path)
    basic = path.with_suffix(".basic.onnx")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(basic)
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    model = onnx.load(str(basic))
    basic.unlink()
    graph = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    folded = [pad for pad in graph.node if _fold_into_conv(pad, consts, consumers, helper)]
    for pad in folded:
        graph.node.remove(pad)
    onnx.save(model, str(path))
    return len(folded)


def _fold_into_conv(pad, consts: dict, consumers: dict, helper) -> bool:
    """Moves one Pad node's padding into the Conv it alone feeds, if the Pad is constant zeros on spatial axes only."""
    if pad.op_type != "Pad" or pad.input[1] not in consts:
        return False
    if any(a.name == "mode" and a.s != b"constant" for a in pad.attribute):
        return False
    if len(pad.input) > 2 and pad.input[2] and (pad.input[2] not in consts or np.any(consts[pad.input[2]])):
        return False
    pads = consts[pad.input[1]].astype(int).tolist()  # [begin per axis..., end per axis...]
    rank = len(pads) // 2
    users = consumers.get(pad.output[0], [])
    if len(users) != 1 or users[0].op_type != "Conv" or min(pads) < 0 or any(pads[:2] + pads[rank : rank + 2]):
        return False
    conv = users[0]
    attrs = {a.name: a for a in conv.attribute}
    if "auto_pad" in attrs and attrs["auto_pad"].s not in (b"", b"NOTSET"):
        return False
    spatial = rank - 2
    old = list(attrs["pads"].ints) if "pads" in attrs else [0] * (2 * spatial)
    new = ([old[i] + pads[2 + i] for i in range(spatial)]
           + [old[spatial + i] + pads[rank + 2 + i] for i in range(spatial)])
    if "pads" in attrs:
        conv.attribute.remove(attrs["pads"])
    conv.attribute.append(helper.make_attribute("pads", new))
    conv.input[0] = pad.input[0]
    return True
