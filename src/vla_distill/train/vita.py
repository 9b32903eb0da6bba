"""`vla-distill vita-train`: the two VITA-VLA stages on an annotated dataset, through the student's training loop
(train.loop.fit: same checkpoints, resume, metrics and progress).

  align     VLM and expert frozen; action tokens, state encoder and mapper learn to put the action token's last
            hidden state where the expert's features are (mean Euclidean distance)
  finetune  from an align run (--init): the language model, state encoder and action modules (tokens, mapper,
            the expert's action decoder) on smooth-L1 arm + BCE gripper losses; the vision tower stays frozen
"""

from __future__ import annotations

import dataclasses
import json
import types
from dataclasses import dataclass
from pathlib import Path

import torch

from vla_distill.data.dataset import RobotDataset
from vla_distill.data.windows import WindowedDataset
from vla_distill.errors import ConfigError, DatasetError
from vla_distill.models.checkpoint import load_pretrained
from vla_distill.models.vita import FAMILIES, STAGES, VitaPolicy, from_expert, tiny_vlm_config
from vla_distill.train.loop import (BatchStream, Job, Views, _autocast, _prepare_run, _provenance, annotation_meta,
                                    effective_batch, fit, policy_batch, runtime, training_episodes, validation_batches)
from vla_distill.types import ACTION


@dataclass(frozen=True)
class VitaTrainConfig:
    dataset: str
    out: str
    expert: str = ""  # the expert checkpoint (a student run); align needs it, finetune takes it from --init
    vlm: str = "tiny:paligemma"  # tiny:<family> (a small random VLM, offline) or a local transformers directory
    family: str = ""  # for a local directory: paligemma | idefics3 | qwen2_vl | qwen2_5_vl (default: its model_type)
    vlm_image_size: int = 0  # 0: the VLM's vision config's image size (Qwen families: 56)
    stage: str = "align"
    init: str = ""  # finetune: the align run (any VITA checkpoint) to start from
    n_action_tokens: int = 1
    lora_rank: int = 0  # finetune: LoRA adapters of this rank on the language model instead of training all of it
    target: str = "teacher"  # the action column for finetune: teacher (action.teacher) | dataset (action)
    steps: int = 500
    batch_size: int = 16  # per process, as for train
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.0
    seed: int = 0
    val_fraction: float = 0.1
    val_batches: int = 5
    save_every: int = 200
    log_every: int = 20
    precision: str = "auto"
    device: str = "auto"
    drop_audited: bool = True

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage: {self.stage!r} is not one of {list(STAGES)}")
        if self.stage == "align" and not self.expert and not self.init:
            raise ValueError("expert: stage align needs --expert CKPT (a student run)")
        if self.stage == "finetune" and not self.init and not self.expert:
            raise ValueError("init: stage finetune needs --init ALIGN_RUN (or --expert to skip alignment)")
        if self.target not in ("teacher", "dataset"):
            raise ValueError(f"target: {self.target!r} is not one of ['teacher', 'dataset']")
        for name in ("steps", "batch_size", "grad_accum", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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
    return {"n_action_tokens": cfg.n_action_tokens, **({"vlm_image_size": cfg.vlm_image_size} if cfg.vlm_image_size else {})}


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
def validate(policy: VitaPolicy, views: Views, to_batch, cfg: VitaTrainConfig, rt) -> dict:
    """The stage's loss and the raw-unit action MAE on evenly spaced validation frames."""
    if views.val is None:
        return {}
    policy.eval()
    loss_sum = mae_sum = count = 0.0
    for batch in validation_batches(views.val, to_batch, cfg, rt):
        with _autocast(rt):
            loss, _ = policy(batch, cfg.stage)
            pred = policy.predict_action_chunk(batch)
        b = len(batch[ACTION])
        loss_sum += float(loss) * b
        mae_sum += float((pred - batch[ACTION].float()).abs().mean()) * b
        count += b
    policy.train()
    return {"loss": loss_sum / count, "action_mae": mae_sum / count, "frames": int(count)}


def vita_train(cfg: VitaTrainConfig, resume: bool = False, overrides: tuple[str, ...] = ("steps",)) -> Path:
    """Runs (or resumes, as train.loop.train) one stage; returns the last checkpoint's directory."""
    cfg = _prepare_run(cfg, resume, overrides)
    rt = runtime(cfg)
    ds = RobotDataset(cfg.dataset)
    target = "action.teacher" if cfg.target == "teacher" else ACTION
    if target not in ds.features:
        raise DatasetError(f"no column '{target}' (annotate with a teacher, or --target dataset)", path=ds.root, field=target)
    policy = build_vita(cfg).to(rt.device)
    missing = [k for k in policy.input_keys if k not in ds.features]
    if missing:
        raise DatasetError(f"the expert reads {missing[0]!r}, which this dataset lacks", path=ds.root, field=missing[0])
    train_eps, val_eps = training_episodes(ds, cfg)
    k = policy.horizon
    keys = [*policy.input_keys, target]
    chunked = len(ds.features[target]["shape"]) == 2
    deltas = {} if chunked else {target: range(k)}
    views = Views(WindowedDataset(ds, deltas, episodes=train_eps, keys=keys),
                  WindowedDataset(ds, deltas, episodes=val_eps, keys=keys) if val_eps else None, target, chunked, None)

    def to_batch(raw: dict) -> dict:
        return policy_batch(raw, views, types.SimpleNamespace(horizon=k))

    trainable = set(policy.set_stage(cfg.stage))
    params = [(n, p) for n, p in policy.named_parameters() if n in trainable]
    n_train = sum(p.numel() for _, p in params)
    annotation = annotation_meta(ds)
    job = Job(policy=policy, params=params, stream=BatchStream(views.train, cfg.batch_size, cfg.seed, rt.rank, rt.world, cfg.grad_accum),
              to_batch=to_batch, loss=lambda model, batch, gen: model(batch, cfg.stage),
              validate=lambda: validate(policy, views, to_batch, cfg, rt),
              provenance={**_provenance(ds, cfg, annotation), "stage": cfg.stage, "expert": cfg.expert, "init": cfg.init,
                          "vlm": cfg.vlm, "family": policy.config.family},
              describe=f"VITA-VLA {cfg.stage} ({policy.config.family}): {policy.num_parameters() / 1e6:.2f}M parameters, "
                       f"{n_train / 1e6:.3f}M trainable; {len(train_eps)} train / {len(val_eps)} val episodes; {rt.why}; "
                       f"{effective_batch(cfg, rt)}",
              find_unused=True)
    return fit(job, cfg, rt, resume)
