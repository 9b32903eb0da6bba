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
from vla_distill.annotate.episode import dataset_layout, episode_kinematics
from vla_distill.annotate.phases import PhaseConfig, label_phases
from vla_distill.data.dataset import RobotDataset
from vla_distill.eval import stats
from vla_distill.sim.metaworld.phases import ground_truth_phases
from vla_distill.types import PHASES_4, PHASES_9, to_phase4

SHIFT = 24


def get_dataset(args) -> Path:
    if args.dataset:
        return Path(args.dataset)
    from vla_distill.collect.collect import collect
    from vla_distill.collect.config import CollectConfig
    from vla_distill.sim.base import CameraConfig
    from vla_distill.sim.metaworld.tasks import resolve_tasks

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


@dataclasses.dataclass
class Labelled:
    """Part 1's per-episode results, which parts 2 and 3 reuse."""

    agree4: dict = dataclasses.field(default_factory=dict)  # task -> per-episode agreement
    agree9: dict = dataclasses.field(default_factory=dict)
    agree_arms: dict = dataclasses.field(default_factory=dict)
    truth_moved: dict = dataclasses.field(default_factory=dict)
    confusion: dict = dataclasses.field(default_factory=dict)  # task -> (4, 4) ground truth x label
    episodes: list = dataclasses.field(default_factory=list)  # (Kinematics, ground truth, task)


def label_agreement(ds: RobotDataset) -> Labelled:
    """Part 1: every episode's kinematic labels against the expert's ground truth (and the 9-phase taxonomy)."""
    es, layout, out = ds.column("observation.environment_state"), dataset_layout(ds), Labelled()
    for e, ep in enumerate(ds.episodes):
        rows = ds.episode_rows(e)
        kin = episode_kinematics(ds, rows, layout)
        task = ep.extra["task_name"]
        gt = ground_truth_phases(task, es[rows], kin)
        labels = label_phases(kin)
        out.agree4.setdefault(task, []).append(float((labels == gt).mean()))
        if kin.contact is not None:  # the ground truth of the expert's arms alone, as before contact was recorded
            arms_only = ground_truth_phases(task, es[rows], dataclasses.replace(kin, contact=None))
            out.agree_arms.setdefault(task, []).append(float((labels == arms_only).mean()))
            out.truth_moved.setdefault(task, []).append(float((arms_only != gt).mean()))
        np.add.at(out.confusion.setdefault(task, np.zeros((4, 4), np.int64)), (gt, labels), 1)
        p9 = label_phases(kin, PhaseConfig(taxonomy="9"))
        out.agree9.setdefault(task, []).append(float((to_phase4(p9, PHASES_9) == gt).mean()))
        out.episodes.append((kin, gt, task))
    return out


@dataclasses.dataclass
class AuditCounts:
    """Part 2's tallies: phases per episode (clean and each injected kind), cues per window."""

    ph_tp: int = 0
    ph_fn: int = 0
    ph_fp: int = 0
    ph_tn: int = 0
    by_kind: dict = dataclasses.field(default_factory=lambda: {k: [0, 0] for k in PHASE_ERRORS})  # [caught, n]
    missed_tasks: dict = dataclasses.field(default_factory=dict)
    false_tasks: dict = dataclasses.field(default_factory=dict)
    cue_tp: int = 0
    cue_fn: int = 0
    cue_fp: int = 0
    cue_tn: int = 0


def audit_injected(ds: RobotDataset, labelled: Labelled, rate: float, rng) -> AuditCounts:
    """Part 2. Phases: the audit judges each episode on its own, so recall and false alarms do not depend on the
    injection rate; every episode is audited clean and once with each kind of error (n = episodes per kind), and
    the rate enters only the precision a dataset with that share of bad episodes would see. Cues: `rate` of the
    windows corrupted. One rng, drawn episode by episode, phases then cues (the order fixes the results)."""
    c, cue_cfg = AuditCounts(), dirs.DirectionConfig()
    noun = dirs.object_noun(ds.episodes[0].tasks[0])
    for kin, gt, task in labelled.episodes:
        _audit_phases(c, kin, gt, task, rng)
        for s, t in dirs.windows(len(kin), cue_cfg):
            text = dirs.describe(kin, gt, int(s), int(t), noun, cue_cfg)
            bad = rng.random() < rate
            if bad:
                text = inject_cue_error(text, kin, int(s), int(t), rng)
            hit = audit_cue(text, kin, int(s), int(t), cue_cfg) is not None
            c.cue_tp += bad and hit
            c.cue_fn += bad and not hit
            c.cue_fp += (not bad) and hit
            c.cue_tn += (not bad) and not hit
    return c


def _audit_phases(c: AuditCounts, kin, gt: np.ndarray, task: str, rng) -> None:
    clean_flag = bool(audit_phases(gt, kin))
    c.ph_fp += clean_flag
    c.ph_tn += not clean_flag
    if clean_flag:
        c.false_tasks[task] = c.false_tasks.get(task, 0) + 1
    for kind in PHASE_ERRORS:
        caught = bool(audit_phases(inject_phase_error(gt, rng, kind), kin))
        c.by_kind[kind][0] += caught
        c.by_kind[kind][1] += 1
        c.ph_tp += caught
        c.ph_fn += not caught
        if not caught:
            c.missed_tasks[task] = c.missed_tasks.get(task, 0) + 1


