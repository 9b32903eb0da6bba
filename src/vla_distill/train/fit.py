"""The training loop every job shares (the student, each VITA-VLA stage): a typed Job says what differs, `fit`
runs it. Linear: assemble the step's batch, forward and backward over its micro-batches, clip, step, log, validate
and checkpoint.

Determinism: the samples of step s and every random draw inside it (augmentation, dropout) are functions of
(seed, s) only, so a resumed run repeats an uninterrupted one step for step. Under torchrun each rank takes its
slice of the same global batch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vla_distill import __version__
from vla_distill.config import from_dict
from vla_distill.data.annotations import dropped_episodes
from vla_distill.data.dataset import RobotDataset
from vla_distill.data.format import single_writer
from vla_distill.data.windows import WindowedDataset, split_episodes
from vla_distill.errors import ConfigError, DatasetError
from vla_distill.models.checkpoint import started_from
from vla_distill.train.checkpoint import (
    CHECKPOINTS,
    LAST,
    has_complete_checkpoint,
    last_step,
    load_training_state,
    remove_partial,
    remove_run_files,
    save_checkpoint,
)
from vla_distill.train.config import RunConfig
from vla_distill.train.device import DeviceSetup, autocast, to_device
from vla_distill.types import AUGMENT_KEY

METRICS = "metrics.jsonl"
# what --resume (or a rerun) may change: the length, how each step's batch is split, and how often it checkpoints
# and logs (a slow run killed far from its next checkpoint is resumed with a shorter --save-every; steps are
# seeded by their index, so neither changes what is trained)
RESUMABLE = ("steps", "batch_size", "grad_accum", "save_every", "log_every")


# ---------------------------------------------------------------- a run
def prepare_run(cfg: RunConfig, resume: bool, overrides: tuple[str, ...] = ("steps",)) -> tuple[RunConfig, bool]:
    """The run's config and whether it resumes. Rerunning the command that started a run continues it from its last
    complete checkpoint (as collect, annotate and eval continue); a run with none starts over, its own half-written
    files removed. --resume continues a run without repeating its flags: `overrides` (from --steps, --batch-size,
    --grad-accum, --save-every, --log-every) replace the saved ones, and nothing else may change. Only the length, how
    each step's batch is split and the checkpoint and log cadence may change: a run resumed on another number of
    processes keeps its optimizer batch by adjusting the per-process batch."""
    run = Path(cfg.out)
    saved = run / "train_config.json"
    if resume:
        if not saved.exists():
            raise ConfigError("nothing to resume (no train_config.json); drop --resume to start a new run", path=run)
        bad = set(overrides) - set(RESUMABLE)
        if bad:
            raise ConfigError(f"a resumed run keeps its settings; only {list(RESUMABLE)} may change",
                              field=sorted(bad)[0])
        return _saved_with(cfg, _read_saved(saved), (*overrides, "out")), True
    cfg = replace(cfg, dataset=str(Path(cfg.dataset).resolve()))  # recorded so it resolves from anywhere
    if has_complete_checkpoint(run) and saved.exists():
        old = _read_saved(saved)
        new = json.loads(json.dumps(cfg.to_dict()))  # as saved: tuples become lists
        changed = [k for k in new if k not in (*RESUMABLE, "out") and old.get(k) != new[k]]
        if changed:
            k = changed[0]
            raise ConfigError(f"this directory holds a run with other settings ({k}: {old.get(k)!r} there, {new[k]!r} "
                              "now): rerun its own command to continue it, or choose a new --out", path=run, field=k)
        return _saved_with(cfg, old, (*RESUMABLE, "out")), True
    if os.environ.get("RANK", "0") == "0":  # under torchrun the first process alone tidies up
        remove_run_files(run)
    return cfg, False


def finished_run(cfg: RunConfig) -> Path | None:
    """The last checkpoint of a run already trained to cfg.steps, else None: rerunning a finished run's command (a
    pipeline resumed from its start) returns at once instead of reading the dataset and building its feature caches
    only to find nothing left to train."""
    run = Path(cfg.out)
    done = last_step(run)
    if done < cfg.steps:
        return None
    if os.environ.get("RANK", "0") == "0":  # under torchrun every process finds it; one says so
        print(f"{run}: already trained ({done} of {cfg.steps} steps)", file=sys.stderr)
    return (run / CHECKPOINTS / LAST).resolve()


def resumed_config(cls: type[RunConfig], out: str | Path, changes: dict) -> RunConfig:
    """`--resume`: the run's own config from its train_config.json, with `changes` (what may change) applied."""
    saved = Path(out) / "train_config.json"
    if not saved.exists():
        raise ConfigError("nothing to resume (no train_config.json); drop --resume to start a new run", path=out)
    return from_dict(cls, {**_read_saved(saved), **changes, "out": str(out)})


