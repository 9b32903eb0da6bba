"""LIBERO: the VLA-AD paper's table, reproduced from nothing with the scripted expert as the teacher.

Usage (every stage runs through the CLI as a user would; a rerun skips what is done and resumes what is not):
  python benchmarks/bench_libero.py speed
      env steps/s beside rendered frames/s per core at 128 px, two cameras: physics only, collecting (the dataset's
      10 fps: a frame pair per env step), evaluating a K = 5 student (a pair every 5th step)
      -> results/libero_speed.json
  python benchmarks/bench_libero.py teacher --suite libero_object [--episodes 50]
      the scripted expert on the suite's 500 standard episodes (its 50 fixed initial states per task)
  python benchmarks/bench_libero.py suite --suite libero_object [--demos 50] [--steps 20000] [--episodes 50]
      50 DART demonstrations per task from new placements (collection seeds draw from the BDDL regions; the 50 fixed
      initial states are the evaluation), annotated by the scripted teacher; the `libero` recipe's student with the
      frozen ImageNet encoder and with one trained from scratch, scratch only if a paired evaluation puts it ahead
      beyond its interval (else the cheaper frozen one); a DAgger round
      driven by it, kept if its paired evaluation is ahead beyond its interval (--dagger-rounds N: up to N, each
      driven by the last kept student on new placements, its data merged into that student's); teacher and the kept
      student on the same 500 standard episodes, paired; every student also paired against the suite's reference
      student where the repository ships one (students/<suite>/outcomes.json) -> results/libero.json[suite], written
      after every evaluation
  python benchmarks/bench_libero.py phases --suite libero_goal
      the phase labeller against the expert's stages on the suite's collected demonstrations, per task
      -> results/libero_phases.json[suite] (the suite stage records the overall figure in libero.json)
  python benchmarks/bench_libero.py grasps --suite libero_object
      where each evaluated episode first closed the gripper: on the target or another item, how high above the
      expert's grasp point, how often it closed -> results/libero_grasps.json (why a student fails, per task)
  python benchmarks/bench_libero.py replan --suite libero_spatial [--n-action-steps 1]
      the table's kept student replanning after --n-action-steps of each chunk, paired against the table's evaluation
      (whole chunks) and the teacher -> results/libero.json[suite]["replan"]; kept, it restates the table
  python benchmarks/bench_libero.py sides --suite libero_spatial
      the side of the target the expert grasps (free_x, free_y) at each demonstration's start, per task, beside the
      kept student's success -> results/libero_sides.json[suite]
  python benchmarks/bench_libero.py reversals --suite libero_goal [--work outputs/bench_libero_v25]
      per task, the demonstrations' close -> open gripper labels before the expert's release stage, and their frames
      -> results/libero_labels.json[suite]
  python benchmarks/bench_libero.py retrain --suite libero_goal --work outputs/bench_libero_v25 [--seed 1] [--ema 0.999]
      the suite's first student trained again with another seed (a retraining's spread) or shipping its weights'
      moving average, paired against the first student on the same standard episodes -> results/libero_retrain.json
Step limits: an episode runs to lerobot's limit (MAX_STEPS, control steps); openpi's (220 on Spatial) is read off the
step of first success, so one evaluation reports both.
Work directories live under --work (default outputs/bench_libero).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from bench_distill import (
    dagger_annotation,
    dagger_round,
    helps,
    merged_of,
    onnx_speed,
    paired_with,
    per_task_table,
    rate,
    round_could_help,
    table,
    trained,
)
from bench_eval import annotated, dataset, eval_info, evaluated

from common import RESULTS, update_key, update_result, write_result
from vla_distill.config import recipe
from vla_distill.eval.records import arrays_path, read_records
from vla_distill.eval.stats import compare, wilson

LIBERO = recipe("libero")
CAMERAS = ",".join(LIBERO.collect["names"])
ENV = ("--env", "libero")
# openpi's examples/libero/main.py limits, in 20 Hz control steps (lerobot's are MAX_STEPS: 280 on Spatial)
OPENPI_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520}
PART_REACH = 0.03  # m: a first close this near the expert's grip on a handle or a knob counts as on it
PUBLISHED = {  # success %, their own protocols (human demonstrations of all suites): anchors, not our protocol
    "pi0": {"libero_spatial": 96.8, "libero_object": 98.8, "libero_goal": 95.8},
    "vla_ad_student": {"libero_spatial": 86.1, "libero_object": 82.3, "libero_goal": 78.9},
    "vla_ad_teacher": {"libero_spatial": 86.4, "libero_object": 82.7, "libero_goal": 79.2},
}


def under_openpi_limit(out: Path, suite: str) -> dict:
    """The evaluation's success rate had episodes stopped at openpi's step limit (success by then)."""
    from vla_distill.sim.libero.env import CONTROL_REPEAT

    limit = OPENPI_STEPS[suite] // CONTROL_REPEAT  # env steps
    ok = [r.first_success is not None and r.first_success < limit for r in read_records(out).values()]
    return {"pc_success": 100 * sum(ok) / max(len(ok), 1), "ci95": wilson(sum(ok), len(ok)), "n_episodes": len(ok),
            "control_steps": OPENPI_STEPS[suite]}


def expert_tasks(suite_name: str) -> tuple[list[str], dict[str, str]]:
    """The suite's tasks the scripted expert takes, and why it refuses each other one (LIBERO-Goal's drawers,
    stove and microwave door are beyond it)."""
    from vla_distill.errors import ConfigError
    from vla_distill.sim.libero.expert import LiberoExpert
    from vla_distill.sim.libero.tasks import resolve_tasks

    taken, refused = [], {}
    for task in resolve_tasks(suite_name):
        try:
            LiberoExpert(task)
            taken.append(task)
        except ConfigError as e:
            refused[task] = str(e)
    return taken, refused


def reference_info(suite_name: str) -> dict | None:
    """The reference student the repository ships for the suite (students/<suite>/outcomes.json: every standard
    episode's seed and outcome) in eval_info's shape, or None: a rebuild pairs against it though its run is gone."""
    path = RESULTS.parent.parent / "students" / suite_name / "outcomes.json"
    if not path.exists():
        return None
    episodes = json.loads(path.read_text())["episodes"]
    wins = [ok for e in episodes.values() for ok in e["successes"]]
    return {"per_task": [{"task": task, "metrics": {"seeds": e["seeds"], "successes": e["successes"]}}
                         for task, e in episodes.items()],
            "overall": {"pc_success": 100 * sum(wins) / len(wins)}}


def vs_reference(suite_name: str, info: dict) -> dict:
    """{"vs_reference_student": paired} where the suite has a reference student, else {}."""
    ref = reference_info(suite_name)
    return {"vs_reference_student": paired_with(f"students/{suite_name}", ref, info)} if ref else {}


def suite_tasks(suite_name: str) -> tuple[str, dict[str, str]]:
    """The --tasks of the suite's stages (the suite's name when the expert takes every task) and the refused ones."""
    taken, refused = expert_tasks(suite_name)
    return (",".join(taken) if refused else suite_name), refused


def teacher(args) -> dict:
    out = Path(args.work) / args.suite / "eval-teacher"
    tasks, refused = suite_tasks(args.suite)
    info = evaluated("scripted", tasks, out, args.episodes, *ENV)
    openpi = under_openpi_limit(out, args.suite)
    print_rates("teacher", info, openpi, args.suite)
    return {"teacher": rate(info), "teacher_openpi_limit": openpi, "refused_tasks": refused,
            "teacher_per_task": {t["task"]: t["pc_success"] for t in info["per_task"]},
            "minutes": round(info["overall"]["eval_s"] / 60, 1)}  # the evaluation's own time: a rerun skips it


def print_rates(who: str, info: dict, o: dict, suite: str) -> None:
    """The rate, the rate within openpi's step limit (`o`: under_openpi_limit) and each task's."""
    r = rate(info)
    print(f"{suite} {who}: {r['pc_success']:.1f}% ({r['ci95'][0]:.1f}–{r['ci95'][1]:.1f}), n = {r['n_episodes']}; "
          f"within openpi's {o['control_steps']} steps {o['pc_success']:.1f}%")
    for t in info["per_task"]:
        print(f"  {t['task']}: {t['pc_success']:.0f}%")


# The two vision encoders the suite chooses between (a paired evaluation on the same 500 episodes), the recipe's first
VISION = {"frozen": ("--recipe", "libero"), "scratch": ("--recipe", "libero", "--vision", "")}


def suite(args) -> dict:
    """Every stage resumable, the result written after each evaluation (a later session picks up where this stopped):
    demonstrations -> annotations -> a student per vision encoder, the better by a paired evaluation -> a DAgger round
    driven by it, kept if the paired evaluation puts it ahead beyond its interval -> teacher against the kept
    student."""
    work = Path(args.work) / args.suite
    tasks, refused = suite_tasks(args.suite)
    dart = ("--action-noise", str(LIBERO.collect["action_noise"]))
    if args.rotation_noise:  # beside the recipe's, not in it, until a paired measurement says it helps
        dart += ("--rotation-noise", str(args.rotation_noise))
    raw = dataset(work, tasks, args.demos, LIBERO.collect["height"], cameras=CAMERAS, name="dataset-dart",
                  collect_flags=(*ENV, *dart))
    ann = annotated(work, raw, "scripted", "annotated-dart")
    result = {"phases": phase_agreement(raw), "demos_per_task": args.demos, "steps": args.steps,
              "episodes_per_task": args.episodes, "command": this_command(), "vision": {"compared": False},
              "refused_tasks": refused, **({"rotation_noise": args.rotation_noise} if args.rotation_noise else {}),
              "published_anchors": {k: v.get(args.suite) for k, v in PUBLISHED.items()}}
    t_info = evaluated("scripted", tasks, work / "eval-teacher", args.episodes, *ENV)
    students = {}
    for name, flags in VISION.items():
        if args.vision not in ("both", name):
            continue
        run, minutes = trained(ann, work / f"student-{name}", args.steps, *flags)
        out = work / f"eval-student-{name}"
        info = evaluated(str(run), tasks, out, args.episodes, *ENV)
        students[name] = (run, minutes, info, flags, out)
        result["vision"][name] = rate(info) | {"train_minutes": round(minutes, 1),
                                               "vs_teacher": paired_with("the teacher", t_info, info),
                                               **vs_reference(args.suite, info)}
        save(args, result)
    if args.vision == "both":
        choice = paired_with("the frozen encoder", students["frozen"][2], students["scratch"][2])
        # scratch only where it is ahead beyond the interval (the rule a DAgger round passes): a difference within the
        # noise keeps the frozen encoder, seven times cheaper to train (Object: 48.8 min against 345.6, one thread each)
        chosen = "scratch" if helps(choice) else "frozen"
        result["vision"] |= {"scratch_minus_frozen": choice, "chosen": chosen, "compared": True}
    else:  # one encoder alone (the other still training): its DAgger round and table, the choice not yet measured
        chosen = args.vision
        result["vision"] |= {"chosen": chosen}
    run, minutes, info, flags, out = students[chosen]
    data, rounds = raw, []
    tag, plan, label_flags = dagger_labelling(args.dagger_labels)
    for r in range(1, args.dagger_rounds + 1):
        if not round_could_help(info):  # too few failures left for any round to be kept
            rounds.append({"round": r, "driver": run.name, "skipped": "the driver fails too few episodes for a paired "
                                                                     "evaluation to keep any round (round_could_help)"})
            result["dagger_rounds"] = rounds
            break
        suffix = "-dagger" if r == 1 else f"-dagger{r}"  # round 1 keeps the names runs before rounds were counted have
        ann = dagger_round(work, tasks, args.demos, run, data, CAMERAS, LIBERO.collect["height"], ENV,
                           run.name.removeprefix("student-"), seed=r, horizon=plan)  # its data named after its driver
        d_run, d_minutes = trained(ann, work / f"student-{chosen}{suffix}{tag}", args.steps, *flags, *label_flags)
        d_out = work / f"eval-student-{chosen}{suffix}{tag}"
        d_info = evaluated(str(d_run), tasks, d_out, args.episodes, *ENV)
        gain = paired_with(f"{run.name}, the student that drove round {r}", info, d_info)
        keep = helps(gain)
        rounds.append({"round": r, "driver": run.name, "student": rate(d_info), "train_minutes": round(d_minutes, 1),
                       "vs_driver": gain, "kept": keep, **vs_reference(args.suite, d_info)})
        result |= {"dagger": rounds[0], "dagger_rounds": rounds}
        save(args, result)
        if not keep:  # the next round would be driven by the same student: the same rollouts again
            break
        run, minutes, info, out, data = d_run, minutes + d_minutes, d_info, d_out, merged_of(ann)
    result |= final_table(work, args.suite, t_info, info, out, run, minutes)
    return result


def dagger_labelling(labels: str, rollout_steps: int = 1) -> tuple[str, int, tuple[str, ...]]:
    """A DAgger round's chunk labels (--dagger-labels) -> (the student's name tag, the teacher's plan horizon, train
    flags): `answers`, the expert's answer at each frame, whole chunks of them; `first`, the same answers with only the
    first `rollout_steps` steps of each rollout chunk in the loss; `plan`, the expert's own K-step plan from each
    frame, whole chunks of it. --rollout-steps is always given: the libero recipe sets 1, which the other two are
    not."""
    horizon = LIBERO.train["horizon"]
    return {"answers": ("", 1, ("--rollout-steps", "0")),
            "first": (f"-first{rollout_steps}", 1, ("--rollout-steps", str(rollout_steps))),
            "plan": (f"-plan{horizon}", horizon, ("--rollout-steps", "0"))}[labels]


def dagger_labels(args) -> dict:
    """A DAgger round's chunk labels, decided on the rollouts the suite already has, each variant evaluated on the
    same episodes and paired against the round's driver and against the round trained on whole chunks of the
    expert's single answers: `first` N (--rollout-steps) counts only the first N steps of each rollout chunk in the
    action loss (the expert's later answers respond to states the driver's own chunk led to); `plan` labels every
    frame with the expert's own K-step plan from it (annotate --teacher-opt horizon=K)."""
    work = Path(args.work) / args.suite
    tasks, _ = suite_tasks(args.suite)
    driver = work / f"student-{args.vision}"
    ann = work / f"annotated-128-{args.vision}-dagger"
    tag, plan, flags = dagger_labelling(args.labels, args.rollout_steps)  # the names the suite's round gives them
    if plan > 1:
        ann = dagger_annotation(work, merged_of(ann), f"128-{args.vision}", plan)
    key, name = tag.removeprefix("-"), f"student-{args.vision}-dagger{tag}"
    run, minutes = trained(ann, work / name, args.steps, *VISION[args.vision], *flags)
    info = evaluated(str(run), tasks, work / name.replace("student-", "eval-student-"), args.episodes, *ENV)
    d_info = evaluated(str(driver), tasks, work / f"eval-student-{args.vision}", args.episodes, *ENV)
    result = {"command": this_command(), "student": rate(info), "train_minutes": round(minutes, 1),
              "vs_driver": paired_with(driver.name, d_info, info),
              "per_task": {t["task"]: t["pc_success"] for t in info["per_task"]}}
    whole = work / f"student-{args.vision}-dagger"
    if (whole / "checkpoints" / "last").exists():  # LIBERO-Goal's was never trained: the Spatial round told why
        w_info = evaluated(str(whole), tasks, work / f"eval-student-{args.vision}-dagger", args.episodes, *ENV)
        result["vs_whole_chunks"] = paired_with("whole chunks", w_info, info)
    for other in sorted(work.glob(f"eval-student-{args.vision}-dagger-*/eval_info.json")):  # the variants run before
        variant = other.parent.name.rsplit("-", 1)[1]
        if variant != key:
            result[f"vs_{variant}"] = paired_with(variant, eval_info(other.parent), info)
    return {key: result}


