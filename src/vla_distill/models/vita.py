"""VITA-VLA: a vision-language model taught to act by distilling a small action expert (a student this toolkit
trained) into it. The VLM's own forward is unchanged; it gets a state token and learnable action tokens.

Sequence into the VLM (B batch; N image tokens; L prompt tokens, left-padded; A action tokens):
  [pad...] [the family's image tokens (N)] [prompt (L)] [state token] [action tokens (A)]
The state and action positions hold a placeholder id; a hook on the VLM's input embedding writes the state
encoder's output and the learned action embeddings there.
Shapes at the boundaries:
  observation.images.<cam> (B, 3, H, W) float in [0, 1] -> resized to the VLM's image size, the family's layout
      (one camera; the parts VLM takes each of image_key + extra_image_keys: (B, V, 3, s, s))
  observation.state        (B, S) -> normalized with the expert's stats -> arm (S-1) + gripper (1) -> (B, 1, h)
  last hidden state at the action tokens (B, A, h) -> mapper (3 linear layers, GELU) -> (B, A, d)
      = the expert's feature space (StudentPolicy.features: its readout token after the final norm)
  -> the expert's action head (its decoder, reused) -> (B, K, D) normalized -> the expert's stats -> raw actions
A = 1 (the paper): the one token decodes the whole chunk. A = K: token i decodes chunk step i.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from vla_distill.config import from_dict, to_dict
from vla_distill.models.base import REGISTRY, Policy, register
from vla_distill.models.losses import alignment_loss, arm_gripper_loss, chunk_smooth_l1
from vla_distill.models.parts_vlm import (
    CLS_ID,
    IMAGE_ID,
    TOKENIZER,
    PartsVLM,
    minilm_dir,
    n_image_tokens,
    parts_vlm_config,
)
from vla_distill.types import ACTION, PAD_SUFFIX, PROMPT_IDS, TASK, camera_key

FAMILIES = ("paligemma", "idefics3", "qwen2_vl", "qwen2_5_vl", "parts")
STAGES = ("align", "finetune")
# where each family keeps its parts (attribute paths under the HF model)
_PARTS = {
    "paligemma": {"language": "model.language_model", "vision": ("model.vision_tower", "model.multi_modal_projector")},
    "idefics3": {"language": "model.text_model", "vision": ("model.vision_model", "model.connector")},
    "qwen2_vl": {"language": "model.language_model", "vision": ("model.visual",)},
    "qwen2_5_vl": {"language": "model.language_model", "vision": ("model.visual",)},
    "parts": {"language": "bert", "vision": ("trunk",)},  # models/parts_vlm.py; its projector trains in both stages
}
_QWEN = ("qwen2_vl", "qwen2_5_vl")  # same input layout: flattened temporal patches + image_grid_thw


@dataclass(frozen=True)
class VitaConfig:
    family: str = "paligemma"
    vlm_config: dict = field(default_factory=dict)  # the HF config (to_dict()); rebuilds the architecture offline
    vlm_path: str = ""  # where the VLM's weights were loaded from ("" = a tiny random VLM), provenance only
    tokenizer: str = "hash"  # "hash" (tiny random VLMs: words hashed into the vocabulary) or a local tokenizer dir
    expert_type: str = "vla_ad_student"
    expert_config: dict = field(default_factory=dict)  # the expert's config.json fields
    image_key: str = camera_key("corner2")
    extra_image_keys: tuple[str, ...] = ()  # the parts VLM's further cameras, each its own image tokens after the first
    vlm_image_size: int = 56
    n_action_tokens: int = 1
    max_prompt_tokens: int = 16
    mapper_hidden: int = 512
    gripper_logit_scale: float = 4.0  # stage 2's BCE logit = this x the raw gripper action (its sign opens/closes)
    lora_rank: int = 0  # > 0: stage 2 trains LoRA adapters (peft) on the language model's attention, not all of it

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family: {self.family!r} is not one of {list(FAMILIES)}")
        if self.n_action_tokens < 1:
            raise ValueError("n_action_tokens: must be >= 1")
        if self.extra_image_keys and self.family != "parts":  # a real VLM's multi-image layout is its processor's
            raise ValueError(f"extra_image_keys: only the parts VLM reads more than one camera, not {self.family}")

    @property
    def vlm_image_keys(self) -> tuple[str, ...]:
        return (self.image_key, *self.extra_image_keys)


def tiny_vlm_config(family: str, image_size: int = 56, hidden: int = 128, layers: int = 2, vocab: int = 1024) -> dict:
    """A small randomly initialized VLM of a real architecture, built from its config class (no downloads): for
    tests, the demo and CPU benchmarks. Larger sizes are the same call with bigger numbers."""
    from transformers import Idefics3Config, PaliGemmaConfig, Qwen2_5_VLConfig, Qwen2VLConfig

    heads, img = 4, vocab - 1
    if family == "paligemma":
        text = dict(model_type="gemma", vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                    num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=1,
                    head_dim=hidden // heads)
        vision = dict(model_type="siglip_vision_model", hidden_size=hidden // 2, intermediate_size=hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, image_size=image_size, patch_size=14,
                      projection_dim=hidden)
        cfg = PaliGemmaConfig(text_config=text, vision_config=vision, image_token_index=img, projection_dim=hidden)
    elif family == "idefics3":
        text = dict(model_type="llama", vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                    num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=2)
        vision = dict(hidden_size=hidden // 2, intermediate_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, image_size=image_size, patch_size=14)
        cfg = Idefics3Config(text_config=text, vision_config=vision, image_token_id=img, scale_factor=2)
    else:
        text = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                    num_attention_heads=heads, num_key_value_heads=2,
                    rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]})
        common = dict(depth=layers, num_heads=heads, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                      in_chans=3)
        ids = dict(image_token_id=img, vision_start_token_id=img - 1, vision_end_token_id=img - 2, bos_token_id=1,
                   eos_token_id=2)
        if family == "qwen2_vl":
            cfg = Qwen2VLConfig(text_config=text,
                                vision_config=dict(embed_dim=hidden // 2, hidden_size=hidden, **common),
                                **ids)
        else:
            vision = dict(hidden_size=hidden // 2, intermediate_size=hidden, out_hidden_size=hidden, window_size=56,
                          fullatt_block_indexes=[layers - 1], **common)
            cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
    return {"family": family, **cfg.to_dict()}


def _build_vlm(family: str, vlm_config: dict) -> nn.Module:
    if family == "parts":
        return PartsVLM(vlm_config)
    import transformers as tf

    classes = {"paligemma": (tf.PaliGemmaConfig, tf.PaliGemmaForConditionalGeneration),
               "idefics3": (tf.Idefics3Config, tf.Idefics3ForConditionalGeneration),
               "qwen2_vl": (tf.Qwen2VLConfig, tf.Qwen2VLForConditionalGeneration),
               "qwen2_5_vl": (tf.Qwen2_5_VLConfig, tf.Qwen2_5_VLForConditionalGeneration)}
    config_cls, model_cls = classes[family]
    fields = {k: v for k, v in vlm_config.items() if k != "family"}
    return model_cls(config_cls.from_dict(fields))


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


class HashTokenizer:
    """Words -> ids by a stable hash into the vocabulary (above the reserved low ids, below the special ids at
    the top): enough for a tiny random VLM, which has no tokenizer."""

    def __init__(self, vocab: int):
        self.lo, self.hi = 16, vocab - 16

    def __call__(self, text: str) -> list[int]:
        words = re.findall(r"\w+|[^\w\s]", text.lower())
        return [self.lo + int(hashlib.md5(w.encode()).hexdigest()[:8], 16) % (self.hi - self.lo) for w in words]


@register
class VitaPolicy(Policy):
    name = "vita_vla"
    config_class = VitaConfig

    def __init__(self, config: VitaConfig):
        super().__init__(config)
        c = config
        self.vlm = _build_vlm(c.family, c.vlm_config)
        expert_cls = REGISTRY[c.expert_type]
        self.expert = expert_cls(from_dict(expert_cls.config_class, c.expert_config))
        h = self.vlm.config.get_text_config().hidden_size
        d = self.expert.config.d_model
        s = sum(self.expert.config.state_dims)
        self.action_tokens = nn.Parameter(torch.randn(c.n_action_tokens, h) * 0.02)
        self.arm_proj = nn.Linear(s - 1, h)
        self.gripper_proj = nn.Linear(1, h)
        self.state_out = nn.Linear(h, h)
        self.mapper = nn.Sequential(nn.Linear(h, c.mapper_hidden), nn.GELU(),
                                    nn.Linear(c.mapper_hidden, c.mapper_hidden),
                                    nn.GELU(), nn.Linear(c.mapper_hidden, d))
        # Set by stage finetune: the gripper was trained as a binary decision (BCE), so it is read as one.
        self.register_buffer("binary_gripper", torch.tensor(False))
        self.vocab = self.vlm.config.get_text_config().vocab_size
        self._tokenizer = None
        self._inject: tuple[torch.Tensor, torch.Tensor] | None = None
        self.vlm.get_input_embeddings().register_forward_hook(self._write_tokens)
        if c.lora_rank:
            self._add_lora(c.lora_rank)

    def _add_lora(self, rank: int) -> None:
        """LoRA on the language model's attention projections only: the names q_proj... also occur in some
        vision towers, so the target is a regex under the language model's path."""
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError:
            raise ImportError("--lora-rank needs peft: pip install 'vla-distill[lora]'") from None
        language = re.escape(_PARTS[self.config.family]["language"])
        target = rf"{language}\..*\.(q_proj|k_proj|v_proj|o_proj)"
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=target, lora_dropout=0.0),
                                self.vlm)

    def with_lora(self, rank: int) -> VitaPolicy:
        """This policy with LoRA adapters (zero-initialized B: the same function until trained)."""
        policy = VitaPolicy(dataclasses.replace(self.config, lora_rank=rank))
        keys = set(policy.state_dict())

        def renamed(k: str) -> str:  # peft moves a wrapped layer's own weights under .base_layer
            stem, _, leaf = k.rpartition(".")
            return k if k in keys else f"{stem}.base_layer.{leaf}"

        missing, unexpected = policy.load_state_dict({renamed(k): v for k, v in self.state_dict().items()},
                                                     strict=False)
        assert not unexpected and all("lora_" in k for k in missing), (missing, unexpected)
        return policy

    # ------------------------------------------------------------------ the policy interface
    @property
    def horizon(self) -> int:
        return self.expert.horizon

    @property
    def n_action_steps(self) -> int:
        """The expert's: its decoder makes the chunks, so they run as the expert's were trained to (a LIBERO expert
        replans every step). Policy.__init__ asks before the expert is built; reset() asks again."""
        expert = self._modules.get("expert")
        return expert.n_action_steps if expert is not None else 0

    @property
    def action_dim(self) -> int:
        return self.expert.action_dim

    @property
    def input_keys(self) -> tuple[str, ...]:
        keys = self.expert.input_keys
        return keys + tuple(k for k in self.config.vlm_image_keys if k not in keys)

    @property
    def observation_spec(self) -> dict[str, dict]:
        return self.expert.observation_spec

    def reset(self, task: str | None = None) -> None:
        super().reset()
        self.expert.reset(task=task)

    def train(self, mode: bool = True) -> VitaPolicy:
        """The expert always runs as deployed (no augmentation): its features are stage 1's targets."""
        super().train(mode)
        self.expert.eval()
        return self

    # ------------------------------------------------------------------ stages
    def set_stage(self, stage: str, binary_gripper: bool = True) -> list[str]:
        """Sets requires_grad for a stage; returns the trainable parameter names.
        align: action tokens, state encoder, mapper (VLM and expert frozen; the parts VLM's projector trains).
        finetune: also the language model (or only its LoRA adapters) and the expert's action decoder; the vision
        tower stays frozen; the gripper becomes a binary decision (the paper's BCE) unless binary_gripper=False
        (targets with intermediate values, as MetaWorld's grip effort: it is then regressed like the arm)."""
        if stage not in STAGES:
            raise ValueError(f"stage: {stage!r} is not one of {list(STAGES)}")
        for p in self.parameters():
            p.requires_grad_(False)
        train = [self.arm_proj, self.gripper_proj, self.state_out, self.mapper]
        if self.config.family == "parts":
            train.append(self.vlm.projector)  # new here: no pretrained projector exists for these parts
        if stage == "finetune":
            language = _get(self.vlm, _PARTS[self.config.family]["language"])
            train += [self.expert.action_head] + ([] if self.config.lora_rank else [language])
            if self.config.lora_rank:
                for n, p in language.named_parameters():
                    p.requires_grad_("lora_" in n)
            self.binary_gripper.fill_(binary_gripper)
        for m in train:
            for p in m.parameters():
                p.requires_grad_(True)
        self.action_tokens.requires_grad_(True)
        return [n for n, p in self.named_parameters() if p.requires_grad]

    # ------------------------------------------------------------------ model
    def _write_tokens(self, module, inputs, out: torch.Tensor) -> torch.Tensor | None:
        if self._inject is None or out.shape[1] < self.config.n_action_tokens + 1:
            return None
        state, actions = self._inject
        a = self.config.n_action_tokens
        # a concatenation, not slice assignment: a traced assignment fixes the batch size into an exported graph
        return torch.cat([out[:, : -a - 1], state[:, None].to(out.dtype),
                          actions.to(out.dtype).expand_as(out[:, -a:])], 1)

    def tokenize(self, tasks: list[str]) -> torch.Tensor:
        """(B, L) prompt ids, left-padded with 0 / truncated to max_prompt_tokens."""
        if self._tokenizer is None:
            if self.config.tokenizer == "hash":
                self._tokenizer = HashTokenizer(self.vocab)
            else:
                from transformers import AutoTokenizer

                where = minilm_dir() if self.config.tokenizer == TOKENIZER else self.config.tokenizer
                tok = AutoTokenizer.from_pretrained(str(where), local_files_only=True)
                self._tokenizer = lambda text: tok(text, add_special_tokens=False)["input_ids"]
        n = self.config.max_prompt_tokens
        rows = [self._tokenizer(t)[-n:] for t in tasks]
        return torch.tensor([[0] * (n - len(r)) + r for r in rows], dtype=torch.long)

    def prompt_ids(self, batch: dict) -> torch.Tensor:
        """(B, L) the batch's instructions tokenized: what an exported graph takes in place of text."""
        return self.tokenize(list(batch[TASK]))

    def _state_token(self, batch: dict) -> torch.Tensor:
        e = self.expert
        # -1 on the batch axis: len() would fix the batch size into an exported graph
        state = torch.cat([batch[k].float().reshape(-1, batch[k][0].numel()) for k in e.config.state_keys], -1)
        state = (state - e.state_mean.float()) / e.state_std.float()
        return self.state_out(torch.nn.functional.gelu(self.arm_proj(state[:, :-1]) + self.gripper_proj(state[:, -1:])))

    def _vlm_inputs(self, batch: dict) -> dict:
        """The family's inputs (one image per sample; the parts VLM one per camera), with the attention mask off on
        the prompt's padding."""
        inputs = self._family_inputs(batch)
        ids, n, a = inputs["input_ids"], self.config.max_prompt_tokens, self.config.n_action_tokens
        mask = torch.ones_like(ids)
        mask[:, -a - 1 - n : -a - 1] = (ids[:, -a - 1 - n : -a - 1] != 0).long()
        return {**inputs, "attention_mask": mask}

    def _family_inputs(self, batch: dict) -> dict:
        """input_ids and the family's pixel layout (see tiny_vlm_config for the image token ids)."""
        c, cfg = self.config, self.vlm.config
        img = self._resized(batch[c.image_key])
        b, dev = len(img), img.device
        prompt = (batch[PROMPT_IDS] if PROMPT_IDS in batch else self.tokenize(list(batch[TASK]))).to(dev)
        # ids built from the prompt's own batch axis, which an exported graph keeps dynamic (torch.full would not)
        zero = prompt[:, :1] * 0
        tail = zero.expand(-1, c.n_action_tokens + 1)  # state + action placeholders
        if c.family == "parts":  # (B, V, 3, H, W): the cameras' tokens follow one another
            n = n_image_tokens(c.vlm_image_size, c.vlm_config) * len(c.vlm_image_keys)
            ids = torch.cat([zero + CLS_ID, (zero + IMAGE_ID).expand(-1, n), prompt, tail], 1)
            views = [img] + [self._resized(batch[k]) for k in c.extra_image_keys]
            return {"input_ids": ids, "pixel_values": torch.stack(views, 1)}
        if c.family == "paligemma":
            n = (c.vlm_image_size // cfg.vision_config.patch_size) ** 2
            ids = torch.cat([(zero + cfg.image_token_id).expand(-1, n), prompt, tail], 1)
            return {"input_ids": ids, "pixel_values": (img - 0.5) / 0.5}
        if c.family == "idefics3":
            n = (c.vlm_image_size // cfg.vision_config.patch_size) ** 2 // cfg.scale_factor**2
            ids = torch.cat([(zero + cfg.image_token_id).expand(-1, n), prompt, tail], 1)
            return {"input_ids": ids, "pixel_values": ((img - 0.5) / 0.5)[:, None]}
        v = cfg.vision_config
        p, m, t = v.patch_size, v.spatial_merge_size, v.temporal_patch_size
        gh = gw = c.vlm_image_size // p
        x = ((img - 0.48) / 0.27)[:, None].expand(b, t, 3, c.vlm_image_size, c.vlm_image_size)
        x = x.reshape(b, t, 3, gh // m, m, p, gw // m, m, p).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
        pixels = x.reshape(b * gh * gw, 3 * t * p * p)
        n = gh * gw // m**2
        img_ids = torch.cat([torch.full((b, 1), cfg.vision_start_token_id, device=dev),
                             torch.full((b, n), cfg.image_token_id, device=dev),
                             torch.full((b, 1), cfg.vision_end_token_id, device=dev)], 1)
        ids = torch.cat([img_ids, prompt, tail], 1)
        return {"input_ids": ids, "pixel_values": pixels,
                "image_grid_thw": torch.tensor([[1, gh, gw]] * b, device=dev),
                "mm_token_type_ids": (ids == cfg.image_token_id).long()}

    def _resized(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 3, s, s) at the VLM's image size."""
        size = (self.config.vlm_image_size,) * 2
        return torch.nn.functional.interpolate(image.float(), size=size, mode="bilinear", align_corners=False)

    def mapped_features(self, batch: dict) -> torch.Tensor:
        """(B, A, d): the action tokens' last hidden states, mapped into the expert's feature space."""
        inputs = self._vlm_inputs(batch)
        self._inject = (self._state_token(batch), self.action_tokens[None])  # (1, A, h): broadcast over the batch
        try:
            out = self.vlm(**inputs, output_hidden_states=True, use_cache=False)
        finally:
            self._inject = None
        return self.mapper(out.hidden_states[-1][:, -self.config.n_action_tokens :].float())

    def decode(self, mapped: torch.Tensor) -> torch.Tensor:
        """(B, A, d) -> (B, K, D) normalized actions through the expert's own action head."""
        e = self.expert
        if mapped.shape[1] == 1:
            return e.decode_action(e.heads(mapped[:, 0])["action"])
        steps = [e.decode_action(e.heads(mapped[:, i])["action"])[:, i] for i in range(mapped.shape[1])]
        return torch.stack(steps, 1)

    @torch.no_grad()
    def expert_features(self, batch: dict) -> torch.Tensor:
        """(B, d) what stage 1 aligns to: the frozen expert's features on the same inputs."""
        return self.expert.features(batch)

    def to_actions(self, pred: torch.Tensor, batch: dict) -> torch.Tensor:
        """(B, K, D) normalized decoder output -> raw actions. After a binary stage 2 the gripper is 2·P(closed) − 1,
        the probability its BCE trained (logit = gripper_logit_scale × the raw decoder output), so it stays in
        [-1, 1]; otherwise it is decoded as the expert decodes it."""
        raw = self.expert.unnormalize_action(pred.float(), batch)
        if bool(self.binary_gripper):
            raw = torch.cat([raw[..., :-1], 2 * torch.sigmoid(self.config.gripper_logit_scale * raw[..., -1:]) - 1], -1)
        return raw

    @torch.no_grad()
    def action_scale(self) -> torch.Tensor:
        return self.expert.action_scale()  # the expert's decoder and stats make the actions

    def predict_action_chunk(self, batch: dict) -> torch.Tensor:
        return self.to_actions(self.decode(self.mapped_features(batch)), batch)

    def forward(self, batch: dict, stage: str = "align") -> tuple[torch.Tensor, dict[str, float]]:
        mapped = self.mapped_features(batch)
        if stage == "align":
            loss = alignment_loss(mapped, self.expert_features(batch))
            return loss, {"align": float(loss.detach())}
        pred = self.decode(mapped)
        target = self.expert.normalize_action(batch[ACTION].float(), batch)
        if not bool(self.binary_gripper):
            loss = chunk_smooth_l1(pred, target, batch.get(ACTION + PAD_SUFFIX))
            return loss, {"action_smooth_l1": float(loss.detach())}
        raw_gripper = self.expert.unnormalize_action(pred, batch)[..., -1]
        arm, grip = arm_gripper_loss(pred[..., :-1], target[..., :-1], self.config.gripper_logit_scale * raw_gripper,
                                     batch[ACTION][..., -1] > 0, batch.get(ACTION + PAD_SUFFIX))
        return arm + grip, {"arm_smooth_l1": float(arm.detach()), "gripper_bce": float(grip.detach())}

    def num_parameters(self, deployed: bool = False) -> int:
        skip = ("expert.phase_head", "expert.direction_head", "expert.logit_scale") if deployed else ()
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith(skip))


def from_expert(expert: Policy, family: str = "paligemma", vlm_config: dict | None = None, vlm_path: str = "",
                tokenizer: str = "hash", **fields) -> VitaPolicy:
    """A VITA policy around a trained expert (its weights copied in) and a VLM: `vlm_path` loads a local
    transformers checkpoint; family "parts" the pretrained parts (parts_vlm_config(pretrained=False): untrained);
    otherwise `vlm_config` (e.g. tiny_vlm_config(family)) builds a random one."""
    if vlm_path:
        from transformers import AutoConfig

        vlm_config = {"family": family, **AutoConfig.from_pretrained(vlm_path, local_files_only=True).to_dict()}
    image_key = fields.pop("image_key", expert.input_keys[len(expert.config.state_keys)])
    if fields.pop("all_cameras", False):  # the parts VLM sees every camera the expert reads
        fields["extra_image_keys"] = tuple(k for k in expert.config.image_keys if k != image_key)
    vlm_config = vlm_config or (parts_vlm_config() if family == "parts" else tiny_vlm_config(family))
    vision = vlm_config.get("vision_config", {})
    if family not in _QWEN and "vlm_image_size" not in fields and vision.get("image_size"):
        fields["vlm_image_size"] = int(vision["image_size"])
    if family == "parts":
        fields.setdefault("vlm_image_size", 128)
        tokenizer = TOKENIZER
    config = VitaConfig(family=family, vlm_config=vlm_config, vlm_path=vlm_path,
                        tokenizer=tokenizer if not vlm_path or tokenizer != "hash" else vlm_path,
                        expert_type=expert.name, expert_config=to_dict(expert.config), image_key=image_key, **fields)
    policy = VitaPolicy(config)
    policy.expert.load_state_dict(copy.deepcopy(expert.state_dict()))
    if family == "parts" and vlm_config.get("pretrained"):
        policy.vlm.load_pretrained()
    if vlm_path:
        from transformers import AutoModelForImageTextToText

        policy.vlm.load_state_dict(AutoModelForImageTextToText.from_pretrained(vlm_path,
                                                                               local_files_only=True).state_dict())
    return policy