def _read_saved(path: Path) -> dict:
    """A run's train_config.json, its dataset absolute (runs before that recorded it relative to where they ran)."""
    saved = json.loads(path.read_text())
    return {**saved, "dataset": started_from(saved["dataset"], path.parent, saved.get("out", ""))}


def _saved_with(cfg: RunConfig, saved: dict, fields: tuple[str, ...]) -> RunConfig:
    """The saved run's config (train_config.json's contents) with `fields` taken from cfg."""
    old = from_dict(type(cfg), saved)
    return from_dict(type(cfg), {**old.to_dict(), **{k: getattr(cfg, k) for k in fields}})


def provenance(ds: RobotDataset, cfg: RunConfig, annotation: dict) -> dict:
    """Where a checkpoint came from: its dataset (and fingerprint), the teacher that labelled it, the code version."""
    git = ""
    try:
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {"dataset": str(Path(ds.root).resolve()), "dataset_fingerprint": ds.fingerprint(), "target": cfg.target,
            "teacher": annotation.get("teacher"), "annotation_config": annotation.get("config"),
            "code_version": __version__ + (f"+g{git}" if git else "")}


def training_episodes(ds: RobotDataset, cfg: RunConfig) -> tuple[list[int], list[int]]:
    """The train / validation split by episode, without the episodes `audit --drop` listed (when cfg.drop_audited)."""
    train_eps, val_eps = split_episodes(ds, cfg.val_fraction, cfg.seed)
    if cfg.drop_audited:
        dropped = set(dropped_episodes(ds.root))
        train_eps = [e for e in train_eps if ds.episodes[e].index not in dropped]
        val_eps = [e for e in val_eps if ds.episodes[e].index not in dropped]
    if not train_eps:
        raise DatasetError("no training episodes left after the validation split and audit drops", path=ds.root)
    return train_eps, val_eps


def describe_metrics(values: dict) -> str:
    """'loss 0.1234, per_dim [0.1, 0.2]': numbers to 4 significant digits, lists of them (a per-dimension error) too."""
    def fmt(v) -> str:
        return "[" + ", ".join(fmt(x) for x in v) + "]" if isinstance(v, (list, tuple)) else f"{v:.4g}"

    return ", ".join(f"{k} {fmt(v)}" for k, v in values.items())


def effective_batch(cfg: RunConfig, dev: DeviceSetup) -> str:
    b = cfg.batch_size * dev.world * cfg.grad_accum
    return f"effective batch {b} = {cfg.batch_size} per process x {dev.world} processes x {cfg.grad_accum} accumulation"


