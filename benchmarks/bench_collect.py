"""Collection throughput: frames/s of `vla-distill collect` with two 128 px cameras, 1 worker vs 2.

Usage: python benchmarks/bench_collect.py [--tasks reach-v3,push-v3,drawer-open-v3] [--episodes 3]
Prints a table and writes benchmarks/results/collect.json. Target: >= 100 frames/s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from common import RESULTS, write_result
from vla_distill.collect.collect import collect
from vla_distill.collect.config import CollectConfig
from vla_distill.data.dataset import RobotDataset
from vla_distill.sim.base import CameraConfig
from vla_distill.sim.metaworld.tasks import resolve_tasks


def run(tasks: list[str], episodes: int, workers: int, size: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix="bench-collect-")) / "ds"
    cfg = CollectConfig(tasks=tuple(tasks), episodes=episodes, cameras=CameraConfig(height=size, width=size),
                        workers=workers)
    t0 = time.perf_counter()
    collect(cfg, out)
    wall = time.perf_counter() - t0
    ds = RobotDataset(out)
    prov = json.loads((out / "meta/collection.json").read_text())
    tried_frames = ds.num_frames  # kept frames; failed attempts also cost time and are counted below
    tried = sum(t["tried"] for t in prov["tasks"].values())
    shutil.rmtree(out.parent)
    return {"workers": workers, "episodes": ds.num_episodes, "attempts": tried, "frames": tried_frames,
            "wall_s": round(wall, 2),
            "frames_per_s": round(tried_frames / wall, 1)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", default="reach-v3,push-v3,drawer-open-v3")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--out", default=str(RESULTS / "collect.json"))
    args = p.parse_args()
    tasks = resolve_tasks(args.tasks)
    rows = [run(tasks, args.episodes, w, args.image_size) for w in (1, os.cpu_count() or 2)]
    speedup = rows[1]["frames_per_s"] / rows[0]["frames_per_s"]
    print(f"\ncollection, {len(tasks)} tasks x {args.episodes} episodes, two {args.image_size} px cameras, AV1")
    print(f"{'workers':>8} {'episodes':>9} {'frames':>7} {'wall s':>7} {'frames/s':>9}")
    for r in rows:
        print(f"{r['workers']:>8} {r['episodes']:>9} {r['frames']:>7} {r['wall_s']:>7} {r['frames_per_s']:>9}")
    print(f"speed-up with {rows[1]['workers']} workers: {speedup:.2f}x; target >= 100 frames/s: "
          f"{'met' if rows[1]['frames_per_s'] >= 100 else 'NOT met'}")
    write_result(args.out, {"benchmark": "collect", "tasks": tasks, "episodes_per_task": args.episodes,
                            "image_size": args.image_size, "rows": rows, "speedup": round(speedup, 2),
                            "target_frames_per_s": 100})


if __name__ == "__main__":
    main()