def final_table(work: Path, suite_name: str, t_info: dict, s_info: dict, s_out: Path, run: Path,
                minutes: float) -> dict:
    """Teacher against the kept student on the same episodes, paired, per task, within both step limits, and the
    student's batch-1 speed through ONNX Runtime."""
    rows = student_rows(work, suite_name, t_info, s_info, s_out)
    speed = onnx_speed(run, Path(json.loads((run / "train_config.json").read_text())["dataset"]),
                       work / f"bundle-{run.name}")  # named after its run: a later choice exports its own
    return {"teacher": rate(t_info), **rows, **vs_reference(suite_name, s_info), "student_run": str(run),
            "train_minutes": round(minutes, 1),
            "student_hz": round(speed["hz"], 1), "student_hz_load_avg": speed.get("load_avg_1m")}


def student_rows(work: Path, suite_name: str, t_info: dict, s_info: dict, s_out: Path) -> dict:
    """The table's entries that come from the student's evaluation (printed): its rate, paired against the teacher
    overall and per task, and both within openpi's step limit. A replanned evaluation restates exactly these."""
    paired = compare(t_info, s_info)
    table(t_info, s_info, paired)
    o = paired["overall"]
    return {"student": rate(s_info),
            "paired": {"difference": o["difference"], "ci95": o["ci95"], "mcnemar_p": o["mcnemar_p"]},
            "per_task": per_task_table(t_info, s_info, paired),
            "openpi_step_limit": {"teacher": under_openpi_limit(work / "eval-teacher", suite_name),
                                  "student": under_openpi_limit(s_out, suite_name)}}


