"""The real-time control loop: a policy drives a Robot at a fixed rate, against absolute deadlines. (Why it is not
eval.rollout's loop: see there.)

Tick k starts at t0 + k/hz: the loop sleeps until shortly before it, then spins (sleep alone overshoots by up to a
scheduler quantum). Per tick: observe, infer when no queued action covers the tick (or every tick when temporal
ensembling; models.chunking schedules the chunks), check the action, send it.
Safety, in this order, each counted:
  late      the action is ready more than max_latency after its tick started: dropped, the hold action is sent
  nan_hold  a non-finite action is never sent: the hold action is
  clipped   an action outside the robot's bounds is clipped into them
A tick whose work runs past the next deadline is a deadline miss; the ticks it overran are skipped, not run in a
burst, and their queued actions are dropped (counted as late).

Per-tick arrays (T ticks run): jitter_ms, obs_ms, infer_ms (nan on ticks without a model call), act_ms, work_ms
(tick start to action sent); raw (T, D) the policy's action for the tick, sent (T, D) what the robot got.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from vla_distill.errors import ConfigError
from vla_distill.models.base import observation_to_batch
from vla_distill.models.chunking import CHUNK_MODES, ChunkScheduler


@dataclass(frozen=True)
class LoopConfig:
    hz: float = 12.5
    max_steps: int = 500
    chunk: str = "queue"  # queue: execute n_action_steps of a chunk, then replan | ensemble: ACT temporal ensembling
    n_action_steps: int = 0  # queue: actions used per chunk (0 = all K)
    ensemble_coeff: float = 0.01  # ACT's m: weight exp(-m * i) for the i-th oldest prediction of a tick
    max_latency_ms: float = 0.0  # an action later than this after its tick started is dropped (0 = one period)
    spin_ms: float = 2.0  # busy-wait this last stretch before each deadline
    steps_after_success: int = 10  # simulated robots: stop this many ticks after the first success

    def __post_init__(self):
        if not self.hz > 0:
            raise ValueError(f"hz: must be > 0 (got {self.hz})")
        if self.chunk not in CHUNK_MODES:
            raise ValueError(f"chunk: {self.chunk!r} is not one of {list(CHUNK_MODES)}")
        if self.max_steps < 1 or self.n_action_steps < 0:
            raise ValueError("max_steps must be >= 1 and n_action_steps >= 0")

    @property
    def period(self) -> float:
        return 1.0 / self.hz

    @property
    def max_latency(self) -> float:
        return self.max_latency_ms / 1e3 if self.max_latency_ms > 0 else self.period


class Pacer:
    """Absolute deadlines t0 + k * period. `wait()` returns the index of the tick that starts now and how late
    it started (scheduler noise only: a tick whose start has passed is skipped and counted, never run late or
    back to back)."""

    def __init__(self, period: float, spin: float, clock=time.perf_counter, sleep=time.sleep):
        self.period, self.spin, self.clock, self.sleep = period, spin, clock, sleep
        self.t0, self.k, self.skipped = None, -1, 0

    def deadline(self, k: int) -> float:
        return self.t0 + k * self.period

    def wait(self) -> tuple[int, float]:
        now = self.clock()
        if self.t0 is None:
            self.t0, self.k = now, 0
            return 0, 0.0
        k = self.k + 1
        if now > self.deadline(k):  # the last tick overran this one's start: resume at the next future deadline
            nxt = int((now - self.t0) / self.period) + 1
            self.skipped += nxt - k
            k = nxt
        target = self.deadline(k)
        if target - now > self.spin:
            self.sleep(target - now - self.spin)
        while self.clock() < target:
            pass
        self.k = k
        return k, max(0.0, self.clock() - target)


@dataclass
class StepLog:
    """Everything one run saw and did, tick by tick (see the module docstring); the recorder saves it."""

    ticks: list[int] = field(default_factory=list)
    jitter_ms: list[float] = field(default_factory=list)
    obs_ms: list[float] = field(default_factory=list)
    infer_ms: list[float] = field(default_factory=list)
    act_ms: list[float] = field(default_factory=list)
    work_ms: list[float] = field(default_factory=list)
    raw: list[np.ndarray] = field(default_factory=list)
    sent: list[np.ndarray] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)  # "" | late | nan_hold | clipped
    observations: list[dict] = field(default_factory=list)
    skipped: int = 0  # ticks overrun (never run) plus queued actions that were due in them
    interrupted: bool = False


def check_observation(obs: dict, spec: dict[str, dict]) -> None:
    """The robot's observation against the policy's observation_spec: one error naming the field."""
    for key, s in spec.items():
        if s["dtype"] == "str":
            continue
        if key not in obs:
            raise ConfigError(f"the robot's observation lacks it (has {sorted(obs)})", field=key)
        shape = tuple(np.shape(obs[key]))
        if shape != tuple(s["shape"]):
            raise ConfigError(f"shape {list(shape)} but the policy expects {s['shape']}", field=key)


def safe_action(action: np.ndarray | None, hold: np.ndarray, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, str]:
    """(what to send, flag). Non-finite -> hold; outside [low, high] -> clipped."""
    if action is None or not np.all(np.isfinite(action)):
        return hold, "nan_hold"
    clipped = np.clip(action, low, high)
    return clipped.astype(np.float32), ("clipped" if np.any(clipped != action) else "")


def run_loop(policy, robot, task: str, cfg: LoopConfig, record: bool = False) -> StepLog:
    """Drives `robot` (connected) with `policy` until max_steps or, for a simulated robot, its success plus
    steps_after_success. Ctrl-C sends the hold action and returns what was run so far."""
    keys = policy.input_keys
    sched = ChunkScheduler(cfg.chunk, cfg.n_action_steps, cfg.ensemble_coeff)
    pacer = Pacer(cfg.period, cfg.spin_ms / 1e3)
    log = StepLog()
    policy.reset(task=task)
    check_observation(robot.get_observation(), policy.observation_spec)
    last_tick = -1
    try:
        for _ in range(cfg.max_steps):
            tick, jitter = pacer.wait()
            start = pacer.deadline(tick)
            t = time.perf_counter()
            obs = robot.get_observation()
            t_obs = time.perf_counter()
            infer_ms = math.nan
            raw = sched.action(tick, last_tick)
            if sched.needs_inference(tick):
                with torch.inference_mode():
                    chunk = policy.predict_action_chunk(observation_to_batch(obs, keys, task))[0]
                sched.add(tick, chunk.float().cpu().numpy())
                raw = sched.action(tick, tick - 1)
                infer_ms = (time.perf_counter() - t_obs) * 1e3
            last_tick = tick
            if time.perf_counter() - start > cfg.max_latency:
                action, flag = robot.hold_action(), "late"
            else:
                action, flag = safe_action(raw, robot.hold_action(), robot.action_low, robot.action_high)
            t_act = time.perf_counter()
            robot.send_action(action)
            done = time.perf_counter()
            _log_tick(log, tick, jitter, t_obs - t, infer_ms, done - t_act, done - start, raw, action, flag,
                      obs if record else None, robot.action_low.shape)
            first = getattr(robot, "first_success", None)
            if first is not None and robot.steps - 1 - first >= cfg.steps_after_success:
                break
    except KeyboardInterrupt:
        robot.send_action(robot.hold_action())
        log.interrupted = True
    log.skipped = pacer.skipped + sched.dropped
    return log


def _log_tick(log: StepLog, tick, jitter, obs_s, infer_ms, act_s, work_s, raw, action, flag, obs, shape) -> None:
    log.ticks.append(tick)
    log.jitter_ms.append(jitter * 1e3)
    log.obs_ms.append(obs_s * 1e3)
    log.infer_ms.append(infer_ms)
    log.act_ms.append(act_s * 1e3)
    log.work_ms.append(work_s * 1e3)
    log.raw.append(np.full(shape, np.nan, np.float32) if raw is None else np.asarray(raw, np.float32))
    log.sent.append(np.asarray(action, np.float32))
    log.flags.append(flag)
    if obs is not None:
        log.observations.append({k: np.array(v) for k, v in obs.items()})


def _stats(values: list[float]) -> dict:
    v = np.asarray([x for x in values if not math.isnan(x)], np.float64)
    if not len(v):
        return {"n": 0}
    return {"n": len(v), "p50": round(float(np.median(v)), 3), "p99": round(float(np.percentile(v, 99)), 3),
            "max": round(float(v.max()), 3)}


def summarize(log: StepLog, cfg: LoopConfig) -> dict:
    """Timing percentiles per stage, deadline misses and the safety counters."""
    flags, period_ms = log.flags, cfg.period * 1e3
    return {
        "hz": cfg.hz, "ticks": len(flags), "interrupted": log.interrupted,
        "timing_ms": {"jitter": _stats(log.jitter_ms), "observation": _stats(log.obs_ms),
                      "inference": _stats(log.infer_ms), "actuation": _stats(log.act_ms), "tick_work": _stats(log.work_ms)},
        "deadline_misses": int(sum(w > period_ms for w in log.work_ms)),
        "skipped": log.skipped,
        "late_dropped": flags.count("late"), "nan_hold": flags.count("nan_hold"), "clipped": flags.count("clipped"),
    }
