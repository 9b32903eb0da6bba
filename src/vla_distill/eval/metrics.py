"""eval_info.json arithmetic (pure): per-episode records -> lerobot-eval's per_task / per_group / overall, each
success rate with its 95% Wilson interval (`pc_success_ci95`, [low, high] in percent) and each task's episode seeds,
so that two evaluations can be compared episode by episode (stats.compare).

Meta-World papers report the mean of the four difficulty-group means; lerobot's `overall.pc_success` is the mean over
all episodes (with equal episodes per task, the task-weighted mean). Both are written, named for what they are.
"""

from __future__ import annotations

import numpy as np

from vla_distill.eval.records import EpisodeRecord
from vla_distill.eval.stats import wilson


def _pc(successes: list[bool]) -> float:
    return float(100.0 * np.mean(successes)) if successes else 0.0


def _ci(recs: list[EpisodeRecord]) -> list[float] | None:
    return wilson(sum(bool(r.success) for r in recs), len(recs))


def percentile(values, q: float) -> float | None:
    return float(np.percentile(np.asarray(values, np.float64), q)) if len(values) else None


def aggregate(records: list[EpisodeRecord], eval_s: float) -> dict:
    """One record per episode -> eval_info's per_task, per_group and overall."""
    tasks: dict[str, list[EpisodeRecord]] = {}
    for r in sorted(records, key=lambda r: (r.task, r.episode)):
        tasks.setdefault(r.task, []).append(r)
    per_task, groups = [], {}
    for task, recs in tasks.items():
        group = recs[0].task_group
        ids = groups.setdefault(group, [])
        ids.append(task)
        per_task.append({
            "task_group": group, "task_id": len(ids) - 1, "task": task,
            "metrics": {"sum_rewards": [r.sum_reward for r in recs], "max_rewards": [r.max_reward for r in recs],
                        "successes": [bool(r.success) for r in recs], "seeds": [r.seed for r in recs],
                        "video_paths": [r.video_path for r in recs if r.video_path]},
            "pc_success": _pc([bool(r.success) for r in recs]), "n_episodes": len(recs),
            "pc_success_ci95": _ci(recs),
        })
    per_group = {}
    for group, names in groups.items():
        recs = [r for n in names for r in tasks[n]]
        per_group[group] = _summary(recs) | {"n_tasks": len(names)}
    overall = _summary(records) | {"eval_s": round(eval_s, 3), "eval_ep_s": round(eval_s / max(len(records), 1), 3)}
    task_means = [t["pc_success"] for t in per_task]
    overall["pc_success_task_mean"] = float(np.mean(task_means)) if task_means else 0.0
    group_rates = [g["pc_success"] for g in per_group.values()]
    overall["pc_success_group_mean"] = float(np.mean(group_rates)) if group_rates else 0.0
    return {"per_task": per_task, "per_group": per_group, "overall": overall}


def _summary(recs: list[EpisodeRecord]) -> dict:
    return {
        "avg_sum_reward": float(np.mean([r.sum_reward for r in recs])) if recs else 0.0,
        "avg_max_reward": float(np.mean([r.max_reward for r in recs])) if recs else 0.0,
        "pc_success": _pc([bool(r.success) for r in recs]),
        "pc_success_ci95": _ci(recs),
        "n_episodes": len(recs),
        "video_paths": [r.video_path for r in recs if r.video_path],
    }


def latency_summary(latency_ms: np.ndarray, steps: int) -> dict:
    """Model-call latencies of a batch-1 run of `steps` control steps -> p50/p99 and achievable rates.

    inference_hz: model calls per second; control_hz: actions per second (a chunk of K serves K steps)."""
    lat = np.asarray(latency_ms, np.float64)
    if not len(lat):
        return {"latency_ms_p50": None, "latency_ms_p99": None, "inference_hz": None, "control_hz": None, "calls": 0}
    return {"latency_ms_p50": percentile(lat, 50), "latency_ms_p99": percentile(lat, 99),
            "latency_ms_max": float(lat.max()), "inference_hz": float(1000.0 / lat.mean()),
            "control_hz": float(1000.0 * steps / lat.sum()), "calls": int(len(lat))}
