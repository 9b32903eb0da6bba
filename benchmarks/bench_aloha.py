"""ALOHA bimanual: the scripted expert as teacher, a student distilled from it, both on the same held-out episodes,
and the exported student in the real-time loop at 50 Hz.

Usage (every stage runs through the CLI as a user would; a rerun skips what is done and resumes what is not):
  python benchmarks/bench_aloha.py teacher [--episodes 100]
      the scripted expert on each task's held-out episodes (rendering off: it reads the privileged state)
  python benchmarks/bench_aloha.py suite [--demos 50] [--steps 20000] [--episodes 100] [--loop-episodes 5]
                                        [--dagger-rounds 1]
      50 DART demonstrations per task (the `aloha` recipe: top camera, 0.005 rad of noise on the arm joints),
      annotated by the scripted teacher through the generic two-arm path, one student for both tasks; a DAgger round
      driven by it (its own rollouts labelled by the expert), kept if its paired evaluation is ahead beyond its
      interval; teacher and the kept student on the same 100 held-out episodes per task, paired; the student
      exported to ONNX, its speed, and `vla-distill run --hz 50` episodes with its deadline misses and p99 tick time
      -> results/aloha.json (the shape of mt10.json), written after every evaluation
  python benchmarks/bench_aloha.py delta [--steps 20000] [--episodes 100]
      after `suite`: its first student's demonstrations, annotations and recipe with `train --delta-actions` (joint
      targets predicted relative to the state), on the same held-out episodes, paired against that student
      -> results/aloha.json["delta_actions"]
  python benchmarks/bench_aloha.py resolution [--size 224] [--steps 20000] [--episodes 100]
      after `suite`: the same demonstrations (same seeds, same DART noise) rendered at --size px, annotated and trained
      with the recipe, on the same held-out episodes, paired against the suite's first (128 px) student
      -> results/aloha.json["resolution"][size]
  python benchmarks/bench_aloha.py scratch [--steps 20000] [--episodes 100]
      after `suite`: its first student's annotated demonstrations, the encoder trained from scratch (`--vision ""`)
      -> results/aloha.json["scratch_vision"]
  python benchmarks/bench_aloha.py wrist [--steps 20000] [--episodes 100]
      the suite's first student's demonstrations recorded again (the same seeds and noise: the same actions)
      with both wrist cameras beside the top one, the recipe's student on the three, paired against the teacher, the
      same frames' top camera alone (train --cameras) and, where its evaluation is kept, the first student
      -> results/aloha.json["wrist_cameras"]
  python benchmarks/bench_aloha.py finetune [--tune-from 4] [--steps 20000] [--episodes 100]
      after `wrist`: the same frames' top camera with the ImageNet trunk's stages after that stride fine-tuned (train
      --vision-tune-from, at the recipe's tenth of the lr; ACT fine-tunes its ResNet) instead of frozen, paired
      against the frozen top-only control and the teacher -> results/aloha.json["finetune"]["from<stride>"]
  python benchmarks/bench_aloha.py demos --demos 200 [--steps 20000] [--episodes 100]
      after `suite`: the recipe's student on --demos DART demonstrations per task (the first student's 50 are the
      first 50 of them: the same seeds), on the same held-out episodes, paired against the first student
      -> results/aloha.json["demos"][N]
  python benchmarks/bench_aloha.py chunks [--episodes 100]
      after `suite`: its first student replanning every 5 steps, and with ACT's temporal ensembling, paired against
      the recipe's queue of 10 -> results/aloha.json["chunk_modes"]
Work directories live under --work (default outputs/bench_aloha).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from bench_distill import dagger_round, helps, onnx_speed, paired_with, per_task_table, rate, table, trained
from bench_eval import annotated, dataset, eval_info, evaluated, has_outcomes

from common import RESULTS, cli, update_result
from vla_distill.config import recipe
from vla_distill.eval.stats import compare
from vla_distill.types import camera_key

ALOHA = recipe("aloha")
TASKS = "transfer_cube,insertion"
ENV = ("--env", "aloha")
PUBLISHED = {  # success %, other protocols: anchors, not this measurement
    "act_scripted_data": {"transfer_cube": 90, "insertion": 50},  # ACT's README, its own scripted demonstrations
    "act_human_data": {"transfer_cube": 50, "insertion": 20},
    "lerobot_act_human_data": {"transfer_cube": 87.6},  # 500 episodes
}


def teacher(args) -> dict:
    info = teacher_info(args)
    print(f"teacher {rate(info)}")
    return {"teacher": rate(info), "teacher_per_task": per_task_rates(info),
            "teacher_command": command()}


def command() -> str:
    """This benchmark's command line, as results record it."""
    return " ".join(["python benchmarks/bench_aloha.py", *sys.argv[1:]])


