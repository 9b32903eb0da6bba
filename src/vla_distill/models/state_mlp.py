"""A small MLP policy on the proprioceptive (and optionally environment) state: the smallest useful teacher
and the policy behind the test servers. Normalization stats live in its buffers, so they ship in
model.safetensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vla_distill.models.base import Policy, register
from vla_distill.types import ACTION, OBS_STATE


@dataclass(frozen=True)
class StateMLPConfig:
    input_keys: tuple[str, ...] = (OBS_STATE,)
    input_dims: tuple[int, ...] = (4,)
    action_dim: int = 4
    horizon: int = 1
    hidden: int = 256
    depth: int = 3

    def __post_init__(self):
        if len(self.input_keys) != len(self.input_dims):
            raise ValueError("input_keys and input_dims must have the same length")
        if self.horizon < 1 or self.depth < 1:
            raise ValueError("horizon and depth must be >= 1")


@register
class StateMLPPolicy(Policy):
    name = "state_mlp"
    config_class = StateMLPConfig

    def __init__(self, config: StateMLPConfig):
        super().__init__(config)
        d_in = sum(config.input_dims)
        layers: list[nn.Module] = []
        for i in range(config.depth):
            layers += [nn.Linear(d_in if i == 0 else config.hidden, config.hidden), nn.GELU()]
        layers.append(nn.Linear(config.hidden, config.horizon * config.action_dim))
        self.net = nn.Sequential(*layers)
        self.register_buffer("in_mean", torch.zeros(d_in))
        self.register_buffer("in_std", torch.ones(d_in))
        self.register_buffer("act_mean", torch.zeros(config.action_dim))
        self.register_buffer("act_std", torch.ones(config.action_dim))

    @property
    def input_keys(self) -> tuple[str, ...]:
        return self.config.input_keys

    @property
    def observation_spec(self) -> dict[str, dict]:
        return {k: {"shape": [d], "dtype": "float32"} for k, d in zip(self.config.input_keys, self.config.input_dims)}

    def _inputs(self, batch: dict) -> torch.Tensor:
        x = torch.cat([batch[k].float().reshape(len(batch[k]), -1) for k in self.config.input_keys], dim=-1)
        return (x - self.in_mean) / self.in_std

    def predict_action_chunk(self, batch: dict) -> torch.Tensor:
        y = self.net(self._inputs(batch)).view(-1, self.config.horizon, self.config.action_dim)
        return y * self.act_std + self.act_mean

    def action_scale(self) -> torch.Tensor:
        return self.act_std.float()

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        target = (batch[ACTION].float().view(-1, self.config.horizon,
                                             self.config.action_dim) - self.act_mean) / self.act_std
        pred = self.net(self._inputs(batch)).view_as(target)
        loss = torch.nn.functional.mse_loss(pred, target)
        return loss, {"action": loss.item()}
