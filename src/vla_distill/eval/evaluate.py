"""`vla-distill eval`: closed-loop evaluation of a policy checkpoint or a teacher, the same code path for both.

Output directory (lerobot-eval's files, plus what observability needs):
  eval_info.json        per_task / per_group / overall (lerobot's shape) + policy (parameters, latency, memory) + eval
  observability.json    per-episode phase agreement and flags, per-task direction spread
  episodes/<task>/<i>.json|.npz   one record per finished episode (eval/records.py; what a resumed run skips)
  videos/<task>/episode_<i>.mp4   rollouts with the predicted phase drawn on the frames
  plots/*.png           success per task, phase timelines, latency histogram
Episodes run over worker processes (one torch thread each); batch-1 latency and memory are measured afterwards in
the main process with the CPU to itself.
"""

from __future__ import annotations

import json
import multiprocessing.util as mp_util
import os
import resource
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vla_distill import __version__
from vla_distill.annotate.phases import PhaseConfig, label_phases
from vla_distill.data.format import single_writer, write_json_atomic
from vla_distill.errors import ConfigError, DatasetError
from vla_distill.eval.actors import make_actor
from vla_distill.eval.config import EvalConfig
from vla_distill.eval.metrics import aggregate, latency_summary
from vla_distill.eval.observe import agreement, mean_agreement, observability, phase_flags
from vla_distill.eval.records import EpisodeRecord, read_records, write_episode
from vla_distill.eval.rollout import run_episode
from vla_distill.models.backends import policy_threads
from vla_distill.sim.base import SimulatorUnavailable
from vla_distill.sim.layout import kinematics
from vla_distill.sim.workers import JobPool
from vla_distill.types import to_phase4

PLAN = "eval_plan.json"
INFO = "eval_info.json"
OBSERVABILITY = "observability.json"
LATENCY = "latency_ms.npy"  # the batch-1 measurement's model-call latencies


# ------------------------------------------------------------------------------------------------ worker side
_ACTOR = None
_ENV = None


def _init_worker(cfg: EvalConfig) -> None:
    import torch

    global _ACTOR
    torch.set_num_threads(1)  # one process per core: more threads per process only contend
    os.environ.setdefault("LP_NUM_THREADS", "1")
    _ACTOR = _make_actor(cfg)
    mp_util.Finalize(None, _close_env, exitpriority=10)  # free the GL context while EGL is still loaded


def _make_actor(cfg: EvalConfig):
    return make_actor(cfg.policy, dict(cfg.teacher_options), cfg.device, cfg.n_action_steps, cfg.backend, cfg.chunk)


def _env_for(cfg: EvalConfig, task: str, actor, video: bool):
    """This worker's environment for the task (rebuilt only when the task or cameras change) and its camera keys."""
    global _ENV
    keys, size = cameras_for(cfg, actor.info, video)
    if _ENV is None or _ENV[0] != (task, keys, size):
        if _ENV is not None:
            _ENV[1].close()
        _ENV = ((task, keys, size), cfg.sim.make_env(task, keys, size))
    return _ENV[1], keys


def cameras_for(cfg: EvalConfig, info, video: bool) -> tuple[tuple[str, ...], tuple[int, int]]:
    """The actor's cameras at its size; a camera for the video when the actor looks at none."""
    default = cfg.image_size or cfg.sim.default_image_size
    keys = tuple(info.image_keys)
    size = tuple(info.image_size) if info.image_size else (default, default)
    if video and not keys:
        keys = (cfg.sim.default_camera,)
    return keys, size


def episode_job(cfg: EvalConfig, task: str, episode: int, seed: int) -> EpisodeRecord:
    """Runs one episode in this worker and stores its record; returns the record."""
    import warnings

    warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high")
    actor = _ACTOR
    video = episode < cfg.videos or cfg.video_failures
    env, keys = _env_for(cfg, task, actor, video)
    max_steps = min(cfg.max_steps or env.max_steps, env.max_steps)
    t0 = time.perf_counter()
    res = run_episode(env, actor, task, seed, max_steps, cfg.steps_after_success, keys[0] if video and keys else None,
                      actor.info.phase_names, cfg.instruction(task, episode))
    if res.frames is not None and episode >= cfg.videos and res.first_success is not None:
        res.frames = None  # kept only in case it failed
    return _store(cfg, task, episode, seed, res, actor.info, time.perf_counter() - t0)


