"""`vla-distill train`: the student on an annotated dataset, three losses, lerobot-layout checkpoints, resumable.

Determinism: the samples of step s and every random draw inside it (augmentation, dropout) are functions of
(seed, s) only, so a resumed run repeats an uninterrupted one step for step. Under torchrun each rank takes its
slice of the same global batch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vla_distill.annotate import run as ann
from vla_distill.annotate.phases import PHASES_4
from vla_distill.config import from_dict
from vla_distill.data.dataset import RobotDataset
from vla_distill.data.format import single_writer
from vla_distill.data.windows import WindowedDataset, split_episodes
from vla_distill.errors import ConfigError, DatasetError
from vla_distill.models.student import PRESETS, StudentPolicy, preset_config
from vla_distill.models.vision import VisionConfig
from vla_distill.train.checkpoint import CHECKPOINTS, LAST, load_training_state, save_checkpoint
from vla_distill.train.config import TrainConfig
from vla_distill.train.losses import action_loss, student_losses
from vla_distill.types import ACTION, PAD_SUFFIX

METRICS = "metrics.jsonl"
RESUMABLE = ("steps", "batch_size", "grad_accum")  # what --resume may change


# ---------------------------------------------------------------- what the losses need from the dataset
def check_dataset(ds: RobotDataset, cfg: TrainConfig) -> str:
    """The action target's column; a clear error for each loss whose column is missing."""
    target = ann.TEACHER_KEY if cfg.target == "teacher" else ACTION
    if target not in ds.features:
        how = ("annotate it with a teacher (vla-distill annotate --teacher ...), or train on the dataset's own "
               "actions with --target dataset") if cfg.target == "teacher" else "this dataset has no action column"
        raise DatasetError(f"the action loss needs column '{target}': {how}", path=ds.root, field=target)
    if cfg.loss.phase_weight > 0 and ann.PHASE_KEY not in ds.features:
        raise DatasetError(f"the phase loss needs column '{ann.PHASE_KEY}': annotate with --phases kinematic|vlm, "
                           "or turn the loss off with --phase-weight 0", path=ds.root, field=ann.PHASE_KEY)
    if cfg.loss.direction_weight > 0:
        if ann.DIRECTION_KEY not in ds.features or not (ds.root / ann.DIRECTIONS_PATH).exists():
            raise DatasetError(f"the direction loss needs column '{ann.DIRECTION_KEY}' and {ann.DIRECTIONS_PATH}: "
                               "annotate with --directions kinematic|vlm, or turn the loss off with --direction-weight 0",
                               path=ds.root, field=ann.DIRECTION_KEY)
    for key in (*cfg.cameras, *cfg.depth_keys, *cfg.state_keys):
        if key not in ds.features:
            raise DatasetError(f"no such feature (have: {sorted(k for k in ds.features if k.startswith('observation.'))})",
                               path=ds.root, field=key)
    if not cameras(ds, cfg):
        raise DatasetError("the student needs at least one camera and this dataset has none", path=ds.root)
    return target


def cameras(ds: RobotDataset, cfg: TrainConfig) -> list[str]:
    """The student's cameras: --cameras, or every camera of the dataset."""
    return list(cfg.cameras or ds.camera_keys)


@dataclass
class Views:
    train: WindowedDataset
    val: WindowedDataset | None
    target_key: str
    chunked: bool  # the target column already holds (H, D) chunks per frame
    cue_emb: torch.Tensor | None  # (C, E) text embedding of every distinct cue


def build_views(ds: RobotDataset, cfg: TrainConfig, target: str, train_eps: list[int], val_eps: list[int]) -> Views:
    chunked = len(ds.features[target]["shape"]) == 2
    if chunked and ds.features[target]["shape"][0] < cfg.horizon:
        raise ConfigError(f"the teacher answered {ds.features[target]['shape'][0]}-step chunks; --horizon "
                          f"{cfg.horizon} needs at least that many", field="horizon")
    keys = [*cameras(ds, cfg), *cfg.depth_keys, *cfg.state_keys, target]
    keys += [k for k, w in ((ann.PHASE_KEY, cfg.loss.phase_weight), (ann.DIRECTION_KEY, cfg.loss.direction_weight)) if w > 0]
    deltas = {} if chunked else {target: range(cfg.horizon)}
    train = WindowedDataset(ds, deltas, episodes=train_eps, keys=keys)
    val = WindowedDataset(ds, deltas, episodes=val_eps, keys=keys) if val_eps else None
    cue_emb = None
    if (ds.root / ann.DIRECTIONS_PATH).exists():  # check_dataset made sure it is there when the loss needs it
        cue_emb = torch.from_numpy(ann.read_directions(ds.root)[1].copy())
    return Views(train, val, target, chunked, cue_emb)


