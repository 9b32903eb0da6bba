"""`vla-distill train`: the VLA-AD student (models/student.py) on an annotated dataset, its three losses, through
the shared training loop (fit.py): lerobot-layout checkpoints with normalization inside, resumable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vla_distill.data.annotations import read_annotation, read_directions, read_phase_names, read_task_embeddings
from vla_distill.data.dataset import RobotDataset
from vla_distill.data.format import feature_names
from vla_distill.data.merge import driven_episodes
from vla_distill.errors import ConfigError, DatasetError
from vla_distill.models.losses import action_loss
from vla_distill.models.student import PRESETS, StudentPolicy, preset_config
from vla_distill.models.text import TextEncoder
from vla_distill.models.vision import VisionConfig
from vla_distill.train.config import TrainConfig
from vla_distill.train.device import DeviceSetup, autocast, setup_device
from vla_distill.train.feature_cache import cached_features
from vla_distill.train.fit import (
    BatchStream,
    Job,
    effective_batch,
    finished_run,
    fit,
    owned_run,
    prepare_run,
    provenance,
    training_episodes,
    validation_batches,
)
from vla_distill.train.targets import phase_consistent_gripper
from vla_distill.train.views import Views, make_views, policy_batch
from vla_distill.types import (
    ACTION,
    DIRECTION_INDEX,
    DIRECTIONS_PATH,
    OBS_PREFIX,
    PAD_SUFFIX,
    PHASE_INDEX,
    PHASES_4,
    feature_key,
    to_phase4,
)


def train(cfg: TrainConfig, resume: bool = False, overrides: tuple[str, ...] = ("steps",)) -> Path:
    """Trains (or resumes: `overrides` are the fields of cfg that replace the saved run's) and returns the last
    checkpoint's directory."""
    with owned_run(cfg):
        cfg, resume = prepare_run(cfg, resume, overrides)
        return finished_run(cfg) or _train(cfg, resume)


def _train(cfg: TrainConfig, resume: bool) -> Path:
    dev = setup_device(cfg)
    ds = RobotDataset(cfg.dataset)
    ds.check_videos()
    target = check_dataset(ds, cfg)
    train_eps, val_eps = training_episodes(ds, cfg)
    annotation = read_annotation(ds.root)
    targets = action_targets(ds, cfg, target)
    policy = build_policy(ds, cfg, targets, train_eps, annotation).to(dev.device)
    views = build_views(ds, cfg, target, train_eps, val_eps, policy, {target: targets})
    job = Job(policy=policy, params=[(n, p) for n, p in policy.named_parameters() if p.requires_grad],
              stream=BatchStream(views.train, cfg.batch_size, cfg.seed, dev.rank, dev.world, cfg.grad_accum),
              to_batch=lambda raw: policy_batch(raw, views), loss=lambda model, batch, gen: model(batch, cfg.loss, gen),
              validate=lambda: validate(policy, views, cfg, dev), provenance=provenance(ds, cfg, annotation),
              describe=f"{cfg.preset} student: {policy.num_parameters() / 1e6:.2f}M parameters "
                       f"({policy.num_parameters(deployed=True) / 1e6:.2f}M deployed); {len(train_eps)} train / "
                       f"{len(val_eps)} val episodes, {len(views.train)} frames; target {target}; {dev.why}; "
                       f"{effective_batch(cfg, dev)}",
              find_unused=min(cfg.loss.phase_weight, cfg.loss.direction_weight) == 0
              or bool(cfg.aux_state and cfg.loss.aux_state_weight == 0),
              lr_scales=(("encoder.trunk.", cfg.vision_lr_scale),) if policy.config.vision.trainable else ())
    return fit(job, cfg, dev, resume)


# ---------------------------------------------------------------- what the losses need from the dataset
def check_dataset(ds: RobotDataset, cfg: TrainConfig) -> str:
    """The action target's column; a clear error for each loss whose column is missing."""
    target = cfg.target_column
    if target not in ds.features:
        how = ("annotate it with a teacher (vla-distill annotate --teacher ...), or train on the dataset's own "
               "actions with --target dataset") if cfg.target == "teacher" else "this dataset has no action column"
        raise DatasetError(f"the action loss needs column '{target}': {how}", path=ds.root, field=target)
    if cfg.loss.phase_weight > 0 and PHASE_INDEX not in ds.features:
        raise DatasetError(f"the phase loss needs column '{PHASE_INDEX}': annotate with --phases kinematic|vlm, "
                           "or turn the loss off with --phase-weight 0", path=ds.root, field=PHASE_INDEX)
    if cfg.gripper_from_phases and PHASE_INDEX not in ds.features:
        raise DatasetError(f"--gripper-from-phases needs column '{PHASE_INDEX}': annotate with --phases kinematic|vlm",
                           path=ds.root, field=PHASE_INDEX)
    if cfg.loss.direction_weight > 0:
        if DIRECTION_INDEX not in ds.features or not (ds.root / DIRECTIONS_PATH).exists():
            raise DatasetError(f"the direction loss needs column '{DIRECTION_INDEX}' and {DIRECTIONS_PATH}: "
                               "annotate with --directions kinematic|vlm, or turn the loss off with "
                               "--direction-weight 0", path=ds.root, field=DIRECTION_INDEX)
    dims = int(np.prod(ds.features[target]["shape"]))
    if cfg.loss.dim_weights and len(cfg.loss.dim_weights) != dims:
        raise ConfigError(f"{len(cfg.loss.dim_weights)} weights given, the action '{target}' has {dims} dimensions",
                          field="dim_weights")
    for key in (*cfg.cameras, *cfg.depth_keys, *cfg.state_keys, *([cfg.aux_state] if cfg.aux_state else [])):
        if key not in ds.features:
            raise DatasetError(f"no such feature (have: {sorted(k for k in ds.features if k.startswith(OBS_PREFIX))})",
                               path=ds.root, field=key)
    if not cameras(ds, cfg):
        raise DatasetError("the student needs at least one camera and this dataset has none", path=ds.root)
    if cfg.aux_state and ds.features[cfg.aux_state]["dtype"] in ("video", "image", "string"):
        raise DatasetError("--aux-state needs a numeric column (object and goal positions), not images or text",
                           path=ds.root, field=cfg.aux_state)
    return target


def cameras(ds: RobotDataset, cfg: TrainConfig) -> list[str]:
    """The student's cameras: --cameras, or every camera of the dataset."""
    return list(cfg.cameras or ds.camera_keys)


def action_targets(ds: RobotDataset, cfg: TrainConfig, target: str) -> np.ndarray:
    """(N, D) or (N, K_teacher, D): the target column's values by dataset row, with the gripper anchored to the phase
    labels under --gripper-from-phases."""
    values = np.asarray(ds.column(target))
    if not cfg.gripper_from_phases:
        return values
    bounds = [(int(r[0]), int(r[-1]) + 1) for r in map(ds.episode_rows, range(ds.num_episodes)) if len(r)]
    phases = to_phase4(np.asarray(ds.column(PHASE_INDEX)).reshape(-1), read_phase_names(ds.root) or ())
    return phase_consistent_gripper(values, phases, bounds)


def build_views(ds: RobotDataset, cfg: TrainConfig, target: str, train_eps: list[int], val_eps: list[int],
                policy: StudentPolicy, columns: dict[str, np.ndarray]) -> Views:
    """The training views (columns: target values replacing the dataset's, action_targets); a frozen pretrained
    encoder's trunk features come from the feature cache instead of the pixels (cfg.feature_cache), of its frozen
    part where the rest is fine-tuned."""
    if len(ds.features[target]["shape"]) == 2 and ds.features[target]["shape"][0] < cfg.horizon:
        raise ConfigError(f"the teacher answered {ds.features[target]['shape'][0]}-step chunks; --horizon "
                          f"{cfg.horizon} needs at least that many", field="horizon")
    cams, row_arrays = cameras(ds, cfg), None
    if cfg.feature_cache and policy.config.vision.cacheable:
        features = cached_features(ds, cams, policy.encoder, policy.config.vision.kind)
        row_arrays, cams = {feature_key(c): f for c, f in features.items()}, []
    keys = [*cams, *cfg.depth_keys, *cfg.state_keys, *([cfg.aux_state] if cfg.aux_state else []), target]
    keys += [k for k,
             w in ((PHASE_INDEX, cfg.loss.phase_weight), (DIRECTION_INDEX, cfg.loss.direction_weight)) if w > 0]
    cue_emb = None
    if (ds.root / DIRECTIONS_PATH).exists():  # check_dataset made sure it is there when the loss needs it
        cue_emb = torch.from_numpy(read_directions(ds.root)[1].copy())
    driven = driven_episodes(ds.root) if cfg.rollout_steps else []
    return make_views(ds, keys, target, cfg.horizon, train_eps, val_eps, cue_emb, row_arrays, columns, driven,
                      cfg.rollout_steps)


# ---------------------------------------------------------------- the model
def normalization(ds: RobotDataset, cfg: TrainConfig, targets: np.ndarray, train_eps: list[int],
                  delta: tuple[int, ...] = ()) -> dict:
    """Stats of the training split only (validation episodes never leak into normalization); targets: the action
    targets by dataset row (action_targets); delta: the dimensions predicted relative to the state (delta_dims),
    whose stats are those of every chunk step's offset from the state it was predicted from."""
    rows = np.concatenate([ds.episode_rows(e) for e in train_eps])
    state = np.concatenate([_rows(ds, k, rows) for k in cfg.state_keys], 1)
    act = np.asarray(targets[rows], np.float64) if not delta else chunk_offsets(ds, cfg, targets, train_eps, delta)
    act = act.reshape(-1, act.shape[-1])
    img = ds.episode_stats(train_eps)
    cams = cameras(ds, cfg)
    mean = np.stack([np.asarray(img[k]["mean"], np.float32).reshape(-1)[:3] for k in cams])
    std = np.stack([np.asarray(img[k]["std"], np.float32).reshape(-1)[:3] for k in cams])
    if cfg.depth_keys:  # the depth channel is the first channel of its key
        mean = np.concatenate([mean, np.stack([np.asarray(img[k]["mean"]).reshape(-1)[:1] for k in cfg.depth_keys])], 1)
        std = np.concatenate([std, np.stack([np.asarray(img[k]["std"]).reshape(-1)[:1] for k in cfg.depth_keys])], 1)
    aux = {}
    if cfg.aux_state:
        x = _rows(ds, cfg.aux_state, rows)
        aux = {"aux_state_mean": x.mean(0), "aux_state_std": np.maximum(x.std(0), 1e-3)}
    return {
        **aux, "state_mean": state.mean(0), "state_std": np.maximum(state.std(0), 1e-3),
        "action_mean": act.mean(0), "action_std": np.maximum(act.std(0), 1e-3),
        "action_min": act.min(0), "action_max": act.max(0),
        "image_mean": mean[..., None, None], "image_std": np.maximum(std, 1e-3)[..., None, None],
    }


def chunk_offsets(ds: RobotDataset, cfg: TrainConfig, targets: np.ndarray, episodes: list[int],
                  delta: tuple[int, ...]) -> np.ndarray:
    """(M, K, D) the training chunks' targets, `delta` dimensions minus the state at the chunk's first frame (a
    per-frame target's chunk repeats the episode's last frame past its end, as the windows do)."""
    out = []
    for e in episodes:
        rows = ds.episode_rows(e)
        values = np.asarray(targets[rows], np.float64)
        if values.ndim == 2:  # (T, D) per frame: step k of row t's chunk is frame t + k
            ahead = np.minimum(np.arange(len(rows))[:, None] + np.arange(cfg.horizon), len(rows) - 1)
            values = values[ahead]
        chunk = values[:, :cfg.horizon].copy()
        chunk[..., list(delta)] -= _rows(ds, cfg.state_keys[0], rows)[:, None, list(delta)]
        out.append(chunk)
    return np.concatenate(out)


def delta_dims(ds: RobotDataset, cfg: TrainConfig, target: str) -> tuple[int, ...]:
    """--delta-actions: the action dimensions the first state key names alike, grippers left absolute; a one-line
    error when there are none."""
    if not cfg.delta_actions:
        return ()
    actions = feature_names(ds.features[target]) or []
    state = feature_names(ds.features[cfg.state_keys[0]]) or []
    dims = tuple(i for i, n in enumerate(actions) if i < len(state) and state[i] == n and "gripper" not in n.lower())
    if not dims:
        raise ConfigError(f"--delta-actions: no dimension of '{target}' has the name of the same dimension of "
                          f"'{cfg.state_keys[0]}' (actions {actions[:4]}..., state {state[:4]}...): its actions "
                          "are not joint targets in the state's layout", field="delta_actions")
    return dims


def _rows(ds: RobotDataset, key: str, rows: np.ndarray) -> np.ndarray:
    """(N, flat) float64 values of column `key` at `rows`."""
    return np.asarray(ds.column(key)[rows], np.float64).reshape(len(rows), -1)


def task_embeddings(ds: RobotDataset, text_encoder: str) -> np.ndarray:
    """(T_tasks, E) by task_index: stored by annotate, else embedded here once."""
    stored = read_task_embeddings(ds.root)
    if stored is not None and stored[0] == list(ds.tasks):
        return stored[1]
    return TextEncoder(text_encoder).encode(list(ds.tasks))


def gripper_dims(ds: RobotDataset, action_dim: int) -> tuple[int, ...]:
    """The action dimensions info.json names as a gripper (kept in their range at inference: StudentConfig)."""
    names = feature_names(ds.features.get(ACTION, {})) or []
    return tuple(i for i, n in enumerate(names) if len(names) == action_dim and "gripper" in n.lower())


def build_policy(ds: RobotDataset, cfg: TrainConfig, targets: np.ndarray, train_eps: list[int],
                 annotation: dict) -> StudentPolicy:
    text_encoder = annotation.get("config", {}).get("text_encoder", "")
    cams = cameras(ds, cfg)
    h, w = ds.features[cams[0]]["shape"][:2]
    phase_names = read_phase_names(ds.root) or PHASES_4
    emb = task_embeddings(ds, text_encoder)
    try:
        vision = student_vision(cfg)
        config = preset_config(
            cfg.preset, image_keys=tuple(cams), image_size=(h, w), depth_keys=tuple(cfg.depth_keys),
            state_keys=tuple(cfg.state_keys),
            state_dims=tuple(int(np.prod(ds.features[k]["shape"])) for k in cfg.state_keys),
            action_dim=int(targets.shape[-1]), horizon=cfg.horizon, n_action_steps=cfg.n_action_steps,
            n_phases=len(phase_names),
            phase_names=phase_names,
            text_dim=int(emb.shape[1]), tasks=tuple(ds.tasks), text_encoder=text_encoder, vision=vision,
            feature_shift=cfg.feature_shift, aux_state_key=cfg.aux_state,
            aux_state_dim=int(np.prod(ds.features[cfg.aux_state]["shape"])) if cfg.aux_state else 0,
            action_head="discrete" if cfg.loss.action == "discrete" else "continuous",
            bounded_dims=gripper_dims(ds, int(targets.shape[-1])), delta_dims=delta_dims(ds, cfg, cfg.target_column))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    torch.manual_seed(cfg.seed)
    policy = StudentPolicy(config)
    policy.load_pretrained_vision()
    policy.set_normalization(normalization(ds, cfg, targets, train_eps, config.delta_dims), emb)
    return policy


def student_vision(cfg: TrainConfig) -> VisionConfig:
    """The preset's encoder, with --vision's kind and --vision-tune-from's fine-tuning."""
    vision = PRESETS[cfg.preset]["vision"]
    changes = {"kind": cfg.vision} if cfg.vision else {}
    if cfg.vision_tune_from:
        changes["tune_from"] = cfg.vision_tune_from
    return VisionConfig(**{**vision.__dict__, **changes}) if changes else vision


# ---------------------------------------------------------------- validation
@torch.no_grad()
def validate(policy: StudentPolicy, views: Views, cfg: TrainConfig, dev: DeviceSetup) -> dict:
    """Action error (normalized MSE, raw-unit MAE), phase accuracy, top-1 retrieval of each frame's cue among all
    distinct cues, and the auxiliary state's raw-unit MAE (per dimension, then averaged), on evenly spaced
    validation frames."""
    if views.val is None:
        return {}
    policy.eval()
    sums = {"action_mse": 0.0, "action_mae": 0.0, "loss": 0.0}
    count = phase_ok = phase_n = dir_ok = dir_n = 0
    aux_err: torch.Tensor | None = None  # (S_aux,) summed absolute error, raw units
    for batch in validation_batches(views.val, lambda raw: policy_batch(raw, views), cfg, dev):
        with autocast(dev):
            out = policy.encode(batch)
            loss, _ = policy.loss(out, batch, cfg.loss)
        b, pad = len(batch[ACTION]), batch[ACTION + PAD_SUFFIX]
        pred = policy.decode_action(out["action"]).float()
        sums["action_mse"] += float(action_loss(pred, policy.normalize_action(batch[ACTION], batch), pad, "mse").sum())
        sums["action_mae"] += float(action_loss(policy.unnormalize_action(pred, batch), batch[ACTION], pad, "l1").sum())
        sums["loss"] += float(loss) * b
        count += b
        if "aux_state" in out:
            x = batch[cfg.aux_state].float().reshape(b, -1)
            err = (out["aux_state"].float() * policy.aux_state_std + policy.aux_state_mean - x).abs().sum(0)
            aux_err = err if aux_err is None else aux_err + err
        if PHASE_INDEX in batch:
            lab = batch[PHASE_INDEX]
            phase_ok += int(((out["phase_logits"].argmax(-1) == lab) & (lab >= 0)).sum())
            phase_n += int((lab >= 0).sum())
        if DIRECTION_INDEX in batch and views.cue_emb is not None:
            ids = batch[DIRECTION_INDEX]
            top1 = (out["direction"].float() @ views.cue_emb.to(dev.device).T).argmax(-1)
            dir_ok += int(((top1 == ids) & (ids >= 0)).sum())
            dir_n += int((ids >= 0).sum())
    policy.train()
    m = {k: v / max(count, 1) for k, v in sums.items()}
    if aux_err is not None:
        per_dim = aux_err / max(count, 1)
        m["aux_state_mae"] = float(per_dim.mean())
        m["aux_state_mae_max"] = float(per_dim.max())  # the worst dimension: a goal coordinate, typically
    if phase_n:
        m["phase_accuracy"] = phase_ok / phase_n
    if dir_n:
        m["direction_top1"] = dir_ok / dir_n
        m["direction_candidates"] = int(len(views.cue_emb))
    m["frames"] = count
    return m
