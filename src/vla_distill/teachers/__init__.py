"""Teachers: whatever labels each dataset frame with an action. `make_teacher` parses the KIND string:

  scripted                      the MetaWorld expert of each episode's task
  noisy[std=..,toggle=..]:KIND  KIND with seeded real-VLA imperfections
  checkpoint:PATH               a policy checkpoint trained by this toolkit
  openpi://HOST:PORT            openpi's websocket policy server
  openvla://HOST:PORT           OpenVLA's REST deploy server
"""

from __future__ import annotations

import re

from vla_distill.errors import ConfigError, did_you_mean
from vla_distill.teachers.base import EpisodeFrames, Teacher

KINDS = ("scripted", "noisy:", "checkpoint:", "openpi://", "openvla://")

__all__ = ["EpisodeFrames", "Teacher", "make_teacher", "parse_noisy", "KINDS"]


def _host_port(spec: str, scheme: str) -> tuple[str, int]:
    m = re.fullmatch(rf"{scheme}://([^:/]+):(\d+)/?", spec)
    if not m:
        raise ConfigError(f"expected {scheme}://HOST:PORT, got {spec!r}", field="teacher")
    return m.group(1), int(m.group(2))


def _noise_options(text: str) -> dict:
    from vla_distill.teachers.noisy import NoiseConfig

    out = {}
    known = NoiseConfig.__dataclass_fields__
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        if key not in known:
            raise ConfigError(f"unknown noisy option {key!r} (known: {sorted(known)})", field="teacher")
        out[key] = (int if known[key].type == "int" else float)(value)
    return out


def parse_noisy(spec: str):
    """'noisy[std=0.2]:KIND' -> (NoiseConfig, 'KIND'); None when spec is not a noisy kind."""
    m = re.fullmatch(r"noisy(?:\[([^\]]*)\])?:(.+)", spec)
    if not m:
        return None
    from vla_distill.teachers.noisy import NoiseConfig

    try:
        return NoiseConfig(**_noise_options(m.group(1) or "")), m.group(2)
    except ValueError as e:
        raise ConfigError(str(e), field="teacher") from None


def make_teacher(spec: str, options: dict[str, str] | None = None) -> Teacher:
    """options: `--teacher-opt key=value` pairs for remote teachers (see RemoteConfig)."""
    options = options or {}
    if spec == "scripted":
        from vla_distill.teachers.scripted import ScriptedTeacher

        return ScriptedTeacher()
    noisy = parse_noisy(spec)
    if noisy:
        from vla_distill.teachers.noisy import NoisyTeacher

        return NoisyTeacher(make_teacher(noisy[1], options), noisy[0], spec)
    if spec.startswith("checkpoint:"):
        from vla_distill.teachers.checkpoint import CheckpointTeacher

        return CheckpointTeacher(spec, spec[len("checkpoint:"):], options.get("device", "auto"))
    if spec.startswith("openpi://"):
        from vla_distill.teachers import openpi
        from vla_distill.teachers.remote import remote_config

        return openpi.OpenPITeacher(spec, *_host_port(spec, "openpi"), remote_config(options, openpi.DEFAULTS))
    if spec.startswith("openvla://"):
        from vla_distill.teachers import openvla
        from vla_distill.teachers.remote import remote_config

        return openvla.OpenVLATeacher(spec, *_host_port(spec, "openvla"), remote_config(options, openvla.DEFAULTS))
    hint = did_you_mean(spec.split(":")[0], [k.rstrip(":/") for k in KINDS])
    raise ConfigError(f"unknown teacher {spec!r}{hint}; kinds: {', '.join(KINDS)}", field="teacher")
