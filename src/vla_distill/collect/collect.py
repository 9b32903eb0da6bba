"""Collect scripted-expert demonstrations from a simulator (sim.registry: MetaWorld by default) into a LeRobotDataset
v3.0; or, with a trained policy driving (DAgger), the rollouts of that policy, failures included, for
`annotate --teacher scripted` to relabel.

Crash safety: every attempt runs in a worker and lands in `<out>/.partial/` atomically (episode directory
renamed into place, then a one-line marker), so an interrupted run (Ctrl-C or kill -9) resumes from its
markers. The dataset itself is assembled from `.partial` only when every task is done, in `<out>/.building`,
and moved into place with `meta/` last; a dataset directory therefore never holds a partial episode.
"""

from __future__ import annotations

import json
import multiprocessing.util as mp_util
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vla_distill.collect.config import CollectConfig
from vla_distill.data import stats as stats_lib
from vla_distill.data.format import INFO_PATH, removed_on_failure, single_writer, video_feature, write_json_atomic
from vla_distill.data.video import encode_video
from vla_distill.data.writer import DatasetWriter, EncodedVideo, Episode
from vla_distill.errors import ConfigError
from vla_distill.sim.base import Env, Expert
from vla_distill.sim.workers import JobPool
from vla_distill.types import ACTION, COLLECTION_PATH, DONE, REWARD, SUCCESS

PARTIAL = ".partial"
BUILDING = ".building"
PUBLISHED = ("data", "videos", "images", "meta")


@dataclass(frozen=True)
class Attempt:
    task: str
    task_pos: int
    attempt: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.task}-{self.attempt:05d}"


def dataset_features(cfg: CollectConfig) -> dict[str, dict]:
    """The cameras, the simulator's own features (state, privileged state, contact, action), then reward and flags."""
    h, w, fps = cfg.cameras.height, cfg.cameras.width, cfg.sim.fps
    image = {"dtype": "image", "shape": [h, w, 3], "names": ["height", "width", "channels"]}
    cams = {k: (video_feature(h, w, fps, cfg.video_codec) if cfg.image_format == "video" else dict(image))
            for k in cfg.cameras.keys}
    return {
        **cams,
        **cfg.sim.features(),
        REWARD: {"dtype": "float32", "shape": [1], "names": None},
        SUCCESS: {"dtype": "bool", "shape": [1], "names": None},
        DONE: {"dtype": "bool", "shape": [1], "names": None},
    }


# ------------------------------------------------------------------------------------------------ worker side
_ENV: tuple[str, Env] | None = None  # (task, its environment)


def _env_for(task: str, cfg: CollectConfig) -> Env:
    global _ENV
    if _ENV is None or _ENV[0] != task:
        if _ENV is not None:
            _ENV[1].close()
        else:  # free the GL context in the worker's own exit hook, while EGL is still loaded
            mp_util.Finalize(None, _close_env, exitpriority=10)
        size = (cfg.cameras.height, cfg.cameras.width)
        _ENV = (task, cfg.sim.make_env(task, tuple(cfg.cameras.keys), size))
    return _ENV[1]


def rollout(env: Env, seed: int, steps_after_success: int, expert: Expert | None = None, driver=None,
            action_noise: float = 0.0, noise_dims: tuple[int, ...] = (), rotation_noise: float = 0.0,
            rotation_dims: tuple[int, ...] = ()) -> tuple[dict[str, np.ndarray], int | None]:
    """Runs the task's scripted expert (reading the privileged state at full precision), its `noise_dims`
    perturbed by N(0, (action_noise · expert.noise_scale)²) (seeded by `seed`; an expert whose skill needs more
    precision than the recipe's noise leaves, a drawer's handle, says so by a noise_scale below 1), its
    `rotation_dims` by N(0, (rotation_noise · expert.noise_scale)²) from the same generator, or a trained
    policy (`driver`, a models Policy) in its place; returns per-frame arrays (the executed actions) and the first
    success frame (None if never)."""
    if (expert is None) == (driver is None):
        raise ValueError("rollout: give the expert or a driving policy, not both")
    scale = getattr(expert, "noise_scale", 1.0)
    # one std per perturbed dimension, xyz (noise_dims) and the hand's rotation (rotation_dims) each its own level;
    # rotation drawn only when asked for, so a collection without it draws what it always did
    turn = list(rotation_dims) if rotation_noise else []
    dims = [*noise_dims, *turn]
    std = scale * np.array([action_noise] * len(noise_dims) + [rotation_noise] * len(turn))
    obs = env.reset(seed)
    if driver is not None:
        driver.reset(task=env.instruction)
    rng = np.random.default_rng(seed)
    low, high = env.action_bounds()
    frames: dict[str, list] = {k: [] for k in (*obs, ACTION, REWARD, SUCCESS)}
    first_success = None
    for t in range(env.max_steps):
        action = expert(env.env_state) if driver is None else _policy_action(driver, obs, env.instruction)
        if std.any():  # the gripper stays the expert's: a dropped object teaches nothing about recovering a path
            noisy = action[dims] + rng.normal(0, 1, len(dims)) * std
            action[dims] = np.clip(noisy, low[dims], high[dims]).astype(action.dtype)
        for k, v in obs.items():
            frames[k].append(v)
        obs, reward, success = env.step(action)
        frames[ACTION].append(action)
        frames[REWARD].append(np.float32(reward))
        frames[SUCCESS].append(success)
        if success and first_success is None:
            first_success = t
        if first_success is not None and t - first_success >= steps_after_success:
            break
    out = {k: np.stack(v) for k, v in frames.items()}
    out[DONE] = np.zeros(len(out[ACTION]), dtype=bool)
    out[DONE][-1] = True
    return out, first_success