def _reference_phases(cfg: EvalConfig, task: str, res, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Ground truth from the expert's branches (where the simulator knows them) and the kinematic annotator run on
    the rollout."""
    out: dict[str, np.ndarray] = {}
    try:
        kin = kinematics(res.state, res.env_state, res.success, cfg.sim.fps, res.contact)
    except DatasetError:  # a state layout without known kinematics: no reference timeline
        return out
    taxonomy = "9" if len(names) == 9 else "4"
    out["annotator"] = to_phase4(label_phases(kin, PhaseConfig(taxonomy=taxonomy)), names or ())
    truth = cfg.sim.ground_truth_phases(task, res.env_state, kin)
    if truth is not None:
        out["ground_truth"] = truth
    return out


def _store(cfg: EvalConfig, task: str, episode: int, seed: int, res, info, seconds: float) -> EpisodeRecord:
    from vla_distill.data.video import encode_video

    out = Path(cfg.out)
    refs = _reference_phases(cfg, task, res, info.phase_names)
    pred = to_phase4(res.phase, info.phase_names)
    reference = refs.get("annotator", refs.get("ground_truth"))
    video_path = None
    if res.frames is not None:
        rel = Path("videos") / task.replace("/", "_") / f"episode_{episode}.mp4"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        encode_video(res.frames, out / rel, int(cfg.sim.fps), codec="libx264", crf=23, gop=30)
        video_path = str(rel)
    first = res.first_success
    record = EpisodeRecord(
        task=task, task_group=cfg.sim.group_of(task), episode=episode, seed=seed, success=first is not None,
        first_success=first, steps=int(len(res.actions)), sum_reward=float(res.reward.sum()),
        max_reward=float(res.reward.max()) if len(res.reward) else 0.0, calls=int(len(res.latency_ms)),
        seconds=round(seconds, 3), video_path=video_path, instruction=cfg.instruction(task, episode) or "",
        phase_agreement={k: agreement(pred, v) for k, v in refs.items()} if (pred >= 0).any() else {},
        flags=phase_flags(pred, reference, res.success, res.state[:, :3], cfg.observe))
    arrays = {"phase": pred, "success": res.success, "hand": res.state[:, :3], "actions": res.actions,
              "directions": res.directions, "direction_steps": res.direction_steps, "latency_ms": res.latency_ms,
              **{f"reference_{k}": v for k, v in refs.items()}}
    write_episode(out, record, arrays)
    return record


# ------------------------------------------------------------------------------------------------ main side
def _check_plan(cfg: EvalConfig) -> None:
    out = Path(cfg.out)
    plan_path = out / PLAN
    if plan_path.exists():
        new = cfg.plan()
        defaults = {f.name: f.default for f in fields(EvalConfig) if f.name in new}
        old = {**{k: v for k, v in defaults.items() if new[k] == v}, **json.loads(plan_path.read_text())}  # older plans
        if old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ConfigError(f"this directory holds an evaluation with other settings ({', '.join(diff)}); "
                              "choose a new --out or delete it", path=out)
    else:
        write_json_atomic(plan_path, cfg.plan())


def _check_held_out(cfg: EvalConfig, info, jobs: list[tuple[str, int, int]]) -> None:
    """Refuses seeds the policy's own training demonstrations were collected with (same task)."""
    root = info.provenance.get("dataset")
    if not cfg.sim.held_out_seeds or not root or not (Path(root) / "meta" / "info.json").exists():
        return
    from vla_distill.data.dataset import RobotDataset

    used = {(e.extra.get("task_name"), e.extra.get("seed")) for e in RobotDataset(root).episodes}
    clash = [(t, s) for t, _, s in jobs if (t, s) in used]
    if clash:
        raise ConfigError(f"evaluation seed {clash[0][1]} of {clash[0][0]} was used to collect the training data in "
                          f"{root}; pick another --seed", field="seed")


def untrained_tasks(cfg: EvalConfig, info) -> list[str]:
    """The evaluated tasks whose instruction the policy's checkpoint does not list (none when it lists none)."""
    if not info.instructions:
        return []
    return [t for t in cfg.tasks if cfg.sim.instruction(t) not in (None, *info.instructions)]


def _run_jobs(cfg: EvalConfig, jobs: list[tuple[str, int, int]], bar: tqdm, records: list[EpisodeRecord],
              actor) -> None:
    def tick(r: EpisodeRecord) -> None:
        records.append(r)
        bar.update(1)
        bar.set_postfix(success=f"{100 * np.mean([x.success for x in records]):.0f}%")

    if cfg.num_workers == 1:  # in this process, with the main actor
        global _ACTOR
        _ACTOR = actor
        try:
            for job in jobs:
                tick(episode_job(cfg, *job))
        finally:
            _ACTOR = None
            _close_env()
        return
    pool = JobPool(cfg.num_workers, _init_worker, (cfg,))
    try:
        for job in jobs:
            pool.submit(job, episode_job, cfg, *job)
        while pool.running():
            for _, record in pool.finished():
                tick(record)
    finally:
        pool.shutdown(cancel=True)


def _close_env() -> None:
    global _ENV
    if _ENV is not None:
        _ENV[1].close()
        _ENV = None


def measure_latency(cfg: EvalConfig, actor) -> dict:
    """Batch-1 model-call latency over `latency_steps` closed-loop steps of the first task, plus peak memory."""
    import torch

    if not cfg.latency_steps:
        return {}
    task = cfg.tasks[0]
    keys, size = cameras_for(cfg, actor.info, False)
    env = cfg.sim.make_env(task, keys, size)
    try:
        seed = cfg.sim.eval_seeds(task, 1, cfg.seed)[0]
        res = run_episode(env, actor, task, seed, cfg.latency_steps, steps_after_success=cfg.latency_steps)
    finally:
        env.close()
    np.save(Path(cfg.out) / LATENCY, res.latency_ms)
    out = latency_summary(res.latency_ms, len(res.actions)) | {"threads": torch.get_num_threads(), "device": cfg.device,
                                                                "load_avg_1m": round(os.getloadavg()[0], 2)}
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if cfg.device.startswith("cuda"):
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def evaluate(cfg: EvalConfig, command: str = "") -> dict:
    """Runs (or resumes) the evaluation; returns eval_info. The policy in this process (the latency pass, a
    one-worker run) gets the threads `run` would give it: two on a 2-core machine whose other core is busy made
    every call wait on a descheduled thread (1.0-1.4 s for the demo student; 7-11 ms with one)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(policy_threads())
    try:
        return _evaluate_with_threads(cfg, command)
    finally:
        torch.set_num_threads(before)


def _evaluate_with_threads(cfg: EvalConfig, command: str) -> dict:
    out = Path(cfg.out)
    actor = _make_actor(cfg)  # fails here, before any worker starts, on a bad path or kind
    jobs = [(t, i, s) for t in cfg.tasks for i, s in enumerate(cfg.sim.eval_seeds(t, cfg.episodes, cfg.seed))]
    _check_held_out(cfg, actor.info, jobs)
    untrained = untrained_tasks(cfg, actor.info)
    for task in untrained:
        print(f"warning: {actor.info.spec} was never trained on {task} ({cfg.sim.instruction(task)!r}): its success "
              "there measures transfer to a new task, not distillation", file=sys.stderr)
    why = cfg.sim.unavailable()
    if why:
        raise SimulatorUnavailable(why)
    with single_writer(out):
        return _evaluate(cfg, command, actor, jobs, untrained)


def _evaluate(cfg: EvalConfig, command: str, actor, jobs: list[tuple[str, int, int]], untrained: list[str]) -> dict:
    out = Path(cfg.out)
    _check_plan(cfg)
    done = read_records(out)
    todo = [j for j in jobs if (j[0], j[1]) not in done]
    records = [done[(t, i)] for t, i, _ in jobs if (t, i) in done]
    t0 = time.perf_counter()
    bar = tqdm(total=len(jobs), initial=len(records), desc="eval", unit="ep", file=sys.stderr, dynamic_ncols=True)
    try:
        _run_jobs(cfg, todo, bar, records, actor)
    finally:
        bar.close()
    order = {(t, i): k for k, (t, i, _) in enumerate(jobs)}
    records.sort(key=lambda r: order[(r.task, r.episode)])  # workers finish in any order; eval_info must not show it
    eval_s = time.perf_counter() - t0 + sum(r.seconds for r in done.values()) / cfg.num_workers
    info = aggregate(records, eval_s)
    try:
        latency = measure_latency(cfg, actor)
    finally:
        actor.close()
    a = actor.info
    info["policy"] = {"spec": a.spec, "kind": a.kind, "parameters": a.parameters, "weights_mb": a.weights_mb,
                      "horizon": a.horizon, "n_action_steps": a.n_action_steps or a.horizon, "chunk": cfg.chunk,
                      "image_keys": list(a.image_keys), "phase_names": list(a.phase_names), **latency,
                      "provenance": a.provenance}
    info["eval"] = {"env": cfg.env, "tasks": list(cfg.tasks), "episodes_per_task": cfg.episodes, "seed": cfg.seed,
                    "seeds": {t: cfg.sim.eval_seeds(t, cfg.episodes, cfg.seed) for t in cfg.tasks},
                    "max_steps": cfg.max_steps or cfg.sim.step_limit, "steps_after_success": cfg.steps_after_success,
                    "workers": cfg.num_workers, "success": "info['success'] at any step", "code_version": __version__,
                    "untrained_tasks": untrained,
                    "command": command}
    obs = observability(out, records, cfg.observe)
    info["observability"] = {"flag_counts": obs["flag_counts"],
                             "flagged_episodes": len({(f["task"], f["episode"]) for f in obs["flags"]}),
                             "phase_agreement": mean_agreement(obs)}
    write_json_atomic(out / OBSERVABILITY, obs)
    try:
        from vla_distill.eval.plots import write_plots

        info["plots"] = write_plots(out, info, obs)
    except ImportError:  # matplotlib is optional
        info["plots"] = {}
    write_json_atomic(out / INFO, info)
    return info
