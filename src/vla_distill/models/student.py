"""The VLA-AD student: cameras (+ optional depth) + proprioception + instruction -> action chunk, with phase and
direction heads that only shape training and observability. Its three losses: `loss` (pure parts in losses.py).

Shapes (types.py: B batch, V cameras, K chunk, D action dim, P phases, E text-embedding dim, d model width):
  observation.images.<cam>   (B, 3, H, W) float in [0, 1]; depth key (B, 1|3, H, W) in [0, 1] if configured
  observation.state          (B, S)
  task                       list[str] (B); or task_index (B,) into config.tasks; or task_embedding (B, E)
  -> outputs["action"]       (B, K, D) normalized  (discrete head: logits (B, K, D, n_bins))
     outputs["phase_logits"] (B, P)
     outputs["direction"]    (B, E), L2-normalized, in the text encoder's space
     outputs["aux_state"]    (B, A) normalized, only with an auxiliary state head (config.aux_state_key)
Training batches add action (B, K, D) raw, action_is_pad (B, K), and when their weight is > 0: phase_index (B,),
direction_index (B,), direction_embedding (B, E), and the auxiliary state column (B, A) when the model predicts one.
With a frozen pretrained encoder they may carry observation.image_features.<cam> (B, C_f, h, w), the trunk's output,
instead of the camera's pixels.
Tokens into the policy transformer: [readout, task, state..., camera tokens (grid² per camera)]; every head reads
the readout token, so the auxiliary losses shape the same representation the action comes from. The auxiliary state
head predicts privileged simulator state (object and goal positions: observation.environment_state) from the same
readout during training only: a dense signal of where small targets are, beside the action loss (what it is worth:
BENCHMARKS.md). It is not an input, and the deployed graph does not use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from vla_distill.errors import did_you_mean
from vla_distill.models.base import Policy, register
from vla_distill.models.chunking import check_n_action_steps
from vla_distill.models.losses import (
    LossConfig,
    across_processes,
    action_loss,
    aux_state_loss,
    combine,
    direction_loss,
    phase_loss,
)
from vla_distill.models.vision import VisionConfig, make_encoder, random_shift, tokens_per_image
from vla_distill.types import (
    ACTION,
    AUGMENT_KEY,
    DIRECTION_EMBEDDING,
    DIRECTION_INDEX,
    OBS_STATE,
    PAD_SUFFIX,
    PHASE_INDEX,
    TASK,
    TASK_EMBEDDING,
    TASK_INDEX,
    camera_key,
    feature_key,
)


@dataclass(frozen=True)
class StudentConfig:
    image_keys: tuple[str, ...] = (camera_key("corner2"),)
    image_size: tuple[int, int] = (128, 128)
    depth_keys: tuple[str, ...] = ()  # empty, or one per camera: a 4th input channel (the seed's RGB-D)
    state_keys: tuple[str, ...] = (OBS_STATE,)
    state_dims: tuple[int, ...] = (4,)
    action_dim: int = 4
    horizon: int = 1  # K: actions predicted per call (the paper's variant uses 5)
    # actions of each chunk executed before the next call, as deployed (lerobot's n_action_steps; openpi's
    # replan_steps): what select_action, eval and run do unless told otherwise (0 = all K)
    n_action_steps: int = 0
    n_phases: int = 4
    phase_names: tuple[str, ...] = ()  # the annotation's taxonomy, for observability (empty in old checkpoints)
    text_dim: int = 384
    tasks: tuple[str, ...] = ()  # instructions whose embeddings ship in the checkpoint
    text_encoder: str = ""  # embeds unseen instructions at reset ("" = bundled all-MiniLM-L6-v2)
    vision: VisionConfig = field(default_factory=VisionConfig)
    d_model: int = 384
    n_layers: int = 4
    n_heads: int = 6
    ff_mult: int = 4
    dropout: float = 0.1
    action_head: str = "continuous"  # continuous (MSE / L1 / smooth-L1) | discrete (256-bin cross-entropy)
    n_bins: int = 256
    shift_pad: int = 4  # training-time random shift, pixels
    feature_shift: int = 0  # training-time random shift of cached trunk features, feature cells (8 px at stride 8)
    aux_state_key: str = ""  # a column predicted from the readout in training only ("" = no auxiliary state head)
    aux_state_dim: int = 0  # A, its flattened size
    # action dimensions kept inside the training data's range at inference (grippers: lerobot's 0..100, robosuite's
    # -1..1; a regression head's overshoot means nothing there)
    bounded_dims: tuple[int, ...] = ()
    # action dimensions predicted relative to the current state's same dimension (openpi's delta actions: an arm's
    # absolute joint targets, not its grippers): the network then predicts the motion, not where the arm already is
    delta_dims: tuple[int, ...] = ()
    preset: str = ""

    def __post_init__(self):
        if len(self.state_keys) != len(self.state_dims):
            raise ValueError("state_keys and state_dims must have the same length")
        if self.depth_keys and len(self.depth_keys) != len(self.image_keys):
            raise ValueError("depth_keys: give one per camera in image_keys, or none")
        if self.horizon < 1:
            raise ValueError("horizon: must be >= 1")
        check_n_action_steps(self.n_action_steps, self.horizon)
        if self.phase_names and len(self.phase_names) != self.n_phases:
            raise ValueError("phase_names: give one name per phase (n_phases)")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.action_head not in ("continuous", "discrete"):
            raise ValueError(f"action_head: {self.action_head!r} is not one of ['continuous', 'discrete']")
        if bool(self.aux_state_key) != (self.aux_state_dim > 0):
            raise ValueError("aux_state_key and aux_state_dim: give both or neither")
        if any(not 0 <= d < min(self.action_dim, self.state_dims[0]) for d in self.delta_dims):
            raise ValueError(f"delta_dims: {self.delta_dims} are not all dimensions of both the action "
                             f"({self.action_dim}) and the first state key ({self.state_dims[0]})")


# Architecture presets; data-dependent fields (cameras, dims, tasks) are filled from the dataset at train time.
PRESETS: dict[str, dict] = {
    # tiny is sized for batch-1 >= 500 Hz on 2 CPU cores through ONNX Runtime (BENCHMARKS.md, "Student presets");
    # dropout off because its mask sampling was a large share of a 2-core training step.
    "tiny": dict(vision=VisionConfig(widths=(24, 48, 96, 192), blocks=(1, 1, 1, 1)), d_model=192, n_layers=4, n_heads=4,
                 dropout=0.0),
    "small": dict(vision=VisionConfig(widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2)), d_model=512, n_layers=8,
                  n_heads=8),
    "base": dict(vision=VisionConfig(widths=(80, 160, 320, 640), blocks=(2, 2, 2, 2)), d_model=1024, n_layers=11,
                 n_heads=16),
}


def preset_config(name: str, **fields) -> StudentConfig:
    if name not in PRESETS:
        raise ValueError(f"preset: unknown {name!r}{did_you_mean(name, PRESETS)}; presets: {', '.join(PRESETS)}")
    return StudentConfig(**{**PRESETS[name], "preset": name, **fields})


@register
class StudentPolicy(Policy):
    name = "vla_ad_student"
    config_class = StudentConfig

    def __init__(self, config: StudentConfig):
        super().__init__(config)
        c, d = config, config.d_model
        n_cam = len(c.image_keys)
        self.encoder = make_encoder(4 if c.depth_keys else 3, d, c.vision, c.image_size)
        n_img_tokens = n_cam * tokens_per_image(c.vision)
        self.state_proj = nn.ModuleList(nn.Linear(s, d) for s in c.state_dims)
        self.task_proj = nn.Linear(c.text_dim, d)
        self.readout = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, 2 + len(c.state_dims) + n_img_tokens, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, c.n_heads, c.ff_mult * d, dropout=c.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, c.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        out = c.horizon * c.action_dim * (c.n_bins if c.action_head == "discrete" else 1)
        self.action_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, out))
        self.phase_head = nn.Linear(d, c.n_phases)
        self.direction_head = nn.Linear(d, c.text_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's learnable temperature
        if c.aux_state_dim:  # absent otherwise, so older checkpoints load unchanged
            self.aux_state_head = nn.Linear(d, c.aux_state_dim)
            self.register_buffer("aux_state_mean", torch.zeros(c.aux_state_dim))
            self.register_buffer("aux_state_std", torch.ones(c.aux_state_dim))
        # Normalization and instruction embeddings: buffers, so they ship inside model.safetensors.
        self.register_buffer("state_mean", torch.zeros(sum(c.state_dims)))
        self.register_buffer("state_std", torch.ones(sum(c.state_dims)))
        self.register_buffer("action_mean", torch.zeros(c.action_dim))
        self.register_buffer("action_std", torch.ones(c.action_dim))
        self.register_buffer("action_min", -torch.ones(c.action_dim))
        self.register_buffer("action_max", torch.ones(c.action_dim))
        self.register_buffer("image_mean", torch.full((n_cam, 4 if c.depth_keys else 3, 1, 1), 0.5))
        self.register_buffer("image_std", torch.full((n_cam, 4 if c.depth_keys else 3, 1, 1), 0.25))
        self.register_buffer("task_embeddings", torch.zeros(len(c.tasks), c.text_dim))
        self._task_index = {t: i for i, t in enumerate(c.tasks)}
        self._new_tasks: dict[str, torch.Tensor] = {}
        self._text_encoder = None

    @property
    def input_keys(self) -> tuple[str, ...]:
        c = self.config
        return tuple(c.state_keys) + tuple(c.image_keys) + tuple(c.depth_keys)

    @property
    def observation_spec(self) -> dict[str, dict]:
        c = self.config
        spec = {k: {"shape": [d], "dtype": "float32"} for k, d in zip(c.state_keys, c.state_dims)}
        for k in c.image_keys + c.depth_keys:
            spec[k] = {"shape": [*c.image_size, 3], "dtype": "uint8"}
        return {**spec, TASK: {"shape": [], "dtype": "str"}}

    # ------------------------------------------------------------------ normalization
    def set_normalization(self, stats: dict[str, np.ndarray], task_embeddings: np.ndarray) -> None:
        """stats: state_mean/std (S,), action_mean/std/min/max (D,), image_mean/std (V, C, 1, 1), and
        aux_state_mean/std (A,) with an auxiliary state head."""
        for name, value in stats.items():
            buf = getattr(self, name)
            buf.copy_(torch.as_tensor(np.asarray(value, np.float32)).reshape(buf.shape))
        self.task_embeddings.copy_(torch.tensor(np.asarray(task_embeddings), dtype=torch.float32))

    def action_offset(self, batch: dict) -> torch.Tensor | float:
        """(B, 1, D) what the delta dimensions are relative to: the current state's same dimensions, 0 elsewhere
        (0. without delta dimensions)."""
        c = self.config
        if not c.delta_dims:
            return 0.0
        state = batch[c.state_keys[0]].float()
        pick = torch.zeros(c.state_dims[0], c.action_dim, device=state.device)  # a constant in an exported graph
        pick[list(c.delta_dims), list(c.delta_dims)] = 1.0
        return (state.reshape(state.shape[0], -1) @ pick)[:, None]

    def normalize_action(self, a: torch.Tensor, batch: dict) -> torch.Tensor:
        """(B, K, D) raw actions of `batch`'s observations -> what the action head predicts."""
        a = a - self.action_offset(batch)
        if self.config.action_head == "discrete":  # to [-1, 1] over the data's range, where the bins live
            return 2 * (a - self.action_min) / (self.action_max - self.action_min).clamp_min(1e-6) - 1
        return (a - self.action_mean) / self.action_std

    def action_scale(self) -> torch.Tensor:
        if self.config.action_head == "discrete":
            return (self.action_max - self.action_min).clamp_min(1e-6).float() / 2
        return self.action_std.float()

    def normalize_aux_state(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ...) raw auxiliary state column -> (B, A) normalized."""
        return (x.float().reshape(x.shape[0], -1) - self.aux_state_mean) / self.aux_state_std

    def unnormalize_action(self, a: torch.Tensor, batch: dict) -> torch.Tensor:
        """(B, K, D) normalized predictions for `batch`'s observations -> raw actions."""
        if self.config.action_head == "discrete":
            return (a + 1) / 2 * (self.action_max - self.action_min).clamp_min(1e-6) + self.action_min + \
                self.action_offset(batch)
        a = a * self.action_std + self.action_mean + self.action_offset(batch)
        if not self.config.bounded_dims:
            return a
        bounded = torch.zeros(self.config.action_dim, dtype=torch.bool, device=a.device)
        bounded[list(self.config.bounded_dims)] = True
        return torch.where(bounded, torch.minimum(torch.maximum(a, self.action_min), self.action_max), a)

    # ------------------------------------------------------------------ instructions
    def reset(self, task: str | None = None) -> None:
        """Clears the action queue; a new instruction is embedded here, once, never per step."""
        super().reset()
        if task is not None:
            self._embed_new([task])

    def instruction_embedding(self, text: str) -> np.ndarray | None:
        """(E,) the stored embedding of one of the training instructions, None for any other text."""
        i = self._task_index.get(text)
        return None if i is None else self.task_embeddings[i].float().cpu().numpy()

    def _embed_new(self, tasks: list[str]) -> None:
        new = sorted({t for t in tasks if t not in self._task_index and t not in self._new_tasks})
        if not new:
            return
        if self._text_encoder is None:
            from vla_distill.models.text import TextEncoder

            self._text_encoder = TextEncoder(self.config.text_encoder)
        for t, e in zip(new, self._text_encoder.encode(new)):
            self._new_tasks[t] = torch.from_numpy(e).to(self.task_embeddings.device)

    def task_tokens(self, batch: dict) -> torch.Tensor:
        """(B, E) instruction embeddings: given, looked up by task_index or text, or embedded once when unseen."""
        if TASK_EMBEDDING in batch:  # (B, E), already embedded: the exported graph's input
            return batch[TASK_EMBEDDING]
        if TASK_INDEX in batch:
            return self.task_embeddings[batch[TASK_INDEX].long().reshape(-1)]
        tasks = list(batch[TASK])
        self._embed_new(tasks)
        rows = [self.task_embeddings[self._task_index[t]] if t in self._task_index else self._new_tasks[t]
                for t in tasks]
        return torch.stack(rows)

    # ------------------------------------------------------------------ model
    def load_pretrained_vision(self) -> None:
        """A new policy's pretrained trunk gets its ImageNet weights (a checkpoint carries them afterwards)."""
        if self.config.vision.pretrained:
            self.encoder.load_pretrained(self.config.vision.kind)

    def _images(self, batch: dict, generator: torch.Generator | None) -> torch.Tensor:
        c = self.config
        cams = []
        dt = self.image_mean.dtype  # float32, or bf16 when the whole model was cast for inference
        for i, key in enumerate(c.image_keys):
            x = batch[key].to(dt)
            if c.depth_keys:
                x = torch.cat([x, batch[c.depth_keys[i]].to(dt)[:, :1]], dim=1)
            x = self._shift(x, c.shift_pad, i, batch, generator)
            cams.append(x if c.vision.pretrained else (x - self.image_mean[i]) / self.image_std[i])
        return torch.stack(cams, dim=1)  # (B, V, C, H, W)

    def _shift(self, x: torch.Tensor, pad: int, camera: int, batch: dict,
               generator: torch.Generator | None) -> torch.Tensor:
        """Camera `camera`'s (B, C, h, w) training-time random shift by up to `pad` pixels (or feature cells), fixed
        per sample by its augment_key when the batch has one."""
        if not (self.training and pad):
            return x
        keys = batch.get(AUGMENT_KEY)
        return random_shift(x, pad, generator, None if keys is None else keys * 8 + camera)

    def camera_tokens(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, V*N, d): every camera's tokens, from cached trunk features where the batch has them."""
        c = self.config
        fkeys = [feature_key(k) for k in c.image_keys]
        if all(k in batch for k in fkeys):
            # the pixel shift's stand-in: cached features cannot be re-rendered
            f = torch.stack([self._shift(batch[k], c.feature_shift, i, batch, generator) for i, k in enumerate(fkeys)],
                            dim=1)  # (B, V, C_f, h, w)
            return self.encoder.from_features(f.flatten(0, 1)).reshape(f.shape[0], -1, c.d_model)
        imgs = self._images(batch, generator)
        return self.encoder(imgs.flatten(0, 1)).reshape(imgs.shape[0], -1, c.d_model)

    def encode(self, batch: dict, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """All heads; see the module docstring for shapes."""
        return self.heads(self.features(batch, generator))

    def heads(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, d) readout features -> every head's output. A VITA-VLA model reuses this as its action decoder."""
        c = self.config
        act = self.action_head(h)
        # h.shape[0], not len(h): an ONNX trace records len() as a constant batch size
        shape = (h.shape[0], c.horizon, c.action_dim) + ((c.n_bins,) if c.action_head == "discrete" else ())
        out = {"action": act.reshape(shape), "phase_logits": self.phase_head(h),
               "direction": nn.functional.normalize(self.direction_head(h), dim=-1)}
        if c.aux_state_dim:
            out["aux_state"] = self.aux_state_head(h)
        return out

    def features(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, d): the readout token after the final norm, which every head reads (the expert feature space
        VITA-VLA aligns a VLM to)."""
        c = self.config
        img_tokens = self.camera_tokens(batch, generator)
        b = img_tokens.shape[0]
        state = torch.cat([batch[k].to(img_tokens.dtype).reshape(b, -1) for k in c.state_keys], dim=-1)
        state = (state - self.state_mean) / self.state_std
        splits = torch.split(state, list(c.state_dims), dim=-1)
        state_tokens = torch.stack([proj(s) for proj, s in zip(self.state_proj, splits)], dim=1)
        task_token = self.task_proj(self.task_tokens(batch).to(state.dtype))[:, None]
        tokens = torch.cat([self.readout.expand(b, -1, -1), task_token, state_tokens, img_tokens], dim=1) + self.pos
        return self.norm(self.transformer(tokens)[:, 0])

    def decode_action(self, action_out: torch.Tensor) -> torch.Tensor:
        """Head output -> (B, K, D) normalized actions (discrete: the expectation over bin centres)."""
        if self.config.action_head != "discrete":
            return action_out
        centres = torch.linspace(-1, 1, self.config.n_bins, device=action_out.device)
        return (action_out.float().softmax(-1) * centres).sum(-1)

    def actions(self, out: dict[str, torch.Tensor], batch: dict) -> torch.Tensor:
        """(B, K, D) raw actions from `encode(batch)`'s outputs `out`."""
        return self.unnormalize_action(self.decode_action(out["action"]).float(), batch)

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict) -> torch.Tensor:
        return self.actions(self.encode(batch), batch)

    @torch.no_grad()
    def predict_observed(self, batch: dict) -> dict[str, torch.Tensor]:
        """One forward pass for the control loop and its observability: actions (B, K, D) in raw units,
        phase (B,) index of the predicted phase, direction (B, E) unit embedding."""
        out = self.encode(batch)
        return {"actions": self.actions(out, batch), "phase": out["phase_logits"].argmax(-1),
                "direction": out["direction"].float()}

    def forward(self, batch: dict, loss_cfg: LossConfig | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted training loss and each named loss (see the module docstring for the batch)."""
        return self.loss(self.encode(batch, generator), batch, loss_cfg or LossConfig())

    def loss(self, out: dict[str, torch.Tensor], batch: dict, cfg: LossConfig) -> tuple[torch.Tensor, dict[str, float]]:
        """The three losses (four with an auxiliary state head) of this batch's outputs `out` (from `encode`),
        combined by losses.combine."""
        target = self.normalize_action(batch[ACTION].float(), batch)
        w = torch.tensor(cfg.dim_weights, dtype=torch.float32) if cfg.dim_weights else None
        named = {"action": action_loss(out["action"], target, batch.get(ACTION + PAD_SUFFIX), cfg.action, w).mean()}
        if cfg.phase_weight > 0:
            per, valid = phase_loss(out["phase_logits"], batch[PHASE_INDEX].reshape(-1))
            named["phase"] = per.sum() / valid.sum().clamp_min(1)
        if cfg.direction_weight > 0:
            z, ids, emb = across_processes(out["direction"], batch[DIRECTION_INDEX].reshape(-1),
                                           batch[DIRECTION_EMBEDDING])
            named["direction"] = direction_loss(z, ids, emb, self.logit_scale)
        if "aux_state" in out and cfg.aux_state_weight > 0:
            named["aux_state"] = aux_state_loss(out["aux_state"],
                                                self.normalize_aux_state(batch[self.config.aux_state_key]))
        return combine(named, cfg), {k: float(v.detach()) for k, v in named.items()}

    def num_parameters(self, deployed: bool = False) -> int:
        """All parameters (a frozen pretrained trunk included); deployed=True leaves out the training-only heads."""
        skip = ("phase_head", "direction_head", "logit_scale", "aux_state_head") if deployed else ()
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith(skip))