def replan(args) -> dict:
    """The suite's kept student executing --n-action-steps of each chunk before it replans (the table's ran all K =
    5: one look per half second, where the expert's drawer descent moves 2 cm a frame) on the same standard episodes,
    paired against the table's evaluation and against the teacher. Kept (the table restated with it, the old one
    under table_queue) only if the paired difference is above 0 beyond its interval."""
    work = Path(args.work) / args.suite
    old = json.loads((RESULTS / "libero.json").read_text())[args.suite]
    run = Path(old["student_run"])
    n, tasks = args.n_action_steps, suite_tasks(args.suite)[0]
    queue_out = work / f"eval-{run.name}"
    out = work / f"eval-{run.name}-replan{n}"
    t_info, q_info = eval_info(work / "eval-teacher"), eval_info(queue_out)
    info = evaluated(str(run), tasks, out, args.episodes, *ENV, "--n-action-steps", str(n))
    executed = q_info["policy"].get("n_action_steps")  # the table's: whole chunks, before the recipe replanned
    gain = paired_with(f"{run.name} executing {executed} of each chunk", q_info, info)
    keep = helps(gain)
    rows = student_rows(work, args.suite, t_info, info, out)
    result = {"replan": (old.get("replan") or {}) | {str(n): {
        "n_action_steps": n, "student": rate(info), "vs_queue": gain, "kept": keep, "command": this_command(),
        "per_task": {t["task"]: t["pc_success"] for t in info["per_task"]}}}}
    if keep:
        result |= rows | {"n_action_steps": n,
                          "table_queue": old.get("table_queue") or {k: old[k] for k in rows if k in old}}
    return result


