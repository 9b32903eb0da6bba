"""Closed-loop benchmarks: distillation quality, the paper's robustness claim, evaluation throughput.

Usage (each suite runs the pipeline through the CLI, as a user would; every stage resumes or is skipped when its
output exists, so an interrupted run continues where it stopped):
  python benchmarks/bench_eval.py throughput [--episodes 4]
      env steps/s with rendering: scripted teacher without cameras, with one 96 px camera, with two 128 px cameras,
      and the tiny student in closed loop; 1 worker vs 2 workers side by side -> results/eval_throughput.json
  python benchmarks/bench_eval.py distill [--tasks mt10] [--demos 50] [--steps 20000] [--episodes 10]
      student vs teacher success per task -> results/eval_distill.json (goal: >= 95% and within 1 point)
  python benchmarks/bench_eval.py robustness [--tasks ...] [--seeds 3] [--steps 1000] [--teacher noisy:scripted]
      guided (phase + direction losses) vs unguided students trained on a noisy teacher's labels, same budget
      -> results/eval_robustness.json (goal: guided ahead by >= 5 points)
Work directories live under --work (default outputs/bench_eval).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from common import RESULTS, cli, write_result
from vla_distill.data.format import write_json_atomic
from vla_distill.eval.stats import paired, wilson

KEPT = RESULTS / "episodes"  # each benchmark evaluation's per-episode outcomes, kept where the work directory is not


def kept_path(out: Path) -> Path:
    """Where an evaluation's outcomes are kept: its work path, relative to outputs/, as one file name."""
    parts = [p for p in Path(out).parts if p != Path(out).anchor]
    if "outputs" in parts:
        parts = parts[len(parts) - parts[::-1].index("outputs"):]
    return KEPT / ("__".join(parts) + ".json")


def keep_outcomes(out: Path, info: dict) -> None:
    """The seeds and successes of every episode, the policy and the protocol (~10 KB for 500 episodes), kept with the
    results: a later session on a fresh machine (outputs/ gone) still pairs a new evaluation against this one."""
    slim = {"per_task": [{"task": t["task"], "task_group": t["task_group"], "pc_success": t["pc_success"],
                          "n_episodes": t["n_episodes"], "pc_success_ci95": t["pc_success_ci95"],
                          "metrics": {k: t["metrics"][k] for k in ("seeds", "successes")}} for t in info["per_task"]],
            "overall": info["overall"], "policy": {k: info["policy"].get(k) for k in ("spec", "n_action_steps",
                                                                                        "chunk")},
            "eval": {k: v for k, v in info["eval"].items() if k != "seeds"}, "kept_from": str(out)}
    write_json_atomic(kept_path(out), slim, indent=None)  # whole or not at all: a half copy would stand in for it


def has_outcomes(out: Path) -> bool:
    """The evaluation's episodes can be paired against: in its work directory, or kept (keep_outcomes)."""
    return (Path(out) / "eval_info.json").exists() or kept_path(out).exists()


def eval_info(path: Path) -> dict:
    """An evaluation's eval_info.json, or where its work directory is gone, the outcomes kept_path holds of it."""
    own, kept = Path(path) / "eval_info.json", kept_path(path)
    return json.loads((kept if kept.exists() and not own.exists() else own).read_text())


def dataset(work: Path, tasks: str, demos: int, size: int, seed: int = 0, cameras: str = "corner2",
            name: str = "dataset", collect_flags: tuple[str, ...] = ()) -> Path:
    raw = work / name
    if not (raw / "meta" / "info.json").exists() or (raw / ".partial").exists():
        cli("collect", "--tasks", tasks, "--episodes", str(demos), "--cameras", cameras, "--image-size", str(size),
            "--seed", str(seed), "--out", str(raw), *collect_flags)
    return raw


def annotated(work: Path, raw: Path, teacher: str, name: str, *extra: str) -> Path:
    out = work / name
    if not (out / "meta" / "annotation.json").exists():
        cli("annotate", "--dataset", str(raw), "--out", str(out), "--teacher", teacher, *extra)
    return out


