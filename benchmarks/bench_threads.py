"""Training threads beside another job: torch's threads x OpenMP's wait policy, on an idle machine and with cores busy.

Usage: python benchmarks/bench_threads.py [--seconds 15] [--busy 1]
Each setting runs in its own process (OMP_WAIT_POLICY is read when torch loads OpenMP) and times two things a
training does: the frozen EfficientNet-Lite0 trunk over batches of 8 frames at 128 px (what the feature cache runs),
and the tiny preset's training step from pixels (batch 32, two cameras). "busy" starts --busy processes that spin on
a core each (another job) and times the same settings beside them. Run it with nothing else on the machine: the idle
column is only idle then. Writes benchmarks/results/threads.json.
Why: a LIBERO training's feature cache ran at 1.5 frames/s with two threads beside a one-thread job and at 190-290
with one (README, "two jobs on one machine"); `eval` and `run` set OMP_WAIT_POLICY=PASSIVE, `train` does not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from bench_train import student_batch

from common import RESULTS, write_result

SETTINGS = [(1, ""), (2, ""), (2, "PASSIVE")]  # (torch threads, OMP_WAIT_POLICY; "" = OpenMP's default)


def one(threads: int, seconds: float) -> dict:
    import torch

    from vla_distill.models.efficientnet import EfficientNetLiteTrunk
    from vla_distill.models.student import StudentPolicy, preset_config

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    trunk = EfficientNetLiteTrunk().eval()
    frames = torch.rand(8, 3, 128, 128)
    with torch.inference_mode():
        trunk_rate = _rate(lambda: trunk(frames), 8, seconds)
    cams = ("observation.images.cam0", "observation.images.cam1")
    policy = StudentPolicy(preset_config("tiny", image_keys=cams, image_size=(128, 128), tasks=("task",)))
    batch = student_batch(policy, cams, 32, 128, 1, "cpu")
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    policy.train()

    def step():
        loss, _ = policy(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return {"trunk_frames_per_s": trunk_rate, "train_samples_per_s": _rate(step, 32, seconds)}


def _rate(fn, items: int, seconds: float) -> float:
    fn()  # warm-up: allocations, OpenMP's pool
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += items
    return round(n / (time.perf_counter() - t0), 1)


def measured(threads: int, policy: str, seconds: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, __file__, "--one", str(threads), "--seconds", str(seconds)], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def spinning(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15.0, help="timing window per measurement")
    ap.add_argument("--busy", type=int, default=1, help="spinning processes beside the busy column (another job)")
    ap.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.seconds)))
        return
    rows = []
    for condition in ("idle", "busy"):
        others = spinning(args.busy if condition == "busy" else 0)
        try:
            for threads, policy in SETTINGS:
                r = measured(threads, policy, args.seconds)
                rows.append({"condition": condition, "threads": threads, "omp_wait_policy": policy or "default", **r})
        finally:
            for p in others:
                p.kill()
    print("| condition | threads | OMP_WAIT_POLICY | trunk frames/s | train samples/s |\n|---|---:|---|---:|---:|")
    for r in rows:
        print(f"| {r['condition']} | {r['threads']} | {r['omp_wait_policy']} | {r['trunk_frames_per_s']} | "
              f"{r['train_samples_per_s']} |")
    write_result(RESULTS / "threads.json", {"rows": rows, "busy_processes": args.busy, "seconds": args.seconds,
                                            "command": "python " + " ".join(sys.argv)})


if __name__ == "__main__":
    main()
