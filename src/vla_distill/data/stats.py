"""Per-episode feature statistics and their aggregation, as lerobot's `compute_stats.py` defines them.

Vectors: per-dimension stats over frames. Images/videos: per-channel (3, 1, 1) stats of pixels in [0, 1] over
sub-sampled frames. Quantiles are exact per episode (np.quantile); across episodes they are count-weighted
averages, which is lerobot's approximation too.
"""

from __future__ import annotations

import numpy as np

from vla_distill.data.format import QUANTILE_KEYS, QUANTILES, is_visual

Stats = dict[str, np.ndarray]


def sample_indices(n: int, min_samples: int = 100, max_samples: int = 10_000, power: float = 0.75) -> np.ndarray:
    """lerobot's image sub-sampling: all frames up to 100, then ~n^0.75 evenly spaced."""
    k = max(min(min_samples, n), min(int(n**power), max_samples))
    return np.round(np.linspace(0, n - 1, k)).astype(int)


def vector_stats(x: np.ndarray) -> Stats:
    """x: (T, *shape) -> per-dimension stats of shape `shape` (scalar columns give shape (1,))."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    out = {"min": x.min(axis=0), "max": x.max(axis=0), "mean": x.mean(axis=0), "std": x.std(axis=0)}
    qs = np.quantile(x, QUANTILES, axis=0)
    out.update({k: qs[i] for i, k in enumerate(QUANTILE_KEYS)})
    out["count"] = np.array([x.shape[0]], dtype=np.int64)
    return out


def image_stats(frames: np.ndarray) -> Stats:
    """frames: (T, H, W, 3) uint8 -> per-channel stats of shape (3, 1, 1) in [0, 1] over sampled frames.

    Pixels are 8-bit, so a 256-bin histogram per channel gives min/max/mean/std and np.quantile's linear
    quantiles exactly, at a fraction of the cost of sorting every pixel."""
    sampled = frames[sample_indices(len(frames))]
    h, w = sampled.shape[1:3]
    if max(h, w) >= 300:  # lerobot's auto_downsample_height_width
        step = int(max(h, w) / 150)
        sampled = sampled[:, ::step, ::step]
    per_channel = [_uint8_stats(np.bincount(sampled[..., c].reshape(-1), minlength=256)) for c in range(3)]
    out = {k: np.array([pc[k] for pc in per_channel]).reshape(3, 1, 1) / 255.0 for k in per_channel[0]}
    out["count"] = np.array([len(sampled)], dtype=np.int64)
    return out


def _uint8_stats(hist: np.ndarray) -> dict[str, float]:
    values = np.arange(256, dtype=np.float64)
    n = hist.sum()
    mean = (hist * values).sum() / n
    nonzero = np.flatnonzero(hist)
    out = {
        "min": float(nonzero[0]),
        "max": float(nonzero[-1]),
        "mean": mean,
        "std": float(np.sqrt((hist * (values - mean) ** 2).sum() / n)),
    }
    cum = np.cumsum(hist)
    for key, q in zip(QUANTILE_KEYS, QUANTILES):
        pos = q * (n - 1)  # np.quantile's "linear" method on the sorted pixels
        lo, hi = int(np.floor(pos)), int(np.ceil(pos))
        v_lo, v_hi = np.searchsorted(cum, lo, side="right"), np.searchsorted(cum, hi, side="right")
        out[key] = float(v_lo + (v_hi - v_lo) * (pos - lo))
    return out


def episode_stats(columns: dict[str, np.ndarray], features: dict[str, dict]) -> dict[str, Stats]:
    """Stats for every non-string feature present in `columns` (visual ones as (T, H, W, 3) uint8)."""
    out = {}
    for key, values in columns.items():
        ft = features[key]
        if ft["dtype"] == "string":
            continue
        out[key] = image_stats(values) if is_visual(ft) else vector_stats(values)
    return out


def aggregate(stats_list: list[Stats]) -> Stats:
    """Merge per-episode stats of one feature: exact min/max/mean/std, count-weighted quantiles."""
    counts = np.stack([np.asarray(s["count"]).reshape(-1)[:1] for s in stats_list]).astype(np.float64)
    means = np.stack([s["mean"] for s in stats_list])
    total = counts.sum()
    w = counts.reshape((-1,) + (1,) * (means.ndim - 1))
    mean = (means * w).sum(0) / total
    var = ((np.stack([s["std"] for s in stats_list]) ** 2 + (means - mean) ** 2) * w).sum(0) / total
    out = {
        "min": np.min(np.stack([s["min"] for s in stats_list]), axis=0),
        "max": np.max(np.stack([s["max"] for s in stats_list]), axis=0),
        "mean": mean,
        "std": np.sqrt(var),
        "count": np.array([int(total)], dtype=np.int64),
    }
    for q in QUANTILE_KEYS:
        if all(q in s for s in stats_list):
            out[q] = (np.stack([s[q] for s in stats_list]) * w).sum(0) / total
    return out


def aggregate_all(per_episode: list[dict[str, Stats]]) -> dict[str, Stats]:
    keys = sorted({k for ep in per_episode for k in ep})
    return {k: aggregate([ep[k] for ep in per_episode if k in ep]) for k in keys}


def to_json(stats: dict[str, Stats]) -> dict:
    return {k: {s: np.asarray(v).tolist() for s, v in st.items()} for k, st in stats.items()}


def from_json(obj: dict) -> dict[str, Stats]:
    return {k: {s: np.asarray(v) for s, v in st.items()} for k, st in obj.items()}
