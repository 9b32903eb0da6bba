"""Training throughput with 1 and 2 processes on this machine's cores (torchrun, gloo), same global batch.

Usage: python benchmarks/bench_distributed.py [--dataset outputs/demo/annotated] [--steps 150] [--batch 32]
-> results/distributed_train.json. On a 2-core CPU the processes share the cores that one process's two threads
would use, so this measures the overhead of the distributed path more than a speed-up; on GPUs each process has its
own device.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from common import RESULTS, write_result


def run(dataset: str, out: Path, procs: int, batch: int, steps: int, threads: int) -> float:
    args = ["-m", "vla_distill", "train", "--dataset", dataset, "--preset", "tiny", "--steps", str(steps), "--device", "cpu",
            "--batch-size", str(batch // procs), "--log-every", "10", "--save-every", str(steps), "--out", str(out)]
    launcher = [sys.executable] if procs == 1 else [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs)]
    print(f"$ {'torchrun --nproc_per_node ' + str(procs) if procs > 1 else 'python'} {' '.join(args)}", flush=True)
    subprocess.run(launcher + args, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                   stderr=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"samples_per_s"' in line]
    return float(np.median([r["samples_per_s"] for r in rows[2:]]))  # after warm-up


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="outputs/demo/annotated")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=32, help="global batch")
    p.add_argument("--work", default="outputs/bench_distributed")
    args = p.parse_args()
    import shutil

    shutil.rmtree(args.work, ignore_errors=True)
    cores = os.cpu_count() or 1
    one = run(args.dataset, Path(args.work) / "one", 1, args.batch, args.steps, cores)
    two = run(args.dataset, Path(args.work) / "two", 2, args.batch, args.steps, max(1, cores // 2))
    print(f"| processes | threads each | samples/s |\n|---|---|---|\n| 1 | {cores} | {one:.0f} |\n"
          f"| 2 | {max(1, cores // 2)} | {two:.0f} ({two / one:.2f}x) |")
    write_result(RESULTS / "distributed_train.json", {"global_batch": args.batch, "steps": args.steps,
                                                      "samples_per_s": {"1": one, "2": two}, "ratio": two / one})


if __name__ == "__main__":
    main()
