"""Audit: cross-check every phase label and direction cue against the recorded kinematics.

Phase checks (per episode, labels collapsed to the 4-phase taxonomy, -1 = masked):
  order     the label sequence goes backwards in a way no real trajectory does (release before any grasp or
            transport when the object was moved, approach after transport began, anything after release)
  disagree  a run of more than `tolerance` frames whose label differs from what the kinematics show
            (boundary shifts, swapped segments)
  stuck     one label covering most of an episode whose kinematics pass through several phases
Cue checks (per window): a claimed direction opposite to the window's motion ("left" while moving right), an
axis claimed where there is no motion (invented), motion while the cue says still, or a gripper claim
contradicted by the fingers (an arm known only by its joints: claimed joint motion against the joints'). Checks
the dataset's state cannot support are listed under "not_checked". Embedding spread: windows with near-identical
kinematics (same phase, same dominant motion) whose cue embeddings are far apart — the symptom of a hallucinating
labeller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from vla_distill.annotate.directions import (
    DirectionConfig,
    cue_direction,
    joint_claims,
    joint_motion,
    joint_word,
    split_hands,
    window_motion,
)
from vla_distill.annotate.episode import dataset_layout, episode_kinematics
from vla_distill.annotate.phases import PhaseConfig, label_phases
from vla_distill.data.annotations import read_annotation, read_directions, read_phase_names
from vla_distill.data.columns import add_columns
from vla_distill.data.dataset import RobotDataset
from vla_distill.data.format import write_json_atomic
from vla_distill.errors import DatasetError
from vla_distill.sim.kinematics import Kinematics, runs
from vla_distill.types import (
    ANNOTATION_PATH,
    AUDIT_PATH,
    AUDIT_REPORT_PATH,
    DIRECTION_INDEX,
    PHASE_INDEX,
    PHASES_4,
    WINDOWS_PATH,
    to_phase4,
)

APPROACH, GRASP, TRANSPORT, RELEASE = range(4)


@dataclass(frozen=True)
class AuditConfig:
    tolerance: int = 12  # frames of disagreement with the kinematics taken as boundary timing jitter (0.15 s at 80 fps)
    release_tolerance: int = 2  # frames, where the dataset records success
    stuck_fraction: float = 0.9
    opposite_fraction: float = 0.15  # a claimed axis moving the other way by this fraction of the largest motion
    invented_fraction: float = 0.35  # a claimed axis moving less than this fraction of the largest motion
                                     # (kinematic cues name an axis only from half the largest motion)
    spread_threshold: float = 0.5  # mean cosine distance of cue embeddings within a kinematic group


def audit_phases(labels4: np.ndarray, kin: Kinematics, cfg: AuditConfig = AuditConfig()) -> list[dict]:
    """labels4: (T,) 4-phase indices, -1 masked. Returns flags [{type, start, end, detail}]."""
    flags = []
    ref = label_phases(kin, PhaseConfig(taxonomy="4"))
    valid = labels4 >= 0
    seq = [(v, s, e) for v, s, e in runs(labels4) if v >= 0]
    seen: set[int] = set()
    for v, s, e in seq:
        if v == RELEASE and not ({GRASP, TRANSPORT} & seen) and (ref == TRANSPORT).any():
            flags.append({"type": "order", "start": s, "end": e, "detail": "release before any grasp or transport"})
        if v == APPROACH and TRANSPORT in seen:
            flags.append({"type": "order", "start": s, "end": e, "detail": "approach after transport began"})
        if v != RELEASE and RELEASE in seen:
            flags.append({"type": "order", "start": s, "end": e, "detail": f"{PHASES_4[v]} after release"})
        if v == GRASP and TRANSPORT not in seen and RELEASE in seen:
            flags.append({"type": "order", "start": s, "end": e, "detail": "grasp after release"})
        seen.add(v)
    bad = valid & (labels4 != ref)
    exact = kin.success is not None and kin.success.any()  # release is the recorded success, not an estimate
    for v, s, e in runs(bad.astype(np.int64)):
        tol = cfg.release_tolerance if exact and RELEASE in (ref[s], labels4[s]) else cfg.tolerance
        if v and e - s > tol:
            flags.append({"type": "disagree", "start": s, "end": e,
                          "detail": f"labelled {PHASES_4[labels4[s]]}, kinematics show {PHASES_4[ref[s]]}"})
    if valid.any():
        counts = np.bincount(labels4[valid], minlength=4)
        if counts.max() >= cfg.stuck_fraction * valid.sum() and len(set(ref[valid].tolist())) >= 3:
            flags.append({"type": "stuck", "start": 0, "end": len(labels4),
                          "detail": f"{PHASES_4[int(counts.argmax())]} for {counts.max()} of {valid.sum()} frames"})
    return flags


def audit_cue(text: str, kin: Kinematics, start: int, end: int, dcfg: DirectionConfig,
              cfg: AuditConfig = AuditConfig()) -> str | None:
    """The reason a window's cue contradicts its kinematics, or None. A multi-arm cue's clause for another arm
    (directions.other_hands) is checked against that arm."""
    text, others = split_hands(text)
    for name, clause in others.items():
        if name not in kin.arm_names:
            return f"names a {name} gripper; the robot's arms are {', '.join(kin.arm_names) or 'one'}"
        hand = kin.hands[kin.arm_names.index(name)]  # without an end effector: no motion, any direction invented
        why = _audit_motion(clause, *window_motion(hand, start, end), dcfg, cfg)
        if why:
            return f"the {name} gripper: {why}"
    if kin.ee is None:
        return _audit_joint_cue(text, kin, start, end, dcfg, cfg)
    return _audit_motion(text, *window_motion(kin, start, end), dcfg, cfg)


def _audit_motion(text: str, delta: np.ndarray, dg: float, dcfg: DirectionConfig, cfg: AuditConfig) -> str | None:
    """A claim of one hand's cue against its displacement (3,) and gripper change over the window."""
    largest = float(np.abs(delta).max())
    moving = np.linalg.norm(delta) >= dcfg.min_move
    for axis, sign in cue_direction(text).items():
        if delta[axis] * sign < 0 and abs(delta[axis]) > max(cfg.opposite_fraction * largest, 0.25 * dcfg.min_move):
            return f"says {text!r} but moves {delta[axis]:+.3f} m on axis {'xyz'[axis]}"
        if abs(delta[axis]) < cfg.invented_fraction * largest or not moving and abs(delta[axis]) < 0.5 * dcfg.min_move:
            return f"claims motion on axis {'xyz'[axis]} that is not there ({delta[axis]:+.3f} m)"
    if "still" in text and np.linalg.norm(delta) > 2 * dcfg.min_move:
        return f"says still but moves {np.linalg.norm(delta):.3f} m"
    return _audit_gripper_claim(text, dg, dcfg)