def _policy_action(policy, obs: dict[str, np.ndarray], instruction: str) -> np.ndarray:
    import torch

    from vla_distill.models.base import observation_to_batch

    with torch.inference_mode():
        action = policy.select_action(observation_to_batch(obs, policy.input_keys, instruction))
    return action[0].float().numpy()


_POLICY: tuple[str, object] | None = None


def _policy_for(path: str):
    """The worker's copy of the driving policy, loaded once; one torch thread, as the worker owns one core."""
    global _POLICY
    if _POLICY is None or _POLICY[0] != path:
        import torch

        from vla_distill.models.backends import load_policy

        torch.set_num_threads(1)
        _POLICY = (path, load_policy(path))
    return _POLICY[1]


def check_policy(cfg: CollectConfig) -> None:
    """Up front, in the driver: the policy loads and the collection renders the cameras it reads, at its size."""
    from vla_distill.models.backends import load_policy
    from vla_distill.models.base import policy_cameras

    cams, size = policy_cameras(load_policy(cfg.policy))
    wrong = []  # (field, the flag that fixes it): both named when both are wrong
    if any(k not in cfg.cameras.keys for k in cams):
        wrong.append(("cameras", "--cameras " + ",".join(k.split(".")[-1] for k in cams)))
    if size is not None and tuple(size) != (cfg.cameras.height, cfg.cameras.width):
        wrong.append(("image_size", f"--image-size {size[0]}"))
    if wrong:
        raise ConfigError(f"the policy reads {', '.join(cams)} at {size[0]}x{size[1]} px; collect with "
                          f"{' '.join(fix for _, fix in wrong)}", field=" and ".join(f for f, _ in wrong))


def _init_worker() -> None:
    # Each worker owns a core; llvmpipe's own render threads would only contend with the other workers.
    os.environ.setdefault("LP_NUM_THREADS", "1")


def _close_env() -> None:
    global _ENV
    if _ENV is not None:
        _ENV[1].close()
        _ENV = None


def run_attempt(att: Attempt, cfg: CollectConfig, partial: Path) -> dict:
    """Worker job: one expert rollout; a success is stored as an episode directory, then a marker is written."""
    # The experts' gains exceed the action range on purpose; we clip, so the warning is noise.
    warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high")
    t0 = time.perf_counter()
    env = _env_for(att.task, cfg)
    driver = _policy_for(cfg.policy) if cfg.policy else None
    expert = cfg.sim.expert(att.task) if driver is None else None
    frames, first_success = rollout(env, att.seed, cfg.steps_after_success, expert, driver, cfg.action_noise,
                                    cfg.sim.noise_dims, cfg.rotation_noise, cfg.sim.rotation_dims)
    n = len(frames[ACTION])
    marker = {"task": att.task, "attempt": att.attempt, "seed": att.seed, "frames": n, "success_frame": first_success}
    if first_success is not None or cfg.policy:
        _store_episode(partial / "episodes" / att.name, frames, cfg, marker)
    marker["seconds"] = round(time.perf_counter() - t0, 3)
    write_json_atomic(partial / "attempts" / f"{att.name}.json", marker)
    return marker


