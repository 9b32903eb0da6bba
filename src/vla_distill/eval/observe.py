"""Observability of a closed-loop student (the seed's "Failure Modes and Observability"), as pure functions.

Timelines are (T,) int arrays of indices into PHASES_4 (approach, grasp, transport, release), -1 = unknown.
A student trained on the 9-phase taxonomy is mapped onto PHASES_4 first (types.to_phase4).

Flags per episode:
  release_before_grasp  the student predicts release before it ever predicted grasp, in an episode whose reference
                        timeline has a grasp (a pick that "lets go" of nothing); the reference is the annotator's
                        labelling of the rollout itself, what the student was trained to predict
  premature_release     predicted release starts more than `early_frames` before the task first succeeded (or in a
                        failed episode)
  stuck_phase           one predicted phase held for more than `stuck_frames` steps without success, or the hand
                        still (< `still_m` over `stuck_frames` steps) before success
  phase_regression      the predicted phase steps back (transport -> approach) `regressions` times or more
Direction spread: episodes of the same task are similar trajectories; their direction embeddings are compared at the
same progress (episode time split into `bins`), and an episode far from its task's centroid is flagged.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vla_distill.eval.records import EpisodeRecord, arrays_path
from vla_distill.types import PHASES_4

APPROACH, GRASP, TRANSPORT, RELEASE = range(4)


@dataclass(frozen=True)
class ObserveConfig:
    early_frames: int = 16  # 0.2 s at 80 Hz: the annotator itself starts release at the first success
    min_grasp_frames: int = 3  # a reference grasp shorter than this (a push's brief close) does not count
    stuck_frames: int = 160  # 2 s at MetaWorld's 80 Hz
    still_m: float = 0.005
    regressions: int = 3
    bins: int = 8
    spread_flag: float = 0.25  # 1 - cosine to the task centroid above which an episode's cues are off-pattern
    spread_ratio: float = 2.0  # ... and this many times the task's median


def agreement(pred: np.ndarray, reference: np.ndarray) -> float | None:
    known = (pred >= 0) & (reference >= 0)
    return float((pred[known] == reference[known]).mean()) if known.any() else None


def _first(x: np.ndarray, value: int) -> int | None:
    hit = np.flatnonzero(x == value)
    return int(hit[0]) if len(hit) else None


def _longest_run(x: np.ndarray) -> tuple[int, int, int]:
    """(value, start, length) of the longest constant run."""
    best, start = (int(x[0]), 0, 1), 0
    for t in range(1, len(x) + 1):
        if t == len(x) or x[t] != x[start]:
            if t - start > best[2]:
                best = (int(x[start]), start, t - start)
            start = t
    return best


def phase_flags(pred: np.ndarray, reference: np.ndarray | None, success: np.ndarray, hand: np.ndarray,
                cfg: ObserveConfig = ObserveConfig()) -> list[dict]:
    """pred, reference: (T,) PHASES_4 indices; success (T,) bool; hand (T, 3) positions -> flags as dicts."""
    flags: list[dict] = []
    pred = np.asarray(pred)
    if len(pred) == 0:
        return flags
    done = int(np.argmax(success)) if success.any() else None
    horizon = done if done is not None else len(pred)
    release, grasp = _first(pred, RELEASE), _first(pred, GRASP)
    has_phases = (pred >= 0).any()
    grasped = reference is not None and (reference == GRASP).sum() >= cfg.min_grasp_frames
    if has_phases and release is not None and grasped:
        if grasp is None or grasp > release:
            flags.append({"kind": "release_before_grasp", "step": release,
                          "detail": f"release predicted at step {release}, grasp "
                                    f"{'never' if grasp is None else f'at {grasp}'}"})
    if has_phases and release is not None and release < horizon - cfg.early_frames:
        flags.append({"kind": "premature_release", "step": release,
                      "detail": f"release predicted at step {release}, "
                                + (f"success at {done}" if done is not None else "never succeeded")})
    if has_phases:
        value, start, length = _longest_run(pred[:horizon]) if horizon else (-1, 0, 0)
        if value >= 0 and length > cfg.stuck_frames:
            flags.append({"kind": "stuck_phase", "step": start,
                          "detail": f"{PHASES_4[value]} held for {length} steps from step {start}"})
    if horizon > cfg.stuck_frames:
        w = cfg.stuck_frames
        moved = np.linalg.norm(hand[w:horizon] - hand[: horizon - w], axis=1)
        still = np.flatnonzero(moved < cfg.still_m)
        if len(still) and not any(f["kind"] == "stuck_phase" for f in flags):
            flags.append({"kind": "stuck_phase", "step": int(still[0]),
                          "detail": f"hand moved < {cfg.still_m * 1000:.0f} mm over {w} steps from step "
                                    f"{int(still[0])}"})
    known = pred[pred >= 0]
    back = int(((known[1:] < known[:-1]) & (known[1:] != -1)).sum()) if len(known) > 1 else 0
    if back >= cfg.regressions:
        flags.append({"kind": "phase_regression", "step": None, "detail": f"predicted phase stepped back {back} times"})
    return flags


def progress_profile(directions: np.ndarray, steps: np.ndarray, length: int, bins: int) -> np.ndarray:
    """(N, E) embeddings at `steps` of an episode of `length` -> (bins, E) mean unit embedding per progress bin
    (NaN rows for bins with no model call)."""
    out = np.full((bins, directions.shape[1]), np.nan, np.float32)
    which = np.minimum((np.asarray(steps) * bins) // max(length, 1), bins - 1)
    for b in range(bins):
        sel = directions[which == b].astype(np.float32)
        if len(sel):
            m = sel.mean(0)
            out[b] = m / max(float(np.linalg.norm(m)), 1e-8)
    return out


def direction_spread(profiles: list[np.ndarray], cfg: ObserveConfig = ObserveConfig()) -> dict:
    """profiles: per episode of one task, (bins, E) from progress_profile -> the task's spread and the outliers.

    spread: mean over episodes and bins of 1 - cos(episode, task centroid); deviation: the same per episode."""
    if len(profiles) < 2:
        return {"spread": None, "deviation": [None] * len(profiles), "flagged": []}
    stack = np.stack(profiles)  # (N, bins, E)
    with warnings.catch_warnings():  # a bin that no episode reached stays NaN, on purpose
        warnings.simplefilter("ignore", RuntimeWarning)
        centroid = np.nanmean(stack, axis=0)
    centroid /= np.maximum(np.linalg.norm(centroid, axis=-1, keepdims=True), 1e-8)
    dist = 1.0 - np.einsum("nbe,be->nb", np.nan_to_num(stack), np.nan_to_num(centroid))
    dist[np.isnan(stack).any(-1)] = np.nan
    dev = np.nanmean(dist, axis=1)
    med = float(np.nanmedian(dev))
    flagged = [i for i, d in enumerate(dev) if d > cfg.spread_flag and d > cfg.spread_ratio * med]
    return {"spread": float(np.nanmean(dev)), "deviation": [None if np.isnan(d) else float(d) for d in dev],
            "flagged": flagged}


def observability(out: str | Path, records: list[EpisodeRecord], cfg: ObserveConfig) -> dict:
    """observability.json: per-episode flags and agreement (from the records), direction spread per task (from the
    stored arrays)."""
    tasks: dict[str, list[EpisodeRecord]] = {}
    for r in records:
        tasks.setdefault(r.task, []).append(r)
    per_task = {}
    for task, recs in sorted(tasks.items()):
        recs.sort(key=lambda r: r.episode)
        profiles, eps = [], []
        for r in recs:
            z = np.load(arrays_path(out, task, r.episode))
            if len(z["directions"]):
                profiles.append(progress_profile(z["directions"], z["direction_steps"], r.steps, cfg.bins))
                eps.append(r.episode)
        spread = direction_spread(profiles, cfg)
        agree = {k: [r.phase_agreement[k] for r in recs if r.phase_agreement.get(k) is not None]
                 for k in ("ground_truth", "annotator")}
        per_task[task] = {
            "direction_spread": spread["spread"],
            "direction_flagged_episodes": [eps[i] for i in spread["flagged"]],
            "direction_deviation": dict(zip(map(str, eps), spread["deviation"])),
            "phase_agreement": {k: float(np.mean(v)) if v else None for k, v in agree.items()},
        }
    flagged = [{"task": r.task, "episode": r.episode, "success": r.success, **f}
               for r in sorted(records, key=lambda r: (r.task, r.episode)) for f in r.flags]
    for task, t in per_task.items():
        for ep in t["direction_flagged_episodes"]:
            success = next(r.success for r in tasks[task] if r.episode == ep)
            flagged.append({"task": task, "episode": ep, "success": success, "kind": "direction_outlier", "step": None,
                            "detail": f"direction cues {t['direction_deviation'][str(ep)]:.2f} from the task's "
                                      f"centroid (task spread {t['direction_spread']:.2f})"})
    counts: dict[str, int] = {}
    for f in flagged:
        counts[f["kind"]] = counts.get(f["kind"], 0) + 1
    return {"per_task": per_task, "flags": flagged, "flag_counts": counts, "config": asdict(cfg)}




def mean_agreement(obs: dict) -> dict:
    """Agreement with each reference, averaged over the tasks that have it."""
    out = {}
    for k in ("ground_truth", "annotator"):
        v = [t["phase_agreement"][k] for t in obs["per_task"].values() if t["phase_agreement"][k] is not None]
        out[k] = float(np.mean(v)) if v else None
    return out
