"""The frozen trunk's features of every dataset frame, computed once and reused by every run on the dataset.

A frozen pretrained encoder gives the same features for a frame every time it is seen, so a training run computes
them once instead of once per sample per epoch, and the trained keypoint head and transformer train several times
faster (BENCHMARKS.md). The price: no pixel augmentation (a pixel shift would change the features; the
student's `feature_shift` shifts the cached maps instead). Cached as (N, C_f, h, w) float16 memmaps beside the
decoded-frame cache, keyed by that cache, the encoder and its stride; each is written under a temporary name and
renamed when complete, so a killed build starts that camera over and a finished one is never stale.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vla_distill.data import disk_cache
from vla_distill.data.dataset import RobotDataset
from vla_distill.data.windows import FrameCache
from vla_distill.types import images_to_float

BATCH = 8  # the trunk is fastest at small batches, whose activations stay in cache (3x batch 64)


def cached_features(ds: RobotDataset, cameras: list[str], encoder: torch.nn.Module, kind: str,
                    cache_dir: Path | None = None) -> dict[str, np.ndarray]:
    """{camera: (N, C_cut, h, w) float16 memmap} of `encoder.trunk`'s frozen part (all of it unless some is
    fine-tuned) over every frame of the dataset, N = its frames."""
    out = {}
    for cam in cameras:
        frames = FrameCache(ds, cam, cache_dir)
        tag = f"{kind}-s{encoder.trunk.cut}"  # the same ImageNet layers up to that stride, whatever follows
        path = frames.path.with_name(f"{cam}.{tag}.f16.npy")
        if not path.exists():
            _build(frames.frames, encoder.trunk, path, f"{cam} through {tag}")
        out[cam] = np.load(path, mmap_mode="r")
    return out


@torch.inference_mode()
def _build(frames: np.ndarray, trunk: torch.nn.Module, path: Path, what: str) -> None:
    trunk = trunk.eval()
    device = next(trunk.parameters()).device
    c, h, w = trunk.frozen(images_to_float(np.array(frames[:1]), device)).shape[1:]
    tmp = disk_cache.tmp_path(path)
    disk_cache.make_room(path.parent, len(frames) * c * h * w * 2)
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(frames), c, h, w))
    with tqdm(total=len(frames), desc=f"features of {what}", unit="img", leave=False) as bar:
        for s in range(0, len(frames), BATCH):
            x = images_to_float(np.array(frames[s : s + BATCH]), device)
            out[s : s + len(x)] = trunk.frozen(x).cpu().numpy().astype(np.float16)
            bar.update(len(x))
    out.flush()
    del out
    os.replace(tmp, path)

