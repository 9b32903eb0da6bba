"""Scale-out on this machine's cores: training with 1 and 2 processes (torchrun, gloo, same global batch), and
annotation in one process vs 1 and 2 Ray workers (`annotate --executor ray`), side by side.

Usage: python benchmarks/bench_distributed.py [--only train|annotate] [--dataset outputs/demo/annotated]
         [--steps 150] [--batch 32] [--annotate-episodes 20]
-> results/distributed_train.json, results/distributed_annotate.json. On a 2-core CPU the processes share the cores
that one process's two threads would use, so this measures the overhead of the distributed path more than a
speed-up; on GPUs each process has its own device, on a Ray cluster each worker its own node's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import BIN, DEMO_TASKS, RESULTS, write_result


def run(dataset: str, out: Path, procs: int, batch: int, steps: int, threads: int) -> float:
    args = ["-m", "vla_distill", "train", "--dataset", dataset, "--preset", "tiny", "--steps", str(steps),
            "--device", "cpu", "--batch-size", str(batch // procs), "--log-every", "10", "--save-every", str(steps),
            "--out", str(out)]
    launcher = [sys.executable] if procs == 1 else [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                                                    str(procs)]
    print(f"$ {'torchrun --nproc_per_node ' + str(procs) if procs > 1 else 'python'} {' '.join(args)}", flush=True)
    subprocess.run(launcher + args, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                   stderr=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"samples_per_s"' in line]
    return float(np.median([r["samples_per_s"] for r in rows[2:]]))  # after warm-up


def annotate_run(dataset: Path, out: Path, teacher: str, executor: list[str], extra: list[str]) -> dict:
    """One `vla-distill annotate` as a user runs it: wall seconds of the command, and the executor's own split."""
    args = ["annotate", "--dataset", str(dataset), "--out", str(out), "--teacher", teacher, "--no-audit", *extra,
            *executor]
    print("$ vla-distill " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    subprocess.run(BIN + args, check=True, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    info = json.loads((out / "meta/annotation.json").read_text())
    run = info["run"]
    return {"wall_s": wall, "frames_per_s": info["frames"] / wall, "startup_s": run["startup_s"],
            "steady_frames_per_s": info["frames"] / run["annotate_s"], "workers": run["workers"]}


def bench_annotate(work: Path, episodes: int) -> None:
    from bench_deploy import random_checkpoint

    dataset = work / "dataset"
    if not (dataset / "meta/info.json").exists():
        subprocess.run(BIN + ["collect", "--tasks", DEMO_TASKS, "--episodes", str(episodes), "--cameras", "corner2",
                              "--image-size", "96", "--out", str(dataset)], check=True, stderr=subprocess.DEVNULL)
    teacher = random_checkpoint("small", dataset, work / "teacher_small" / "pretrained_model")
    workloads = {  # name -> (teacher, extra flags)
        "scripted + kinematic phases and cues": ("scripted", []),
        "checkpoint teacher (small student, pixels)": (f"checkpoint:{teacher}",
                                                       ["--phases", "none", "--directions", "none"]),
    }
    executors = {"in-process": [], "ray, 1 worker": ["--executor", "ray", "--workers", "1"],
                 "ray, 2 workers": ["--executor", "ray", "--workers", "2"]}
    result, rows = {"episodes_per_task": episodes, "workloads": {}}, []
    for w, (spec, extra) in workloads.items():
        result["workloads"][w] = {}
        for i, (name, flags) in enumerate(executors.items()):
            out = work / f"ann_{len(result['workloads'])}_{i}"
            shutil.rmtree(out, ignore_errors=True)
            r = annotate_run(dataset, out, spec, flags, extra)
            result["workloads"][w][name] = r
            base = result["workloads"][w]["in-process"]
            rows.append(f"| {w} | {name} | {r['wall_s']:.1f} | {r['frames_per_s']:.0f} "
                        f"({r['frames_per_s'] / base['frames_per_s']:.2f}x) "
                        f"| {r['startup_s']:.1f} | {r['steady_frames_per_s']:.0f} "
                        f"({r['steady_frames_per_s'] / base['steady_frames_per_s']:.2f}x) |")
            print(rows[-1], flush=True)
    print("| workload | executor | wall s | frames/s (vs in-process) | start-up s | frames/s after start-up |\n"
          "|---|---|---:|---:|---:|---:|\n" + "\n".join(rows))
    write_result(RESULTS / "distributed_annotate.json", result)


def bench_train(args) -> None:
    work = Path(args.work)
    for d in ("one", "two"):
        shutil.rmtree(work / d, ignore_errors=True)
    cores = os.cpu_count() or 1
    one = run(args.dataset, work / "one", 1, args.batch, args.steps, cores)
    two = run(args.dataset, work / "two", 2, args.batch, args.steps, max(1, cores // 2))
    print(f"| processes | threads each | samples/s |\n|---|---|---|\n| 1 | {cores} | {one:.0f} |\n"
          f"| 2 | {max(1, cores // 2)} | {two:.0f} ({two / one:.2f}x) |")
    write_result(RESULTS / "distributed_train.json", {"global_batch": args.batch, "steps": args.steps,
                                                      "samples_per_s": {"1": one, "2": two}, "ratio": two / one})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["train", "annotate"], default=None)
    p.add_argument("--dataset", default="outputs/demo/annotated", help="annotated dataset the training runs on")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=32, help="global batch")
    p.add_argument("--annotate-episodes", type=int, default=20, help="episodes per demo task collected to annotate")
    p.add_argument("--work", default="outputs/bench_distributed")
    args = p.parse_args()
    if args.only in (None, "train"):
        bench_train(args)
    if args.only in (None, "annotate"):
        bench_annotate(Path(args.work) / "annotate", args.annotate_episodes)


if __name__ == "__main__":
    main()
