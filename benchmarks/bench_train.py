"""Student presets side by side: training samples/s and peak memory, batch-1 inference Hz in fp32 and bf16.

Usage: python benchmarks/bench_train.py [--presets tiny,small,base] [--cameras 2] [--size 128] [--batch 32]
       [--threads 2]
Each preset runs in its own process (peak memory is per process). Inputs are the MetaWorld default: two 128 px
cameras, 4-d state, 4-d action, the three losses on. Training samples/s is the model step only (forward, backward,
AdamW); the data path is measured by bench_dataloader.py. A preset may name its encoder, `tiny:efficientnet-lite0`:
a frozen pretrained one trains as `train` runs it, on cached trunk features (inference still starts from pixels);
`tiny:efficientnet-lite0:tune4` fine-tunes that trunk's stages after stride 4 on cached stride-4 features (train
--vision-tune-from 4; `tune1`: all of it, from pixels).
Writes benchmarks/results/train.json.
Targets for later (the deployment issue): tiny >= 300 Hz and base >= 25 Hz at batch 1 on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from common import RESULTS, write_result


def student_batch(policy, cams: tuple[str, ...], n: int, size: int, horizon: int, device,
                  features: bool = False) -> dict:
    """A random training batch of `n` for the student: pixels per camera, or (features) what the trainer's feature
    cache feeds a frozen encoder; 4-d state and action, chunks of `horizon`, the phase and direction targets."""
    import torch

    from vla_distill.types import feature_key

    if features:
        c, h, w = policy.encoder.feature_shape((size, size))
        out = {feature_key(key): torch.randn(n, c, h, w, device=device) for key in cams}
    else:
        out = {key: torch.rand(n, 3, size, size, device=device) for key in cams}
    out.update({"observation.state": torch.randn(n, 4, device=device),
                "task_index": torch.zeros(n, dtype=torch.long, device=device),
                "action": torch.randn(n, horizon, 4, device=device),
                "action_is_pad": torch.zeros(n, horizon, dtype=torch.bool, device=device),
                "phase_index": torch.randint(0, 4, (n,), device=device),
                "direction_index": torch.arange(n, device=device) % 8,
                "direction_embedding": torch.nn.functional.normalize(torch.randn(n, 384, device=device), dim=-1)})
    return out


def one(preset: str, args) -> dict:
    import torch

    from vla_distill.models.student import PRESETS, StudentPolicy, preset_config
    from vla_distill.models.vision import VisionConfig

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cams = tuple(f"observation.images.cam{i}" for i in range(args.cameras))
    torch.manual_seed(0)
    name, _, rest = preset.partition(":")
    kind, _, mode = rest.partition(":")
    vision = VisionConfig(**{**PRESETS[name]["vision"].__dict__, "kind": kind or PRESETS[name]["vision"].kind,
                             "tune_from": int(mode.removeprefix("tune") or 0)})
    policy = StudentPolicy(preset_config(name, image_keys=cams, image_size=(args.size, args.size), tasks=("task",),
                                         vision=vision, horizon=args.horizon)).to(device)
    cached = vision.cacheable
    b, k = args.batch, args.horizon

    def batch(n: int, features: bool = False) -> dict:
        return student_batch(policy, cams, n, args.size, k, device, features)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    train_batch = batch(b, features=cached)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-4)
    policy.train()
    for i in range(args.warmup + args.train_steps):
        if i == args.warmup:
            sync()
            t0 = time.perf_counter()
        loss, _ = policy(train_batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync()
    train_sps = args.train_steps * b / (time.perf_counter() - t0)
    peak_train_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        peak_train_mb = torch.cuda.max_memory_allocated() / 2**20
    del opt
    policy.eval()
    one_obs = {k: v[:1] for k, v in batch(1).items()}

    def hz(model, obs) -> tuple[float, float]:
        with torch.inference_mode():
            for _ in range(5):
                model.predict_action_chunk(obs)
            times = []
            end = time.perf_counter() + args.seconds
            while time.perf_counter() < end or len(times) < 10:
                t = time.perf_counter()
                model.predict_action_chunk(obs)
                sync()
                times.append(time.perf_counter() - t)
        times.sort()
        return 1 / (sum(times) / len(times)), times[len(times) // 2] * 1e3

    fp32_hz, fp32_p50 = hz(policy, one_obs)
    bf16 = policy.to(torch.bfloat16)
    bf16_obs = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in one_obs.items()}
    bf16_hz, bf16_p50 = hz(bf16, bf16_obs)
    return {"preset": preset, "params_m": policy.num_parameters() / 1e6,
            "deployed_params_m": policy.num_parameters(deployed=True) / 1e6,
            "train_samples_per_s": train_sps, "peak_train_mb": peak_train_mb, "fp32_hz": fp32_hz,
            "fp32_p50_ms": fp32_p50,
            "bf16_hz": bf16_hz, "bf16_p50_ms": bf16_p50, "device": str(device), "threads": args.threads, "batch": b}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="tiny,small,base")
    ap.add_argument("--cameras", type=int, default=2)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--horizon", type=int, default=1, help="K, the action chunk length")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=3.0, help="timing window per inference measurement")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(RESULTS / "train.json"))
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args)))
        return
    rows = []
    for preset in args.presets.split(","):
        cmd = [sys.executable, __file__, "--one", preset, *_without_out(sys.argv[1:])]
        r = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(f"measured {preset}", file=sys.stderr)
    print(f"{'preset':8s} {'params':>8s} {'train samples/s':>16s} {'peak MB':>8s} {'fp32 Hz':>8s} {'bf16 Hz':>8s} "
          f"{'bf16/fp32':>9s}")
    for r in rows:
        print(f"{r['preset']:8s} {r['params_m']:7.1f}M {r['train_samples_per_s']:16.1f} {r['peak_train_mb']:8.0f} "
              f"{r['fp32_hz']:8.1f} {r['bf16_hz']:8.1f} {r['bf16_hz'] / r['fp32_hz']:8.2f}x")
    base = rows[0]
    for r in rows[1:]:
        print(f"{r['preset']} vs {base['preset']}: {r['params_m'] / base['params_m']:.1f}x parameters, "
              f"{base['fp32_hz'] / r['fp32_hz']:.1f}x slower at batch 1 (fp32)")
    write_result(args.out,
                 {"config": {k: getattr(args, k) for k in ("cameras", "size", "batch", "horizon", "threads", "device")},
                            "presets": rows})


def _without_out(argv: list[str]) -> list[str]:
    """The command line a preset's process gets: all but --out, in either spelling (`--out X` left X behind as a stray
    argument, and that process exited 2)."""
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--out":
            skip = True
        elif not a.startswith("--out="):
            kept.append(a)
    return kept


if __name__ == "__main__":
    main()
