"""Self-describing checkpoints in lerobot's `pretrained_model/` layout.

pretrained_model/config.json      {"type": <registered policy name>, **config fields}
pretrained_model/model.safetensors  weights and normalization buffers
pretrained_model/provenance.json  where it came from (dataset fingerprint, teacher, code version)
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vla_distill.config import from_dict, to_dict
from vla_distill.errors import ConfigError
from vla_distill.models.base import REGISTRY, Policy


def save_pretrained(policy: Policy, out: str | Path, provenance: dict | None = None) -> Path:
    """Writes out/ atomically (a temporary sibling, then rename)."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        cfg = {"type": policy.name, **to_dict(policy.config)}
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        save_tensors(_unshared(policy.state_dict()), tmp / "model.safetensors")
        (tmp / "provenance.json").write_text(json.dumps(provenance or {}, indent=2))
    except BaseException:  # a full disk, a Ctrl-C: nothing half-written left beside `out`
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def _unshared(state: dict) -> dict:
    """safetensors refuses tensors that share memory (a VLM's tied embedding and output head): later aliases are
    stored as copies; loading writes both into the one tied parameter."""
    seen, out = set(), {}
    for k, v in state.items():
        v = v.detach().cpu()
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        out[k] = v.clone() if key in seen else v.contiguous()
        seen.add(key)
    return out


def resolve_pretrained_dir(path: str | Path) -> Path:
    """Accepts a run dir (uses checkpoints/last), a checkpoint dir, the pretrained_model dir itself, or a bundle (an
    ONNX-only bundle has its config but no model.safetensors: load_pretrained refuses it)."""
    p = Path(path)
    for candidate in (p, p / "pretrained_model", p / "checkpoints" / "last" / "pretrained_model"):
        weights = (candidate / "model.safetensors").is_file() or (candidate / "bundle.json").is_file()
        if (candidate / "config.json").is_file() and weights:
            return candidate
    raise ConfigError("no policy checkpoint here (expected pretrained_model/config.json and model.safetensors)", path=p)


def read_config(path: str | Path) -> tuple[type[Policy], object]:
    """The policy class and its config from a checkpoint's config.json, checked field by field."""
    d = resolve_pretrained_dir(path)
    cfg = json.loads((d / "config.json").read_text())
    kind = cfg.pop("type", None)
    if kind not in REGISTRY:
        raise ConfigError(f"unknown policy type {kind!r} (known: {sorted(REGISTRY)})", path=d / "config.json",
                          field="type")
    cls = REGISTRY[kind]
    fields = {f.name: f for f in dataclasses.fields(cls.config_class)}
    unknown = set(cfg) - set(fields)
    if unknown:
        raise ConfigError(f"unknown config fields {sorted(unknown)}", path=d / "config.json")
    try:
        return cls, from_dict(cls.config_class, cfg)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e), path=d / "config.json") from None


def read_provenance(path: str | Path) -> dict:
    d = resolve_pretrained_dir(path)
    f = d / "provenance.json"
    provenance = json.loads(f.read_text()) if f.exists() else {}
    if provenance.get("dataset"):
        provenance["dataset"] = _absolute_dataset(d, provenance["dataset"])
    return provenance


def _absolute_dataset(checkpoint: Path, dataset: str) -> str:
    """Runs record their dataset absolute; older runs recorded it as given (train_config.json beside the weights)."""
    saved = checkpoint / "train_config.json"
    if Path(dataset).is_absolute() or not saved.is_file():
        return dataset
    parents = checkpoint.resolve().parents  # RUN/checkpoints/STEP/pretrained_model
    return started_from(dataset, parents[2],
                        json.loads(saved.read_text()).get("out", "")) if len(parents) > 2 else dataset


def started_from(path: str, run: Path, out: str) -> str:
    """A relative `path` a run's command was given, made absolute: relative to the directory that command ran in,
    which is the run directory `run` with the `--out` it was given (`out`) taken off its end. Unchanged where that
    cannot be told (an absolute or `..` out, or a run that was moved)."""
    run_parts, out_parts = Path(run).resolve().parts, Path(out).parts
    n = len(out_parts)
    if Path(path).is_absolute() or not out or Path(out).is_absolute() or ".." in out_parts or n >= len(run_parts) \
            or run_parts[len(run_parts) - n:] != out_parts:
        return path
    return str(Path(*run_parts[: len(run_parts) - n]) / path)


def load_tensors(path: Path) -> dict:
    """safetensors' load_file, a truncated or corrupt file as the one-line ConfigError naming it."""
    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise ConfigError(f"cannot read the weights ({e}): truncated or corrupt", path=path) from None


def load_pretrained(path: str | Path, device: str = "cpu") -> Policy:
    d = resolve_pretrained_dir(path)
    cls, config = read_config(d)
    if not (d / "model.safetensors").is_file():
        raise ConfigError("no torch weights (model.safetensors): an ONNX-only bundle runs on --backend onnx", path=d)
    policy = cls(config)
    state = load_tensors(d / "model.safetensors")
    expected = policy.state_dict()
    for key, value in expected.items():
        if key not in state:
            raise ConfigError("missing tensor", path=d / "model.safetensors", field=key)
        if tuple(state[key].shape) != tuple(value.shape):
            raise ConfigError(f"shape {tuple(state[key].shape)} != expected {tuple(value.shape)}",
                              path=d / "model.safetensors", field=key)
    policy.load_state_dict(state, strict=True)
    policy.provenance = read_provenance(d)
    return policy.to(device).eval()


def save_tensors(tensors: dict, path: str | Path) -> None:
    """safetensors' save_file, its I/O failures (a full disk, a read-only directory) raised as the OSError they are,
    with errno and path, instead of SafetensorError's text: the CLI reports disk errors in one line naming the path."""
    try:
        save_file(tensors, str(path))
    except SafetensorError as e:
        code = re.search(r"(?:code: |os error )(\d+)", str(e))  # both spellings safetensors' versions use
        if code is None:
            raise
        number = int(code.group(1))
        raise OSError(number, os.strerror(number), str(path)) from None
