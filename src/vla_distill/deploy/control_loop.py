"""The real-time control loop: a policy drives a Robot at a fixed rate, against absolute deadlines. (Why it is not
eval.rollout's loop: see there.)

Tick k starts at t0 + k/hz: the loop sleeps until shortly before it, then spins (sleep alone overshoots by up to a
scheduler quantum). Per tick: observe, infer when no queued action covers the tick (or every tick when temporal
ensembling; models.chunking schedules the chunks), check the action, send it. With chunk "ahead" the policy runs on
its own thread instead: the next chunk is asked for when the queue holds no more actions than the measured inference
delay covers plus `overlap`, computed while the current chunk executes, and merged at the tick it arrives (the steps
that passed dropped, the overlap blended); no tick waits for the model. It keeps up while a chunk outlasts two
inference delays (K > 2 d + overlap); below that, the queue can run dry (counted as starved).
Safety, in this order, each counted:
  unavailable  a remote policy gave no action (error frame, lost connection, timeout): the hold action is sent
  starved   no action is due this tick (an inference-ahead queue ran dry): the hold action is sent
  late      the action is ready more than max_latency after its tick started: dropped, the hold action is sent
  nan_hold  a non-finite action is never sent: the hold action is
  clipped   an action outside the robot's bounds is clipped into them
A tick whose work runs past the next deadline is a deadline miss; the ticks it overran are skipped, not run in a
burst, and their queued actions are dropped (counted as late).

Per-tick arrays (T ticks run): jitter_ms, obs_ms, infer_ms (nan on ticks without a model call; ahead: the inference
time of the chunk merged on that tick), act_ms, work_ms (tick start to action sent); raw (T, D) the policy's action
for the tick, sent (T, D) what the robot got; seam (T,) whether a new chunk took over on that tick.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from vla_distill.deploy.config import LoopConfig
from vla_distill.deploy.remote_policy import PolicyUnavailable
from vla_distill.errors import ConfigError
from vla_distill.models.base import observation_to_batch
from vla_distill.models.chunking import AHEAD, ChunkScheduler


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
    flags: list[str] = field(default_factory=list)  # "" | starved | late | nan_hold | clipped
    seam: list[bool] = field(default_factory=list)
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


def safe_action(action: np.ndarray | None, hold: np.ndarray, low: np.ndarray,
                high: np.ndarray) -> tuple[np.ndarray, str]:
    """(what to send, flag). Non-finite -> hold; outside [low, high] -> clipped."""
    if action is None or not np.all(np.isfinite(action)):
        return hold, "nan_hold"
    clipped = np.clip(action, low, high)
    return clipped.astype(np.float32), ("clipped" if np.any(clipped != action) else "")


class AheadInference:
    """The policy on its own thread for inference-ahead control: one request at a time; `delay` is the running mean
    of measured inference times (seconds), from which the loop decides how early to ask."""

    def __init__(self, policy, task: str):
        self.policy, self.task = policy, task
        self.requests: queue.Queue = queue.Queue()
        self.done: tuple[int, np.ndarray, float] | None = None
        self.busy, self.delay, self.lock = False, 0.0, threading.Lock()
        self.thread = threading.Thread(target=self._work, daemon=True, name="inference-ahead")
        self.thread.start()

    def predict(self, obs: dict) -> tuple[np.ndarray, float]:
        t = time.perf_counter()
        chunk = predict_chunk(self.policy, obs, self.task)
        secs = time.perf_counter() - t
        self.delay = secs if self.delay == 0 else 0.8 * self.delay + 0.2 * secs
        return chunk, secs

    def start(self, obs: dict, tick: int) -> None:
        self.busy = True
        self.requests.put((obs, tick))

    def poll(self) -> tuple[int, np.ndarray, float] | None:
        """(tick of the observation, (K, D) chunk, inference seconds) once the request finished, else None."""
        with self.lock:
            done, self.done = self.done, None
        if done is not None:
            self.busy = False
        return done

    def _work(self) -> None:
        while (item := self.requests.get()) is not None:
            obs, tick = item
            t = time.perf_counter()
            try:
                chunk, secs = self.predict(obs)
            except PolicyUnavailable:  # asked again on the next tick; meanwhile the queue drains (starved when dry)
                chunk, secs = None, time.perf_counter() - t
            with self.lock:
                self.done = (tick, chunk, secs)

    def close(self, timeout: float = 10.0) -> None:
        """Stops after the request in flight. Waits for it: a thread still inside ONNX Runtime or torch when the
        interpreter exits aborts the process ("terminate called without an active exception", exit 134)."""
        self.requests.put(None)
        self.thread.join(timeout)


def predict_chunk(policy, obs: dict, task: str) -> np.ndarray:
    """One live observation -> the policy's (K, D) chunk as numpy."""
    with torch.inference_mode():
        return policy.predict_action_chunk(observation_to_batch(obs, policy.input_keys, task))[0].float().cpu().numpy()