def lr_at(step: int, cfg: RunConfig) -> float:
    """Linear warmup, then cosine down to lr * min_lr_ratio at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


# ---------------------------------------------------------------- data order
class BatchStream:
    """Step s's global batch is positions s*G .. s*G+G-1, G = per-process batch x processes x accumulation, in a
    sequence of per-epoch permutations seeded by (seed, epoch). Process r's micro-batch m is the slice
    [(m*world + r)*b, +b) of it, so the optimizer sees the same G samples whatever the split. Each sample carries
    augment_key (its position), which fixes its augmentation. The next step is assembled on a thread while the
    current one trains."""

    def __init__(self, view: WindowedDataset, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 accum: int = 1):
        self.view, self.b, self.seed, self.rank, self.world, self.accum = view, batch_size, seed, rank, world, accum
        self.g = batch_size * world * accum
        self._perms: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1)
        self._pending: tuple[int, object] | None = None

    def indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(G,) dataset indices of the step's global batch and (G,) their positions in the stream."""
        n = len(self.view)
        pos = step * self.g + np.arange(self.g)
        out = np.empty(self.g, np.int64)
        for epoch in np.unique(pos // n):
            with self._lock:
                if epoch not in self._perms:
                    self._perms = {epoch: np.random.default_rng([self.seed, int(epoch)]).permutation(n)}
                perm = self._perms[epoch]
            sel = pos // n == epoch
            out[sel] = perm[pos[sel] % n]
        return out, pos

    def _load(self, step: int) -> list[dict]:
        idx, pos = self.indices(step)
        micro = []
        for m in range(self.accum):
            part = slice((m * self.world + self.rank) * self.b, (m * self.world + self.rank + 1) * self.b)
            batch = self.view.batch(idx[part])
            batch[AUGMENT_KEY] = torch.from_numpy(pos[part] + self.seed * (1 << 40))
            micro.append(batch)
        return micro

    def get(self, step: int) -> list[dict]:
        """This process's micro-batches of the step (accum of them)."""
        if self._pending is not None and self._pending[0] == step:
            batch = self._pending[1].result()
        else:
            batch = self._load(step)
        self._pending = (step + 1, self._pool.submit(self._load, step + 1))
        return batch

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------- validation and logging
def validation_batches(view: WindowedDataset, to_batch: Callable[[dict], dict], cfg: RunConfig, dev: DeviceSetup):
    """cfg.val_batches batches of evenly spaced validation frames (the same frames at every validation), on the
    device."""
    n = len(view)
    idx = np.linspace(0, n - 1, min(n, cfg.val_batches * cfg.batch_size)).round().astype(np.int64)
    for s in range(0, len(idx), cfg.batch_size):
        yield to_device(to_batch(view.batch(idx[s : s + cfg.batch_size])), dev.device)


class Metrics:
    """metrics.jsonl (rank 0), truncated to the resumed step so the file is one consistent curve; TensorBoard
    too when the `tensorboard` package is installed."""

    def __init__(self, run: Path, start_step: int, enabled: bool):
        self.path, self.enabled, self.tb = run / METRICS, enabled, None
        if not enabled:
            return
        if self.path.exists():
            lines = self.path.read_text().splitlines()
            keep = [line for line in lines if line and json.loads(line)["step"] <= start_step]
            self.path.write_text("".join(line + "\n" for line in keep))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run / "tensorboard"), purge_step=start_step + 1)
        except ImportError:
            pass

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            split = record.get("split", "train")
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step",):
                    self.tb.add_scalar(f"{split}/{k}", v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ---------------------------------------------------------------- the loop
@dataclass
class Job:
    """What differs between the models this loop trains (the student; a VITA-VLA stage)."""

    policy: torch.nn.Module
    params: list[tuple[str, torch.nn.Parameter]]  # the trainable ones
    stream: BatchStream
    to_batch: Callable[[dict], dict]  # loader item -> the model's batch
    loss: Callable[[torch.nn.Module, dict, torch.Generator], tuple[torch.Tensor, dict]]  # (model, batch, gen)
    validate: Callable[[], dict]
    provenance: dict
    describe: str
    find_unused: bool = False
    lr_scales: tuple[tuple[str, float], ...] = ()  # (parameter-name prefix, factor on the schedule's lr)


def fit(job: Job, cfg: RunConfig, dev: DeviceSetup, resume: bool) -> Path:
    """AdamW with warmup + cosine, gradient clipping, optional EMA, metrics.jsonl and TensorBoard, validation and an
    atomic lerobot-layout checkpoint every save_every steps, resume from the last one (repeating an uninterrupted run
    step for step), progress on stderr. Returns the last checkpoint's directory."""
    if dev.rank != 0:  # rank 0 alone writes the run directory
        return _fit(job, cfg, dev, resume)
    try:
        return _fit(job, cfg, dev, resume)
    except KeyboardInterrupt:
        run = Path(cfg.out)
        last = f"the last checkpoint is {(run / CHECKPOINTS / LAST).resolve().name}"
        kept = last if has_complete_checkpoint(run) else "no checkpoint was completed"
        print(f"\ninterrupted: {kept} in {run}; run the same command again to continue", file=sys.stderr)
        raise


@contextlib.contextmanager
def owned_run(cfg: RunConfig) -> Iterator[None]:
    """The run directory locked by this process (single_writer) from before prepare_run tidies it up until training
    ends: the same command started twice would otherwise delete the first one's files before its first checkpoint,
    or interleave two runs' checkpoints after it. Under torchrun the first process holds it for all."""
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    run = Path(cfg.out)
    created = not run.exists()
    try:
        with single_writer(run):
            yield
    except BaseException:
        if created and run.is_dir() and not any(run.iterdir()):  # refused before it wrote anything: leave no trace
            run.rmdir()
        raise


def _optimizer(job: Job, cfg: RunConfig) -> torch.optim.Optimizer:
    """Weight decay on matrices only; a parameter under one of job.lr_scales' prefixes gets that factor on the lr."""
    def scale(name: str) -> float:
        return next((f for prefix, f in job.lr_scales if name.startswith(prefix)), 1.0)

    groups = {}
    for n, p in job.params:
        groups.setdefault((p.ndim >= 2, scale(n)), []).append(p)
    return torch.optim.AdamW([{"params": ps, "weight_decay": cfg.weight_decay if decay else 0.0, "lr_scale": s}
                              for (decay, s), ps in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1]))],
                             lr=cfg.lr, betas=(0.9, 0.95))