def _store_episode(final: Path, frames: dict[str, np.ndarray], cfg: CollectConfig, marker: dict) -> None:
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    stats = stats_lib.episode_stats(frames, dataset_features(cfg))
    arrays = dict(frames)
    with removed_on_failure(tmp):
        if cfg.image_format == "video":
            for key in cfg.cameras.keys:
                encode_video(arrays.pop(key), tmp / f"{key}.mp4", cfg.sim.fps, cfg.video_codec)
        np.savez(tmp / "frames.npz", **arrays)
        (tmp / "episode.json").write_text(json.dumps({"marker": marker, "stats": stats_lib.to_json(stats)}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


# ------------------------------------------------------------------------------------------------ driver side
class Collector:
    def __init__(self, cfg: CollectConfig, out: str | Path):
        self.cfg = cfg
        self.out = Path(out)
        self.partial = self.out / PARTIAL

    def run(self) -> Path:
        if (self.out / INFO_PATH).exists() and not self.partial.exists():
            self._check_same_plan(self.out / COLLECTION_PATH, lambda d: d["config"])
            print(f"{self.out}: already complete")
            return self.out
        if self.cfg.policy:
            check_policy(self.cfg)
        with single_writer(self.out):
            self._prepare_partial()
            markers = self._load_markers()
            if len(markers):
                print(f"resuming: {len(markers)} attempts already done in {self.partial}")
            self._collect(markers)  # adds each finished attempt's marker to `markers`
            return self._publish(markers)

    def _prepare_partial(self) -> None:
        if self.out.exists() and not self.partial.exists() and any(self.out.iterdir()):
            raise ConfigError("output directory exists and is not an unfinished collection; choose another",
                              field=str(self.out))
        (self.partial / "attempts").mkdir(parents=True, exist_ok=True)
        (self.partial / "episodes").mkdir(parents=True, exist_ok=True)
        plan_path = self.partial / "plan.json"
        if plan_path.exists():
            self._check_same_plan(plan_path, lambda d: d)
        else:
            write_json_atomic(plan_path, self.cfg.plan())
        for leftover in (self.partial / "episodes").rglob("*.tmp"):  # an attempt killed mid-write
            shutil.rmtree(leftover, ignore_errors=True)

    def _check_same_plan(self, path: Path, select) -> None:
        earlier = select(json.loads(path.read_text()))
        now = json.loads(json.dumps(self.cfg.plan()))  # as it reads back from JSON (tuples become lists)
        if earlier != now:
            diff = sorted(k for k in earlier if earlier.get(k) != now.get(k))
            raise ConfigError(f"{self.out} was started with different settings ({', '.join(diff)}); use another --out "
                              "or the same settings", field=diff[0] if diff else None)

    def _load_markers(self) -> dict[str, dict]:
        out = {}
        attempts = self.partial / "attempts"
        for p in sorted(attempts.rglob("*.json")):  # a task name may hold a "/" (libero_object/3)
            name = p.relative_to(attempts).with_suffix("").as_posix()
            m = json.loads(p.read_text())
            if not self._kept(m) or (self.partial / "episodes" / name).is_dir():
                out[name] = m
        return out

    def _kept(self, marker: dict) -> bool:
        """An attempt that becomes an episode: an expert's success, or any rollout of a driving policy."""
        return marker["success_frame"] is not None or bool(self.cfg.policy)

    def _attempt(self, pos: int, attempt: int) -> Attempt:
        return Attempt(self.cfg.tasks[pos], pos, attempt, self.cfg.attempt_seed(pos, attempt))

    def _next_attempts(self, done: dict[str, dict], running: list[Attempt]) -> list[Attempt]:
        """Per task: enough new attempts that finished + running successes could reach the target."""
        busy = {a.name for a in running}
        todo = []
        for pos, task in enumerate(self.cfg.tasks):
            kept = sum(m["task"] == task and self._kept(m) for m in done.values())
            need = self.cfg.episodes - kept - sum(a.task == task for a in running)
            attempt = 0
            while need > 0 and attempt < self.cfg.max_attempts:
                att = self._attempt(pos, attempt)
                if att.name not in done and att.name not in busy:
                    todo.append(att)
                    need -= 1
                attempt += 1
        return todo

    def _collect(self, done: dict[str, dict]) -> None:
        total = len(self.cfg.tasks) * self.cfg.episodes
        kept = lambda: sum(self._kept(m) for m in done.values())  # noqa: E731
        bar = tqdm(total=total, initial=min(kept(), total), desc="collect", unit="ep", dynamic_ncols=True)
        frames, t0 = 0, time.perf_counter()
        # the simulator imported once, in the forkserver, not in every worker
        pool = JobPool(self.cfg.num_workers, _init_worker, preload=(__name__, *self.cfg.sim.preload))
        try:
            while True:
                for att in self._next_attempts(done, pool.running()):
                    if len(pool.running()) >= 2 * self.cfg.num_workers:
                        break
                    pool.submit(att, run_attempt, att, self.cfg, self.partial)
                if not pool.running():
                    break
                for att, marker in pool.finished():
                    done[att.name] = marker
                    frames += marker["frames"]
                    bar.update(int(self._kept(marker)))
                    bar.set_postfix(tried=len(done), frames_per_s=f"{frames / (time.perf_counter() - t0):.0f}")
        except BaseException as e:  # Ctrl-C, a full disk: the bar ends before the CLI's one line
            pool.shutdown(wait=False, cancel=True)
            bar.close()
            if isinstance(e, KeyboardInterrupt):
                print(f"\ninterrupted: {kept()} episodes kept in {self.partial}; run the same command again to resume")
            raise
        pool.shutdown()
        bar.close()

    def _publish(self, markers: dict[str, dict]) -> Path:
        building = self.out / BUILDING
        shutil.rmtree(building, ignore_errors=True)
        per_task = self._summary(markers)
        with removed_on_failure(building):  # .partial keeps the episodes for the rerun
            with DatasetWriter(building, self.cfg.sim.fps, dataset_features(self.cfg),
                               robot_type=self.cfg.sim.robot_type,
                               video_codec=self.cfg.video_codec) as writer:
                for task in self.cfg.tasks:
                    for name in per_task[task]["kept_attempts"]:
                        writer.add_episode(self._load_episode(self.partial / "episodes" / name, task))
            write_json_atomic(building / COLLECTION_PATH, {"config": self.cfg.plan(), "tasks": per_task})
        for sub in PUBLISHED:  # meta last: info.json marks the dataset complete
            shutil.rmtree(self.out / sub, ignore_errors=True)
        for sub in PUBLISHED:
            if (building / sub).exists():
                os.replace(building / sub, self.out / sub)
        shutil.rmtree(building, ignore_errors=True)
        shutil.rmtree(self.partial, ignore_errors=True)
        n = sum(len(t["kept_attempts"]) for t in per_task.values())
        print(f"wrote {n} episodes to {self.out}")
        for task, t in per_task.items():
            if self.cfg.policy:
                print(f"  {task:<28} {t['kept']:>3} rollouts of the policy, {t['policy_successes']:>3} successful")
                continue
            short = f"  (wanted {self.cfg.episodes}: the expert failed too often)"
            note = "" if t["kept"] == self.cfg.episodes else short
            print(f"  {task:<28} kept {t['kept']:>3} of {t['tried']:>3} tried{note}")
        return self.out

    def _summary(self, markers: dict[str, dict]) -> dict[str, dict]:
        out = {}
        for pos, task in enumerate(self.cfg.tasks):
            mine = sorted((m for m in markers.values() if m["task"] == task), key=lambda m: m["attempt"])
            ok = [self._attempt(pos, m["attempt"]).name for m in mine if self._kept(m)][: self.cfg.episodes]
            out[task] = {
                "instruction": self.cfg.sim.instruction(task),
                "difficulty": self.cfg.sim.group_of(task),
                "tried": len(mine),
                "kept": len(ok),
                "failed_seeds": [m["seed"] for m in mine if m["success_frame"] is None],
                "kept_attempts": ok,
                **({"policy_successes": sum(m["success_frame"] is not None for m in mine)} if self.cfg.policy else {}),
            }
        return out

    def _load_episode(self, path: Path, task: str) -> Episode:
        info = json.loads((path / "episode.json").read_text())
        with np.load(path / "frames.npz") as z:
            frames = {k: z[k] for k in z.files}
        if self.cfg.image_format == "video":  # "image" keeps the raw frames in frames.npz
            frames.update({key: EncodedVideo(path / f"{key}.mp4") for key in self.cfg.cameras.keys})
        m = info["marker"]
        meta = {"task_name": task, "seed": m["seed"], "attempt": m["attempt"], "success_frame": m["success_frame"]}
        instruction = self.cfg.sim.instruction(task) or info["marker"].get("instruction", task)
        return Episode(frames, task=instruction, stats=stats_lib.from_json(info["stats"]), meta=meta)


def collect(cfg: CollectConfig, out: str | Path) -> Path:
    return Collector(cfg, out).run()
