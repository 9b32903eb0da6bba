"""Recordings of real-time runs: what the robot reported and what it was sent, tick by tick, replayable.

DIR/episode_000.npz   obs/<key> (T, ...) as observed; raw (T, D) the policy's action; sent (T, D) what was sent;
                      ticks, flags and the per-stage timings (see deploy.control_loop)
DIR/episode_000.json  task, seed, rate, policy, backend, robot, and the run's summary
`replay` sends a recording's actions to a robot again at the recorded rate: on a deterministic simulator with the
same task and seed it reproduces the recorded observations, which is how the tests check a recording is complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from vla_distill.deploy.control_loop import Pacer, StepLog
from vla_distill.errors import ConfigError


def save(log: StepLog, path: str | Path, meta: dict) -> Path:
    """path: DIR/episode_NNN (no suffix). Written to temporary names, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"ticks": np.asarray(log.ticks, np.int64), "raw": np.stack(log.raw), "sent": np.stack(log.sent),
              "flags": np.asarray(log.flags, dtype=str)}
    for name in ("jitter_ms", "obs_ms", "infer_ms", "act_ms", "work_ms"):
        arrays[name] = np.asarray(getattr(log, name), np.float32)
    for key in log.observations[0] if log.observations else ():
        arrays[f"obs/{key}"] = np.stack([o[key] for o in log.observations])
    with open(path.with_suffix(".npz.partial"), "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(path.with_suffix(".npz.partial"), path.with_suffix(".npz"))
    path.with_suffix(".json.partial").write_text(json.dumps(meta, indent=2))
    os.replace(path.with_suffix(".json.partial"), path.with_suffix(".json"))
    return path.with_suffix(".npz")


def load(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """A recording's arrays and its metadata; path is the .npz or its stem."""
    npz = Path(path).with_suffix(".npz")
    meta = npz.with_suffix(".json")
    if not npz.is_file() or not meta.is_file():
        raise ConfigError("no recording here (expected episode_NNN.npz and .json)", path=path)
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads(meta.read_text())


def replay(arrays: dict[str, np.ndarray], robot, hz: float, spin_ms: float = 2.0) -> dict[str, np.ndarray]:
    """Sends the recorded actions to `robot` (connected) at `hz`; returns the observations seen before each
    action, {key: (T, ...)}, to compare with the recording's obs/<key>."""
    pacer = Pacer(1.0 / hz, spin_ms / 1e3)
    seen: dict[str, list] = {}
    for action in arrays["sent"]:
        pacer.wait()
        for k, v in robot.get_observation().items():
            seen.setdefault(k, []).append(np.array(v))
        robot.send_action(action)
    return {k: np.stack(v) for k, v in seen.items()}
