"""Training configuration: one frozen dataclass, saved next to every checkpoint as train_config.json."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from vla_distill.train.losses import LossConfig

TARGETS = ("teacher", "dataset")


@dataclass(frozen=True)
class TrainConfig:
    dataset: str
    out: str
    preset: str = "tiny"
    steps: int = 2000
    batch_size: int = 64  # per process; the optimizer's batch is this x processes x grad_accum
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    min_lr_ratio: float = 0.1  # cosine decays to lr * this
    grad_clip: float = 1.0
    ema_decay: float = 0.0  # 0 = off; else the EMA weights are what checkpoints ship
    seed: int = 0
    horizon: int = 1  # K, the action chunk length (the paper's variant: 5)
    target: str = "teacher"  # teacher: action.teacher (distillation) | dataset: the demonstrations' own actions
    loss: LossConfig = field(default_factory=LossConfig)
    cameras: tuple[str, ...] = ()  # () = every camera of the dataset
    depth_keys: tuple[str, ...] = ()
    state_keys: tuple[str, ...] = ("observation.state",)
    vision: str = ""  # "" = the preset's encoder; resnet | vit
    val_fraction: float = 0.1
    val_batches: int = 20
    save_every: int = 500
    log_every: int = 50
    precision: str = "auto"  # auto | fp32 | bf16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    drop_audited: bool = True  # leave out the episodes `vla-distill audit --drop` listed

    def __post_init__(self):
        from vla_distill.models.student import preset_config

        preset_config(self.preset)  # raises with a did-you-mean on an unknown name
        if self.target not in TARGETS:
            raise ValueError(f"target: {self.target!r} is not one of {list(TARGETS)}")
        for name in ("steps", "batch_size", "grad_accum", "horizon", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision: {self.precision!r} is not one of ['auto', 'fp32', 'bf16']")
        if self.vision not in ("", "resnet", "vit"):
            raise ValueError(f"vision: {self.vision!r} is not one of ['resnet', 'vit']")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