def policy_batch(raw: dict, views: Views, cfg: TrainConfig) -> dict:
    """Loader item -> the policy's batch (see student_losses for the keys)."""
    batch = dict(raw)
    act = batch.pop(views.target_key).float()
    if views.chunked:  # (B, H, D) per frame -> the first K steps, none of them padding
        batch[ACTION] = act[:, : cfg.horizon]
        batch[ACTION + PAD_SUFFIX] = torch.zeros(act.shape[:1] + (cfg.horizon,), dtype=torch.bool)
    else:
        batch[ACTION] = act.reshape(len(act), cfg.horizon, -1)
        batch[ACTION + PAD_SUFFIX] = batch.pop(views.target_key + PAD_SUFFIX)
    if ann.PHASE_KEY in batch:
        batch[ann.PHASE_KEY] = batch[ann.PHASE_KEY].reshape(-1)
    if ann.DIRECTION_KEY in batch:
        ids = batch[ann.DIRECTION_KEY].reshape(-1)
        batch[ann.DIRECTION_KEY] = ids
        batch["direction_embedding"] = views.cue_emb[ids.clamp_min(0)]
    return batch


# ---------------------------------------------------------------- the model
def normalization(ds: RobotDataset, cfg: TrainConfig, target: str, train_eps: list[int]) -> dict:
    """Stats of the training split only (validation episodes never leak into normalization)."""
    rows = np.concatenate([ds.episode_rows(e) for e in train_eps])
    state = np.concatenate([np.asarray(ds.column(k)[rows], np.float64).reshape(len(rows), -1) for k in cfg.state_keys], 1)
    act = np.asarray(ds.column(target)[rows], np.float64)
    act = act.reshape(-1, act.shape[-1])
    img = ds.episode_stats(train_eps)
    cams = cameras(ds, cfg)
    mean = np.stack([np.asarray(img[k]["mean"], np.float32).reshape(-1)[:3] for k in cams])
    std = np.stack([np.asarray(img[k]["std"], np.float32).reshape(-1)[:3] for k in cams])
    if cfg.depth_keys:  # the depth channel is the first channel of its key
        mean = np.concatenate([mean, np.stack([np.asarray(img[k]["mean"]).reshape(-1)[:1] for k in cfg.depth_keys])], 1)
        std = np.concatenate([std, np.stack([np.asarray(img[k]["std"]).reshape(-1)[:1] for k in cfg.depth_keys])], 1)
    return {
        "state_mean": state.mean(0), "state_std": np.maximum(state.std(0), 1e-3),
        "action_mean": act.mean(0), "action_std": np.maximum(act.std(0), 1e-3),
        "action_min": act.min(0), "action_max": act.max(0),
        "image_mean": mean[..., None, None], "image_std": np.maximum(std, 1e-3)[..., None, None],
    }


def task_embeddings(ds: RobotDataset, text_encoder: str) -> np.ndarray:
    """(T, E) by task_index: stored by annotate, else embedded here once."""
    stored = ann.read_task_embeddings(ds.root)
    if stored is not None and stored[0] == list(ds.tasks):
        return stored[1]
    from vla_distill.annotate.text import TextEncoder

    return TextEncoder(text_encoder).encode(list(ds.tasks))


def annotation_meta(ds: RobotDataset) -> dict:
    """meta/annotation.json (teacher provenance, annotation settings), or {} for a dataset never annotated."""
    path = ds.root / ann.ANNOTATION_PATH
    return json.loads(path.read_text()) if path.exists() else {}


def build_policy(ds: RobotDataset, cfg: TrainConfig, target: str, train_eps: list[int], annotation: dict) -> StudentPolicy:
    text_encoder = annotation.get("config", {}).get("text_encoder", "")
    cams = cameras(ds, cfg)
    h, w = ds.features[cams[0]]["shape"][:2]
    phase_names = PHASES_4
    if (ds.root / ann.PHASES_PATH).exists():
        import pyarrow.parquet as pq

        phase_names = tuple(pq.read_table(ds.root / ann.PHASES_PATH).sort_by("phase_index").column("phase").to_pylist())
    emb = task_embeddings(ds, text_encoder)
    vision = PRESETS[cfg.preset]["vision"]
    if cfg.vision:
        vision = VisionConfig(**{**vision.__dict__, "kind": cfg.vision})
    try:
        config = preset_config(
            cfg.preset, image_keys=tuple(cams), image_size=(h, w), depth_keys=tuple(cfg.depth_keys),
            state_keys=tuple(cfg.state_keys), state_dims=tuple(int(np.prod(ds.features[k]["shape"])) for k in cfg.state_keys),
            action_dim=int(ds.features[target]["shape"][-1]), horizon=cfg.horizon, n_phases=len(phase_names),
            phase_names=phase_names,
            text_dim=int(emb.shape[1]), tasks=tuple(ds.tasks), text_encoder=text_encoder, vision=vision,
            action_head="discrete" if cfg.loss.action == "discrete" else "continuous")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    torch.manual_seed(cfg.seed)
    policy = StudentPolicy(config)
    policy.set_normalization(normalization(ds, cfg, target, train_eps), emb)
    return policy