def throughput(ds: RobotDataset, labelled: Labelled) -> tuple[float, float]:
    """Part 3: frames/s of the kinematic path (phases + cues, 3 s of repeats) and of the scripted teacher."""
    from vla_distill.annotate.episode import episode_frames
    from vla_distill.teachers.scripted import ScriptedTeacher

    kins, cue_cfg = [k for k, _, _ in labelled.episodes], dirs.DirectionConfig()
    t0, reps = time.perf_counter(), 0
    while time.perf_counter() - t0 < 3.0:
        for kin in kins:
            dirs.kinematic_cues(kin, label_phases(kin), PHASES_4, "puck", cue_cfg)
        reps += 1
    kin_fps = reps * ds.num_frames / (time.perf_counter() - t0)
    teacher, t0 = ScriptedTeacher(), time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for e in range(ds.num_episodes):
            f = episode_frames(ds, e, [])
            teacher.label(f, np.arange(len(f)))
    return kin_fps, ds.num_frames / (time.perf_counter() - t0)


def _mean(values) -> float:
    return round(float(np.mean(values)), 4)


def summary(ds: RobotDataset, lab: Labelled, c: AuditCounts, rate: float, speeds: tuple[float, float]) -> dict:
    per_task = {t: {"agreement_4": _mean(lab.agree4[t]), "agreement_9_as_4": _mean(lab.agree9[t]),
                    "episodes": len(lab.agree4[t]), "confusion": lab.confusion[t].tolist()} for t in lab.agree4}
    for t in lab.agree_arms:
        per_task[t] |= {"agreement_4_vs_arms_only": _mean(lab.agree_arms[t]),
                        "truth_changed_by_contact": _mean(lab.truth_moved[t])}
    recall, false_alarm = c.ph_tp / max(c.ph_tp + c.ph_fn, 1), c.ph_fp / max(c.ph_fp + c.ph_tn, 1)
    contact = lab.episodes and lab.episodes[0][0].contact is not None
    result = {
        "frames": ds.num_frames, "episodes": ds.num_episodes, "per_task": per_task,
        "mean_agreement_4": _mean([v["agreement_4"] for v in per_task.values()]),
        "mean_agreement_9_as_4": _mean([v["agreement_9_as_4"] for v in per_task.values()]),
        "audit": {
            "rate": rate,
            "phase": {"recall": recall, "false_alarm": false_alarm,
                      "recall_ci95": wilson(c.ph_tp, c.ph_tp + c.ph_fn),
                      "false_alarm_ci95": wilson(c.ph_fp, c.ph_fp + c.ph_tn),
                      "injected": c.ph_tp + c.ph_fn, "clean": c.ph_fp + c.ph_tn,
                      "recall_by_kind": {k: caught / max(n, 1) for k, (caught, n) in c.by_kind.items()},
                      "precision_at_rate": precision(recall, false_alarm, rate),
                      "missed_by_task": c.missed_tasks, "false_alarms_by_task": c.false_tasks,
                      "reference": "kinematic labeller with recorded contact" if contact
                                   else "kinematic labeller (no contact recorded)"},
            "cue": {"recall": c.cue_tp / max(c.cue_tp + c.cue_fn, 1),
                    "false_alarm": c.cue_fp / max(c.cue_fp + c.cue_tn, 1),
                    "injected": c.cue_tp + c.cue_fn, "clean": c.cue_fp + c.cue_tn},
        },
        "kinematic_frames_per_s": round(speeds[0]), "scripted_teacher_frames_per_s": round(speeds[1]),
    }
    if lab.agree_arms:
        result["mean_agreement_4_vs_arms_only"] = _mean([v["agreement_4_vs_arms_only"] for v in per_task.values()])
    return result


def print_report(result: dict, lab: Labelled) -> None:
    arms = "agreement_4_vs_arms_only"
    print(f"{'task':28s} {'4-phase':>8s} {'9 as 4':>8s} {'arms only':>9s}  most frequent disagreement (ground truth "
          "-> label: frames)")
    for t, v in result["per_task"].items():
        print(f"{t:28s} {v['agreement_4']:8.3f} {v['agreement_9_as_4']:8.3f} {v.get(arms, float('nan')):9.3f}  "
              f"{_worst_confusion(lab.confusion[t])}")
    print(f"{'mean':28s} {result['mean_agreement_4']:8.3f} {result['mean_agreement_9_as_4']:8.3f} "
          f"{result.get('mean_agreement_4_vs_arms_only', float('nan')):9.3f}")
    print(f"tasks >= 0.95: {sum(v['agreement_4'] >= 0.95 for v in result['per_task'].values())} of "
          f"{len(result['per_task'])}")
    a, ph = result["audit"], result["audit"]["phase"]
    ci = lambda x: f"{100 * x[0]:.1f}–{100 * x[1]:.1f}%"  # noqa: E731
    print(f"audit phases: recall {ph['recall']:.3f} ({ci(ph['recall_ci95'])}, {ph['injected']} injected), false "
          f"alarms {ph['false_alarm']:.3f} ({ci(ph['false_alarm_ci95'])}, {ph['clean']} clean episodes); precision "
          f"at {a['rate']:.0%} bad episodes {ph['precision_at_rate']:.3f}; reference: {ph['reference']}")
    print(f"  recall by kind {ph['recall_by_kind']}; missed {ph['missed_by_task']}; false alarms "
          f"{ph['false_alarms_by_task']}")
    print(f"audit cues:   recall {a['cue']['recall']:.3f} ({a['cue']['injected']} injected), "
          f"false alarms {a['cue']['false_alarm']:.3f} ({a['cue']['clean']} clean windows)")
    print(f"kinematic path {result['kinematic_frames_per_s']:,.0f} frames/s; scripted teacher "
          f"{result['scripted_teacher_frames_per_s']:,.0f} frames/s")


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
    rng = np.random.default_rng(args.seed)
    labelled = label_agreement(ds)
    counts = audit_injected(ds, labelled, args.rate, rng)
    result = summary(ds, labelled, counts, args.rate, throughput(ds, labelled))
    print_report(result, labelled)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