@torch.no_grad()
def _update_ema(ema: dict[str, torch.Tensor], policy: torch.nn.Module, decay: float) -> None:
    for k, v in policy.state_dict().items():
        if v.dtype.is_floating_point:
            ema[k].lerp_(v, 1 - decay)
        else:
            ema[k].copy_(v)


def _fit(job: Job, cfg: RunConfig, dev: DeviceSetup, resume: bool) -> Path:
    run, policy, main = Path(cfg.out), job.policy, dev.rank == 0
    optimizer = _optimizer(job, cfg)
    ema = {k: v.detach().clone() for k, v in policy.state_dict().items()} if cfg.ema_decay > 0 else None
    start = load_training_state(run, policy, optimizer, ema) if resume else 0
    if main:
        run.mkdir(parents=True, exist_ok=True)
        remove_partial(run)
        (run / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    model = policy
    if dev.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(policy, find_unused_parameters=job.find_unused)
    metrics = Metrics(run, start, main)
    stream = job.stream
    if main:
        print(job.describe, file=sys.stderr)
        if start:
            print(f"resuming at step {start} of {cfg.steps}", file=sys.stderr)
    policy.train()
    trainable = [p for _, p in job.params]
    last_dir = run / CHECKPOINTS / LAST
    bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", disable=not main, file=sys.stderr,
               dynamic_ncols=True)
    t_log, n_log = time.perf_counter(), 0
    try:
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            micro = [to_device(job.to_batch(raw), dev.device) for raw in stream.get(step)]
            t_data = time.perf_counter() - t0
            if step == start and main:
                shapes = {k: tuple(v.shape) for k, v in micro[0].items() if isinstance(v, torch.Tensor)}
                print(f"first batch: {shapes}", file=sys.stderr)
            torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout of this step
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_033 + step)  # for models without augment_key
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg) * group.get("lr_scale", 1.0)
            optimizer.zero_grad(set_to_none=True)
            loss = torch.zeros((), device=dev.device)
            for i, batch in enumerate(micro):
                # gradients are averaged across processes once per step, on the last micro-batch
                sync = dev.world == 1 or i == len(micro) - 1
                with (contextlib.nullcontext() if sync else model.no_sync()), autocast(dev):
                    part, named = job.loss(model, batch, gen)
                    (part / len(micro)).backward()
                loss = loss + part.detach() / len(micro)
            if dev.world > 1:  # the logged loss is the optimizer's batch's, not this process's share
                torch.distributed.all_reduce(loss, op=torch.distributed.ReduceOp.AVG)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip))
            optimizer.step()
            if ema is not None:
                _update_ema(ema, policy, cfg.ema_decay)
            n_log += stream.g
            done = step + 1
            if main and (done % cfg.log_every == 0 or done == cfg.steps):
                sps = n_log / (time.perf_counter() - t_log)
                metrics.log({"step": done, "loss": float(loss.detach()), **named, "lr": lr_at(step, cfg),
                             "grad_norm": grad_norm,
                             "samples_per_s": sps, "data_s": t_data, "step_s": time.perf_counter() - t0})
                t_log, n_log = time.perf_counter(), 0
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}", samples_s=f"{sps:.0f}")
            bar.update(1)
            if done % cfg.save_every == 0 or done == cfg.steps:
                if main:
                    val = job.validate()
                    if val:
                        metrics.log({"step": done, "split": "val", **val})
                        bar.write(f"step {done}: {describe_metrics(val)}", file=sys.stderr)
                    save_checkpoint(run, done, policy, optimizer, ema, cfg.to_dict(), {**job.provenance, "step": done},
                                    {"kind": "warmup_cosine", "step": done, "lr": lr_at(step, cfg)})
                if dev.world > 1:
                    torch.distributed.barrier()
    finally:
        bar.close()
        stream.close()
        metrics.close()
    return last_dir.resolve() if last_dir.exists() else last_dir