def _audit_gripper_claim(text: str, dg: float, dcfg: DirectionConfig) -> str | None:
    if re.search(r"\bclos(ing|es)\b", text) and dg > 0.5 * dcfg.gripper_change:
        return "says closing but the gripper opens"
    if re.search(r"\bopen(ing|s)\b", text) and dg < -0.5 * dcfg.gripper_change:
        return "says opening but the gripper closes"
    return None


def _audit_joint_cue(text: str, kin: Kinematics, start: int, end: int, dcfg: DirectionConfig,
                     cfg: AuditConfig) -> str | None:
    """audit_cue() for an arm known only by its joints: joint claims against joint motion (fractions of the widest
    joint's range)."""
    dq, dg = joint_motion(kin, start, end), window_motion(kin, start, end)[1]
    largest = float(np.abs(dq).max()) if len(dq) else 0.0
    for j, sign in joint_claims(text, kin.joint_names).items():
        word = joint_word(kin.joint_names[j])
        if dq[j] * sign < 0 and abs(dq[j]) > max(cfg.opposite_fraction * largest, 0.25 * dcfg.min_joint_move):
            return f"says {text!r} but {word} moves {dq[j]:+.2f} of the widest joint's range"
        if abs(dq[j]) < cfg.invented_fraction * largest or abs(dq[j]) < 0.5 * dcfg.min_joint_move:
            return f"claims motion of {word} that is not there ({dq[j]:+.2f} of the widest joint's range)"
    if "still" in text and largest > 2 * dcfg.min_joint_move:
        return f"says still but a joint moves {largest:.2f} of the widest joint's range"
    return _audit_gripper_claim(text, dg, dcfg)


