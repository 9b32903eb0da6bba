"""Deployment benchmarks: batch-1 inference per preset x backend, closed-loop success per backend, the server
under load.

Usage:
  python benchmarks/bench_deploy.py latency [--presets tiny,small,base] [--image-size 96] [--iters 300]
      batch-1 Hz and p50/p99 per preset x backend (torch fp32, torch bf16, ONNX Runtime fp32, int8 and the
      static int8 of `export --int8 static`), each
      backend's action error against torch fp32 on recorded observations -> results/deploy_latency.json
      Targets (2 CPU cores): tiny >= 500 Hz with p99 <= 3 ms; base >= 50 Hz.
  python benchmarks/bench_deploy.py success --policy outputs/demo/student [--tasks ...] [--episodes 10]
      closed-loop success of the same student on each backend -> results/deploy_success.json
  python benchmarks/bench_deploy.py server [--clients 32] [--seconds 60] [--backend onnx]
      `vla-distill serve` under N concurrent clients on loopback, without and with batching
      -> results/deploy_server.json (goal: 0 errors)
  python benchmarks/bench_deploy.py async --policy CHECKPOINT [--tasks ...] [--episodes 20] [--delay-ms 100] [--hz 12.5]
                                     [--modes queue,ensemble,ahead] [--out results/deploy_async.json]
      the real-time loop with a policy slower than the control period (its inference plus an injected delay), on
      the same held-out seeds: synchronous queue vs temporal ensembling vs inference-ahead (--chunk ahead): success
      with intervals and paired differences, late and starved ticks, the action jump at chunk seams against inside
      chunks, ticks to success -> results/deploy_async.json
Presets without a trained checkpoint are measured with random weights and the demo dataset's normalization
(latency does not depend on the weights' values; their action error is a numerical, not a behavioural, measure).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from common import BIN, DEMO_TASKS, RESULTS, cli, write_result

BACKENDS = ("torch", "torch-bf16", "onnx", "onnx-int8")
TARGETS = {"tiny": (500.0, 3.0), "base": (50.0, None)}  # (Hz at least, p99 ms at most)


def observations(work: Path, size: int) -> Path:
    """A small dataset whose frames are the recorded observations (the demo's when it is there)."""
    demo = Path("outputs/demo/dataset")
    features = json.loads((demo / "meta/info.json").read_text())["features"] if demo.exists() else {}
    if features.get("observation.images.corner2", {}).get("shape", [0])[0] == size:
        return demo
    ds = work / f"obs_{size}"
    if not (ds / "meta" / "info.json").exists():
        cli("collect", "--tasks", DEMO_TASKS, "--episodes", "2", "--cameras", "corner2", "--image-size", str(size),
            "--out", str(ds))
    return ds


def random_checkpoint(preset: str, dataset: Path, out: Path) -> Path:
    """The preset's architecture for the dataset's inputs, random weights, the dataset's normalization."""
    import torch

    from vla_distill.data.dataset import RobotDataset
    from vla_distill.models.checkpoint import save_pretrained
    from vla_distill.models.student import StudentPolicy, preset_config

    if (out / "config.json").exists():
        return out
    ds = RobotDataset(dataset)
    h = ds.features["observation.images.corner2"]["shape"][0]
    torch.manual_seed(0)
    policy = StudentPolicy(preset_config(preset, image_keys=("observation.images.corner2",), image_size=(h, h),
                                         tasks=tuple(ds.tasks)))
    # nn.TransformerEncoder starts every layer as a copy of one; untrained, the layers would be identical and the
    # ONNX exporter would store (and the CPU cache hold) one layer's weights for all. Draw each layer's own.
    for m in policy.transformer.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.MultiheadAttention)):
            m.reset_parameters() if isinstance(m, torch.nn.Linear) else m._reset_parameters()
    st, act = ds.stats["observation.state"], ds.stats["action"]
    emb = np.random.default_rng(0).normal(size=(len(ds.tasks), 384))
    policy.set_normalization({"state_mean": st["mean"], "state_std": np.maximum(st["std"], 1e-3),
                              "action_mean": act["mean"], "action_std": np.maximum(act["std"], 1e-3)},
                             emb / np.linalg.norm(emb, axis=1, keepdims=True))
    return save_pretrained(policy, out, {"dataset": str(dataset), "note": "random weights (latency benchmark)"})