def teacher_info(args) -> dict:
    """The scripted expert's evaluation on the held-out episodes (eval_info; rendering off, so minutes)."""
    return evaluated("scripted", TASKS, Path(args.work) / "eval-teacher", args.episodes, *ENV)


def first_student(args) -> dict:
    """The suite's first student's evaluation (eval_info), what every variant is paired against."""
    work = Path(args.work)
    return evaluated(str(work / "student"), TASKS, work / "eval-student", args.episodes, *ENV)


def per_task_rates(info: dict) -> dict:
    """{task: rate(...)} of an evaluation's eval_info."""
    return {t["task"]: {"pc_success": t["pc_success"], "ci95": t["pc_success_ci95"], "n_episodes": t["n_episodes"]}
            for t in info["per_task"]}


def suite(args) -> dict:
    """demonstrations -> annotations -> a student -> a DAgger round driven by it, kept if its paired evaluation is
    ahead -> teacher against the kept student, its ONNX speed and the 50 Hz loop."""
    work = Path(args.work)
    cameras, size = ",".join(ALOHA.collect["names"]), ALOHA.collect["height"]
    dart = ("--action-noise", str(ALOHA.collect["action_noise"]))
    raw = dataset(work, TASKS, args.demos, size, cameras=cameras, name="dataset-dart", collect_flags=(*ENV, *dart))
    ann = annotated(work, raw, "scripted", "annotated-dart")
    result = {"tasks": TASKS, "demos_per_task": args.demos, "steps": args.steps, "episodes_per_task": args.episodes,
              "recipe": "aloha", "published_anchors": PUBLISHED,
              "command": command()}
    run, minutes = trained(ann, work / "student", args.steps, "--recipe", "aloha")
    t_info = teacher_info(args)
    s_info = evaluated(str(run), TASKS, work / "eval-student", args.episodes, *ENV)
    result["first_student"] = rate(s_info) | {"train_minutes": round(minutes, 1),
                                              "vs_teacher": paired_with("the teacher", t_info, s_info)}
    save(result)
    tag = ""
    if args.dagger_rounds:
        d_ann = dagger_round(work, TASKS, args.demos, run, raw, cameras, size, ENV)
        d_run, d_minutes = trained(d_ann, work / "student-dagger", args.steps, "--recipe", "aloha")
        d_info = evaluated(str(d_run), TASKS, work / "eval-student-dagger", args.episodes, *ENV)
        gain = paired_with("the student that drove the round", s_info, d_info)
        keep = helps(gain)
        result["dagger"] = {"student": rate(d_info), "train_minutes": round(d_minutes, 1), "vs_driver": gain,
                            "kept": keep}
        if keep:
            run, minutes, s_info, tag = d_run, minutes + d_minutes, d_info, "-dagger"
    else:  # replaces an earlier run's round in aloha.json
        result["dagger"] = {"skipped": "--dagger-rounds 0"}
    paired = compare(t_info, s_info)
    table(t_info, s_info, paired)
    o = paired["overall"]
    result |= {"teacher": rate(t_info), "student": rate(s_info), "student_run": str(run),
               "train_minutes": round(minutes, 1),
               "paired": {"difference": o["difference"], "ci95": o["ci95"], "mcnemar_p": o["mcnemar_p"]},
               "per_task": per_task_table(t_info, s_info, paired),
               "vs_teacher": paired_with("the teacher", t_info, s_info)}
    save(result)
    speed = onnx_speed(run, ann, work / f"bundle{tag}")
    result |= {"student_hz": round(speed["hz"], 1), "student_latency_ms": {"p50": speed["p50_ms"],
                                                                         "p99": speed["p99_ms"]},
               "realtime": realtime(work / f"bundle{tag}", work / f"realtime{tag}", args.loop_episodes)}
    return result