def embedding_spread(groups: np.ndarray, cue_ids: np.ndarray, embeddings: np.ndarray,
                     cfg: AuditConfig = AuditConfig()) -> list[dict]:
    """groups: (K,) kinematic group id per window; cue_ids: (K,) direction index (-1 masked).
    Returns the groups whose cues are spread widely (mean pairwise cosine distance above the threshold)."""
    out = []
    for g in np.unique(groups):
        ids = cue_ids[(groups == g) & (cue_ids >= 0)]
        if len(ids) < 4 or len(set(ids.tolist())) < 2:
            continue
        e = embeddings[ids]
        sim = e @ e.T
        spread = float(1.0 - (sim.sum() - len(ids)) / (len(ids) * (len(ids) - 1)))
        if spread > cfg.spread_threshold:
            out.append({"group": int(g), "windows": int(len(ids)), "spread": round(spread, 3)})
    return out


def kinematic_group(kin: Kinematics, phases4: np.ndarray, start: int, end: int, dcfg: DirectionConfig) -> int:
    """Windows with the same phase, dominant axis and sign, and gripper trend share a group."""
    delta, dg = window_motion(kin, start, end)
    end = max(end, start + 1)
    axis = int(np.abs(delta).argmax()) if np.linalg.norm(delta) >= dcfg.min_move else 3
    sign = int(delta[axis] > 0) if axis < 3 else 0
    grip = 0 if abs(dg) < dcfg.gripper_change else (1 if dg > 0 else 2)
    phase = int(np.bincount(phases4[start:end][phases4[start:end] >= 0],
                            minlength=4).argmax()) if (phases4[start:end] >= 0).any() else 4
    return ((phase * 4 + axis) * 2 + sign) * 3 + grip


# ---------------------------------------------------------------- the whole dataset
def audit_dataset(root, mask: bool = False, drop: bool = False, cfg: AuditConfig = AuditConfig()) -> dict:
    """Audit an annotated dataset; writes meta/audit.json and meta/audit.md. With mask=True, flagged phase
    frames and flagged cue windows get index -1 (ignored by the losses) in place. With drop=True, every episode
    with a flag is listed under "dropped_episodes" and training leaves it out whole (data stays on disk)."""
    ds = RobotDataset(root)
    if PHASE_INDEX not in ds.features:
        raise DatasetError("not an annotated dataset (run vla-distill annotate first)", path=ds.root, field=PHASE_INDEX)
    ds.check_videos()  # the audit reads no frame, but training will: a broken video is found here, as elsewhere
    taxonomy = read_phase_names(ds.root)
    c = read_annotation(ds.root).get("config")
    if c is None:
        raise DatasetError("no annotation settings (run vla-distill annotate first)", path=ds.root / ANNOTATION_PATH)
    dcfg = DirectionConfig(window=c["window"], stride=c["stride"])
    try:
        layout = dataset_layout(ds, c.get("state_map", ""), c.get("robot_model", ""), c.get("ee_frame", ""),
                                c.get("joint_units", "deg"))
    except DatasetError as e:  # labels from a VLM on a state nobody mapped: report what could not be checked
        layout, unreadable = None, str(e).split(": ", 1)[-1]
    phases = ds.column(PHASE_INDEX).astype(np.int64)
    has_cues = DIRECTION_INDEX in ds.features
    if has_cues:
        texts, emb = read_directions(ds.root)
        wt = pq.read_table(ds.root / WINDOWS_PATH).to_pydict()
    new_phases, new_dirs = phases.copy(), ds.column(DIRECTION_INDEX).astype(np.int64).copy() if has_cues else None
    episodes, groups, group_cues = [], [], []
    w = 0
    for e in range(ds.num_episodes if layout is not None else 0):
        ep, rows = ds.episodes[e], ds.episode_rows(e)
        kin = episode_kinematics(ds, rows, layout)
        p4 = to_phase4(phases[rows], taxonomy)
        flags = audit_phases(p4, kin, cfg)
        cue_flags = []
        while has_cues and w < len(wt["episode_index"]) and wt["episode_index"][w] == ep.index:
            s, t, cid = wt["start"][w], wt["end"][w], wt[DIRECTION_INDEX][w]
            if cid >= 0:
                reason = audit_cue(texts[cid], kin, s, t, dcfg, cfg)
                if reason:
                    cue_flags.append({"window": w, "start": s, "end": t, "text": texts[cid], "reason": reason})
                    if mask:
                        new_dirs[rows[s:t]] = np.where(new_dirs[rows[s:t]] == cid, -1, new_dirs[rows[s:t]])
                groups.append(kinematic_group(kin, p4, s, t, dcfg))
                group_cues.append(cid)
            w += 1
        if mask:
            for f in flags:
                new_phases[rows[f["start"] : f["end"]]] = -1
        episodes.append({"episode_index": ep.index, "task": ep.tasks[0], "frames": len(rows),
                         "phase_flags": flags, "cue_flags": cue_flags})
    if layout is None:
        episodes = [{"episode_index": ep.index, "task": ep.tasks[0], "frames": ep.length, "phase_flags": [],
                     "cue_flags": []} for ep in ds.episodes]
    spread = embedding_spread(np.array(groups), np.array(group_cues), emb, cfg) if has_cues and groups else []
    n_windows = len(group_cues)
    report = {
        "dataset": str(ds.root), "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "summary": {
            "episodes": ds.num_episodes,
            "episodes_with_phase_flags": sum(bool(x["phase_flags"]) for x in episodes),
            "phase_flags": sum(len(x["phase_flags"]) for x in episodes),
            "cue_windows": n_windows, "cue_windows_flagged": sum(len(x["cue_flags"]) for x in episodes),
            "spread_groups_flagged": len(spread), "masked": mask,
        },
        "not_checked": not_checked(layout) if layout is not None else [f"every check against the kinematics: "
                                                                       f"{unreadable}"],
        "dropped_episodes": [x["episode_index"] for x in episodes if x["phase_flags"] or x["cue_flags"]] if drop
        else [],
        "spread": spread, "episodes": episodes,
    }
    write_json_atomic(ds.root / AUDIT_PATH, report)
    tmp = ds.root / (AUDIT_REPORT_PATH + ".tmp")
    tmp.write_text(_markdown(report))
    tmp.replace(ds.root / AUDIT_REPORT_PATH)
    if mask:
        cols = {PHASE_INDEX: new_phases}
        if has_cues:
            cols[DIRECTION_INDEX] = new_dirs
        add_columns(ds.root, cols, {k: ds.features[k] for k in cols}, overwrite=True)
    return report