def retrain(args) -> dict:
    """The suite's first student trained again on its data, changed by one thing, on the same standard episodes,
    paired against the first student and against the teacher. --seed N: another seed alone, the spread a retraining
    brings (one retraining on nearly the same data moved single LIBERO-Goal tasks by tens of points); --ema D: the
    same seed and batches with the weights' moving average shipped, so the live weights take the same steps and the
    pair measures the averaging alone."""
    work, tasks = Path(args.work) / args.suite, suite_tasks(args.suite)[0]
    first = work / f"student-{args.vision}"
    changes = [(name, value) for name, value in (("ema", args.ema), ("seed", args.seed)) if value]
    if not changes:
        sys.exit("error: retrain: give --seed N (N > 0) or --ema D, or both")
    flags = tuple(x for name, value in changes for x in (f"--{name}", str(value)))
    tag = "-".join(f"{name}{value:g}" for name, value in changes)
    run, minutes = trained(work / "annotated-dart", work / f"{first.name}-{tag}", args.steps, *VISION[args.vision],
                           *flags)
    info = evaluated(str(run), tasks, work / f"eval-{run.name}", args.episodes, *ENV)
    return {tag: {"ema_decay": args.ema, "seed": args.seed, "student": rate(info), "train_minutes": round(minutes, 1),
                  "work": str(work),
                  "vs_first_student": paired_with(first.name, eval_info(work / f"eval-{first.name}"), info),
                  "vs_teacher": paired_with("the teacher", eval_info(work / "eval-teacher"), info),
                  **vs_reference(args.suite, info),
                  "per_task": {t["task"]: t["pc_success"] for t in info["per_task"]}, "command": this_command()}}