def trained(ds: Path, run: Path, steps: int, *extra: str) -> Path:
    if (run / "checkpoints" / "last").exists():
        cli("train", "--dataset", str(ds), "--out", str(run), "--steps", str(steps), "--resume", *extra)
    else:
        cli("train", "--dataset", str(ds), "--out", str(run), "--steps", str(steps), *extra)
    return run


def evaluated(policy: str, tasks: str, out: Path, episodes: int, *extra: str) -> dict:
    if not (out / "eval_info.json").exists():
        cli("eval", "--policy", policy, "--tasks", tasks, "--episodes", str(episodes), "--out", str(out), "--videos",
            "0", *extra)
    info = eval_info(out)
    keep_outcomes(out, info)  # every time: an evaluation run again into the same directory replaces its copy
    return info


# ------------------------------------------------------------------------------------------------ suites
def throughput(args) -> dict:
    import shutil

    work = Path(args.work) / "throughput"
    tasks = "button-press-topdown-v3,window-open-v3"
    eps = str(args.episodes)
    cases = [("scripted, no camera", "scripted", ["--videos", "0"]),
             ("scripted, corner2 96 px rendered + recorded", "scripted", ["--image-size", "96", "--videos", eps]),
             ("scripted, corner2 128 px rendered + recorded", "scripted", ["--image-size", "128", "--videos", eps])]
    if args.student:
        cases.append((f"student {Path(args.student).name}, its cameras", args.student, ["--videos", "0"]))
    rows = []
    for i, (label, policy, extra) in enumerate(cases):
        for workers in (1, 2):
            out = work / f"case{i}-w{workers}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            cli("eval", "--policy", policy, "--tasks", tasks, "--episodes", eps, "--out", str(out), "--workers",
                str(workers),
                "--latency-steps", "0", *extra)
            rows.append(_rate(label, workers, out, time.perf_counter() - t0))
    print("| actor | workers | env steps | steps/s (rollouts) | wall s (incl. start-up) |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['actor']} | {r['workers']} | {r['steps']} | {r['steps_per_s']:.0f} | {r['wall_s']:.1f} |")
    return {"suite": "throughput", "tasks": tasks, "episodes_per_task": args.episodes, "rows": rows}


def _rate(label: str, workers: int, out: Path, wall: float) -> dict:
    recs = [json.loads(p.read_text()) for p in (out / "episodes").glob("*/*.json")]
    steps = sum(r["steps"] for r in recs)
    busy = sum(r["seconds"] for r in recs) / workers  # rollout time, workers in parallel
    return {"actor": label, "workers": workers, "steps": steps, "steps_per_s": steps / busy, "wall_s": wall,
            "success": eval_info(out)["overall"]["pc_success"]}


def distill(args) -> dict:
    work = Path(args.work) / f"distill-{args.tasks}-{args.demos}"
    raw = dataset(work, args.tasks, args.demos, args.size)
    ann = annotated(work, raw, "scripted", "annotated")
    run = trained(ann, work / "student", args.steps, "--preset", args.preset, "--batch-size", str(args.batch_size),
                  "--save-every", "1000", "--log-every", "100")
    teacher = evaluated("scripted", args.tasks, work / "eval-teacher", args.episodes)
    student = evaluated(str(run), args.tasks, work / "eval-student", args.episodes)
    t, s = teacher["overall"]["pc_success"], student["overall"]["pc_success"]
    per_task = {x["task"]: {"teacher": x["pc_success"]} for x in teacher["per_task"]}
    for x in student["per_task"]:
        per_task[x["task"]]["student"] = x["pc_success"]
    print("| task | teacher % | student % |\n|---|---:|---:|")
    for k, v in per_task.items():
        print(f"| {k} | {v['teacher']:.0f} | {v.get('student', float('nan')):.0f} |")
    print(f"| overall (all episodes) | {t:.1f} | {s:.1f} |")
    return {"suite": "distill", "tasks": args.tasks, "demos_per_task": args.demos, "steps": args.steps,
            "batch_size": args.batch_size, "image_size": args.size, "preset": args.preset,
            "episodes_per_task": args.episodes, "teacher_pc_success": t, "student_pc_success": s, "gap_points": t - s,
            "student_group_mean": student["overall"]["pc_success_group_mean"], "per_task": per_task,
            "student_latency_ms_p50": student["policy"].get("latency_ms_p50"), "goal_met": s >= 95 and t - s <= 1}