def not_checked(layout) -> list[str]:
    """The audit's checks this dataset's state cannot support, one phrase each (sim.layout.StateLayout)."""
    out = []
    if not layout.has_ee:
        out.append("cue directions (left/right, up/down, forward/backward): no end-effector position; "
                   "joint-space cues are checked against joint motion instead")
    if not layout.env_object:
        out.append("object motion: no object state, so the phase reference takes a close as a grasp and "
                   "closed-gripper motion as transport")
    return out


def _markdown(report: dict) -> str:
    s = report["summary"]
    lines = [
        "# Annotation audit", "",
        f"Dataset: `{report['dataset']}`", "",
        f"- episodes: {s['episodes']}, with phase flags: {s['episodes_with_phase_flags']} ({s['phase_flags']} flags)",
        f"- cue windows: {s['cue_windows']}, flagged: {s['cue_windows_flagged']}",
        f"- kinematic groups with widely spread cue embeddings: {s['spread_groups_flagged']}",
        f"- flagged labels masked: {'yes' if s['masked'] else 'no'}",
        f"- episodes dropped from training: {len(report['dropped_episodes'])}",
        *(f"- not checked: {x}" for x in report.get("not_checked", [])), "",
    ]
    flagged = [e for e in report["episodes"] if e["phase_flags"] or e["cue_flags"]]
    if flagged:
        lines += ["| episode | task | phase flags | cue flags | first problem |", "|---|---|---|---|---|"]
        for e in flagged:
            first = (e["phase_flags"] or e["cue_flags"])[0]
            what = first.get("detail") or first.get("reason")
            lines.append(f"| {e['episode_index']} | {e['task']} | {len(e['phase_flags'])} | {len(e['cue_flags'])} | "
                         f"frames {first['start']}-{first['end']}: {what} |")
    elif any(x.startswith("every check") for x in report.get("not_checked", [])):
        lines.append("Nothing was checked: the state has no layout the kinematics can be read from.")
    else:
        lines.append("No label disagrees with the recorded kinematics.")
    return "\n".join(lines) + "\n"