def suite_results(args) -> str:
    """The results file a suite run writes: the table's, or beside it for a variant not in the recipe."""
    return "libero_rotation.json" if args.rotation_noise else "libero.json"


def save(args, partial: dict) -> None:
    """What the suite has measured so far, under its key of its results file (suite_results)."""
    update_key(suite_results(args), args.suite, partial)


def expert_stages(raw: Path):
    """(the dataset, per episode (task, rows, kinematics, the expert's own stage per frame as PHASES_4 numbers)): the
    phases' ground truth, for the analyses that read a demonstration against it."""
    from vla_distill.annotate.episode import dataset_layout, episode_kinematics
    from vla_distill.data.dataset import RobotDataset
    from vla_distill.sim.registry import get_simulator

    ds, sim = RobotDataset(raw), get_simulator("libero")
    es, layout = ds.column("observation.environment_state"), dataset_layout(ds)

    def episodes():
        for e, ep in enumerate(ds.episodes):
            rows, task = ds.episode_rows(e), ep.extra["task_name"]
            kin = episode_kinematics(ds, rows, layout)
            yield task, rows, kin, sim.ground_truth_phases(task, es[rows], kin)

    return ds, episodes()


def phase_agreement(raw: Path) -> dict:
    """The kinematic phase labeller (what `annotate` writes) against the expert's own stages on every frame, overall
    and per task."""
    from vla_distill.annotate.phases import label_phases

    confusion = {}
    for task, _, kin, truth in expert_stages(raw)[1]:
        np.add.at(confusion.setdefault(task, np.zeros((4, 4), np.int64)), (truth, label_phases(kin)), 1)
    total = sum(confusion.values(), np.zeros((4, 4), np.int64))
    agree = float(np.trace(total) / max(total.sum(), 1))
    per_task = {t: round(float(np.trace(c) / max(c.sum(), 1)), 4)
                for t, c in sorted(confusion.items(), key=lambda tc: task_number(tc[0]))}
    print(f"phases: kinematic labels agree with the expert's stages on {100 * agree:.1f}% of {total.sum()} frames; "
          "per task " + ", ".join(f"{100 * a:.1f}" for a in per_task.values()))
    return {"agreement": agree, "frames": int(total.sum()), "confusion_truth_x_label": total.tolist(),
            "per_task": per_task}


def gripper_reversals(raw: Path) -> dict:
    """Per task: how often the recorded gripper label turns from close to open before the expert's release stage, and
    the frames an episode. A demonstration that lets go and grips again (a drawer's bar slipping out under DART noise)
    gives a student, at the same place, labels it averages to neither (BENCHMARKS.md, "expert v2.6")."""
    ds, episodes = expert_stages(raw)
    grip = ds.column("action")[:, 6]
    per_task: dict[str, list[tuple[int, int]]] = {}
    for task, rows, _, truth in episodes:
        per_task.setdefault(task, []).append((_close_then_open(grip[rows][truth != 3]), len(rows)))
    out = {}
    for t, v in sorted(per_task.items(), key=lambda tv: task_number(tv[0])):
        r, n = np.array(v).T
        out[t] = {"episodes": len(v), "reversals_per_episode": round(float(r.mean()), 2),
                  "episodes_with_any": int((r > 0).sum()), "frames_per_episode": round(float(n.mean()), 1)}
    for t, o in out.items():
        print(f"{t}: {o['reversals_per_episode']:.2f} close -> open an episode before the release "
              f"({o['episodes_with_any']} of {o['episodes']} episodes), {o['frames_per_episode']:.1f} frames")
    return out


def _close_then_open(grip: np.ndarray) -> int:
    """Times a gripper label past +-0.5 turns from closing to opening (labels between hold the last sign)."""
    signs = np.sign(grip[np.abs(grip) > 0.5])
    return int(np.sum((signs[:-1] > 0) & (signs[1:] < 0)))


