"""`vla-distill run`: episodes of the real-time loop on simulated robots, their timing table, and recordings."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vla_distill.deploy import recorder
from vla_distill.deploy.loop import LoopConfig, run_loop, summarize
from vla_distill.deploy.robot import SimRobot

HEADER = ("task", "episode", "success", "ticks", "infer p50/p99/max ms", "tick p99 ms", "jitter p99 ms", "misses",
          "late", "nan", "clipped")


def _row(task: str, i: int, s: dict) -> tuple:
    t = s["timing_ms"]
    inf = t["inference"]
    return (task, i, "yes" if s["success"] else "no", s["ticks"],
            f"{inf.get('p50', 0):.2f}/{inf.get('p99', 0):.2f}/{inf.get('max', 0):.2f}", f"{t['tick_work']['p99']:.2f}",
            f"{t['jitter']['p99']:.3f}", s["deadline_misses"], s["late_dropped"], s["nan_hold"], s["clipped"])


def run_tasks(policy, policy_spec: str, backend: str, env: str, tasks: list[str], episodes: int, seed: int,
              cfg: LoopConfig, record: str | None = None, log=print) -> list[dict]:
    """One SimRobot per episode on the evaluator's held-out seeds; returns each episode's summary."""
    from vla_distill.eval.envs import eval_seeds, policy_cameras
    from vla_distill.eval.run import markdown_table

    keys, size = policy_cameras(policy)
    rows, out = [], []
    for task in tasks:
        for i, s in enumerate(eval_seeds(env, task, episodes, seed)):
            robot = SimRobot(env, task, keys, size, s)
            robot.connect()
            try:
                steps = run_loop(policy, robot, robot.instruction, cfg, record=record is not None)
            finally:
                robot.disconnect()
            summary = {**summarize(steps, cfg), "task": task, "seed": s, "success": robot.success}
            if record is not None:
                meta = {"env": env, "task": task, "seed": s, "instruction": robot.instruction, "policy": policy_spec,
                        "backend": backend, "image_keys": list(keys), "image_size": list(size or ()),
                        "loop": cfg.__dict__, "summary": summary}
                recorder.save(steps, Path(record) / task / f"episode_{i:03d}", meta)
            out.append(summary)
            rows.append([str(x) for x in _row(task, i, summary)])
            if steps.interrupted:
                break
    log(markdown_table(HEADER, rows))
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
    diff = float(np.abs(seen["observation.state"] - arrays["obs/observation.state"]).max()) \
        if "obs/observation.state" in arrays else float("nan")
    log(f"replayed {len(arrays['sent'])} actions of {meta['task']} (seed {meta['seed']}): "
        f"max |observation.state - recorded| = {diff:.3g}, success {robot.success}")
    return diff
