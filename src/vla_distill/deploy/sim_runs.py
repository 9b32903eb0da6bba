"""`vla-distill run`: episodes of the real-time control loop on simulated robots (on the evaluator's held-out seeds),
the rows of their timing table, and recordings and their replay."""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path

import numpy as np

from vla_distill.deploy import recorder
from vla_distill.deploy.config import LoopConfig
from vla_distill.deploy.control_loop import run_loop, summarize
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
        row = (s["task"], i, "stopped" if s["interrupted"] else "yes" if s["success"] else "no", s["ticks"],
               f"{inf.get('p50', 0):.2f}/{inf.get('p99', 0):.2f}/{inf.get('max', 0):.2f}",
               f"{t['tick_work']['p99']:.2f}",
               f"{t['jitter']['p99']:.3f}", s["deadline_misses"], s["late_dropped"], s["starved"], s["unavailable"],
               s["nan_hold"], s["clipped"], _seam(s["seams"]))
        out.append([str(x) for x in row])
    return out


def _seam(seams: dict) -> str:
    at = seams.get("at_seams", {})
    return f"{at['mean']:.3f}/{at['max']:.3f}" if at.get("n") else "-"


@contextlib.contextmanager
def interrupts_deferred():
    """A Ctrl-C inside the block is held until it ends: a simulator stopped half-built leaves a GL context nobody can
    close (a traceback at exit), and a recording stopped half-written is lost."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield
        return
    caught: list = []
    previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def run_tasks(policy, policy_spec: str, backend: str, env: str, tasks: list[str], episodes: int, seed: int,
              cfg: LoopConfig, record: str | None = None, log=None) -> tuple[list[dict], bool]:
    """One SimRobot per episode on the evaluator's held-out seeds: each episode's summary (with its task), in run order,
    and whether a Ctrl-C stopped the run (then the last summary, if any, is the episode it stopped, marked
    "interrupted"). A second Ctrl-C while an episode is put away ends the run the same way."""
    keys, size = policy_cameras(policy)
    out: list[dict] = []
    plan = [(task, i, s) for task in tasks for i, s in enumerate(get_simulator(env).eval_seeds(task, episodes, seed))]
    for n, (task, i, s) in enumerate(plan):
        steps = None
        try:
            with interrupts_deferred():
                robot = SimRobot(env, task, keys, size, s)
                robot.connect()
            if log is not None:
                log(f"episode {n + 1}/{len(plan)}: {task} (seed {s}) at {cfg.hz:g} Hz")
            try:
                steps = run_loop(policy, robot, robot.instruction, cfg, record=record is not None)
            finally:
                with interrupts_deferred():
                    robot.disconnect()
            summary = {**summarize(steps, cfg), "task": task, "seed": s, "success": robot.success,
                       "first_success": robot.first_success}
            if record is not None:
                meta = {"env": env, "task": task, "seed": s, "instruction": robot.instruction, "policy": policy_spec,
                        "backend": backend, "image_keys": list(keys), "image_size": list(size or ()),
                        "loop": cfg.__dict__, "summary": summary}
                with interrupts_deferred():
                    recorder.save(steps, Path(record) / task / f"episode_{i:03d}", meta)
        except KeyboardInterrupt:  # a Ctrl-C outside the loop (connecting, or a second one while putting away)
            if steps is not None:
                steps.interrupted = True
                out.append({**summarize(steps, cfg), "task": task, "seed": s, "success": False, "first_success": None})
            return out, True
        out.append(summary)
        if steps.interrupted:
            return out, True
    return out, False


def replay_recording(path: str, hz: float | None = None, log=print) -> float:
    """Re-sends a recording's actions to a fresh simulated robot with its task and seed; returns the largest
    difference between the replayed and the recorded observation.state."""
    arrays, meta = recorder.load(path)
    robot = SimRobot(meta["env"], meta["task"], tuple(meta["image_keys"]), tuple(meta["image_size"]) or None,
                     meta["seed"])
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