def chunk_labels(work: Path, horizon: int, every: int = 3) -> dict:
    """What a K-step chunk label says, three ways, on every `every`-th frame: on the demonstrations, how far from what
    the expert then did (the next K answers along the trajectory, summed per dimension) its own plan is, against its
    single answer repeated K times (what a rollout's labels become where the policy does not follow them); on the DAgger
    round's rollouts, the summed roll/pitch of the next K answers against the plan's (the demonstrations' for scale)."""
    from vla_distill.data.dataset import RobotDataset
    from vla_distill.data.merge import driven_episodes
    from vla_distill.sim.libero.expert import LiberoExpert
    from vla_distill.types import OBS_ENV_STATE, TEACHER_ACTION

    ds = RobotDataset(work / "annotated-128-frozen-dagger")
    es, labels = ds.column(OBS_ENV_STATE).astype(np.float32), ds.column(TEACHER_ACTION)
    driven, experts = set(driven_episodes(ds.root)), {}
    error, turn = {"plan": [], "repeated": []}, {"demos": [], "rollouts": [], "rollouts_plan": []}
    for e, ep in enumerate(ds.episodes):
        expert = experts.setdefault(ep.extra["task_name"], LiberoExpert(ep.extra["task_name"]))
        rows = ds.episode_rows(e)
        for i in range(0, len(rows) - horizon, every):
            after, plan = labels[rows[i:i + horizon]], expert.plan(es[rows[i]], horizon)
            rp = float(np.abs(after[:, 3:5].sum(0)).max())
            if e in driven:
                turn["rollouts"].append(rp)
                turn["rollouts_plan"].append(float(np.abs(plan[:, 3:5].sum(0)).max()))
                continue
            turn["demos"].append(rp)
            error["plan"].append(np.abs(plan.sum(0) - after.sum(0))[:6])
            error["repeated"].append(np.abs(horizon * after[0] - after.sum(0))[:6])
    out = {"horizon": horizon, "frames_demos": len(turn["demos"]), "frames_rollouts": len(turn["rollouts"]),
           "chunk_sum_error_demos": {k: np.mean(np.asarray(v, np.float64), 0).round(3).tolist()
                                     for k, v in error.items()},
           "roll_pitch_sum": {k: {"median": round(float(np.median(v)), 3), "p90": round(float(np.percentile(v, 90)), 3)}
                              for k, v in turn.items()}}
    print(f"chunk labels, K = {horizon}: |summed label - what the expert did| on the demonstrations (x y z roll pitch "
          f"yaw): plan {out['chunk_sum_error_demos']['plan']}, one answer repeated "
          f"{out['chunk_sum_error_demos']['repeated']}; summed roll/pitch (median, p90): "
          + ", ".join(f"{k} {v['median']}/{v['p90']}" for k, v in out["roll_pitch_sum"].items()))
    return out


def grasp_sides(work: Path, suite_name: str) -> dict:
    """The side of the target the expert's grasp goes to (ENV_STATE free_x, free_y) at each demonstration's first
    frame, per task, in degrees, beside the kept student's success on the task: how many different sides nearby
    placements sent the expert to (a student that cannot tell them apart comes down between them). Only a bowl's or a
    plate's grasp (expert.RIM) goes to a side; other targets are gripped across their short side."""
    from collections import Counter

    from vla_distill.data.dataset import RobotDataset
    from vla_distill.sim.libero.expert import RIM, LiberoExpert
    from vla_distill.types import OBS_ENV_STATE

    ds = RobotDataset(work / "dataset-dart")
    es, per_task = ds.column(OBS_ENV_STATE), {}
    for e, ep in enumerate(ds.episodes):
        per_task.setdefault(ep.extra["task_name"], Counter())[side_degrees(es[ds.episode_rows(e)[0]])] += 1
    kept = json.loads((RESULTS / "libero.json").read_text()).get(suite_name) or {}
    student, run = kept.get("per_task") or {}, Path(kept.get("student_run", "none"))
    evaluation = work / run.name.replace("student-", "eval-student-", 1)
    rim = {t: LiberoExpert(t).category in RIM for t in per_task}  # only a bowl's or plate's grasp has a side
    out = {t: {"sides_deg": {str(k): n for k, n in c.most_common()}, "side_used": rim[t],
               "largest_side_share": round(max(c.values()) / sum(c.values()), 3),
               "student": (student.get(t) or {}).get("student")} for t, c in sorted(per_task.items(),
                                                                                   key=lambda kv: task_number(kv[0]))}
    for t, v in out.items():  # the split tasks: does the student fail where the demonstrations' minority sides are?
        if v["side_used"] and v["largest_side_share"] < SPLIT and (evaluation / "eval_info.json").exists():
            v["student_by_side"] = student_by_side(evaluation, t)
    print("| task | grasp has a side | sides (degrees: demonstrations) | largest share | student % | "
          "student by side (successes/episodes) |\n|---|---|---|---:|---:|---|")
    for t, v in out.items():
        sides = ", ".join(f"{k}: {n}" for k, n in v["sides_deg"].items())
        by_side = ", ".join(f"{k}: {a}/{b}" for k, (a, b) in (v.get("student_by_side") or {}).items())
        print(f"| {t} | {'yes' if v['side_used'] else 'no'} | {sides} | {v['largest_side_share']} | {v['student']} | "
              f"{by_side} |")
    return out


SPLIT = 0.94  # a task whose most common side has fewer of its demonstrations than this is split between sides


def side_degrees(env_state: np.ndarray) -> float:
    """The side of its target the expert grasps (LIBERO's environment state: free_x, free_y), in degrees to 0.1."""
    from vla_distill.sim.libero.env import ENV_STATE_NAMES

    x, y = np.asarray(env_state)[[ENV_STATE_NAMES.index(n) for n in ("free_x", "free_y")]]
    return round(float(np.degrees(np.arctan2(y, x))), 1)


def student_by_side(evaluation: Path, task: str) -> dict[str, list[int]]:
    """{side in degrees: [successes, episodes]} over an evaluation's episodes of `task`, each episode's side the one
    the expert takes at its initial state (replayed), the most common first."""
    from vla_distill.sim.libero.env import LiberoEnv

    env, tally = LiberoEnv(task, image_keys=()), {}
    for (t, _), rec in sorted(read_records(evaluation).items()):
        if t != task:
            continue
        env.reset(rec.seed)
        side = tally.setdefault(str(side_degrees(env.env_state)), [0, 0])
        side[0] += int(rec.success)
        side[1] += 1
    env.close()
    return dict(sorted(tally.items(), key=lambda kv: -kv[1][1]))


