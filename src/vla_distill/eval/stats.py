"""Success rates as statistics (pure): Wilson intervals, and paired comparisons of two evaluations on the same seeds.

Closed-loop success over n episodes is a binomial proportion; at n = 10 a 5/10 has a 95% interval of 24-76%, so
every rate is reported with its interval. Two policies evaluated on the same held-out seeds are compared episode by
episode: the difference of their success rates with Newcombe's interval for paired proportions (his method 10,
built from the two Wilson intervals and the correlation of the pairs), and an exact McNemar test on the discordant
episodes (those only one of the two solved). The binomial computations are scipy's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy.stats import binomtest

LEVEL = 0.95


def wilson(successes: int, n: int, level: float = LEVEL) -> list[float] | None:
    """[low, high] in percent; None without episodes."""
    if n <= 0:
        return None
    ci = binomtest(int(successes), int(n)).proportion_ci(level, method="wilson")
    return [float(100.0 * ci.low), float(100.0 * ci.high)]


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (1.0 when there are none)."""
    n = only_a + only_b
    return 1.0 if n == 0 else float(binomtest(min(only_a, only_b), n, 0.5).pvalue)


def paired(a: Sequence[bool], b: Sequence[bool], level: float = LEVEL) -> dict:
    """b against a, episode i of each on the same seed: b's success rate minus a's in points, its interval,
    McNemar's p, and the 2x2 counts."""
    if len(a) != len(b):
        raise ValueError(f"paired: {len(a)} episodes against {len(b)}")
    both = sum(1 for x, y in zip(a, b) if x and y)
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    return paired_counts(both, only_a, only_b, len(a) - both - only_a - only_b, level)


def paired_counts(both: int, only_a: int, only_b: int, neither: int, level: float = LEVEL) -> dict:
    """paired() from its 2x2 table: what pools comparisons whose episodes are kept only as counts."""
    n = both + only_a + only_b + neither
    out = {"n_episodes": n, "both": both, "only_a": only_a, "only_b": only_b, "neither": neither,
           "mcnemar_p": mcnemar_exact(only_a, only_b)}
    if n == 0:
        return out | {"difference": None, "ci95": None}
    pa, pb = (both + only_a) / n, (both + only_b) / n
    la, ua = (v / 100 for v in wilson(both + only_a, n, level))
    lb, ub = (v / 100 for v in wilson(both + only_b, n, level))
    den = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    phi = (both * neither - only_a * only_b) / math.sqrt(den) if den else 0.0
    # Newcombe (1998), method 10, for the difference pb - pa
    lower = math.sqrt(max((pb - lb) ** 2 - 2 * phi * (pb - lb) * (ua - pa) + (ua - pa) ** 2, 0.0))
    upper = math.sqrt(max((ub - pb) ** 2 - 2 * phi * (ub - pb) * (pa - la) + (pa - la) ** 2, 0.0))
    d = pb - pa
    return out | {"difference": 100.0 * d, "ci95": [100.0 * max(d - lower, -1.0), 100.0 * min(d + upper, 1.0)]}


def distinguishable(comparison: dict, level: float = LEVEL) -> bool:
    """Whether the paired difference is significant at this level (its interval leaves out 0)."""
    ci = comparison.get("ci95")
    return bool(ci) and (ci[0] > 0 or ci[1] < 0)


def compare(info_a: dict, info_b: dict) -> dict:
    """Two eval_info.json contents -> the paired comparison of b against a over their common tasks, overall and per
    task. Episodes are matched by (task, seed); episodes without a partner are left out and counted."""
    def by_seed(info: dict) -> dict[str, dict[int, bool]]:
        return {t["task"]: dict(zip(t["metrics"].get("seeds", []),
                                    t["metrics"]["successes"])) for t in info["per_task"]}

    sa, sb = by_seed(info_a), by_seed(info_b)
    per_task, xs, ys, unpaired = {}, [], [], 0
    for task in [t for t in sa if t in sb]:
        seeds = [s for s in sa[task] if s in sb[task]]
        unpaired += len(sa[task]) + len(sb[task]) - 2 * len(seeds)
        x, y = [sa[task][s] for s in seeds], [sb[task][s] for s in seeds]
        per_task[task] = paired(x, y)
        xs += x
        ys += y
    return {"overall": paired(xs, ys), "per_task": per_task, "unpaired_episodes": unpaired}