def lr_at(step: int, cfg: TrainConfig) -> float:
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

    def __init__(self, view: WindowedDataset, batch_size: int, seed: int, rank: int = 0, world: int = 1, accum: int = 1):
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
            batch["augment_key"] = torch.from_numpy(pos[part] + self.seed * (1 << 40))
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


# ---------------------------------------------------------------- runtime
@dataclass(frozen=True)
class Runtime:
    device: torch.device
    autocast: torch.dtype | None
    rank: int
    world: int
    why: str


def runtime(cfg: TrainConfig) -> Runtime:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    want = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("CUDA was asked for and is not available", field="device")
    if want == "cuda" and world > 1:
        want = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    device = torch.device(want)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if cfg.precision == "bf16":
        dtype, why = torch.bfloat16, "bf16 autocast (asked for)"
    elif cfg.precision == "fp32":
        dtype, why = None, "fp32 (asked for)"
    elif device.type == "cuda" and torch.cuda.is_bf16_supported():
        dtype, why = torch.bfloat16, "bf16 autocast (auto: this GPU supports it)"
    else:
        dtype, why = None, "fp32 (auto: bf16 autocast is used on GPUs that support it; --precision bf16 forces it)"
    return Runtime(device, dtype, rank, world, f"device {device}, {why}" + (f", {world} processes" if world > 1 else ""))


def _to(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _autocast(rt: Runtime):
    return torch.autocast(rt.device.type, dtype=rt.autocast, enabled=rt.autocast is not None)


# ---------------------------------------------------------------- validation
def validation_batches(view: WindowedDataset, to_batch, cfg, rt: Runtime):
    """cfg.val_batches batches of evenly spaced validation frames (the same frames at every validation), on the
    device."""
    n = len(view)
    idx = np.linspace(0, n - 1, min(n, cfg.val_batches * cfg.batch_size)).round().astype(np.int64)
    for s in range(0, len(idx), cfg.batch_size):
        yield _to(to_batch(view.batch(idx[s : s + cfg.batch_size])), rt.device)


@torch.no_grad()
def validate(policy: StudentPolicy, views: Views, cfg: TrainConfig, rt: Runtime) -> dict:
    """Action error (normalized MSE, raw-unit MAE), phase accuracy, and top-1 retrieval of each frame's cue among
    all distinct cues, on evenly spaced validation frames."""
    if views.val is None:
        return {}
    policy.eval()
    sums = {"action_mse": 0.0, "action_mae": 0.0, "loss": 0.0}
    count = phase_ok = phase_n = dir_ok = dir_n = 0
    for batch in validation_batches(views.val, lambda raw: policy_batch(raw, views, cfg), cfg, rt):
        with _autocast(rt):
            out = policy.encode(batch)
            loss, _ = student_losses(policy, batch, cfg.loss, out=out)
        b, pad = len(batch[ACTION]), batch[ACTION + PAD_SUFFIX]
        pred = policy.decode_action(out["action"]).float()
        sums["action_mse"] += float(action_loss(pred, policy.normalize_action(batch[ACTION]), pad, "mse").sum())
        sums["action_mae"] += float(action_loss(policy.unnormalize_action(pred), batch[ACTION], pad, "l1").sum())
        sums["loss"] += float(loss) * b
        count += b
        if ann.PHASE_KEY in batch:
            lab = batch[ann.PHASE_KEY]
            phase_ok += int(((out["phase_logits"].argmax(-1) == lab) & (lab >= 0)).sum())
            phase_n += int((lab >= 0).sum())
        if ann.DIRECTION_KEY in batch and views.cue_emb is not None:
            ids = batch[ann.DIRECTION_KEY]
            top1 = (out["direction"].float() @ views.cue_emb.to(rt.device).T).argmax(-1)
            dir_ok += int(((top1 == ids) & (ids >= 0)).sum())
            dir_n += int((ids >= 0).sum())
    policy.train()
    m = {k: v / max(count, 1) for k, v in sums.items()}
    if phase_n:
        m["phase_accuracy"] = phase_ok / phase_n
    if dir_n:
        m["direction_top1"] = dir_ok / dir_n
        m["direction_candidates"] = int(len(views.cue_emb))
    m["frames"] = count
    return m


# ---------------------------------------------------------------- logging
class Metrics:
    """metrics.jsonl (rank 0), truncated to the resumed step so the file is one consistent curve; TensorBoard
    too when the `tensorboard` package is installed."""

    def __init__(self, run: Path, start_step: int, enabled: bool):
        self.path, self.enabled, self.tb = run / METRICS, enabled, None
        if not enabled:
            return
        if self.path.exists():
            keep = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= start_step]
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
def _provenance(ds: RobotDataset, cfg: TrainConfig, annotation: dict) -> dict:
    from vla_distill import __version__

    git = ""
    try:
        import subprocess

        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {"dataset": str(ds.root), "dataset_fingerprint": ds.fingerprint(), "target": cfg.target,
            "teacher": annotation.get("teacher"), "annotation_config": annotation.get("config"),
            "code_version": __version__ + (f"+g{git}" if git else "")}


