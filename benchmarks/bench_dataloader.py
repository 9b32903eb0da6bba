"""Training-view random access: samples/s of WindowedDataset with the decoded-frame cache vs decoding per sample.

Usage: python benchmarks/bench_dataloader.py [--episodes 20] [--samples 3000]
Builds a synthetic 128 px, two-camera, 80 fps dataset shaped like a collected one (AV1 video), reads random
samples with a window of 2 observation steps and a 10-step action chunk. Target: >= 2,000 samples/s.
Writes benchmarks/results/dataloader.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from common import RESULTS, write_result
from vla_distill.data.dataset import RobotDataset
from vla_distill.data.format import video_feature
from vla_distill.data.windows import WindowedDataset
from vla_distill.data.writer import DatasetWriter, Episode

CAMS = ("observation.images.corner2", "observation.images.gripper")


def build(root: Path, episodes: int, length: int, size: int) -> None:
    rng = np.random.default_rng(0)
    feats = {k: video_feature(size, size, 80, "libsvtav1") for k in CAMS}
    feats["observation.state"] = {"dtype": "float32", "shape": [4], "names": None}
    feats["action"] = {"dtype": "float32", "shape": [4], "names": None}
    yy, xx = np.mgrid[0:size, 0:size]
    with DatasetWriter(root, 80, feats) as w:
        for e in range(episodes):
            frames = {"observation.state": rng.normal(size=(length, 4)).astype(np.float32),
                      "action": rng.normal(size=(length, 4)).astype(np.float32)}
            for k in CAMS:
                imgs = np.empty((length, size, size, 3), np.uint8)
                for t in range(length):
                    imgs[t] = ((xx + yy + 2 * t + 30 * e)[..., None] * [1, 2, 3]) % 256
                frames[k] = imgs
            w.add_episode(Episode(frames, task=f"task {e % 3}"))


def measure(wd: WindowedDataset, n: int) -> float:
    idx = np.random.default_rng(1).integers(0, len(wd), n)
    wd[int(idx[0])]
    t0 = time.perf_counter()
    for i in idx:
        wd[int(i)]
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--length", type=int, default=150)
    p.add_argument("--samples", type=int, default=3000)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--out", default=str(RESULTS / "dataloader.json"))
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-loader-"))
    os.environ["VLA_DISTILL_CACHE"] = str(tmp / "cache")
    build(tmp / "ds", args.episodes, args.length, args.image_size)
    ds = RobotDataset(tmp / "ds")
    deltas = {**{k: [-1, 0] for k in CAMS}, "observation.state": [-1, 0], "action": list(range(10))}
    t0 = time.perf_counter()
    cached = WindowedDataset(ds, deltas)
    cache_build_s = time.perf_counter() - t0
    rows = {
        "decode per sample": measure(WindowedDataset(ds, deltas, use_cache=False), max(200, args.samples // 10)),
        "decoded-frame cache": measure(cached, args.samples),
    }
    shutil.rmtree(tmp)
    print(f"\ntraining view, {ds.num_frames} frames, two {args.image_size} px cameras x 2 steps + 10-step action chunk")
    print(f"{'mode':<22} {'samples/s':>10}")
    for name, v in rows.items():
        print(f"{name:<22} {v:>10.0f}")
    ratio = rows["decoded-frame cache"] / rows["decode per sample"]
    print(f"cache speed-up: {ratio:.1f}x (cache built once in {cache_build_s:.1f}s); target >= 2000 samples/s: "
          f"{'met' if rows['decoded-frame cache'] >= 2000 else 'NOT met'}")
    write_result(args.out, {"benchmark": "dataloader", "frames": ds.num_frames, "image_size": args.image_size,
                            "samples_per_s": {k: round(v, 1) for k, v in rows.items()},
                            "cache_speedup": round(ratio, 2),
                            "cache_build_s": round(cache_build_s, 2), "target_samples_per_s": 2000})


if __name__ == "__main__":
    main()
