"""`vla-distill vita-train`: the two VITA-VLA stages (the model: models/vita.py) on an annotated dataset, through the
shared training loop (fit.py: the student's checkpoints, resume, metrics and progress).

  align     VLM and expert frozen; action tokens, state encoder and mapper learn to put the action token's last
            hidden state where the expert's features are (mean Euclidean distance)
  finetune  from an align run (--init): the language model, state encoder and action modules (tokens, mapper,
            the expert's action decoder) on smooth-L1 arm + BCE gripper losses; the vision tower stays frozen
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from vla_distill.data.annotations import read_annotation
from vla_distill.data.dataset import RobotDataset
from vla_distill.errors import ConfigError, DatasetError
from vla_distill.models.checkpoint import load_pretrained
from vla_distill.models.parts_vlm import parts_vlm_config
from vla_distill.models.vita import FAMILIES, VitaConfig, VitaPolicy, from_expert, tiny_vlm_config
from vla_distill.train.config import VitaTrainConfig
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
from vla_distill.train.views import Views, make_views, policy_batch
from vla_distill.types import ACTION, feature_key


def build_vita(cfg: VitaTrainConfig) -> VitaPolicy:
    if cfg.init:
        policy = load_pretrained(cfg.init)
        if not isinstance(policy, VitaPolicy):
            raise ConfigError(f"not a VITA-VLA checkpoint (type {policy.name})", path=cfg.init, field="init")
        return policy.with_lora(cfg.lora_rank) if cfg.lora_rank and not policy.config.lora_rank else policy
    expert = load_pretrained(cfg.expert)
    if not hasattr(expert, "features"):
        raise ConfigError(f"the expert must be a student checkpoint (its decoder is reused); got {expert.name}",
                          path=cfg.expert, field="expert")
    if cfg.vlm in ("parts", "parts:random"):  # models/parts_vlm.py: pretrained, or the same architecture untrained
        return from_expert(expert, "parts", parts_vlm_config(pretrained=cfg.vlm == "parts"), **_sizes(cfg))
    if cfg.vlm.startswith("tiny:"):
        family = cfg.vlm[len("tiny:"):]
        if family not in FAMILIES:
            raise ConfigError(f"{family!r} is not one of {list(FAMILIES)}", field="vlm")
        return from_expert(expert, family, tiny_vlm_config(family), **_sizes(cfg))
    if not (Path(cfg.vlm) / "config.json").is_file():
        raise ConfigError("not a local transformers model directory (no config.json)", path=cfg.vlm, field="vlm")
    family = cfg.family or _family_of(Path(cfg.vlm))
    return from_expert(expert, family, vlm_path=cfg.vlm, **_sizes(cfg))


def _sizes(cfg: VitaTrainConfig) -> dict:
    return {"n_action_tokens": cfg.n_action_tokens, "all_cameras": cfg.vlm_cameras == "all",
            **({"vlm_image_size": cfg.vlm_image_size} if cfg.vlm_image_size else {})}


def vlm_spec(c: VitaConfig) -> str:
    """The --vlm that builds this policy's VLM: stage 2 (--init) inherits it, whatever its --vlm flag said."""
    if c.vlm_path:
        return c.vlm_path
    if c.family == "parts":
        return "parts" if c.vlm_config.get("pretrained") else "parts:random"
    return f"tiny:{c.family}"


def _family_of(path: Path) -> str:
    kind = json.loads((path / "config.json").read_text()).get("model_type", "")
    # SmolVLM is Idefics3's architecture under another name (same modules and keys)
    family = {"paligemma": "paligemma", "idefics3": "idefics3", "smolvlm": "idefics3", "qwen2_vl": "qwen2_vl",
              "qwen2_5_vl": "qwen2_5_vl"}.get(kind)
    if family is None:
        raise ConfigError(f"model_type {kind!r} is not a supported family ({', '.join(FAMILIES)}); pass --family",
                          path=path / "config.json", field="model_type")
    return family


@torch.no_grad()
def validate(policy: VitaPolicy, views: Views, cfg: VitaTrainConfig, dev: DeviceSetup) -> dict:
    """The stage's loss and the raw-unit action MAE on evenly spaced validation frames, overall and per action
    dimension (stage 2 changes how the gripper is decoded: where its error goes shows there)."""
    if views.val is None:
        return {}
    policy.eval()
    loss_sum = mae_sum = count = 0.0
    per_dim: torch.Tensor | None = None
    for batch in validation_batches(views.val, lambda raw: policy_batch(raw, views), cfg, dev):
        with autocast(dev):
            loss, _ = policy(batch, cfg.stage)
            pred = policy.predict_action_chunk(batch)
        b = len(batch[ACTION])
        loss_sum += float(loss) * b
        err = (pred - batch[ACTION].float()).abs()
        mae_sum += float(err.mean()) * b
        dims = err.flatten(0, -2).mean(0) * b
        per_dim = dims if per_dim is None else per_dim + dims
        count += b
    policy.train()
    return {"loss": loss_sum / count, "action_mae": mae_sum / count,
            "action_mae_per_dim": [round(float(x) / count, 4) for x in per_dim], "frames": int(count)}