def _prepare_run(cfg, resume: bool, overrides: tuple[str, ...] = ("steps",)):
    """A new run's config, or the saved one of the run being resumed. Only the length and how each step's batch is
    split may change (--steps, --batch-size per process, --grad-accum): a run resumed on another number of
    processes keeps its optimizer batch by adjusting the per-process batch."""
    run = Path(cfg.out)
    saved = run / "train_config.json"
    if resume:
        if not saved.exists():
            raise ConfigError("nothing to resume (no train_config.json); drop --resume to start a new run", path=run)
        old = from_dict(type(cfg), json.loads(saved.read_text()))
        bad = set(overrides) - set(RESUMABLE)
        if bad:
            raise ConfigError(f"a resumed run keeps its settings; only {list(RESUMABLE)} may change", field=sorted(bad)[0])
        return from_dict(type(cfg), {**old.to_dict(), **{k: getattr(cfg, k) for k in overrides}})
    if (run / CHECKPOINTS).exists():
        raise ConfigError("this run directory already has checkpoints: pass --resume to continue it, or choose a new --out",
                          path=run)
    return cfg


def train(cfg: TrainConfig, resume: bool = False, overrides: tuple[str, ...] = ("steps",)) -> Path:
    """Trains (or resumes: `overrides` are the fields of cfg that replace the saved run's) and returns the last
    checkpoint's directory."""
    cfg = _prepare_run(cfg, resume, overrides)
    rt = runtime(cfg)
    ds = RobotDataset(cfg.dataset)
    target = check_dataset(ds, cfg)
    train_eps, val_eps = training_episodes(ds, cfg)
    views = build_views(ds, cfg, target, train_eps, val_eps)
    annotation = annotation_meta(ds)
    policy = build_policy(ds, cfg, target, train_eps, annotation).to(rt.device)
    job = Job(policy=policy, params=list(policy.named_parameters()), stream=BatchStream(views.train, cfg.batch_size, cfg.seed, rt.rank, rt.world, cfg.grad_accum),
              to_batch=lambda raw: policy_batch(raw, views, cfg), loss=lambda model, batch, gen: model(batch, cfg.loss, gen),
              validate=lambda: validate(policy, views, cfg, rt), provenance=_provenance(ds, cfg, annotation),
              describe=f"{cfg.preset} student: {policy.num_parameters() / 1e6:.2f}M parameters "
                       f"({policy.num_parameters(deployed=True) / 1e6:.2f}M deployed); {len(train_eps)} train / "
                       f"{len(val_eps)} val episodes, {len(views.train)} frames; target {target}; {rt.why}; "
                       f"{effective_batch(cfg, rt)}",
              find_unused=cfg.loss.phase_weight == 0 or cfg.loss.direction_weight == 0)
    return fit(job, cfg, rt, resume)


def effective_batch(cfg, rt: Runtime) -> str:
    b = cfg.batch_size * rt.world * cfg.grad_accum
    return f"effective batch {b} = {cfg.batch_size} per process x {rt.world} processes x {cfg.grad_accum} accumulation"


