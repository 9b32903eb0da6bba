"""Action targets derived from the annotation: the gripper command anchored to the phase labels.

A VLA teacher toggles its gripper inside a phase and jitters, and regression averages that into a weak, half-open
command. Within one phase the gripper's state does not change, so the median of the teacher's commands over each
phase segment is the command it meant whenever it was right more than half of the time: the phase labels filter the
teacher's noise offline, and the deployed student is unchanged (what it is worth: BENCHMARKS.md, "Guidance").
"""

from __future__ import annotations

import numpy as np

from vla_distill.sim.kinematics import runs

LEAD = 16  # frames a gripper command may lead or trail the phase boundary it causes (fingers take time to move)
HOLDING = (1, 2)  # PHASES_4 grasp and transport: one stretch of the gripper's state (a short grasp has few frames)


def anchored_steps(g: np.ndarray, labels: np.ndarray, lead: int = LEAD) -> np.ndarray:
    """g: (T,) or (T, K) noisy commands of one episode; labels: (T,) phase labels -> a piecewise-constant copy: one
    value per run of a known label (the run's median), each boundary between two known runs moved to the frame within
    `lead` of it where the two medians fit the commands best (least absolute deviation). Unknown frames keep theirs."""
    out = np.array(g, dtype=np.float32, copy=True)
    parts = [[s, e] for v, s, e in runs(np.asarray(labels)) if v >= 0]
    for i in range(len(parts) - 1):
        (s0, b), (s1, e1) = parts[i], parts[i + 1]
        if b != s1:  # an unknown run in between: no boundary to move
            continue
        cands = range(max(s0 + 1, b - lead), min(e1 - 1, b + lead) + 1)
        cost = [np.abs(g[s0:c] - np.median(g[s0:c], 0)).sum() + np.abs(g[c:e1] - np.median(g[c:e1], 0)).sum()
                for c in cands]
        if cost:
            parts[i][1] = parts[i + 1][0] = list(cands)[int(np.argmin(cost))]
    for s, e in parts:
        out[s:e] = np.median(g[s:e], 0)
    return out


def gripper_stretches(phases4: np.ndarray) -> np.ndarray:
    """(T,) PHASES_4 indices -> labels of the stretches one gripper state spans: approach 0, grasp and transport 1,
    release 2 (-1 stays unknown)."""
    p = np.asarray(phases4)
    return np.where(np.isin(p, HOLDING), 1, np.where(p == 3, 2, p))


def phase_consistent_gripper(actions: np.ndarray, phases: np.ndarray, bounds: list[tuple[int, int]],
                             dim: int = -1) -> np.ndarray:
    """actions: (N, D) teacher actions by dataset row, or (N, K, D) chunks (each chunk step alike); phases: (N,)
    PHASES_4 indices (-1 = unknown); bounds: every episode's [start, end) rows -> a copy whose `dim` is constant over
    each stretch of one gripper state (gripper_stretches) within an episode: the median of the teacher's commands
    there, the boundaries placed where the commands switch (anchored_steps). Unknown frames keep the teacher's own."""
    out = np.array(actions, dtype=np.float32, copy=True)
    g = out[..., dim]  # (N,) or (N, K), a view
    for start, end in bounds:
        g[start:end] = anchored_steps(g[start:end], gripper_stretches(phases[start:end]))
    return out
