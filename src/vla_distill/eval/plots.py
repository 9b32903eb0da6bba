"""matplotlib figures of one evaluation: success per task, phase timelines, latency histogram (PNG, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from vla_distill.eval.records import arrays_path  # noqa: E402
from vla_distill.types import PHASES_4  # noqa: E402

PHASE_COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52")
TIMELINES_PER_TASK = 3


def write_plots(out: Path, info: dict, obs: dict) -> dict[str, str]:
    plots = Path(out) / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    made = {"success_per_task": success_per_task(info, plots / "success_per_task.png")}
    made["phase_timelines"] = phase_timelines(Path(out), info, plots / "phase_timelines.png")
    lat = Path(out) / "latency_ms.npy"
    if lat.exists():
        made["latency"] = latency_histogram(np.load(lat), info["policy"].get("spec", ""), plots / "latency.png")
    return {k: str(Path(v).relative_to(out)) for k, v in made.items() if v}


def success_per_task(info: dict, path: Path) -> Path:
    tasks = info["per_task"]
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(tasks) + 2), 3.2))
    names = [t["task"].removesuffix("-v3") for t in tasks]
    ax.bar(range(len(tasks)), [t["pc_success"] for t in tasks], color="#4C72B0")
    ax.set_xticks(range(len(tasks)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("success %")
    o = info["overall"]
    ax.set_title(f"success per task: {o['pc_success']:.1f}% over {o['n_episodes']} episodes", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bar(ax, y: float, timeline: np.ndarray, height: float = 0.8) -> None:
    start = 0
    for t in range(1, len(timeline) + 1):
        if t == len(timeline) or timeline[t] != timeline[start]:
            v = int(timeline[start])
            ax.broken_barh([(start, t - start)], (y - height / 2, height),
                           color=PHASE_COLORS[v] if 0 <= v < 4 else "#DDDDDD")
            start = t


def phase_timelines(out: Path, info: dict, path: Path) -> Path | None:
    """Predicted phase (upper bar) against the reference (lower bar) for the first episodes of each task."""
    rows = []
    for t in info["per_task"]:
        for ep in range(min(TIMELINES_PER_TASK, t["n_episodes"])):
            z = np.load(arrays_path(out, t["task"], ep))
            if (z["phase"] >= 0).any():
                ref = z["reference_ground_truth"] if "reference_ground_truth" in z else z.get("reference_annotator")
                ok = t["metrics"]["successes"][ep]
                rows.append((f"{t['task'].removesuffix('-v3')} #{ep} {'ok' if ok else 'fail'}", z["phase"], ref))
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(rows) + 1.2))
    for i, (_, pred, ref) in enumerate(rows):
        y = len(rows) - 1 - i
        _bar(ax, y + 0.18, pred, 0.34)
        if ref is not None:
            _bar(ax, y - 0.18, ref, 0.34)
    ax.set_yticks(range(len(rows)), [r[0] for r in reversed(rows)], fontsize=7)
    ax.set_xlabel("step (upper bar: predicted phase; lower: reference)")
    ax.legend(handles=[Patch(color=c, label=n) for c, n in zip(PHASE_COLORS, PHASES_4)], fontsize=7, ncol=4,
              loc="upper center", bbox_to_anchor=(0.5, 1.0 + 0.6 / (len(rows) + 2)), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latency_histogram(latency_ms: np.ndarray, spec: str, path: Path) -> Path | None:
    if not len(latency_ms):
        return None
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(latency_ms, bins=40, color="#55A868")
    for q, style in ((50, "-"), (99, "--")):
        v = float(np.percentile(latency_ms, q))
        ax.axvline(v, color="k", linestyle=style, linewidth=1, label=f"p{q} {v:.2f} ms")
    ax.set_xlabel("batch-1 model call, ms")
    ax.set_ylabel("calls")
    ax.set_title(Path(spec).name or spec, fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