def _next_action(sched: ChunkScheduler, ahead: AheadInference | None, policy, obs: dict, task: str, tick: int,
                 last_tick: int, cfg: LoopConfig) -> tuple[np.ndarray | None, float, bool]:
    """This tick's action from the scheduler, asking the policy as the mode says: (action or None, inference ms or
    nan, whether a new chunk took over)."""
    if ahead is not None:
        got = ahead.poll()
        merged = got is not None and got[1] is not None
        if merged:
            sched.merge(got[0], got[1], tick)
        lead = math.ceil(ahead.delay / cfg.period) + cfg.overlap
        if not ahead.busy and sched.needs_inference(tick, lead):
            ahead.start(obs, tick)
        return sched.action(tick, last_tick), (got[2] * 1e3 if got else math.nan), merged
    if not sched.needs_inference(tick):
        return sched.action(tick, last_tick), math.nan, False
    t = time.perf_counter()
    sched.add(tick, predict_chunk(policy, obs, task))
    return sched.action(tick, tick - 1), (time.perf_counter() - t) * 1e3, True


def run_loop(policy, robot, task: str, cfg: LoopConfig, record: bool = False) -> StepLog:
    """Drives `robot` (connected) with `policy` until max_steps or, for a simulated robot, its success plus
    steps_after_success. Ctrl-C sends the hold action and returns what was run so far."""
    sched = ChunkScheduler(cfg.chunk, cfg.n_action_steps or getattr(policy, "n_action_steps", 0), cfg.ensemble_coeff)
    pacer = Pacer(cfg.period, cfg.spin_ms / 1e3)
    log = StepLog()
    policy.reset(task=task)
    first = robot.get_observation()
    check_observation(first, policy.observation_spec)
    ahead = AheadInference(policy, task) if cfg.chunk == AHEAD else None
    if ahead is not None:  # the first chunk before the first tick: nothing to execute while it is computed
        sched.add(0, ahead.predict(first)[0])
    last_tick = -1
    try:
        for _ in range(cfg.max_steps):
            tick, jitter = pacer.wait()
            start = pacer.deadline(tick)
            t = time.perf_counter()
            obs = robot.get_observation()
            if record:  # read every image now: a lazily rendered one (LIBERO, ALOHA) cannot be read after the step
                obs = {k: np.asarray(v) for k, v in obs.items()}
            t_obs = time.perf_counter()
            try:
                raw, infer_ms, seam = _next_action(sched, ahead, policy, obs, task, tick, last_tick, cfg)
                lost = False
            except PolicyUnavailable:
                raw, infer_ms, seam, lost = None, math.nan, False, True
            last_tick = tick
            if raw is None:
                action, flag = robot.hold_action(), "unavailable" if lost else "starved"
            elif time.perf_counter() - start > cfg.max_latency:
                action, flag = robot.hold_action(), "late"
            else:
                action, flag = safe_action(raw, robot.hold_action(), robot.action_low, robot.action_high)
            t_act = time.perf_counter()
            robot.send_action(action)
            done = time.perf_counter()
            _log_tick(log, tick, jitter, t_obs - t, infer_ms, done - t_act, done - start, raw, action, flag,
                      obs if record else None, robot.action_low.shape)
            log.seam.append(seam)
            first = getattr(robot, "first_success", None)
            if first is not None and robot.steps - 1 - first >= cfg.steps_after_success:
                break
    except KeyboardInterrupt:
        robot.send_action(robot.hold_action())
        log.interrupted = True
    finally:
        if ahead is not None:
            ahead.close()
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
                      "inference": _stats(log.infer_ms), "actuation": _stats(log.act_ms),
                      "tick_work": _stats(log.work_ms)},
        "deadline_misses": int(sum(w > period_ms for w in log.work_ms)),
        "skipped": log.skipped,
        "late_dropped": flags.count("late"), "nan_hold": flags.count("nan_hold"), "clipped": flags.count("clipped"),
        "starved": flags.count("starved"), "unavailable": flags.count("unavailable"), "seams": seam_jumps(log),
    }


def seam_jumps(log: StepLog) -> dict:
    """|Δa| between consecutive sent actions (max over dimensions): on ticks where a new chunk took over against all
    other ticks, mean and max; a smooth seam looks like the inside of a chunk."""
    sent = np.asarray(log.sent, np.float64)
    if len(sent) < 2:
        return {}
    jump = np.abs(np.diff(sent, axis=0)).max(1)
    seam = np.asarray(log.seam[1:], bool) if len(log.seam) == len(sent) else np.zeros(len(jump), bool)
    out = {}
    for name, sel in (("at_seams", seam), ("inside", ~seam)):
        out[name] = {"n": int(sel.sum()), "mean": round(float(jump[sel].mean()), 4) if sel.any() else None,
                     "max": round(float(jump[sel].max()), 4) if sel.any() else None}
    return out
