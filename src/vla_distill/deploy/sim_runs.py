"""`vla-distill run`: episodes of the real-time control loop on simulated robots (on the evaluator's held-out seeds),
the rows of their timing table, and recordings and their replay."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vla_distill.deploy import recorder
from vla_distill.deploy.control_loop import LoopConfig, run_loop, summarize
from vla_distill.deploy.robot import SimRobot
from vla_distill.models.base import policy_cameras
from vla_distill.sim.registry import get_simulator
from vla_distill.types import OBS_STATE

HEADER = ("task", "episode", "success", "ticks", "infer p50/p99/max ms", "tick p99 ms", "jitter p99 ms", "misses",
          "late", "starved", "lost", "nan", "clipped", "seam |Δa| mean/max")


def rows(summaries: list[dict]) -> list[list[str]]:
    """One table row (HEADER) per episode summary, in run order."""
    out, seen = [], {}
    for s in summaries:
        i = seen[s["task"]] = seen.get(s["task"], -1) + 1
        t = s["timing_ms"]
        inf = t["inference"]
        row = (s["task"], i, "yes" if s["success"] else "no", s["ticks"],
               f"{inf.get('p50', 0):.2f}/{inf.get('p99', 0):.2f}/{inf.get('max', 0):.2f}", f"{t['tick_work']['p99']:.2f}",
               f"{t['jitter']['p99']:.3f}", s["deadline_misses"], s["late_dropped"], s["starved"], s["unavailable"],
               s["nan_hold"], s["clipped"], _seam(s["seams"]))
        out.append([str(x) for x in row])
    return out


def _seam(seams: dict) -> str:
    at = seams.get("at_seams", {})
    return f"{at['mean']:.3f}/{at['max']:.3f}" if at.get("n") else "-"


def run_tasks(policy, policy_spec: str, backend: str, env: str, tasks: list[str], episodes: int, seed: int,
              cfg: LoopConfig, record: str | None = None) -> list[dict]:
    """One SimRobot per episode on the evaluator's held-out seeds; returns each episode's summary (with its task), in
    run order; stops early after a Ctrl-C, with what ran."""
    keys, size = policy_cameras(policy)
    out = []
    for task in tasks:
        for i, s in enumerate(get_simulator(env).eval_seeds(task, episodes, seed)):
            robot = SimRobot(env, task, keys, size, s)
            robot.connect()
            try:
                steps = run_loop(policy, robot, robot.instruction, cfg, record=record is not None)
            finally:
                robot.disconnect()
            summary = {**summarize(steps, cfg), "task": task, "seed": s, "success": robot.success,
                       "first_success": robot.first_success}
            if record is not None:
                meta = {"env": env, "task": task, "seed": s, "instruction": robot.instruction, "policy": policy_spec,
                        "backend": backend, "image_keys": list(keys), "image_size": list(size or ()),
                        "loop": cfg.__dict__, "summary": summary}
                recorder.save(steps, Path(record) / task / f"episode_{i:03d}", meta)
            out.append(summary)
            if steps.interrupted:
                return out
    return out


def replay_recording(path: str, hz: float | None = None, log=print) -> float:
    """Re-sends a recording's actions to a fresh simulated robot with its task and seed; returns the largest
    difference between the replayed and the recorded observation.state."""
    arrays, meta = recorder.load(path)
    robot = SimRobot(meta["env"], meta["task"], tuple(meta["image_keys"]), tuple(meta["image_size"]) or None, meta["seed"])
    robot.connect()
    try:
        seen = recorder.replay(arrays, robot, hz or meta["loop"]["hz"])
    finally:
        robot.disconnect()
    diff = float(np.abs(seen[OBS_STATE] - arrays[f"obs/{OBS_STATE}"]).max()) \
        if f"obs/{OBS_STATE}" in arrays else float("nan")
    log(f"replayed {len(arrays['sent'])} actions of {meta['task']} (seed {meta['seed']}): "
        f"max |observation.state - recorded| = {diff:.3g}, success {robot.success}")
    return diff
