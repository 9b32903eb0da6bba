"""Training configuration: frozen dataclasses, saved next to every checkpoint as train_config.json.

RunConfig is what the training loop (fit.py) reads, shared by every job; each job's config extends it with what its
model needs: TrainConfig (the VLA-AD student) and VitaTrainConfig (a VITA-VLA stage). The command line reads its
defaults from these classes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from vla_distill.models.chunking import check_n_action_steps
from vla_distill.models.losses import LossConfig
from vla_distill.models.student import preset_config
from vla_distill.models.vision import VISION_KINDS
from vla_distill.models.vita import STAGES
from vla_distill.types import ACTION, OBS_STATE, TEACHER_ACTION

TARGETS = ("teacher", "dataset")
PRECISIONS = ("auto", "fp32", "bf16")
INF = float("inf")
CHECKS = {  # field: (test, what it must be); every test is False for NaN
    "lr": (lambda x: 0 < x < INF, "a finite number > 0"),
    "weight_decay": (lambda x: 0 <= x < INF, "a finite number >= 0"),
    "min_lr_ratio": (lambda x: 0 <= x <= 1, "in [0, 1]"),
    "grad_clip": (lambda x: 0 < x < INF, "a finite number > 0"),
    "ema_decay": (lambda x: 0 <= x < 1, "in [0, 1)"),
    "val_fraction": (lambda x: 0 <= x < 1, "in [0, 1)"),
    "seed": (lambda x: x >= 0, ">= 0"),
    "warmup_steps": (lambda x: x >= 0, ">= 0"),
    "val_batches": (lambda x: x >= 0, ">= 0"),
}


@dataclass(frozen=True)
class RunConfig:
    dataset: str
    out: str
    target: str = "teacher"  # teacher: action.teacher (distillation) | dataset: the demonstrations' own actions
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
    val_fraction: float = 0.1
    val_batches: int = 20
    save_every: int = 500
    log_every: int = 50
    precision: str = "auto"  # auto | fp32 | bf16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    drop_audited: bool = True  # leave out the episodes `vla-distill audit --drop` listed

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"target: {self.target!r} is not one of {list(TARGETS)}")
        for name in self._at_least_one():
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1")
        for name, (ok, what) in CHECKS.items():
            if not ok(getattr(self, name)):
                raise ValueError(f"{name}: must be {what}, got {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: {self.precision!r} is not one of {list(PRECISIONS)}")

    def _at_least_one(self) -> tuple[str, ...]:
        return ("steps", "batch_size", "grad_accum", "save_every", "log_every")

    @property
    def target_column(self) -> str:
        """The dataset column the action loss targets."""
        return TEACHER_ACTION if self.target == "teacher" else ACTION

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrainConfig(RunConfig):
    """`vla-distill train`: the VLA-AD student."""

    preset: str = "tiny"
    horizon: int = 1  # K, the action chunk length (the paper's variant: 5)
    loss: LossConfig = field(default_factory=LossConfig)
    cameras: tuple[str, ...] = ()  # () = every camera of the dataset
    depth_keys: tuple[str, ...] = ()
    state_keys: tuple[str, ...] = (OBS_STATE,)
    vision: str = ""  # "" = the preset's encoder; resnet | vit | efficientnet-lite0
    feature_cache: bool = True  # a frozen pretrained encoder's features computed once per dataset frame
    # the pretrained trunk's stages after this stride fine-tuned (VisionConfig.tune_from; 0 = all frozen), at
    # vision_lr_scale times the lr (lerobot's ACT gives its backbone its own lr)
    vision_tune_from: int = 0
    vision_lr_scale: float = 0.1
    feature_shift: int = 0  # random shift of cached features during training, in feature cells (0 = none)
    aux_state: str = ""  # a state column predicted in training only, e.g. observation.environment_state ("" = none)
    gripper_from_phases: bool = False  # the gripper target is its median over each phase segment (train/targets.py)
    delta_actions: bool = False  # joint targets predicted relative to the current state (StudentConfig.delta_dims)
    # on episodes a policy drove (a DAgger round's rollouts), the action loss counts only the first N steps of each
    # chunk (0 = all K): there the expert's later labels answer states the policy's own chunk led to, not a plan
    rollout_steps: int = 0
    # actions of each chunk the deployed student executes before replanning (the checkpoint's n_action_steps, what
    # eval and run default to; 0 = all K)
    n_action_steps: int = 0

    def __post_init__(self):
        preset_config(self.preset)  # raises with a did-you-mean on an unknown name
        super().__post_init__()
        if self.vision not in ("", *VISION_KINDS):
            raise ValueError(f"vision: {self.vision!r} is not one of {list(VISION_KINDS)}")
        if self.rollout_steps < 0:
            raise ValueError(f"rollout_steps: must be >= 0, got {self.rollout_steps}")
        if not 0 < self.vision_lr_scale < INF:
            raise ValueError(f"vision_lr_scale: must be a finite number > 0, got {self.vision_lr_scale}")
        if self.vision_tune_from < 0:
            raise ValueError(f"vision_tune_from: must be >= 0, got {self.vision_tune_from}")
        check_n_action_steps(self.n_action_steps, self.horizon)  # before any data is read, as the student checks it

    def _at_least_one(self) -> tuple[str, ...]:
        return super()._at_least_one() + ("horizon",)


GRIPPER_MODES = ("auto", "binary", "continuous")
VLM_CAMERAS = ("first", "all")


@dataclass(frozen=True)
class VitaTrainConfig(RunConfig):
    """`vla-distill vita-train`: one VITA-VLA stage (align, then finetune)."""

    steps: int = 500
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    val_batches: int = 5
    save_every: int = 200
    log_every: int = 20
    expert: str = ""  # the expert checkpoint (a student run); align needs it, finetune takes it from --init
    vlm: str = "tiny:paligemma"  # tiny:<family> (a small random VLM), parts, parts:random, or a transformers directory
    family: str = ""  # for a local directory: paligemma | idefics3 | qwen2_vl | qwen2_5_vl (default: its model_type)
    vlm_image_size: int = 0  # 0: the VLM's vision config's image size (Qwen families: 56)
    vlm_cameras: str = "first"  # the cameras the VLM sees: the expert's first, or all of them (the parts VLM only)
    stage: str = "align"
    init: str = ""  # finetune: the align run (any VITA checkpoint) to start from
    n_action_tokens: int = 1
    lora_rank: int = 0  # finetune: LoRA adapters of this rank on the language model instead of training all of it
    decoder_lr_scale: float = 1.0  # finetune: the reused expert decoder's lr relative to --lr (the language model's)
    gripper: str = "auto"  # finetune: binary (BCE) | continuous (regressed) | auto (binary where the targets are)

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage: {self.stage!r} is not one of {list(STAGES)}")
        if self.stage == "align" and not self.expert and not self.init:
            raise ValueError("expert: stage align needs --expert CKPT (a student run)")
        if self.stage == "finetune" and not self.init and not self.expert:
            raise ValueError("init: stage finetune needs --init ALIGN_RUN (or --expert to skip alignment)")
        if self.vlm_cameras not in VLM_CAMERAS:
            raise ValueError(f"vlm_cameras: {self.vlm_cameras!r} is not one of {list(VLM_CAMERAS)}")
        if self.vlm_cameras == "all" and not self.init and not self.vlm.startswith("parts"):
            raise ValueError(f"vlm_cameras: all needs the parts VLM (--vlm parts); {self.vlm!r} reads one image")
        if self.gripper not in GRIPPER_MODES:
            raise ValueError(f"gripper: {self.gripper!r} is not one of {list(GRIPPER_MODES)}")
        super().__post_init__()
