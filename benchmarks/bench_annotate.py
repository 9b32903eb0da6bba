"""Annotation quality and speed on MetaWorld, side by side in one run.

Usage: python benchmarks/bench_annotate.py [--dataset DIR | --tasks mt10 --episodes 5] [--rate 0.1] [--seed 0]
1. Kinematic phase labeller vs ground truth recovered from the scripted experts' branches, per task (4-phase, and
   the 9-phase taxonomy collapsed onto 4), with the (ground truth x label) confusion per task. Goal >= 95% frame
   agreement.
2. Audit: start from clean labels (ground-truth phases, kinematic cues) and inject errors. Phases: every episode
   audited clean and once with each kind of error (a boundary shifted 24 frames = 0.3 s later or earlier, two
   adjacent phase segments swapped). Cues: `rate` of the windows, a direction word flipped or a motion invented on
   an axis the cue did not name, against that axis's actual motion. Recall on the corrupted units, false alarms on
   the clean ones, with Wilson intervals. Goal >= 95% recall at <= 5% false alarms.
3. Throughput of the kinematic path (phases + cues, per frame) and of the scripted teacher. Target >= 100k frames/s.
Writes benchmarks/results/annotate.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from common import RESULTS, write_result
from vla_distill.annotate import directions as dirs
from vla_distill.annotate.audit import audit_cue, audit_phases
from vla_distill.sim.metaworld_phases import ground_truth_phases
from vla_distill.annotate.phases import PhaseConfig, label_phases
from vla_distill.types import PHASES_4, PHASES_9, to_phase4
from vla_distill.annotate.episode import dataset_layout, episode_kinematics
from vla_distill.data.dataset import RobotDataset
from vla_distill.eval import stats

SHIFT = 24


def get_dataset(args) -> Path:
    if args.dataset:
        return Path(args.dataset)
    from vla_distill.collect.collect import collect
    from vla_distill.collect.config import CollectConfig
    from vla_distill.sim.metaworld import CameraConfig
    from vla_distill.sim.metaworld_tasks import resolve_tasks

    root = Path(tempfile.mkdtemp()) / "ds"
    collect(CollectConfig(tasks=tuple(resolve_tasks(args.tasks)), episodes=args.episodes, seed=1000,
                          cameras=CameraConfig(height=32, width=32)), root)
    return root


PHASE_ERRORS = ("later", "earlier", "swap")


def inject_phase_error(labels: np.ndarray, rng, kind: str) -> np.ndarray:
    """One of the seed's phase mislabelings (`kind` in PHASE_ERRORS): a boundary moved SHIFT frames later or
    earlier, or two adjacent phase segments swapped; rng picks which boundary or pair."""
    runs = np.flatnonzero(np.diff(labels)) + 1
    out = labels.copy()
    if kind != "swap" and len(runs):
        b = int(rng.choice(runs))
        if kind == "later":
            out[b : b + SHIFT] = labels[b - 1]
        else:
            out[max(b - SHIFT, 0) : b] = labels[b]
        return out
    starts = np.r_[0, runs]
    ends = np.r_[runs, len(labels)]
    if len(starts) < 2:  # a single-phase episode: relabel its second half with a later phase
        out[len(out) // 2 :] = (labels[0] + 2) % 4
        return out
    i = int(rng.integers(len(starts) - 1))  # swap segment i and i + 1 labels
    out[starts[i] : ends[i]], out[starts[i + 1] : ends[i + 1]] = labels[starts[i + 1]], labels[starts[i]]
    return out


def inject_cue_error(text: str, kin, s: int, e: int, rng) -> str:
    delta = kin.ee[e - 1] - kin.ee[s]
    claims = dirs.cue_direction(text)
    if claims and rng.random() < 0.5:  # flip one claimed direction
        axis = int(rng.choice(list(claims)))
        neg, pos = dirs.AXIS_WORDS[axis]
        src, dst = (neg, pos) if claims[axis] < 0 else (pos, neg)
        return text.replace(src, dst)
    unclaimed = [a for a in range(3) if a not in claims] or [0]
    axis = int(rng.choice(unclaimed))  # invent motion on an axis the cue did not name, against its actual motion
    sign = int(delta[axis] < 0) if abs(delta[axis]) > 1e-4 else int(rng.random() < 0.5)
    return f"moving the gripper {dirs.AXIS_WORDS[axis][sign]}"


def wilson(k: int, n: int) -> list[float]:
    """As fractions (eval.stats.wilson answers in percent)."""
    return [x / 100 for x in stats.wilson(k, n)] if n else [0.0, 1.0]


def precision(recall: float, false_alarm: float, rate: float) -> float:
    caught = recall * rate
    return caught / max(caught + false_alarm * (1 - rate), 1e-9)


def _worst_confusion(c: np.ndarray) -> str:
    """The largest off-diagonal cell of a (ground truth x label) confusion matrix, as text."""
    off = c * (1 - np.eye(len(c), dtype=c.dtype))
    if not off.any():
        return "-"
    g, lab = np.unravel_index(int(np.argmax(off)), off.shape)
    return f"{PHASES_4[g]} -> {PHASES_4[lab]}: {int(off[g, lab])} of {int(c[g].sum())}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset")
    ap.add_argument("--tasks", default="mt10")
    ap.add_argument("--episodes", type=int, default=5)
    ap.add_argument("--rate", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "annotate.json"))
    args = ap.parse_args()
    ds = RobotDataset(get_dataset(args))
    es = ds.column("observation.environment_state")
    rng = np.random.default_rng(args.seed)
    cue_cfg = dirs.DirectionConfig()
    agree4, agree9, confusion, agree_arms, truth_moved = {}, {}, {}, {}, {}
    kins, gts, tasks = [], [], []
    layout = dataset_layout(ds)
    for e, ep in enumerate(ds.episodes):
        rows = ds.episode_rows(e)
        kin = episode_kinematics(ds, rows, layout)
        task = ep.extra["task_name"]
        gt = ground_truth_phases(task, es[rows], kin)
        labels = label_phases(kin)
        agree4.setdefault(task, []).append(float((labels == gt).mean()))
        if kin.contact is not None:  # the ground truth of the expert's arms alone, as before contact was recorded
            arms_only = ground_truth_phases(task, es[rows], dataclasses.replace(kin, contact=None))
            agree_arms.setdefault(task, []).append(float((labels == arms_only).mean()))
            truth_moved.setdefault(task, []).append(float((arms_only != gt).mean()))
        np.add.at(confusion.setdefault(task, np.zeros((4, 4), np.int64)), (gt, labels), 1)
        p9 = label_phases(kin, PhaseConfig(taxonomy="9"))
        agree9.setdefault(task, []).append(float((to_phase4(p9, PHASES_9) == gt).mean()))
        kins.append(kin), gts.append(gt), tasks.append(task)

    # -- audit on injected errors. Phases: the audit judges each episode on its own, so recall and false alarms do not
    # depend on the injection rate; every episode is audited clean and once with each kind of error (n = episodes
    # per kind), and the rate enters only the precision a dataset with that share of bad episodes would see.
    ph_tp = ph_fn = ph_fp = ph_tn = 0
    by_kind = {k: [0, 0] for k in PHASE_ERRORS}  # kind -> [caught, injected]
    missed_tasks: dict[str, int] = {}
    false_tasks: dict[str, int] = {}
    cue_tp = cue_fn = cue_fp = cue_tn = 0
    for kin, gt, task in zip(kins, gts, tasks):
        clean_flag = bool(audit_phases(gt, kin))
        ph_fp += clean_flag
        ph_tn += not clean_flag
        if clean_flag:
            false_tasks[task] = false_tasks.get(task, 0) + 1
        for kind in PHASE_ERRORS:
            caught = bool(audit_phases(inject_phase_error(gt, rng, kind), kin))
            by_kind[kind][0] += caught
            by_kind[kind][1] += 1
            ph_tp += caught
            ph_fn += not caught
            if not caught:
                missed_tasks[task] = missed_tasks.get(task, 0) + 1
        noun = dirs.object_noun(ds.episodes[0].tasks[0])
        for s, t in dirs.windows(len(kin), cue_cfg):
            text = dirs.describe(kin, gt, int(s), int(t), noun, cue_cfg)
            bad = rng.random() < args.rate
            if bad:
                text = inject_cue_error(text, kin, int(s), int(t), rng)
            hit = audit_cue(text, kin, int(s), int(t), cue_cfg) is not None
            cue_tp += bad and hit
            cue_fn += bad and not hit
            cue_fp += (not bad) and hit
            cue_tn += (not bad) and not hit

    # -- throughput
    n = ds.num_frames
    t0 = time.perf_counter()
    reps = 0
    while time.perf_counter() - t0 < 3.0:
        for kin in kins:
            p = label_phases(kin)
            dirs.kinematic_cues(kin, p, PHASES_4, "puck", cue_cfg)
        reps += 1
    kin_fps = reps * n / (time.perf_counter() - t0)
    from vla_distill.teachers.scripted import ScriptedTeacher
    from vla_distill.annotate.episode import episode_frames

    teacher = ScriptedTeacher()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for e in range(ds.num_episodes):
            f = episode_frames(ds, e, [])
            teacher.label(f, np.arange(len(f)))
    teacher_fps = n / (time.perf_counter() - t0)

    per_task = {t: {"agreement_4": round(float(np.mean(agree4[t])), 4), "agreement_9_as_4": round(float(np.mean(agree9[t])), 4),
                    "episodes": len(agree4[t]), "confusion": confusion[t].tolist()} for t in agree4}
    for t in agree_arms:
        per_task[t] |= {"agreement_4_vs_arms_only": round(float(np.mean(agree_arms[t])), 4),
                        "truth_changed_by_contact": round(float(np.mean(truth_moved[t])), 4)}
    result = {
        "frames": n, "episodes": ds.num_episodes, "per_task": per_task,
        "mean_agreement_4": round(float(np.mean([v["agreement_4"] for v in per_task.values()])), 4),
        "mean_agreement_9_as_4": round(float(np.mean([v["agreement_9_as_4"] for v in per_task.values()])), 4),
        "audit": {
            "rate": args.rate,
            "phase": {"recall": ph_tp / max(ph_tp + ph_fn, 1), "false_alarm": ph_fp / max(ph_fp + ph_tn, 1),
                      "recall_ci95": wilson(ph_tp, ph_tp + ph_fn), "false_alarm_ci95": wilson(ph_fp, ph_fp + ph_tn),
                      "injected": ph_tp + ph_fn, "clean": ph_fp + ph_tn,
                      "recall_by_kind": {k: c / max(n, 1) for k, (c, n) in by_kind.items()},
                      "precision_at_rate": precision(ph_tp / max(ph_tp + ph_fn, 1), ph_fp / max(ph_fp + ph_tn, 1), args.rate),
                      "missed_by_task": missed_tasks, "false_alarms_by_task": false_tasks,
                      "reference": "kinematic labeller with recorded contact" if kins and kins[0].contact is not None
                                   else "kinematic labeller (no contact recorded)"},
            "cue": {"recall": cue_tp / max(cue_tp + cue_fn, 1), "false_alarm": cue_fp / max(cue_fp + cue_tn, 1),
                    "injected": cue_tp + cue_fn, "clean": cue_fp + cue_tn},
        },
        "kinematic_frames_per_s": round(kin_fps), "scripted_teacher_frames_per_s": round(teacher_fps),
    }
    arms = "agreement_4_vs_arms_only"
    if agree_arms:
        result["mean_agreement_4_vs_arms_only"] = round(float(np.mean([v[arms] for v in per_task.values()])), 4)
    print(f"{'task':28s} {'4-phase':>8s} {'9 as 4':>8s} {'arms only':>9s}  most frequent disagreement (ground truth -> label: frames)")
    for t, v in per_task.items():
        print(f"{t:28s} {v['agreement_4']:8.3f} {v['agreement_9_as_4']:8.3f} {v.get(arms, float('nan')):9.3f}  "
              f"{_worst_confusion(confusion[t])}")
    print(f"{'mean':28s} {result['mean_agreement_4']:8.3f} {result['mean_agreement_9_as_4']:8.3f} "
          f"{result.get('mean_agreement_4_vs_arms_only', float('nan')):9.3f}")
    print(f"tasks >= 0.95: {sum(v['agreement_4'] >= 0.95 for v in per_task.values())} of {len(per_task)}")
    a = result["audit"]
    ci = lambda x: f"{100 * x[0]:.1f}–{100 * x[1]:.1f}%"  # noqa: E731
    print(f"audit phases: recall {a['phase']['recall']:.3f} ({ci(a['phase']['recall_ci95'])}, {a['phase']['injected']} "
          f"injected), false alarms {a['phase']['false_alarm']:.3f} ({ci(a['phase']['false_alarm_ci95'])}, "
          f"{a['phase']['clean']} clean episodes); precision at {args.rate:.0%} bad episodes "
          f"{a['phase']['precision_at_rate']:.3f}; reference: {a['phase']['reference']}")
    print(f"  recall by kind {a['phase']['recall_by_kind']}; missed {missed_tasks}; false alarms {false_tasks}")
    print(f"audit cues:   recall {a['cue']['recall']:.3f} ({a['cue']['injected']} injected), "
          f"false alarms {a['cue']['false_alarm']:.3f} ({a['cue']['clean']} clean windows)")
    print(f"kinematic path {kin_fps:,.0f} frames/s; scripted teacher {teacher_fps:,.0f} frames/s")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
