"""LIBERO's suites and task names (suite/index), and their step limits: pure data."""

from __future__ import annotations

from vla_distill.errors import ConfigError

EVAL_SEED_BASE = 2**31  # seeds from here up start from the benchmark's fixed initial states; below, new placements
SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
MAX_STEPS = {"libero_spatial": 280, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}


def resolve_tasks(spec: str) -> list[str]:
    """'libero_spatial' (all its tasks) | 'libero_goal/3' | comma lists -> ['libero_spatial/0', ...]."""
    out: list[str] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        suite, _, idx = part.partition("/")
        if suite not in SUITES:
            raise ConfigError(f"unknown LIBERO suite {suite!r}; suites: {', '.join(SUITES)}", field="tasks")
        n = 90 if suite == "libero_90" else 10
        if idx:
            if not idx.isdigit() or int(idx) >= n:
                raise ConfigError(f"{part!r}: task index must be 0..{n - 1}", field="tasks")
            out.append(part)
        else:
            out += [f"{suite}/{i}" for i in range(n)]
    if not out:
        raise ConfigError("no task given", field="tasks")
    return list(dict.fromkeys(out))