def task_number(task: str) -> int:
    """'libero_goal/7' -> 7: a suite's tasks in their own order (not the strings', where 10 sorts before 2)."""
    return int(task.rsplit("/", 1)[1])


# ------------------------------------------------------------------------------------------------ speed
def first_grasps(out: Path) -> dict:
    """Where each episode of an evaluation first closed the gripper (its 7th action > 0), per task: on the target
    (the object whose body is nearest the hand is the goal's: in 3-d, since in the plane a bowl standing on a ramekin
    or a cabinet is nearer the thing under it; a knob: the hand within PART_REACH of where the expert grips it), the
    hand's height above the expert's grip point then, and how often the gripper closed in all. Replays each episode's
    initial state for the objects' places. A drawer gets the count alone: its expert approaches with the fingers
    part-open, which on robosuite's gripper is a close every few steps, so the first close says nothing."""
    from vla_distill.sim.libero.env import LiberoEnv
    from vla_distill.sim.libero.expert import LiberoExpert

    by_task, rows = {}, {}
    for (task, ep), rec in sorted(read_records(out).items()):
        by_task.setdefault(task, []).append((ep, rec))
    for task in sorted(by_task, key=task_number):
        env, expert = LiberoEnv(task, image_keys=()), LiberoExpert(task)
        on_target, heights, closes, wins = [], [], [], []
        for ep, rec in by_task[task]:
            env.reset(rec.seed)
            places = {n: env.inner.sim.data.body_xpos[i].copy() for n, i in env.inner.obj_body_id.items()}
            point = expert.grip_point(env.env_state)
            z = np.load(arrays_path(out, task, ep))
            shut = z["actions"][:, 6] > 0
            closes.append(int(shut[0]) + int(np.sum(shut[1:] & ~shut[:-1])))
            wins.append(rec.success)
            if shut.any() and expert.skill != "pull":
                hand = z["hand"][int(np.argmax(shut))][:3]
                on_target.append(_nearest(places, hand) == expert.goal.target if expert.skill == "carry"
                                 else float(np.linalg.norm(hand - point)) < PART_REACH)
                heights.append(float(hand[2] - point[2]))
        env.close()
        rows[task] = {"pc_success": 100 * float(np.mean(wins)), "n": len(wins),
                      "pc_first_close_on_target": 100 * float(np.mean(on_target)) if on_target else None,
                      "median_cm_above_grasp_point": round(100 * float(np.median(heights)), 1) if heights else None,
                      "mean_closes": round(float(np.mean(closes)), 1)}
    return rows


def _nearest(places: dict[str, np.ndarray], hand: np.ndarray) -> str:
    return min(places, key=lambda n: float(np.linalg.norm(places[n] - hand)))


def grasps(args) -> dict:
    """first_grasps for the teacher and each student evaluated so far, side by side per task."""
    work = Path(args.work) / args.suite
    result = {}
    print("| evaluation | task | success % | first close on the target % | cm above the grasp point | closes |\n"
          "|---|---|---:|---:|---:|---:|")
    for out in sorted(work.glob("eval-*")):
        if not (out / "eval_info.json").exists():
            continue
        rows = result[out.name] = first_grasps(out)
        for task, r in rows.items():
            print(f"| {out.name} | {task} | {r['pc_success']:.0f} | {r['pc_first_close_on_target']} | "
                  f"{r['median_cm_above_grasp_point']} | {r['mean_closes']} |")
    return result


def speed(args) -> dict:
    """One process, one core's worth: the same expert episodes under three rendering schedules."""
    from vla_distill.sim.libero.env import CONTROL_REPEAT, LiberoEnv
    from vla_distill.sim.libero.tasks import EVAL_SEED_BASE
    from vla_distill.sim.registry import get_simulator
    from vla_distill.types import camera_key

    keys = tuple(camera_key(c) for c in LIBERO.collect["names"])
    env = LiberoEnv(args.task, keys, LIBERO.collect["height"])
    expert = get_simulator("libero").expert(args.task)
    rows = []
    for label, every in (("physics + control only", 0), ("collecting: a frame pair every env step", 1),
                         ("evaluating K = 5: a frame pair every 5th env step", 5)):
        steps = pairs = 0
        t0 = time.perf_counter()
        for ep in range(args.episodes):
            obs = env.reset(EVAL_SEED_BASE + ep)
            for t in range(env.max_steps):
                if every and t % every == 0:
                    [np.asarray(obs[k]) for k in keys]
                    pairs += 1
                obs, _, done = env.step(expert(env.env_state))
                steps += 1
                if done:
                    break
        s = time.perf_counter() - t0
        rows.append({"schedule": label, "env_steps_per_s": steps / s, "control_steps_per_s": CONTROL_REPEAT * steps / s,
                     "frame_pairs_per_s": pairs / s, "env_steps": steps})
        print(f"| {label} | {steps / s:.1f} | {CONTROL_REPEAT * steps / s:.1f} | {pairs / s:.1f} |", flush=True)
    env.close()
    return {"task": args.task, "episodes": args.episodes, "image_size": LIBERO.collect["height"],
            "cameras": list(LIBERO.collect["names"]), "rows": rows,
            "command": this_command()}