def delta(args) -> dict:
    """The first student's data and recipe, its joint targets predicted relative to the state (--delta-actions)."""
    work = Path(args.work)
    base = first_student(args)
    run, minutes = trained(work / "annotated-dart", work / "student-delta", args.steps, "--recipe", "aloha",
                           "--delta-actions")  # the recipe sets it since this measurement; the flag keeps it so
    info = evaluated(str(run), TASKS, work / "eval-student-delta", args.episodes, *ENV)
    return {"delta_actions": {"student": rate(info), "per_task": per_task_rates(info),
                              "train_minutes": round(minutes, 1),
                              "vs_absolute_targets": paired_with("the absolute-target student", base, info),
                              "command": command()}}


def resolution(args) -> dict:
    """The suite's first student with the top camera at --size px instead of the recipe's: at 128 px the 4 cm cube is
    4 pixels and half a cell of the encoder's 16x16 map, where a grasp needs about 1 cm."""
    sub = Path(args.work) / f"top{args.size}"
    return {"resolution": {str(args.size): variant(args, sub, recollected(args, sub, args.size))}}


def scratch(args) -> dict:
    """The first student's own annotated demonstrations with the recipe's encoder trained from scratch (the preset's
    ResNet, pixels augmented) instead of frozen ImageNet features, against the first student."""
    sub = Path(args.work) / "scratch"
    return {"scratch_vision": variant(args, sub, Path(args.work) / "annotated-dart", "--vision", "")}


def wrist(args) -> dict:
    """The first student's demonstrations (the same actions) recorded with each gripper's wrist camera beside the top
    view, the recipe's student on all three: what the top view at 128 px cannot show is where the cube is to the
    centimetre (its auxiliary head places it to 1.5 cm, a grasp needs about 1), and the grasping wrist's view shows it
    across a third of the frame."""
    work, sub = Path(args.work), Path(args.work) / "wrist"
    ann = recollected(args, sub, ALOHA.collect["height"], ("top", "left_wrist", "right_wrist"))
    info, out = variant_student(args, sub, ann)
    t_info = teacher_info(args)
    out["vs_teacher"] = paired_with("the teacher", t_info, info)
    # the control on the same frames: the top camera alone (train --cameras), so the pair isolates the wrists from a
    # retraining's spread and from whatever changed in the code since the first student
    top_info, top = variant_student(args, sub, ann, "--cameras", camera_key("top"), name="student-top")
    out["top_only"] = top | {"vs_teacher": paired_with("the teacher", t_info, top_info)}
    out["wrists_minus_top_only"] = paired_with("the top camera alone, same frames", top_info, info)
    if has_outcomes(work / "eval-student"):
        out["vs_first_student"] = paired_with("the first student", eval_info(work / "eval-student"), info)
    else:  # its run is gone: the same held-out seeds, so its recorded rate reads beside this one, unpaired
        out["first_student_recorded"] = json.loads((RESULTS / "aloha.json").read_text()).get("student")
    return {"wrist_cameras": out}


def finetune(args) -> dict:
    """The wrist run's top-only control (frozen ImageNet trunk, 18.5%) with the trunk fine-tuned: the probe on its
    frozen features places the cube to 0.9 cm, the student's head to 1.5 cm, a grasp needs about 1 (BENCHMARKS.md,
    "Where the first student fails"); ACT fine-tunes its ImageNet ResNet end to end. Same frames, same recipe, same
    held-out episodes: the pair isolates the trunk's training."""
    sub, key = Path(args.work) / "wrist", f"from{args.tune_from}"
    ann = recollected(args, sub, ALOHA.collect["height"], ("top", "left_wrist", "right_wrist"))
    info, out = variant_student(args, sub, ann, "--cameras", camera_key("top"), "--vision-tune-from",
                                str(args.tune_from), name=f"student-top-tune{args.tune_from}")
    out["vs_teacher"] = paired_with("the teacher", teacher_info(args), info)
    control = sub / "eval-student-top"
    if not has_outcomes(control):
        sys.exit(f"error: {control}: the frozen control's evaluation is missing; run `bench_aloha.py wrist` first")
    out["vs_frozen_trunk"] = paired_with("the frozen trunk, same frames", eval_info(control), info)
    return {"finetune": {key: out}}


