"""Reading standalone deployment bundles (written by `vla-distill export`, deploy/export.py): the folder that goes
to the robot's computer.

bundle/
  bundle.json          format and version, policy type, weight dtype, observation spec, action shape, instructions,
                       backends it can run on, parity results, sha256 of every file
  config.json          the policy config (as in pretrained_model/)
  model.safetensors    weights; normalization stats and instruction embeddings are buffers inside (fp32 or bf16)
  normalization.json   the same stats, readable
  provenance.json      the checkpoint's provenance, plus how and when it was exported
  train_config.json    when the checkpoint had one (says which auxiliary heads were trained)
  reference_io.npz     recorded observations and the fp32 torch outputs on them (parity, benchmarks, self-checks)
  model.onnx, model.int8.onnx   --format onnx
--format onnx-only (a reference student in the repository) drops model.safetensors: the graphs carry the weights, and
task_embeddings.safetensors the instruction table the ONNX backends look prompts up in.

Loading imports torch, safetensors, numpy and vla_distill.models only: no training, data, simulator or
text-encoder code (tests/test_deploy.py runs it with those blocked).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from vla_distill.errors import ConfigError
from vla_distill.models.base import Policy
from vla_distill.models.checkpoint import load_pretrained

FORMAT, VERSION = "vla-distill-bundle", 1
BUNDLE_FILE, REFERENCE_FILE = "bundle.json", "reference_io.npz"
WEIGHTS_FILE, EMBEDDINGS_FILE = "model.safetensors", "task_embeddings.safetensors"


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / BUNDLE_FILE).is_file()


def read_manifest(path: str | Path) -> dict:
    f = Path(path) / BUNDLE_FILE
    try:
        manifest = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"unreadable bundle manifest ({e})", path=f) from None
    if manifest.get("format") != FORMAT:
        raise ConfigError(f"not a {FORMAT} (format {manifest.get('format')!r})", path=f, field="format")
    if manifest.get("version", 0) > VERSION:
        raise ConfigError(f"bundle version {manifest['version']} is newer than this vla-distill reads ({VERSION})",
                          path=f, field="version")
    return manifest


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: str | Path, manifest: dict, names: tuple[str, ...]) -> None:
    """The files a backend reads are the ones that were exported (a truncated copy fails here, not mid-run)."""
    for name in names:
        f = Path(path) / name
        if not f.is_file():
            raise ConfigError("missing from the bundle", path=f)
        if manifest["files"].get(name) != sha256(f):
            raise ConfigError("sha256 differs from bundle.json: the file is corrupt or was changed", path=f)


def load_bundle(path: str | Path, dtype: str | None = None, device: str = "cpu") -> Policy:
    """A bundle -> the torch policy, in the bundle's weight dtype unless `dtype` ("fp32" | "bf16") says otherwise."""
    manifest = read_manifest(path)
    if "torch" not in manifest["backends"]:
        raise ConfigError("this bundle carries ONNX graphs only: run it with --backend onnx (or leave --backend out)",
                          path=path, field="backend")
    verify(path, manifest, ("config.json", WEIGHTS_FILE))
    policy = load_pretrained(path, device)
    if (dtype or manifest["dtype"]) == "bf16":
        policy = policy.to(torch.bfloat16)
    policy.bundle = manifest
    return policy