def training_episodes(ds: RobotDataset, cfg) -> tuple[list[int], list[int]]:
    """The train / validation split by episode, without the episodes `audit --drop` listed (when cfg.drop_audited)."""
    train_eps, val_eps = split_episodes(ds, cfg.val_fraction, cfg.seed)
    if getattr(cfg, "drop_audited", False):
        from vla_distill.annotate.audit import dropped_episodes

        dropped = set(dropped_episodes(ds.root))
        train_eps = [e for e in train_eps if ds.episodes[e].index not in dropped]
        val_eps = [e for e in val_eps if ds.episodes[e].index not in dropped]
    if not train_eps:
        raise DatasetError("no training episodes left after the validation split and audit drops", path=ds.root)
    return train_eps, val_eps


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


def fit(job: Job, cfg, rt: Runtime, resume: bool) -> Path:
    """The loop every model shares: AdamW with warmup + cosine, gradient clipping, optional EMA, metrics.jsonl and
    TensorBoard, validation and an atomic lerobot-layout checkpoint every save_every steps, resume from the last
    one (repeating an uninterrupted run step for step), progress on stderr. cfg: the run's frozen config (the
    optimizer and schedule fields, out, steps, seed, to_dict())."""
    if rt.rank != 0:  # rank 0 alone writes the run directory
        return _fit(job, cfg, rt, resume)
    with single_writer(Path(cfg.out)):
        return _fit(job, cfg, rt, resume)


def _fit(job: Job, cfg, rt: Runtime, resume: bool) -> Path:
    run, policy, main = Path(cfg.out), job.policy, rt.rank == 0
    decay = [p for _, p in job.params if p.ndim >= 2]
    no_decay = [p for _, p in job.params if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg.lr, betas=(0.9, 0.95))
    ema = {k: v.detach().clone() for k, v in policy.state_dict().items()} if cfg.ema_decay > 0 else None
    start = load_training_state(run, policy, optimizer, ema) if resume else 0
    if main:
        run.mkdir(parents=True, exist_ok=True)
        (run / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    model = policy
    if rt.world > 1:
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
    bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", disable=not main, file=sys.stderr, dynamic_ncols=True)
    t_log, n_log = time.perf_counter(), 0
    try:
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            micro = [_to(job.to_batch(raw), rt.device) for raw in stream.get(step)]
            t_data = time.perf_counter() - t0
            if step == start and main:
                shapes = {k: tuple(v.shape) for k, v in micro[0].items() if isinstance(v, torch.Tensor)}
                print(f"first batch: {shapes}", file=sys.stderr)
            torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout of this step
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_033 + step)  # for models without augment_key
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg)
            optimizer.zero_grad(set_to_none=True)
            loss = torch.zeros((), device=rt.device)
            for i, batch in enumerate(micro):
                # gradients are averaged across processes once per step, on the last micro-batch
                sync = rt.world == 1 or i == len(micro) - 1
                with (contextlib.nullcontext() if sync else model.no_sync()), _autocast(rt):
                    part, named = job.loss(model, batch, gen)
                    (part / len(micro)).backward()
                loss = loss + part.detach() / len(micro)
            if rt.world > 1:  # the logged loss is the optimizer's batch's, not this process's share
                torch.distributed.all_reduce(loss, op=torch.distributed.ReduceOp.AVG)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip))
            optimizer.step()
            if ema is not None:
                with torch.no_grad():
                    for k, v in policy.state_dict().items():
                        if v.dtype.is_floating_point:
                            ema[k].lerp_(v, 1 - cfg.ema_decay)
                        else:
                            ema[k].copy_(v)
            n_log += stream.g
            done = step + 1
            if main and (done % cfg.log_every == 0 or done == cfg.steps):
                sps = n_log / (time.perf_counter() - t_log)
                metrics.log({"step": done, "loss": float(loss.detach()), **named, "lr": lr_at(step, cfg), "grad_norm": grad_norm,
                             "samples_per_s": sps, "data_s": t_data, "step_s": time.perf_counter() - t0})
                t_log, n_log = time.perf_counter(), 0
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}", samples_s=f"{sps:.0f}")
            bar.update(1)
            if done % cfg.save_every == 0 or done == cfg.steps:
                if main:
                    val = job.validate()
                    if val:
                        metrics.log({"step": done, "split": "val", **val})
                        bar.write(f"step {done}: " + ", ".join(f"{k} {v:.4g}" for k, v in val.items()), file=sys.stderr)
                    save_checkpoint(run, done, policy, optimizer, ema, cfg.to_dict(), {**job.provenance, "step": done},
                                    {"kind": "warmup_cosine", "step": done, "lr": lr_at(step, cfg)})
                if rt.world > 1:
                    torch.distributed.barrier()
    finally:
        bar.close()
        stream.close()
        metrics.close()
    return last_dir.resolve() if last_dir.exists() else last_dir
