"""Vision encoders in plain torch (torchvision cannot be installed here): two trained from scratch, and an
ImageNet-pretrained trunk (frozen, or fine-tuned at a lower learning rate) with a trained spatial-softmax keypoint
head.

Each maps (B, C, H, W) images to (B, N, d) tokens for the policy transformer: resnet and vit take images already
normalized by the dataset's statistics and give N = grid² pooled tokens; efficientnet-lite0 takes [0, 1] pixels
(its trunk has its own input range) and gives N = keypoint_tokens tokens. Pooling a 16x16 map down to 4x4 averages a
2-pixel goal away; a soft-argmax keeps its position to a fraction of a feature cell, which is why robomimic and
Diffusion Policy localize with keypoints. GroupNorm instead of BatchNorm in what is trained: batch statistics mislead
at batch 1 in the control loop and across tasks (diffusion_policy makes the same swap).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vla_distill.models.efficientnet import EfficientNetLiteTrunk, load_pretrained, tune_points

VISION_KINDS = ("resnet", "vit", "efficientnet-lite0")
PRETRAINED = ("efficientnet-lite0",)


@dataclass(frozen=True)
class VisionConfig:
    kind: str = "resnet"  # resnet | vit | efficientnet-lite0 (frozen, pretrained)
    widths: tuple[int, ...] = (32, 64, 128, 256)  # resnet: channels per stage
    blocks: tuple[int, ...] = (1, 1, 1, 1)  # resnet: basic blocks per stage
    patch: int = 16  # vit
    vit_width: int = 256
    vit_depth: int = 4
    vit_heads: int = 4
    grid: int = 4  # output tokens per side
    stride: int = 8  # efficientnet-lite0: the trunk's last stage (8: 40 channels; 16: 112)
    keypoints: int = 32  # efficientnet-lite0: spatial-softmax keypoints per camera
    keypoint_tokens: int = 4  # efficientnet-lite0: tokens per camera the keypoints are grouped into
    keypoint_features: int = 8  # efficientnet-lite0: attention-pooled feature channels per keypoint
    head_width: int = 32  # efficientnet-lite0: channels of the trained convolutions before the keypoints
    # efficientnet-lite0: 0 = the pretrained trunk frozen; S = its stages after stride S fine-tuned with the policy,
    # those up to S frozen (their output is what the feature cache holds); 1 = all of it fine-tuned, no cache
    tune_from: int = 0

    def __post_init__(self):
        if self.kind not in VISION_KINDS:
            raise ValueError(f"vision.kind: {self.kind!r} is not one of {list(VISION_KINDS)}")
        if self.kind == "resnet" and len(self.widths) != len(self.blocks):
            raise ValueError("vision.widths and vision.blocks must have the same length")
        if self.tune_from and not self.pretrained:
            raise ValueError(f"vision.tune_from: only a pretrained trunk ({list(PRETRAINED)}) is fine-tuned; "
                             f"{self.kind} is trained from scratch anyway")
        if self.tune_from and self.tune_from not in tune_points(self.stride):
            raise ValueError(f"vision.tune_from: the trunk's stages end at strides {tune_points(self.stride)} below "
                             f"its stride {self.stride}, not {self.tune_from}")

    @property
    def pretrained(self) -> bool:
        """A pretrained trunk: it takes [0, 1] pixels and loads its weights once."""
        return self.kind in PRETRAINED

    @property
    def trainable(self) -> bool:
        """Some of the pretrained trunk is fine-tuned."""
        return self.tune_from > 0

    @property
    def cacheable(self) -> bool:
        """A pretrained trunk with a frozen part: its output can be computed once per dataset frame."""
        return self.pretrained and self.tune_from != 1


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch // 4) or 1, ch)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.n1 = _norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.n2 = _norm(c_out)
        self.skip = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), _norm(c_out))
                     if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.n1(self.conv1(x)))
        return torch.relu(self.n2(self.conv2(y)) + self.skip(x))


class ResNetEncoder(nn.Module):
    """ResNet-18-shaped: a stride-4 stem (conv + max-pool) keeps batch-1 FLOPs low at 128 px, then stages that
    halve the resolution, then average-pooled to a grid x grid token map."""

    def __init__(self, in_ch: int, out_dim: int, cfg: VisionConfig):
        super().__init__()
        w = cfg.widths
        self.stem = nn.Sequential(nn.Conv2d(in_ch, w[0], 5, 2, 2, bias=False), _norm(w[0]), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        layers, c = [], w[0]
        for i, (width, n) in enumerate(zip(w, cfg.blocks)):
            for b in range(n):
                layers.append(BasicBlock(c, width, 2 if (i > 0 and b == 0) else 1))
                c = width
        self.stages = nn.Sequential(*layers)
        self.grid = cfg.grid
        self.proj = nn.Linear(c, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.stages(self.stem(x))  # (B, C, h, w)
        return self.proj(grid_pool(f, self.grid))  # (B, g², d)


class ViTEncoder(nn.Module):
    """Patchify + pre-norm transformer; the patch grid is average-pooled to grid x grid tokens."""

    def __init__(self, in_ch: int, out_dim: int, cfg: VisionConfig, image_size: tuple[int, int]):
        super().__init__()
        h, w = image_size
        if h % cfg.patch or w % cfg.patch:
            raise ValueError(f"vision.patch: image size {h}x{w} is not a multiple of {cfg.patch}")
        self.patch = nn.Conv2d(in_ch, cfg.vit_width, cfg.patch, cfg.patch)
        self.pos = nn.Parameter(torch.randn(1, (h // cfg.patch) * (w // cfg.patch), cfg.vit_width) * 0.02)
        layer = nn.TransformerEncoderLayer(cfg.vit_width, cfg.vit_heads, 4 * cfg.vit_width, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.vit_depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.vit_width)
        self.grid = cfg.grid
        self.proj = nn.Linear(cfg.vit_width, out_dim)
        self.grid_hw = (h // cfg.patch, w // cfg.patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2) + self.pos  # (B, P, w)
        t = self.norm(self.blocks(t))
        g = t.transpose(1, 2).reshape(len(x), -1, *self.grid_hw)
        return self.proj(grid_pool(g, self.grid))  # (B, grid², d)


@functools.cache
def _pool_matrix(h: int, w: int, g: int) -> torch.Tensor:
    """(h*w, g*g): adaptive average pooling as one matrix, with adaptive_avg_pool2d's window bounds. Built in
    numpy so that a trace (ONNX export) records it as a constant."""
    def windows(n: int) -> np.ndarray:
        m = np.zeros((g, n), np.float32)
        for i in range(g):
            lo, hi = (i * n) // g, -((-(i + 1) * n) // g)
            m[i, lo:hi] = 1.0 / (hi - lo)
        return m

    with torch.inference_mode(False):  # a cached inference tensor could not enter autograd (training, export)
        return torch.from_numpy(np.ascontiguousarray(np.kron(windows(h), windows(w)).T))


def grid_pool(f: torch.Tensor, g: int) -> torch.Tensor:
    """(B, C, h, w) -> (B, g², C) tokens. Equal to adaptive_avg_pool2d, written as a matmul so that ONNX export
    works for every size (the exporter refuses adaptive pooling whose output size does not divide the input's,
    e.g. a 3x3 map pooled to 4x4 at 96 px)."""
    h, w = int(f.shape[-2]), int(f.shape[-1])
    return f.flatten(2).matmul(_pool_matrix(h, w, g).to(f)).transpose(1, 2)


class KeypointHead(nn.Module):
    """(B, C_f, h, w) features -> (B, N, d) tokens. Two trained 3x3 convolutions, then per keypoint a softmax over
    the map: its expected (x, y) in [-1, 1] and a few attention-weighted feature channels there. The keypoints are
    read in N groups, each group's values flattened into one token: few tokens keep the policy transformer cheap
    (one token per keypoint trained several times slower); robomimic's flattened keypoints are N = 1."""

    def __init__(self, c_in: int, out_dim: int, cfg: VisionConfig):
        super().__init__()
        w, k = cfg.head_width, cfg.keypoints
        if k % cfg.keypoint_tokens:
            raise ValueError(f"vision.keypoints {k} is not a multiple of vision.keypoint_tokens {cfg.keypoint_tokens}")
        self.convs = nn.Sequential(nn.Conv2d(c_in, w, 3, 1, 1), _norm(w), nn.ReLU(), nn.Conv2d(w, w, 3, 1, 1), _norm(w),
                                   nn.ReLU())
        self.attention = nn.Conv2d(w, k, 1)
        self.values = nn.Conv2d(w, cfg.keypoint_features, 1)
        self.n_tokens = cfg.keypoint_tokens
        self.proj = nn.Linear(k // cfg.keypoint_tokens * (2 + cfg.keypoint_features), out_dim)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        h, w = int(f.shape[-2]), int(f.shape[-1])
        v = self.convs(f)  # (B, w, h, w)
        att = self.attention(v).flatten(2).softmax(-1)  # (B, n_kp, h*w)
        xy = att.matmul(_coordinates(h, w).to(att))  # (B, n_kp, 2)
        pooled = att.matmul(self.values(v).flatten(2).transpose(1, 2))  # (B, n_kp, f)
        kp = torch.cat([xy, pooled], dim=-1)  # (B, n_kp, 2 + f)
        return self.proj(kp.reshape(kp.shape[0], self.n_tokens, -1))  # (B, N, d)


@functools.cache
def _coordinates(h: int, w: int) -> torch.Tensor:
    """(h*w, 2): each cell centre's (x, y) in [-1, 1], row-major; numpy-built so a trace keeps it a constant."""
    ys, xs = np.meshgrid(np.linspace(-1, 1, h, dtype=np.float32), np.linspace(-1, 1, w, dtype=np.float32),
                         indexing="ij")
    with torch.inference_mode(False):
        return torch.from_numpy(np.stack([xs.reshape(-1), ys.reshape(-1)], 1))


class PretrainedKeypointEncoder(nn.Module):
    """A pretrained trunk and a trained keypoint head. Its input is [0, 1] pixels (the trunk has its own input
    range); the trunk's frozen part's output can be computed once per dataset frame and fed to `from_features` (the
    trainer's feature cache)."""

    def __init__(self, out_dim: int, cfg: VisionConfig):
        super().__init__()
        self.trunk = EfficientNetLiteTrunk(cfg.stride, cfg.tune_from)
        self.head = KeypointHead(self.trunk.out_channels, out_dim, cfg)

    def load_pretrained(self, name: str) -> None:
        load_pretrained(self.trunk, name)

    def feature_shape(self, image_size: tuple[int, int]) -> tuple[int, int, int]:
        """(C_cut, h, w) of the trunk's frozen part's output (what the cache holds) for (H, W) images."""
        h, w = (-(-n // self.trunk.cut) for n in image_size)
        return self.trunk.cut_channels, h, w

    def from_features(self, f: torch.Tensor) -> torch.Tensor:
        """The frozen part's (cached) output -> tokens."""
        return self.head(self.trunk.tuned(f.to(self.head.proj.weight.dtype)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def make_encoder(in_ch: int, out_dim: int, cfg: VisionConfig, image_size: tuple[int, int]) -> nn.Module:
    if cfg.pretrained:
        if in_ch != 3:
            raise ValueError(f"vision.kind {cfg.kind}: its pretrained trunk takes RGB only (no depth channel)")
        return PretrainedKeypointEncoder(out_dim, cfg)
    return ResNetEncoder(in_ch, out_dim, cfg) if cfg.kind == "resnet" else ViTEncoder(in_ch, out_dim, cfg, image_size)


def tokens_per_image(cfg: VisionConfig) -> int:
    return cfg.keypoint_tokens if cfg.pretrained else cfg.grid**2


def random_shift(x: torch.Tensor, pad: int, generator: torch.Generator | None = None,
                 keys: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C, H, W) -> same shape, each image shifted by up to ±pad pixels with edge padding (DrQ-style).
    keys (B,) int64, when given, fix each image's shift (a hash of its key): a sample is augmented the same way
    whichever process or micro-batch it lands in, so distributed training repeats a single process's."""
    if pad <= 0:
        return x
    b, _, h, w = x.shape
    padded = nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    if keys is not None:
        mixed = _mix(keys.cpu().numpy().astype(np.uint64))
        dx = torch.from_numpy((mixed % np.uint64(2 * pad + 1)).astype(np.int64))
        dy = torch.from_numpy(((mixed >> np.uint64(32)) % np.uint64(2 * pad + 1)).astype(np.int64))
    else:
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: well-spread 64-bit values from consecutive keys."""
    with np.errstate(over="ignore"):
        z = (z + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(0xFFFFFFFFFFFFFFFF)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))