def demos(args) -> dict:
    """The first student learnt the demonstrations' paths more than where the cube is (BENCHMARKS.md, "ALOHA"): the
    same recipe on more placements of the objects. The suite's own 50 come first (collection seeds are drawn in
    order), so the difference is the added placements alone."""
    sub = Path(args.work) / f"demos{args.demos}"
    return {"demos": {str(args.demos): variant(args, sub, recollected(args, sub, ALOHA.collect["height"]))}}


def chunks(args) -> dict:
    """The first student's chunks executed otherwise, on the same held-out episodes, paired against the recipe's queue
    (all K = 10 actions, then replan): replanning every 5 steps, and ACT's temporal ensembling (inferred every step)."""
    work = Path(args.work)
    base = first_student(args)
    out = {}
    for name, flags in (("replan_5", ("--n-action-steps", "5")), ("ensemble", ("--chunk", "ensemble"))):
        info = evaluated(str(work / "student"), TASKS, work / f"eval-student-{name}", args.episodes, *ENV, *flags)
        out[name] = {"student": rate(info), "per_task": per_task_rates(info),
                     "vs_queue": paired_with("the queue of 10", base, info)}
    return {"chunk_modes": out | {"command": command()}}


def dagger_labels(args) -> dict:
    """The suite's DAgger round retrained with only the first step of each rollout chunk in the action loss (train
    --rollout-steps 1, what LIBERO-Spatial's round needed: BENCHMARKS.md, "DAgger with action chunks"), on the same
    held-out episodes, paired against its driver and against the round trained on whole chunks."""
    work = Path(args.work)
    base = first_student(args)
    run, minutes = trained(work / "annotated-128-dagger", work / "student-dagger-first1", args.steps, "--recipe",
                           "aloha", "--rollout-steps", "1")
    info = evaluated(str(run), TASKS, work / "eval-student-dagger-first1", args.episodes, *ENV)
    whole = eval_info(work / "eval-student-dagger")
    return {"dagger_labels": {"first1": {
        "student": rate(info), "per_task": per_task_rates(info), "train_minutes": round(minutes, 1),
        "vs_driver": paired_with("the student that drove the round", base, info),
        "vs_whole_chunks": paired_with("whole chunks", whole, info), "command": command()}}}


def act(args) -> dict:
    """ACT's two choices the recipe does not make (Zhao et al. 2023, whose ablations rank the chunk's length first:
    K = 100 at 50 Hz, and an L1 loss): chunks of --horizon steps and --action-loss on the first student's
    demonstrations, executed as a queue and with temporal ensembling, each paired against the first student."""
    work = Path(args.work)
    key = f"k{args.horizon}-{args.action_loss}"
    base = first_student(args)
    run, minutes = trained(work / "annotated-dart", work / f"act-{key}" / "student", args.steps, "--recipe", "aloha",
                           "--horizon", str(args.horizon), "--action-loss", args.action_loss)
    out = {"train_minutes": round(minutes, 1), "command": command()}
    for name, flags in (("queue", ()), ("ensemble", ("--chunk", "ensemble"))):
        info = evaluated(str(run), TASKS, work / f"act-{key}" / f"eval-student-{name}", args.episodes, *ENV, *flags)
        out[name] = {"student": rate(info), "per_task": per_task_rates(info),
                     "vs_first_student": paired_with("the first student", base, info)}
    return {"act": {key: out}}


def recollected(args, sub: Path, size: int, cameras: tuple[str, ...] = ALOHA.collect["names"]) -> Path:
    """The first student's demonstrations (same seeds and DART noise draws) collected again into `sub` at `size` px
    with the expert as it is now, and annotated."""
    dart = ("--action-noise", str(ALOHA.collect["action_noise"]))
    raw = dataset(sub, TASKS, args.demos, size, cameras=",".join(cameras), name="dataset-dart",
                  collect_flags=(*ENV, *dart))
    return annotated(sub, raw, "scripted", "annotated-dart")