def time_backend(bundle: Path, backend: str, iters: int, threads: int) -> dict:
    """Measured in a fresh process per backend, so that one backend's thread pools (OpenMP's, ONNX Runtime's, which
    keep spinning after work) never run beside another's."""
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import torch; "
            f"torch.set_num_threads({threads}); from bench_deploy import time_here; "
            f"print('RESULT', json.dumps(time_here({str(bundle)!r}, {backend!r}, {iters})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.split("RESULT ", 1)[1])


def time_here(bundle: str, backend: str, iters: int) -> dict:
    import torch

    from vla_distill.models.backends import load_policy
    from vla_distill.models.base import frames_to_batch
    from vla_distill.models.bundle import REFERENCE_FILE

    z = np.load(Path(bundle) / REFERENCE_FILE)
    frames = {k[4:]: z[k] for k in z.files if k.startswith("obs/")}
    policy = load_policy(bundle, backend)
    n = len(z["tasks"])
    batches = [frames_to_batch({k: v[i : i + 1] for k, v in frames.items()}, policy.input_keys, [str(z["tasks"][i])])
               for i in range(n)]
    actions = np.zeros_like(z["actions"])
    times = []
    with torch.inference_mode():
        for _ in range(3):  # warm-up; the last pass gives the actions compared with fp32 torch
            for i in range(n):
                actions[i] = policy.predict_action_chunk(batches[i]).float().numpy()[0]
        for i in range(iters):
            t0 = time.perf_counter()
            policy.predict_action_chunk(batches[i % n])
            times.append(time.perf_counter() - t0)
    ms = np.asarray(times) * 1e3
    err = np.abs(actions - z["actions"])
    return {"p50_ms": round(float(np.median(ms)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "hz": round(float(1e3 / ms.mean()), 1), "max_abs_err": float(err.max()), "mean_abs_err": float(err.mean())}


def latency(args) -> None:
    import torch

    from vla_distill.deploy.export import export
    from vla_distill.models.student import StudentPolicy, preset_config

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    ds = observations(work, args.image_size)
    rows, result = [], {"threads": args.threads, "image_size": args.image_size, "cameras": 1,
                        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"), "presets": {}}
    for preset in args.presets.split(","):
        trained = getattr(args, f"policy_{preset}", "")
        ckpt = Path(trained) if trained else random_checkpoint(preset, ds,
                                                               work / f"random_{preset}" / "pretrained_model")
        bundle = work / f"bundle_{preset}_{args.image_size}"
        if not (bundle / "bundle.json").exists():
            export(ckpt, bundle, "onnx", observations=str(ds))
        params = StudentPolicy(preset_config(preset, image_size=(args.image_size,) * 2)).num_parameters(deployed=True)
        per = {"parameters": params, "weights": "trained" if trained else "random", "backends": {}}
        static = work / f"bundle_{preset}_{args.image_size}_static"
        if not (static / "bundle.json").exists():
            export(ckpt, static, "onnx", observations=str(ds), int8="static")
        timed = {**{b: (bundle, b) for b in BACKENDS}, "onnx-int8-static": (static, "onnx-int8")}
        for backend, (where, how) in timed.items():
            r = time_backend(where, how, args.iters, args.threads)
            per["backends"][backend] = r
            hz_goal, p99_goal = TARGETS.get(preset, (None, None))
            ok = hz_goal is not None and r["hz"] >= hz_goal and (p99_goal is None or r["p99_ms"] <= p99_goal)
            met = "" if hz_goal is None else ("yes" if ok else "no")
            rows.append((preset, f"{params / 1e6:.1f}M", backend, f"{r['hz']:.0f}", f"{r['p50_ms']:.2f}",
                         f"{r['p99_ms']:.2f}", f"{r['max_abs_err']:.2e}", f"{r['mean_abs_err']:.2e}", met))
            print(" | ".join(rows[-1]), flush=True)
        result["presets"][preset] = per
    header = ("preset", "params", "backend", "Hz", "p50 ms", "p99 ms", "max |a - fp32|", "mean |a - fp32|",
              "target met")
    print(table(header, rows))
    write_result(RESULTS / "deploy_latency.json", result)


def table(header, rows) -> str:
    return "\n".join(["| " + " | ".join(header) + " |",
                      "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows])


def success(args) -> None:
    work = Path(args.work)
    bundle = work / "bundle_success"
    if not (bundle / "bundle.json").exists():
        cli("export", "--policy", args.policy, "--format", "onnx", "--out", str(bundle))
    args.tasks = args.tasks or DEMO_TASKS
    rows, result = [], {"policy": args.policy, "tasks": args.tasks, "episodes": args.episodes, "backends": {}}
    for backend in BACKENDS:
        out = work / f"eval_{backend}"
        cli("eval", "--policy", str(bundle), "--backend", backend, "--tasks", args.tasks, "--episodes",
            str(args.episodes),
            "--out", str(out), "--videos", "0")
        info = json.loads((out / "eval_info.json").read_text())
        per_task = {t["task"]: t["pc_success"] for t in info["per_task"]}
        p50 = info["policy"]["latency_ms_p50"]
        result["backends"][backend] = {"pc_success": info["overall"]["pc_success"], "per_task": per_task, "p50_ms": p50}
        rows.append((backend, f"{info['overall']['pc_success']:.1f}",
                     ", ".join(f"{k.split('-v3')[0]} {v:.0f}" for k, v in per_task.items()), f"{p50:.2f}"))
    print(table(("backend", "success %", "per task", "closed-loop p50 ms"), rows))
    write_result(RESULTS / "deploy_success.json", result)


class Delayed:
    """A policy whose every call takes `delay` seconds longer (a bigger model, a remote one): same interface."""

    def __init__(self, policy, delay: float):
        self.policy, self.delay = policy, delay

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def predict_action_chunk(self, batch):
        time.sleep(self.delay)
        return self.policy.predict_action_chunk(batch)


def policy_tasks(policy) -> list[str]:
    """The MetaWorld tasks whose instructions the policy was trained on (a task it never saw fails every mode alike
    and only runs each episode to its limit)."""
    from vla_distill.sim.metaworld.tasks import INSTRUCTIONS

    known = set(policy.config.tasks or ())
    return [t for t, text in INSTRUCTIONS.items() if text in known] or DEMO_TASKS.split(",")


def async_loop(args) -> None:
    from vla_distill.deploy import sim_runs
    from vla_distill.deploy.config import LoopConfig
    from vla_distill.eval.stats import paired, wilson
    from vla_distill.models.backends import load_policy

    slow = Delayed(load_policy(args.policy, args.backend), args.delay_ms / 1e3)
    tasks = args.tasks.split(",") if args.tasks else policy_tasks(slow)
    result = {"policy": args.policy, "backend": args.backend, "tasks": tasks, "episodes_per_task": args.episodes,
              "hz": args.hz, "injected_delay_ms": args.delay_ms, "horizon": slow.horizon, "modes": {}}
    runs = {}
    for mode in args.modes.split(","):
        cfg = LoopConfig(hz=args.hz, chunk=mode)
        runs[mode] = []
        for task in tasks:  # one task at a time, so the progress shows
            done, interrupted = sim_runs.run_tasks(slow, args.policy, args.backend, "metaworld", [task], args.episodes,
                                                   0,
                                                   cfg)
            if interrupted:
                raise KeyboardInterrupt
            runs[mode] += done
            print(f"{mode} {task}: {sum(s['success'] for s in runs[mode][-args.episodes:])}/{args.episodes}",
                  flush=True)
    rows = []
    for mode, summaries in runs.items():
        ok = [s["success"] for s in summaries]
        seams = [s["seams"] for s in summaries if s["seams"]]
        at = [x["at_seams"]["mean"] for x in seams if x["at_seams"]["n"]]
        inside = [x["inside"]["mean"] for x in seams if x["inside"]["n"]]
        ticks = [s["first_success"] for s in summaries if s["first_success"] is not None]
        r = {"pc_success": 100 * np.mean(ok), "ci95": wilson(sum(ok), len(ok)), "n": len(ok),
             "late_per_episode": float(np.mean([s["late_dropped"] for s in summaries])),
             "starved_per_episode": float(np.mean([s["starved"] for s in summaries])),
             "misses_per_episode": float(np.mean([s["deadline_misses"] for s in summaries])),
             "seam_jump_mean": float(np.mean(at)) if at else None,
             "seam_jump_max": max((x["at_seams"]["max"] for x in seams
                                                                                          if x["at_seams"]["n"]),
                                                                                          default=None),
             "inside_jump_mean": float(np.mean(inside)) if inside else None,
             "ticks_to_success_median": float(np.median(ticks)) if ticks else None,
             "per_task": {t: f"{sum(s['success'] for s in summaries if s['task'] == t)}/{args.episodes}"
                          for t in tasks}}
        if mode != "queue" and "queue" in runs:
            d = paired([s["success"] for s in runs["queue"]], ok)
            r["vs_queue"] = {k: d[k] for k in ("difference", "ci95", "mcnemar_p")}
        result["modes"][mode] = r
        rows.append((mode, f"{r['pc_success']:.1f} ({r['ci95'][0]:.1f}–{r['ci95'][1]:.1f})", str(r["n"]),
                     f"{r['late_per_episode']:.1f}", f"{r['starved_per_episode']:.1f}",
                     f"{r['misses_per_episode']:.1f}",
                     f"{r['seam_jump_mean'] or float('nan'):.3f} / {r['inside_jump_mean'] or float('nan'):.3f}",
                     f"{r['ticks_to_success_median'] or float('nan'):.0f}"))
    print(table(("chunking", "success % (95% CI)", "n", "late/ep", "starved/ep", "misses/ep",
                 "|Δa| at seams / inside", "ticks to success"), rows))
    result["command"] = "python benchmarks/bench_deploy.py " + " ".join(sys.argv[1:])
    write_result(args.out or RESULTS / "deploy_async.json", result)


def load_client(uri: str, request: bytes, until: float, lat: list, errors: list) -> None:
    from websockets.sync.client import connect

    from vla_distill.data.msgpack_numpy import unpackb

    try:
        with connect(uri, compression=None, max_size=None, open_timeout=30) as ws:
            ws.recv()
            while time.perf_counter() < until:
                t0 = time.perf_counter()
                ws.send(request)
                reply = ws.recv(timeout=30)
                if isinstance(reply, str) or "actions" not in unpackb(reply):
                    errors.append(reply if isinstance(reply, str) else "no actions")
                else:
                    lat.append(time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 (counted, the run goes on)
        errors.append(repr(e))


def start_server(bundle: Path, backend: str, *flags: str) -> tuple[subprocess.Popen, str]:
    """`vla-distill serve` on any free port, as a process, and the HOST:PORT it printed."""
    proc = subprocess.Popen(BIN + ["serve", "--policy", str(bundle), "--backend", backend, "--port", "0", *flags],
                            stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().split("ws://")[1].split()[0]


def server(args) -> None:
    from vla_distill.data.msgpack_numpy import packb
    from vla_distill.deploy.export import export
    from vla_distill.models.bundle import REFERENCE_FILE

    work = Path(args.work)
    bundle = work / ("bundle_server" if args.policy else f"bundle_tiny_{args.image_size}")
    if not (bundle / "bundle.json").exists():
        if args.policy:  # its recorded observations are its own training data's
            export(args.policy, bundle, "onnx")
        else:
            ds = observations(work, args.image_size)
            export(random_checkpoint("tiny", ds, work / "random_tiny" / "pretrained_model"), bundle, "onnx",
                   observations=str(ds))
    z = np.load(bundle / REFERENCE_FILE)
    request = packb({**{k[4:]: z[k][0] for k in z.files if k.startswith("obs/")}, "prompt": str(z["tasks"][0])})
    rows, result = [], {"clients": args.clients, "seconds": args.seconds, "backend": args.backend, "runs": {}}
    for max_batch in (1, 8):
        proc, host_port = start_server(bundle, args.backend, "--max-batch", str(max_batch))
        uri = f"ws://{host_port}"
        lat: list[float] = []
        errors: list[str] = []
        until = time.perf_counter() + args.seconds
        threads = [threading.Thread(target=load_client,
                                    args=(uri, request, until, lat, errors)) for _ in range(args.clients)]
        t0 = time.perf_counter()
        [t.start() for t in threads]
        [t.join() for t in threads]
        wall = time.perf_counter() - t0
        proc.terminate()
        proc.wait(timeout=30)
        ms = np.asarray(lat) * 1e3
        r = {"requests": len(lat), "errors": len(errors), "throughput_rps": round(len(lat) / wall, 1),
             "p50_ms": round(float(np.median(ms)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
             "first_errors": errors[:3]}
        result["runs"][f"max_batch_{max_batch}"] = r
        rows.append((str(max_batch), str(r["requests"]), f"{r['throughput_rps']:.0f}", f"{r['p50_ms']:.1f}",
                     f"{r['p99_ms']:.1f}", str(r["errors"])))
        print(" | ".join(rows[-1]), flush=True)
    print(table(("max batch", "requests", "req/s", "p50 ms", "p99 ms", "errors"), rows))
    result["stall"] = stall(bundle, z, args)
    write_result(RESULTS / "deploy_server.json", result)


def disrupt(uri: str, obs: dict, until: float, out: dict) -> None:
    """Every 0.25 s, alternately, a prompt the policy never saw (embedded on the server's side) and a finite but
    absurd state (1e30: its actions come out non-finite and must be refused with an error frame)."""
    from websockets.sync.client import connect

    from vla_distill.data.msgpack_numpy import packb, unpackb

    state_key = next(k for k in obs if k.endswith("state"))
    with connect(uri, compression=None, max_size=None, open_timeout=30) as ws:
        ws.recv()
        i = 0
        while time.perf_counter() < until:
            extreme = i % 2 == 1
            request = {**obs, "prompt": f"new instruction number {i}: move the {i % 7}th object to the left"}
            if extreme:
                request[state_key] = np.full_like(obs[state_key], 1e30)
            t0 = time.perf_counter()
            ws.send(packb(request))
            reply = ws.recv(timeout=60)
            ok = not isinstance(reply, str) and "actions" in unpackb(reply)
            out["extreme_refused" if extreme and not ok else "extreme_sent" if extreme else
                "prompt_answered" if ok else "prompt_failed"] += 1
            out["max_ms"] = max(out["max_ms"], (time.perf_counter() - t0) * 1e3)
            i += 1
            time.sleep(0.25)


def stall(bundle: Path, z, args) -> dict:
    """One steady client at full speed while another sends new prompts and extreme inputs (issue 20's stall)."""
    from vla_distill.data.msgpack_numpy import packb

    obs = {k[4:]: z[k][0] for k in z.files if k.startswith("obs/")}
    proc, host_port = start_server(bundle, args.backend)
    for _ in range(600):  # ready only once warm (text encoder loaded, first forward pass)
        try:
            if urllib.request.urlopen(f"http://{host_port}/healthz", timeout=5).status == 200:
                break
        except OSError:
            time.sleep(0.1)
    lat, errors = [], []
    other = {"prompt_answered": 0, "prompt_failed": 0, "extreme_refused": 0, "extreme_sent": 0, "max_ms": 0.0}
    until = time.perf_counter() + args.seconds
    threads = [threading.Thread(target=load_client,
                                args=(f"ws://{host_port}", packb({**obs, "prompt": str(z["tasks"][0])}),
                                                          until, lat, errors)),
               threading.Thread(target=disrupt, args=(f"ws://{host_port}", obs, until, other))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    proc.terminate()
    proc.wait(timeout=30)
    ms = np.asarray(lat) * 1e3
    r = {"steady_requests": len(lat), "steady_errors": len(errors), "steady_p50_ms": round(float(np.median(ms)), 2),
         "steady_p99_ms": round(float(np.percentile(ms, 99)), 2), "steady_max_ms": round(float(ms.max()), 2),
         "other": {k: round(v, 1) for k, v in other.items()}}
    print(f"stall: steady client p50 {r['steady_p50_ms']} ms, p99 {r['steady_p99_ms']} ms, max {r['steady_max_ms']} ms "
          f"over {len(lat)} requests ({len(errors)} errors); the other client: {r['other']}")
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("suite", choices=["latency", "success", "server", "async"])
    p.add_argument("--work", default="outputs/bench_deploy")
    p.add_argument("--presets", default="tiny,small,base")
    p.add_argument("--policy-tiny", default="", help="a trained tiny checkpoint (default: random weights)")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--policy", default="outputs/demo/student")
    p.add_argument("--tasks", default="", help=f"default: {DEMO_TASKS}; async: the policy's own tasks")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--backend", default="onnx")
    p.add_argument("--delay-ms", type=float, default=100.0, help="async: added to every policy call")
    p.add_argument("--hz", type=float, default=12.5, help="async: control rate")
    p.add_argument("--modes", default="queue,ensemble,ahead", help="async: chunk modes, in this order")
    p.add_argument("--out", default="", help="async: result JSON (default results/deploy_async.json)")
    args = p.parse_args()
    if args.suite == "async" and "--backend" not in sys.argv:
        args.backend = "torch"
    {"latency": latency, "success": success, "server": server, "async": async_loop}[args.suite](args)


if __name__ == "__main__":
    main()
