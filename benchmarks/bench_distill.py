"""Distillation quality: does the student match its teacher, on the same held-out seeds?

Usage (every stage runs through the CLI as a user would, and is skipped or resumed when its output exists):
  python benchmarks/bench_distill.py mt10 [--variant aux] [--demos 50] [--steps 20000] [--episodes 50]
      MT10 x 50 demonstrations, one multi-task student of the recipe below, teacher and student on the same 50
      held-out seeds per task -> results/mt10.json (goal: student >= 95% and within 2 points of the teacher); another
      --variant (VARIANTS) -> results/mt10_<variant>.json, paired against the first recipe too (a DAgger variant:
      against the student that drove its round)
  python benchmarks/bench_distill.py mt50-subset [--demos 50] [--steps 20000] [--episodes 50]
      the same recipe on 8 tasks outside MT10 drawn within MT50's difficulty groups (MT50_SAMPLE, seed 0) ->
      results/mt50_subset.json, with MT50's task-weighted success estimated from these and MT10's tasks (goal >= 85%)
  python benchmarks/bench_distill.py ablations [--tasks reach-v3,push-v3,pick-place-v3] [--minutes 8]
      the recipe against one change at a time, each trained for the same wall-clock budget and evaluated on the same
      seeds: from-scratch encoder, 96 px, one camera, K = 1 -> results/distill_ablations.json
The recipe (VARIANT): tiny transformer, frozen ImageNet EfficientNet-Lite0 to stride 8 + trained spatial-softmax
keypoints (features cached once per dataset), corner2 + gripper cameras at 128 px, action chunks of K = 5 run as a
queue, and an auxiliary head that predicts the simulator's object and goal positions in training only; trained on
DART demonstrations (expert actions with noise, relabelled), then once more after one DAgger round: the first
student's own rollouts, relabelled by the scripted teacher and merged with the demonstrations.
Work directories live under --work (default outputs/bench_distill).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import bench_eval
import numpy as np
from bench_deploy import time_backend
from bench_eval import evaluated

from common import RESULTS, cli, write_result
from vla_distill.config import recipe
from vla_distill.eval.stats import compare, distinguishable
from vla_distill.sim.metaworld.tasks import GROUPS
from vla_distill.train.checkpoint import last_step

MT10 = recipe("mt10")  # the recipe by name (vla_distill.config.RECIPES; `train --recipe mt10`)
RECIPE = ("--recipe", "mt10")
CAMERAS = ",".join(MT10.collect["names"])
DART = ("--action-noise", str(MT10.collect["action_noise"]))
# MT10 variants, each one change on the one before: name -> (collect flags, train flags). The first is the baseline
# every other is paired against; VARIANT is the recipe, whose result is results/mt10.json.
VARIANTS = {
    "keypoints": ((), RECIPE + ("--aux-state", "")),  # the recipe without its auxiliary state head
    "aux": ((), RECIPE),
    "dart-aux": (DART, RECIPE),
    "dagger": (DART, RECIPE),  # + one DAgger round driven by the dart-aux student (DAGGER)
}
VARIANT = "dagger"
DAGGER = {"dagger": "dart-aux"}  # variant: the variant whose student drives its DAgger round, and is paired with


def dataset(work: Path, tasks: str, demos: int, size: int, cameras: str = CAMERAS, collect_flags: tuple = ()) -> Path:
    """Collected (seed stream 0) and annotated with the scripted teacher: work/dataset-SIZE, work/annotated-SIZE
    (with collect flags: a -dart suffix, the only ones a variant uses)."""
    suffix = "-dart" if collect_flags else ""
    raw = bench_eval.dataset(work, tasks, demos, size, cameras=cameras, name=f"dataset-{size}{suffix}",
                             collect_flags=collect_flags)
    return bench_eval.annotated(work, raw, "scripted", f"annotated-{size}{suffix}")


def dagger_dataset(work: Path, tasks: str, demos: int, driver: Path, collect_flags: tuple) -> Path:
    """One DAgger round on the MetaWorld demonstrations (`dagger_round`): work/dagger-128, work/dataset-128-dagger,
    work/annotated-128-dagger."""
    dataset(work, tasks, demos, 128, collect_flags=collect_flags)
    demos_raw = work / ("dataset-128-dart" if collect_flags else "dataset-128")
    return dagger_round(work, tasks, demos, driver, demos_raw, CAMERAS, 128)


def dagger_round(work: Path, tasks: str, demos: int, driver: Path, demos_raw: Path, cameras: str, size: int,
                 env_flags: tuple = (), tag: str = "", seed: int = 1, horizon: int = 1) -> Path:
    """One DAgger round (Ross et al. 2011): `driver`'s own rollouts on new placements (seed stream `seed`: a later
    round's placements are new again), failures included, merged with the data it was trained on (`demos_raw`: the
    demonstrations, or an earlier round's merge) and annotated together with the scripted teacher, which labels every
    state the student reached: work/dagger-SIZE, work/dataset-SIZE-dagger and work/annotated-SIZE-dagger (SIZE: the
    cameras' pixels, the demonstrations'; then -TAG, naming the driver where a work directory holds rounds driven by
    different students). horizon > 1: the teacher labels each frame with its own plan of that many steps (annotate
    --teacher-opt horizon=K), the annotation named -planK. merged_of(the annotated path) is the merge, for the next
    round."""
    name = f"{size}-{tag}" if tag else f"{size}"
    rollouts = bench_eval.dataset(work, tasks, demos, size, seed=seed, cameras=cameras, name=f"dagger-{name}",
                                  collect_flags=(*env_flags, "--policy", str(driver)))
    merged = work / f"dataset-{name}-dagger"
    if not (merged / "meta" / "info.json").exists():
        cli("merge", str(demos_raw), str(rollouts), "--out", str(merged))
    return dagger_annotation(work, merged, name, horizon)


def dagger_annotation(work: Path, merged: Path, name: str, horizon: int = 1) -> Path:
    """A DAgger round's merge labelled by the scripted teacher: work/annotated-NAME-dagger, or with horizon > 1 (its
    own plan of that many steps per frame) work/annotated-NAME-dagger-planK."""
    if horizon == 1:
        return bench_eval.annotated(work, merged, "scripted", f"annotated-{name}-dagger")
    return bench_eval.annotated(work, merged, "scripted", f"annotated-{name}-dagger-plan{horizon}", "--teacher-opt",
                                f"horizon={horizon}")


def merged_of(annotated: Path) -> Path:
    """The unannotated merge a dagger_round annotated (what a next round merges its rollouts into): the dataset its
    annotation.json names."""
    return Path(json.loads((annotated / "meta" / "annotation.json").read_text())["dataset"])


def trained(ds: Path, run: Path, steps: int, *extra: str) -> tuple[Path, float]:
    """The run (trained or resumed to `steps`) and the minutes it took: the wall time of the call that trained it
    from nothing (feature cache included; kept in run/bench_wall_minutes.json so a rerun reports the same), else the
    training steps' own time from metrics.jsonl."""
    fresh = not (run / "checkpoints" / "last").exists()
    t0 = time.perf_counter()
    # a checkpoint every tenth of the run: a from-scratch LIBERO student (1.3 s a step on a core) killed at a session's
    # end loses at most ~40 minutes; a run started with a coarser cadence takes this one when resumed
    every = ("--save-every", str(max(steps // 10, 1)))
    if fresh:  # train itself tidies up a run interrupted before its first checkpoint, and refuses a busy one
        cli("train", "--dataset", str(ds), "--out", str(run), "--steps", str(steps), *every, "--log-every", "50",
            *extra)
    else:  # a resumed run keeps its settings but the length and the cadence
        cli("train", "--dataset", str(ds), "--out", str(run), "--steps", str(steps), "--resume", *every)
    wall, record = (time.perf_counter() - t0) / 60, run / "bench_wall_minutes.json"
    if fresh and wall > 1:
        record.write_text(json.dumps({"minutes": wall, "steps": steps}))
    kept = json.loads(record.read_text()) if record.exists() else {}
    return run, kept["minutes"] if kept.get("steps") == steps else train_minutes(run)


def train_minutes(run: Path) -> float:
    cfg = json.loads((run / "train_config.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "samples_per_s" in r]
    steps = np.diff([0] + [r["step"] for r in rows])
    return float(sum(n * cfg["batch_size"] / r["samples_per_s"] for n, r in zip(steps, rows)) / 60)


def rate(info: dict) -> dict:
    o = info["overall"]
    return {"pc_success": o["pc_success"], "ci95": o["pc_success_ci95"], "n_episodes": o["n_episodes"]}


def onnx_speed(run: Path, observations: Path, bundle: Path) -> dict:
    """Batch-1 speed of the exported student through ONNX Runtime on 2 threads, as bench_deploy.py times every
    backend (a fresh process, the bundle's recorded observations): hz over the mean latency, p50_ms, p99_ms, and the
    1-minute load average just before it (what else was running). Nothing else should run beside it; repeats on the
    idle 2-core machine spread widely (see BENCHMARKS.md). Timed once per bundle (BUNDLE.speed.json): a benchmark
    resumed later beside other jobs re-timed it and wrote 149 Hz over the 266 its own run had measured."""
    timed = bundle.with_name(f"{bundle.name}.speed.json")
    if timed.exists():
        return json.loads(timed.read_text())
    if not (bundle / "model.onnx").exists():
        cli("export", "--policy", str(run), "--format", "onnx", "--observations", str(observations), "--out",
            str(bundle))
    load = round(os.getloadavg()[0], 2)  # before: read after, it counts the timing's own two threads
    speed = time_backend(bundle, "onnx", 2000, 2) | {"load_avg_1m": load}
    timed.write_text(json.dumps(speed))
    return speed


def table(teacher: dict, student: dict, paired: dict) -> None:
    print("| task | teacher % (95% CI) | student % (95% CI) | student − teacher (95% CI) | McNemar p |")
    print("|---|---:|---:|---:|---:|")
    s_by = {t["task"]: t for t in student["per_task"]}
    for t in teacher["per_task"]:
        s, c = s_by[t["task"]], paired["per_task"][t["task"]]
        print(f"| {t['task']} | {t['pc_success']:.0f} ({_ci(t['pc_success_ci95'])}) | {s['pc_success']:.0f} "
              f"({_ci(s['pc_success_ci95'])}) | {c['difference']:+.0f} ({_ci(c['ci95'])}) | {c['mcnemar_p']:.2g} |")
    o = paired["overall"]
    print(f"| **all {o['n_episodes']} episodes** | **{teacher['overall']['pc_success']:.1f}** "
          f"({_ci(teacher['overall']['pc_success_ci95'])}) | **{student['overall']['pc_success']:.1f}** "
          f"({_ci(student['overall']['pc_success_ci95'])}) | {o['difference']:+.1f} ({_ci(o['ci95'])}) | "
          f"{o['mcnemar_p']:.2g} |")


def per_task_table(teacher: dict, student: dict, paired: dict) -> dict:
    """{task: teacher and student rates with their intervals, the paired difference, its interval and McNemar's p}:
    the per_task entry of every benchmark result that puts a student beside its teacher (`paired`: stats.compare)."""
    rows = {x["task"]: {"teacher": x["pc_success"], "teacher_ci95": x["pc_success_ci95"]} for x in teacher["per_task"]}
    for x in student["per_task"]:
        c = paired["per_task"][x["task"]]
        rows[x["task"]] |= {"student": x["pc_success"], "student_ci95": x["pc_success_ci95"],
                            "difference": c["difference"], "difference_ci95": c["ci95"], "mcnemar_p": c["mcnemar_p"]}
    return rows


def paired_with(label: str, baseline: dict, student: dict) -> dict:
    """The student against another evaluation on the same seeds: printed, and as the result's vs_<name> entry."""
    c = compare(baseline, student)
    o = c["overall"]
    print(f"vs {label} ({baseline['overall']['pc_success']:.1f}%), paired: {o['difference']:+.1f} ({_ci(o['ci95'])}), "
          f"McNemar p {o['mcnemar_p']:.2g}")
    keep = ("difference", "ci95", "mcnemar_p")
    return {k: o[k] for k in keep} | {"per_task": {t: {k: x[k] for k in keep} for t, x in c["per_task"].items()}}


def helps(gain: dict) -> bool:
    """A paired comparison (paired_with) says the change helps: ahead by more than its 95% interval's reach (a
    difference within the noise keeps the simpler policy)."""
    return gain["ci95"][0] > 0


def round_could_help(driver: dict) -> bool:
    """Whether a DAgger round driven by the student evaluated in `driver` (an eval_info) could be kept at all: only
    if one that succeeded wherever it failed, and changed nothing else, would pass `helps` on these episodes. With
    fewer failures (4 or fewer of 500) no paired evaluation could keep a round, so running one spends hours for
    nothing."""
    from vla_distill.eval.stats import paired

    outcomes = [bool(s) for t in driver["per_task"] for s in t["metrics"]["successes"]]
    return helps(paired(outcomes, [True] * len(outcomes)))


def _ci(ci) -> str:
    return f"{ci[0]:.1f}–{ci[1]:.1f}"


# ------------------------------------------------------------------------------------------------ suites
def mt10(args) -> dict:
    return multitask(args, "mt10", "mt10")


def multitask(args, name: str, tasks: str) -> dict:
    """One multi-task student of the recipe on `tasks`, teacher and student on the same held-out seeds: work/name."""
    work = Path(args.work) / name
    collect_flags, train_flags = VARIANTS[args.variant]
    if args.variant in DAGGER:
        prev = DAGGER[args.variant]
        driver = work / f"student-{prev}"
        if last_step(driver) < args.steps:  # the driving student first (resumed if it was interrupted)
            trained(dataset(work, tasks, args.demos, 128, collect_flags=VARIANTS[prev][0]), driver, args.steps,
                    *VARIANTS[prev][1])
        ann = dagger_dataset(work, tasks, args.demos, driver, collect_flags)
    else:
        ann = dataset(work, tasks, args.demos, 128, collect_flags=collect_flags)
    tag = "" if args.variant == "keypoints" else f"-{args.variant}"  # the first recipe's directories keep their names
    run, minutes = trained(ann, work / f"student{tag}", args.steps, *train_flags)
    teacher = evaluated("scripted", tasks, work / "eval-teacher", args.episodes)
    student = evaluated(str(run), tasks, work / f"eval-student{tag}", args.episodes)
    paired = compare(teacher, student)
    table(teacher, student, paired)
    baseline = {}
    if args.variant in DAGGER:  # a DAgger round is paired with the student that drove it
        prev = DAGGER[args.variant]
        driver = evaluated(str(work / f"student-{prev}"), tasks, work / f"eval-student-{prev}", args.episodes)
        baseline[f"vs_{prev}"] = paired_with(f"{prev}, the student that drove the round", driver, student)
    elif tag:
        first = evaluated(str(work / "student"), tasks, work / "eval-student", args.episodes)
        baseline["vs_keypoints"] = paired_with("the first recipe", first, student)
    speed = onnx_speed(run, ann, work / f"bundle{tag}")
    hz = speed["hz"]
    s, t = rate(student), rate(teacher)
    print(f"student {s['pc_success']:.1f}% vs teacher {t['pc_success']:.1f}%: "
          f"{'distinguishable' if distinguishable(paired['overall']) else 'not distinguishable'} on these episodes; "
          f"trained {minutes:.0f} min; ONNX Runtime batch-1 {hz:.0f} Hz (p50 {speed['p50_ms']:.2f} ms, "
          f"p99 {speed['p99_ms']:.2f} ms)")
    o = paired["overall"]
    per_task = per_task_table(teacher, student, paired)
    return {"suite": name, "tasks": tasks, "variant": args.variant, "student": s, "teacher": t, **baseline,
            "paired": {"difference": o["difference"], "ci95": o["ci95"], "mcnemar_p": o["mcnemar_p"],
                       "only_teacher": o["only_a"], "only_student": o["only_b"]},
            "per_task": per_task, "train_minutes": round(minutes, 1), "student_hz": round(hz, 1),
            "student_latency_ms": {"p50": speed["p50_ms"], "p99": speed["p99_ms"]},
            "student_onnx_max_abs_err": speed["max_abs_err"],
            "student_hz_backend": "onnxruntime fp32, batch 1, 2 threads",
            "evaluations": {"teacher": str(work / "eval-teacher"), "student": str(work / f"eval-student{tag}")},
            "recipe": " ".join(train_flags), "collect_flags": " ".join(collect_flags), "demos_per_task": args.demos,
            "steps": args.steps,
            "episodes_per_task": args.episodes,
            "goal_met": s["pc_success"] >= 95 and t["pc_success"] - s["pc_success"] <= 2,
            "command": " ".join(["python benchmarks/bench_distill.py", args.suite, *sys.argv[2:]])}


# MT50 by stratified sampling: tasks outside MT10 drawn at random within lerobot's difficulty groups (seed 0), trained
# as one multi-task student of the recipe; with MT10's tasks they estimate MT50's task-weighted success.
MT50_SAMPLE = {"easy": 3, "medium": 2, "hard": 1, "very_hard": 2}


def mt50_sample(seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    mt10_tasks = set(GROUPS["mt10"])
    return [str(t) for g, k in MT50_SAMPLE.items()
            for t in rng.choice(sorted(t for t in GROUPS[g] if t not in mt10_tasks), k, replace=False)]


def mt50_subset(args) -> dict:
    result = multitask(args, "mt50-subset", ",".join(mt50_sample()))
    mt10_result = json.loads((RESULTS / "mt10.json").read_text())
    rates = {t: (x["student"], x["teacher"]) for t, x in mt10_result["per_task"].items()}
    rates |= {t: (x["student"], x["teacher"]) for t, x in result["per_task"].items()}
    result["mt50_estimate"] = mt50_estimate(rates, args.episodes)
    est = result["mt50_estimate"]["student"]
    print(f"MT50 estimate (stratified, with MT10's tasks): student {est['pc_success']:.1f}% ({_ci(est['ci95'])}), "
          f"teacher {result['mt50_estimate']['teacher']['pc_success']:.1f}%")
    result["goal_met"] = est["pc_success"] >= 85  # the MT50 goal, task-weighted
    return result


def mt50_estimate(rates: dict[str, tuple[float, float]], episodes: int, draws: int = 4000) -> dict:
    """MT50's task-weighted success from the measured tasks (task -> (student %, teacher %)): each difficulty group's
    mean over its measured tasks, weighted by the group's share of the 50. The 95% interval is a stratified bootstrap
    (tasks resampled within each group, then each task's episodes), so it covers both the unmeasured tasks and the
    episodes' noise. MT10's tasks were chosen, not drawn, so they enter as if they were a random sample: an
    assumption."""
    rng = np.random.default_rng(0)
    groups = {g: [t for t in GROUPS[g] if t in rates] for g in ("easy", "medium", "hard", "very_hard")}
    out = {"groups": {g: {"tasks_in_group": len(GROUPS[g]), "measured": ts} for g, ts in groups.items()}}
    for who, i in (("student", 0), ("teacher", 1)):
        point, boot = 0.0, np.zeros(draws)
        for g, ts in groups.items():
            w = len(GROUPS[g]) / 50
            p = np.array([rates[t][i] for t in ts]) / 100
            point += w * p.mean()
            picked = p[rng.integers(0, len(p), (draws, len(p)))]
            boot += w * (rng.binomial(episodes, picked) / episodes).mean(1)
            out["groups"][g][who] = round(100 * float(p.mean()), 1)
        lo, hi = np.percentile(100 * boot, [2.5, 97.5])
        out[who] = {"pc_success": round(100 * float(point), 1), "ci95": [round(float(lo), 1), round(float(hi), 1)]}
    return out


ABLATIONS = {  # name: (image size, cameras, train flags replacing the recipe's)
    "recipe": (128, CAMERAS, ()),
    "from scratch (tiny resnet)": (128, CAMERAS, ("--vision", "resnet")),
    "96 px": (96, CAMERAS, ()),
    "one camera (corner2)": (128, CAMERAS, ("--cameras", "observation.images.corner2")),
    "K = 1": (128, CAMERAS, ("--horizon", "1")),
}


def ablations(args) -> dict:
    work = Path(args.work) / f"ablations-{args.tasks.replace(',', '+')[:60]}-{args.demos}"
    rows, infos = [], {}
    for name, (size, cams, change) in ABLATIONS.items():
        ann = dataset(work, args.tasks, args.demos, size, cams)
        base = RECIPE  # the model recipe; its data-side steps (DART, DAgger) are measured on MT10 instead
        flags = dict(zip(base[::2], base[1::2])) | dict(zip(change[::2], change[1::2]))
        slug = name.split(" (")[0].replace(" ", "-").replace("=", "")
        steps = steps_for_minutes(ann, work / f"probe-{slug}", args.minutes, flags)
        run, minutes = trained(ann, work / f"student-{slug}", steps, *[x for kv in flags.items() for x in kv])
        infos[name] = evaluated(str(run), args.tasks, work / f"eval-{slug}", args.episodes)
        rows.append({"name": name, "steps": steps, "train_minutes": round(minutes, 1), **rate(infos[name])})
    ref = infos["recipe"]
    print("| variant | steps in the budget | train min | success % (95% CI) | vs recipe (paired, 95% CI) | McNemar p |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        c = compare(ref, infos[r["name"]])["overall"]
        r["vs_recipe"] = {"difference": c["difference"], "ci95": c["ci95"], "mcnemar_p": c["mcnemar_p"]}
        print(f"| {r['name']} | {r['steps']} | {r['train_minutes']:.1f} | {r['pc_success']:.1f} ({_ci(r['ci95'])}) | "
              f"{c['difference']:+.1f} ({_ci(c['ci95'])}) | {c['mcnemar_p']:.2g} |")
    return {"suite": "ablations", "tasks": args.tasks, "demos_per_task": args.demos, "minutes_budget": args.minutes,
            "episodes_per_task": args.episodes, "rows": rows,
            "command": "python benchmarks/bench_distill.py ablations " + " ".join(sys.argv[2:])}


def steps_for_minutes(ann: Path, probe: Path, minutes: float, flags: dict) -> int:
    """Steps that fit the budget at this variant's measured training speed (a 60-step probe run after its cache)."""
    if not (probe / "metrics.jsonl").exists():
        cli("train", "--dataset", str(ann), "--out", str(probe), "--steps", "60", "--save-every", "60",
            "--log-every", "20", "--val-batches", "1", *[x for kv in flags.items() for x in kv])
    rows = [json.loads(line) for line in (probe / "metrics.jsonl").read_text().splitlines()]
    sps = np.median([r["samples_per_s"] for r in rows if "samples_per_s" in r][1:])  # the first interval warms up
    return int(minutes * 60 * sps / int(flags["--batch-size"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("suite", choices=["mt10", "mt50-subset", "ablations"])
    p.add_argument("--work", default="outputs/bench_distill")
    p.add_argument("--tasks", default="reach-v3,push-v3,pick-place-v3")
    p.add_argument("--demos", type=int, default=0)
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--episodes", type=int, default=0)
    p.add_argument("--minutes", type=float, default=8.0, help="ablations: training budget per variant")
    p.add_argument("--variant", choices=list(VARIANTS), default=VARIANT,
                   help="mt10: which recipe (default: the recipe)")
    args = p.parse_args()
    if args.suite == "mt10":
        args.demos, args.episodes = args.demos or 50, args.episodes or 50
        name = "mt10.json" if args.variant == VARIANT else f"mt10_{args.variant}.json"
        write_result(RESULTS / name, mt10(args))
    elif args.suite == "mt50-subset":
        args.demos, args.episodes = args.demos or 50, args.episodes or 50
        write_result(RESULTS / "mt50_subset.json", mt50_subset(args))
    else:
        args.demos, args.episodes = args.demos or 30, args.episodes or 30
        write_result(RESULTS / "distill_ablations.json", ablations(args))


if __name__ == "__main__":
    main()