def variant(args, sub: Path, ann: Path, *flags: str) -> dict:
    """A student trained on `ann` with the recipe (and `flags`) into `sub`, on the same held-out episodes, paired
    against the suite's first student."""
    base = first_student(args)
    info, out = variant_student(args, sub, ann, *flags)
    return out | {"vs_first_student": paired_with("the first student", base, info)}


def variant_student(args, sub: Path, ann: Path, *flags: str, name: str = "student") -> tuple[dict, dict]:
    """A student trained on `ann` with the recipe (and `flags`) into `sub`/`name`, evaluated on the held-out episodes
    -> (its eval_info, its result entries)."""
    run, minutes = trained(ann, sub / name, args.steps, "--recipe", "aloha", *flags)
    info = evaluated(str(run), TASKS, sub / f"eval-{name}", args.episodes, *ENV)
    return info, {"student": rate(info), "per_task": per_task_rates(info), "train_minutes": round(minutes, 1),
                  "command": command()}


def realtime(bundle: Path, out: Path, episodes: int) -> dict:
    """The exported student driving `vla-distill run --hz 50` through ONNX Runtime (the bundle's default backend is
    torch, 3x slower at batch 1): each episode's deadline misses and p99 tick time."""
    if not out.exists():
        cli("run", "--policy", str(bundle), "--backend", "onnx", *ENV, "--tasks", TASKS, "--hz", "50", "--episodes",
            str(episodes), "--max-steps", "400", "--record", str(out))
    summaries = [json.loads(p.read_text())["summary"] for p in sorted(out.glob("*/episode_*.json"))]
    ticks = [s["timing_ms"]["tick_work"]["p99"] for s in summaries]
    return {"episodes": len(summaries), "success": sum(bool(s["success"]) for s in summaries),
            "deadline_misses": sum(s["deadline_misses"] for s in summaries),
            "tick_p99_ms_worst": round(float(max(ticks, default=np.nan)), 2), "hz": 50}


VARIANTS = ("resolution", "demos", "act", "finetune")  # modes holding one entry per setting (size, count, K, stride)


def save(partial: dict) -> None:
    """Merges `partial` into results/aloha.json: a mode's key replaces the old one, except in the modes measured once
    per setting, where a setting's entry replaces only its own."""
    update_result("aloha.json", lambda old: old | {k: old.get(k, {}) | v if k in VARIANTS else v
                                                   for k, v in partial.items()})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["teacher", "suite", "delta", "resolution", "scratch", "wrist", "finetune", "demos",
                                    "chunks", "dagger-labels", "act"])
    p.add_argument("--work", default="outputs/bench_aloha")
    p.add_argument("--demos", type=int, default=50)
    p.add_argument("--steps", type=int, default=ALOHA.train["steps"])
    p.add_argument("--episodes", type=int, default=100, help="held-out episodes per task")
    p.add_argument("--size", type=int, default=224, help="resolution: the top camera's height and width in px")
    p.add_argument("--loop-episodes", type=int, default=5, help="real-time loop episodes per task")
    p.add_argument("--dagger-rounds", type=int, default=1, choices=[0, 1],
                   help="suite: 0 skips the DAgger round (it did not pass its paired test on expert v1's data or v2's)")
    p.add_argument("--horizon", type=int, default=100, help="act: the chunk's length K (ACT's: 100 steps, 2 s)")
    p.add_argument("--action-loss", default="l1", choices=["l1", "mse", "smooth_l1"], help="act: the action loss")
    p.add_argument("--tune-from", type=int, default=4, choices=[1, 2, 4],
                   help="finetune: the trunk's stages after this stride are fine-tuned (1: all of it, ~20x slower)")
    args = p.parse_args()
    stages = {"teacher": teacher, "suite": suite, "delta": delta, "resolution": resolution, "scratch": scratch,
              "wrist": wrist, "finetune": finetune, "demos": demos, "chunks": chunks, "dagger-labels": dagger_labels,
              "act": act}
    save(stages[args.what](args))


if __name__ == "__main__":
    main()