def this_command() -> str:
    return " ".join(["python benchmarks/bench_libero.py", *sys.argv[1:]])


# What each analysis mode reads from the suite's work directory, all written by `suite` (or, for libero_object, by the
# whole-chunk round that suite ran before rounds were counted)
READS = {"chunk-labels": "annotated-128-frozen-dagger", "dagger-labels": "annotated-128-{vision}-dagger",
         "phases": "dataset-dart", "sides": "dataset-dart", "grasps": "", "replan": "eval-teacher",
         "reversals": "dataset-dart"}


def needed(args) -> None:
    """A one-line error, before anything runs, when an analysis mode's input is not in --work."""
    if args.what not in READS:
        return
    vision = "frozen" if args.vision == "both" else args.vision
    path = Path(args.work) / args.suite / READS[args.what].format(vision=vision)
    if not path.is_dir():
        sys.exit(f"error: {path}: not found; `python benchmarks/bench_libero.py suite --suite {args.suite}` "
                 f"writes it (or give --work)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["speed", "teacher", "suite", "phases", "grasps", "sides", "dagger-labels",
                                       "chunk-labels", "replan", "retrain", "reversals"])
    p.add_argument("--suite", default="libero_object", choices=list(OPENPI_STEPS))
    p.add_argument("--work", default="outputs/bench_libero")
    p.add_argument("--demos", type=int, default=50)
    p.add_argument("--steps", type=int, default=LIBERO.train["steps"])
    p.add_argument("--episodes", type=int, default=50, help="per task (50 = every standard initial state)")
    p.add_argument("--task", default="libero_object/0", help="speed: the task timed")
    p.add_argument("--dagger-rounds", type=int, default=1,
                   help="suite: DAgger rounds, each driven by the student the last kept (stops at one not kept)")
    p.add_argument("--vision", default="both", choices=["both", *VISION],
                   help="suite: the vision encoders trained and compared (one: its DAgger round without the choice)")
    p.add_argument("--dagger-labels", default="first", choices=["answers", "first", "plan"],
                   help="suite: a DAgger round's chunk labels (dagger_labelling; BENCHMARKS.md, \"LIBERO\")")
    p.add_argument("--labels", default="first", choices=["first", "plan"],
                   help="dagger-labels: the variant (first: --rollout-steps of each rollout chunk; plan: the expert's "
                        "own chunks)")
    p.add_argument("--n-action-steps", type=int, default=1,
                   help="replan: actions of each chunk executed before the kept student is asked again")
    p.add_argument("--rotation-noise", type=float, default=0.0,
                   help="suite: DART noise on the hand's rotation commands too (collect --rotation-noise; give its own "
                        "--work)")
    p.add_argument("--ema", type=float, default=0.0, help="retrain: ship the weights' moving average of this decay")
    p.add_argument("--seed", type=int, default=0, help="retrain: the training seed (the suite's students use 0)")
    p.add_argument("--rollout-steps", type=int, default=1,
                   help="dagger-labels first: the chunk steps of a rollout frame the action loss counts")
    args = p.parse_args()
    needed(args)
    if args.what == "chunk-labels":
        result = {**chunk_labels(Path(args.work) / args.suite, LIBERO.train["horizon"]), "command": this_command()}
        update_key("libero_chunk_labels.json", args.suite, result)
    elif args.what == "dagger-labels":
        args.vision = "frozen" if args.vision == "both" else args.vision
        labels = dagger_labels(args)  # measured before the file is locked; the label schemes measured earlier stay

        def with_labels(old: dict) -> dict:
            block = old.get(args.suite) or {}
            return old | {args.suite: block | {"dagger_labels": (block.get("dagger_labels") or {}) | labels}}

        update_result("libero.json", with_labels)
    elif args.what == "speed":
        args.episodes = min(args.episodes, 5)
        print("| schedule | env steps/s | control steps/s | frame pairs/s |\n|---|---:|---:|---:|")
        write_result(RESULTS / "libero_speed.json", speed(args))
    elif args.what == "phases":
        result = {**phase_agreement(Path(args.work) / args.suite / "dataset-dart"), "command": this_command()}
        update_key("libero_phases.json", args.suite, result)
    elif args.what == "reversals":
        raw = Path(args.work) / args.suite / "dataset-dart"
        result = {"per_task": gripper_reversals(raw), "command": this_command()}
        update_key("libero_labels.json", args.suite, result)
    elif args.what == "sides":
        result = {"per_task": grasp_sides(Path(args.work) / args.suite, args.suite), "command": this_command()}
        update_key("libero_sides.json", args.suite, result)
    elif args.what == "grasps":
        update_key("libero_grasps.json", args.suite, grasps(args))
    elif args.what == "replan":
        update_key("libero.json", args.suite, replan(args))
    elif args.what == "retrain":
        args.vision = "frozen" if args.vision == "both" else args.vision
        update_key("libero_retrain.json", args.suite, retrain(args))
    elif args.what == "teacher":
        update_key("libero.json", args.suite, teacher(args))
    else:
        update_key(suite_results(args), args.suite, suite(args))


if __name__ == "__main__":
    main()
