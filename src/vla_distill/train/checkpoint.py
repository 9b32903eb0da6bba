"""Training checkpoints in lerobot's layout, written atomically.

RUN/checkpoints/<step:06d>/pretrained_model/   config.json, model.safetensors (weights + normalization buffers),
                                               stats.json (the same normalization, readable), train_config.json,
                                               provenance.json
RUN/checkpoints/<step:06d>/training_state/     optimizer_state.safetensors, optimizer_param_groups.json,
                                               scheduler_state.json, rng_state.safetensors, training_step.json,
                                               [ema.safetensors, live_weights.safetensors]
RUN/checkpoints/last -> <step:06d>             symlink, replaced atomically after the step directory is complete

A step directory is assembled under a temporary name and renamed into place, so a run killed at any moment
leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from vla_distill.data.format import removed_on_failure
from vla_distill.errors import ConfigError
from vla_distill.models.base import Policy
from vla_distill.models.checkpoint import save_pretrained, save_tensors

CHECKPOINTS = "checkpoints"
LAST = "last"
PRETRAINED = "pretrained_model"
TRAINING_STATE = "training_state"


def save_checkpoint(run: Path, step: int, policy: Policy, optimizer: torch.optim.Optimizer, ema: dict | None,
                    train_config: dict, provenance: dict, scheduler_state: dict) -> Path:
    """Writes RUN/checkpoints/NNNNNN and points `last` at it; the step directory appears, by rename, only once every
    file of it is written."""
    root = run / CHECKPOINTS
    final, tmp = root / f"{step:06d}", root / f".{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with removed_on_failure(tmp):
        live = _write_pretrained(tmp / PRETRAINED, policy, ema, train_config, provenance)
        _write_training_state(tmp / TRAINING_STATE, step, optimizer, ema, live, scheduler_state)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    link = root / f".{LAST}.tmp"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(final.name)
    os.replace(link, root / LAST)
    return final


def _write_pretrained(d: Path, policy: Policy, ema: dict | None, train_config: dict, provenance: dict) -> dict:
    """The shipped policy (the EMA weights when EMA is on) with its config and stats; returns the live weights."""
    live = {k: v.detach().clone().contiguous() for k, v in policy.state_dict().items()}
    if ema is not None:
        policy.load_state_dict({**live, **ema})
    try:
        save_pretrained(policy, d, provenance)
    finally:
        policy.load_state_dict(live)
    (d / "train_config.json").write_text(json.dumps(train_config, indent=2))
    stats = {k: v.tolist() for k, v in policy.state_dict().items() if k.endswith(("_mean", "_std", "_min", "_max"))}
    (d / "stats.json").write_text(json.dumps(stats, indent=2))
    return live


def _write_training_state(d: Path, step: int, optimizer: torch.optim.Optimizer, ema: dict | None, live: dict,
                          scheduler_state: dict) -> None:
    d.mkdir()
    tensors, groups = _flatten_optimizer(optimizer)
    save_tensors(tensors, d / "optimizer_state.safetensors")
    (d / "optimizer_param_groups.json").write_text(json.dumps(groups, indent=2))
    (d / "scheduler_state.json").write_text(json.dumps(scheduler_state, indent=2))
    save_tensors({"torch": torch.get_rng_state()}, d / "rng_state.safetensors")
    (d / "training_step.json").write_text(json.dumps({"step": step}))
    if ema is not None:  # pretrained_model holds the EMA weights; the live ones continue training
        save_tensors({k: v.contiguous() for k, v in ema.items()}, d / "ema.safetensors")
        save_tensors(live, d / "live_weights.safetensors")


def remove_partial(run: Path) -> None:
    """Deletes the step directories a killed run left half-written (.NNNNNN.tmp): a resumed run that stops before
    that step would never write it again."""
    for tmp in (run / CHECKPOINTS).glob(".*.tmp"):
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)


def has_complete_checkpoint(run: Path) -> bool:
    """Whether the run has a checkpoint to continue from: a step directory is renamed into place, and `last` pointed
    at it, only once every file of it is written."""
    return (run / CHECKPOINTS / LAST / TRAINING_STATE / "training_step.json").is_file()


def last_step(run: Path) -> int:
    """The step of the run's last complete checkpoint; 0 without one."""
    if not has_complete_checkpoint(run):
        return 0
    return int(json.loads((run / CHECKPOINTS / LAST / TRAINING_STATE / "training_step.json").read_text())["step"])


RUN_FILES = ("train_config.json", "metrics.jsonl", "tensorboard", CHECKPOINTS)  # what training writes in a run


def remove_run_files(run: Path) -> None:
    """Removes what an earlier attempt at this run wrote when it left no complete checkpoint (killed before the first
    save finished, or a full disk during it), so that the rerun starts over; other files in the directory are left."""
    found = [run / name for name in RUN_FILES if (run / name).exists() or (run / name).is_symlink()]
    if found:
        print(f"{run}: no complete checkpoint from an earlier attempt; starting over", file=sys.stderr)
    for path in found:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def load_training_state(run: Path, policy: Policy, optimizer: torch.optim.Optimizer, ema: dict | None) -> int:
    """Restores weights, optimizer, EMA and RNG from RUN/checkpoints/last; returns the step to continue from."""
    last = run / CHECKPOINTS / LAST
    if not has_complete_checkpoint(run):
        raise ConfigError("nothing to resume: no complete checkpoint (checkpoints/last/training_state)", path=run)
    state = last / TRAINING_STATE
    weights = load_file(str(last / PRETRAINED / "model.safetensors"))
    if ema is not None:
        ema.update(load_file(str(state / "ema.safetensors")))
    tensors = load_file(str(state / "optimizer_state.safetensors"))
    groups = json.loads((state / "optimizer_param_groups.json").read_text())
    # With EMA on, pretrained_model holds the EMA weights; the live weights are rebuilt from the optimizer's copy.
    live_path = state / "live_weights.safetensors"
    live = load_file(str(live_path)) if live_path.exists() else weights
    policy.load_state_dict(live)
    optimizer.load_state_dict(_unflatten_optimizer(tensors, groups))
    torch.set_rng_state(load_file(str(state / "rng_state.safetensors"))["torch"])
    return last_step(run)


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = optimizer.state_dict()
    tensors = {}
    for pid, st in sd["state"].items():
        for name, value in st.items():
            tensors[f"{pid}.{name}"] = torch.as_tensor(value).detach().clone().contiguous()
    return tensors, sd["param_groups"]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict]) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": groups}
