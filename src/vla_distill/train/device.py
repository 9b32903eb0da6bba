"""The device set-up, decided once per run and printed with the reason: which device, which autocast dtype, and this
process's place among the torchrun / accelerate processes (it joins their process group)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from vla_distill.errors import ConfigError
from vla_distill.train.config import RunConfig


@dataclass(frozen=True)
class DeviceSetup:
    device: torch.device
    autocast: torch.dtype | None
    rank: int
    world: int
    why: str


def setup_device(cfg: RunConfig) -> DeviceSetup:
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
    return DeviceSetup(device, dtype, rank, world,
                       f"device {device}, {why}" + (f", {world} processes" if world > 1 else ""))


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def autocast(dev: DeviceSetup):
    return torch.autocast(dev.device.type, dtype=dev.autocast, enabled=dev.autocast is not None)