def binary_gripper(mode: str, targets: np.ndarray, at_ends: float = 0.95) -> bool:
    """Stage 2's gripper as a binary decision: asked for, or (auto) where at least `at_ends` of the teacher's gripper
    targets (the last dimension) sit at its two extremes. MetaWorld's scripted grip effort is 0 or 0.6 on 40% of
    frames: binarized, stage 2 quadrupled the gripper's validation error (BENCHMARKS.md, VITA-VLA)."""
    if mode != "auto":
        return mode == "binary"
    g = targets.reshape(-1, targets.shape[-1])[:, -1]
    lo, hi = float(g.min()), float(g.max())
    near = 0.01 * max(hi - lo, 1e-9)
    return float(np.mean((g <= lo + near) | (g >= hi - near))) >= at_ends


def vita_views(ds: RobotDataset, cfg: VitaTrainConfig, policy: VitaPolicy, target: str, train_eps: list[int],
               val_eps: list[int]) -> Views:
    """What each stage reads: the state and the VLM's camera always; stage 1 also the frozen expert's inputs for its
    features (the alignment target), from the feature cache when its encoder is frozen and pretrained (the same
    memmaps its own training built: the expert's trunk was 57% of an align step); stage 2 reads no expert features,
    so its other cameras are not decoded at all."""
    e = policy.expert.config
    keys, rows = [*e.state_keys, *policy.config.vlm_image_keys], None
    if cfg.stage == "align" and e.vision.cacheable:  # a fine-tuned trunk's features are not the cache's (ImageNet's)
        features = cached_features(ds, list(e.image_keys), policy.expert.encoder, e.vision.kind)
        rows = {feature_key(c): f for c, f in features.items()}
    elif cfg.stage == "align":
        keys = list(policy.input_keys)
    return make_views(ds, [*dict.fromkeys(keys), target], target, policy.horizon, train_eps, val_eps, row_arrays=rows)


def vita_train(cfg: VitaTrainConfig, resume: bool = False, overrides: tuple[str, ...] = ("steps",)) -> Path:
    """Runs (or resumes, as train.student.train) one stage; returns the last checkpoint's directory."""
    with owned_run(cfg):
        cfg, resume = prepare_run(cfg, resume, overrides)
        return finished_run(cfg) or _vita_train(cfg, resume)


def _vita_train(cfg: VitaTrainConfig, resume: bool) -> Path:
    dev = setup_device(cfg)
    ds = RobotDataset(cfg.dataset)
    ds.check_videos()
    target = cfg.target_column
    if target not in ds.features:
        raise DatasetError(f"no column '{target}' (annotate with a teacher, or --target dataset)", path=ds.root,
                           field=target)
    policy = build_vita(cfg).to(dev.device)
    missing = [k for k in policy.input_keys if k not in ds.features]
    if missing:
        raise DatasetError(f"the expert reads {missing[0]!r}, which this dataset lacks", path=ds.root, field=missing[0])
    train_eps, val_eps = training_episodes(ds, cfg)
    views = vita_views(ds, cfg, policy, target, train_eps, val_eps)
    binary = cfg.stage == "finetune" and binary_gripper(cfg.gripper, np.asarray(ds.column(target)))
    trainable = set(policy.set_stage(cfg.stage, binary))
    params = [(n, p) for n, p in policy.named_parameters() if n in trainable]
    n_train = sum(p.numel() for _, p in params)
    annotation = read_annotation(ds.root)
    job = Job(policy=policy, params=params,
              stream=BatchStream(views.train, cfg.batch_size, cfg.seed, dev.rank, dev.world, cfg.grad_accum),
              to_batch=lambda raw: policy_batch(raw, views), loss=lambda model, batch, gen: model(batch, cfg.stage),
              validate=lambda: validate(policy, views, cfg, dev),
              provenance={**provenance(ds, cfg, annotation), "stage": cfg.stage, "expert": cfg.expert, "init": cfg.init,
                          "vlm": vlm_spec(policy.config), "family": policy.config.family},
              describe=f"VITA-VLA {cfg.stage} ({policy.config.family}"
                       f"{', binary gripper' if binary else ''}): "
                       f"{policy.num_parameters() / 1e6:.2f}M "
                       f"parameters, {n_train / 1e6:.3f}M trainable; {len(train_eps)} train / {len(val_eps)} val "
                       f"episodes; {dev.why}; {effective_batch(cfg, dev)}",
              find_unused=True, lr_scales=(("expert.action_head", cfg.decoder_lr_scale),))
    return fit(job, cfg, dev, resume)