def robustness(args) -> dict:
    work = Path(args.work) / f"robust-{args.tasks.replace(',', '+')[:60]}-{args.demos}"
    raw = dataset(work, args.tasks, args.demos, args.size)
    ann = annotated(work, raw, args.teacher, "annotated-noisy")
    out = {"guided": [], "unguided": []}
    episodes = {"guided": [], "unguided": []}  # every episode's success, seed by seed: the arms share seeds
    for seed in range(args.seeds):
        for name, extra in (("guided", ()), ("unguided", ("--no-phase-loss", "--no-direction-loss"))):
            run = trained(ann, work / f"{name}-s{seed}", args.steps, "--preset", args.preset, "--seed", str(seed),
                          "--batch-size", str(args.batch_size), "--save-every", "500", "--log-every", "100", *extra)
            info = evaluated(str(run), args.tasks, work / f"eval-{name}-s{seed}", args.episodes, "--seed", str(seed))
            out[name].append(info["overall"]["pc_success"])
            episodes[name] += [ok for t in info["per_task"] for ok in t["metrics"]["successes"]]
    g, u = np.array(out["guided"]), np.array(out["unguided"])
    n = len(episodes["guided"])
    pooled = {k: {"pc_success": 100 * sum(v) / n, "ci95": wilson(sum(v), n), "n_episodes": n} for k,
              v in episodes.items()}
    diff = paired(episodes["unguided"], episodes["guided"])
    print("| student | success % per seed | all episodes % (95% CI) | n |\n|---|---|---:|---:|")
    for name, v in (("guided", g), ("unguided", u)):
        p = pooled[name]
        print(f"| {name} | {', '.join(f'{x:.0f}' for x in v)} | {p['pc_success']:.1f} ({p['ci95'][0]:.1f}–"
              f"{p['ci95'][1]:.1f}) | {n} |")
    print(f"guided - unguided, paired on the same {n} seeds: {diff['difference']:+.1f} points "
          f"({diff['ci95'][0]:.1f} to {diff['ci95'][1]:.1f}), McNemar p {diff['mcnemar_p']:.2g}")
    return {"suite": "robustness", "tasks": args.tasks, "teacher": args.teacher, "demos_per_task": args.demos,
            "steps": args.steps, "batch_size": args.batch_size, "image_size": args.size, "seeds": args.seeds,
            "episodes_per_task": args.episodes, "guided": out["guided"], "unguided": out["unguided"],
            "guided_mean": float(g.mean()), "unguided_mean": float(u.mean()),
            "difference_points": float(g.mean() - u.mean()),
            "pooled": pooled, "paired": {k: diff[k] for k in ("difference", "ci95", "mcnemar_p", "only_a", "only_b")},
            "goal_met": bool(diff["difference"] >= 5 and diff["ci95"][0] > 0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("suite", choices=["throughput", "distill", "robustness"])
    p.add_argument("--work", default="outputs/bench_eval")
    p.add_argument("--tasks", default="")
    p.add_argument("--demos", type=int, default=0)
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--episodes", type=int, default=0)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--teacher", default="noisy:scripted")
    p.add_argument("--student", default="", help="throughput: also run this checkpoint in closed loop")
    args = p.parse_args()
    defaults = {"throughput": ("", 0, 0, 4), "distill": ("mt10", 50, 20000, 10),
                "robustness": ("button-press-topdown-v3,window-open-v3,drawer-open-v3", 15, 1000, 10)}[args.suite]
    args.tasks = args.tasks or defaults[0]
    args.demos = args.demos or defaults[1]
    args.steps = args.steps or defaults[2]
    args.episodes = args.episodes or defaults[3]
    result = {"throughput": throughput, "distill": distill, "robustness": robustness}[args.suite](args)
    result["command"] = "python benchmarks/bench_eval.py " + " ".join(sys.argv[1:])
    write_result(RESULTS / f"eval_{args.suite}.json", result)


if __name__ == "__main__":
    main()
