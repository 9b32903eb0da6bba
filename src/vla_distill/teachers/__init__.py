"""Teachers: whatever labels each dataset frame with an action. A teacher is named by a KIND string, parsed here
once (`parse_kind`) for both its uses: `make_teacher` builds the annotation teacher, and the evaluator's
`make_actor` builds the closed-loop actor of the same kind.

  scripted                      the MetaWorld expert of each episode's task
  noisy[std=..,toggle=..]:KIND  KIND with seeded real-VLA imperfections
  checkpoint:PATH               a policy checkpoint trained by this toolkit
  openpi://HOST:PORT            openpi's websocket policy server
  openvla://HOST:PORT           OpenVLA's REST deploy server
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vla_distill.data.openpi_client import parse_address
from vla_distill.errors import ConfigError, did_you_mean
from vla_distill.teachers.base import EpisodeFrames, Teacher
from vla_distill.teachers.noisy import NoiseConfig

KINDS = ("scripted", "noisy:", "checkpoint:", "openpi://", "openvla://")
REMOTE = ("openpi", "openvla")

__all__ = ["EpisodeFrames", "Teacher", "Kind", "parse_kind", "make_teacher", "KINDS"]


@dataclass(frozen=True)
class Kind:
    """A parsed KIND string."""

    name: str  # scripted | noisy | checkpoint | openpi | openvla
    path: str = ""  # checkpoint
    host: str = ""  # openpi, openvla
    port: int = 0
    noise: NoiseConfig | None = None  # noisy
    inner: str = ""  # noisy: the KIND it corrupts


def _noise_options(text: str) -> dict:
    out = {}
    known = NoiseConfig.__dataclass_fields__
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        if key not in known:
            raise ConfigError(f"unknown noisy option {key!r} (known: {sorted(known)})", field="teacher")
        out[key] = (int if known[key].type == "int" else float)(value)
    return out


def _noisy(spec: str) -> Kind | None:
    m = re.fullmatch(r"noisy(?:\[([^\]]*)\])?:(.+)", spec)
    if not m:
        return None
    try:
        return Kind("noisy", noise=NoiseConfig(**_noise_options(m.group(1) or "")), inner=m.group(2))
    except ValueError as e:
        raise ConfigError(str(e), field="teacher") from None


def parse_kind(spec: str) -> Kind | None:
    """The KIND a spec names, None when it names none; a malformed KIND (a bad HOST:PORT, an unknown noisy option)
    is a one-line error."""
    if spec == "scripted":
        return Kind("scripted")
    noisy = _noisy(spec)
    if noisy:
        return noisy
    if spec.startswith("checkpoint:"):
        return Kind("checkpoint", path=spec[len("checkpoint:"):])
    for scheme in REMOTE:
        if spec.startswith(f"{scheme}://"):
            host, port = parse_address(spec, scheme, field="teacher")
            return Kind(scheme, host=host, port=port)
    return None


def make_teacher(spec: str, options: dict[str, str] | None = None) -> Teacher:
    """options: `--teacher-opt key=value` pairs: remote teachers' (RemoteConfig), the scripted teacher's horizon."""
    options = options or {}
    kind = parse_kind(spec)
    if kind is None:
        hint = did_you_mean(spec.split(":")[0], [k.rstrip(":/") for k in KINDS])
        raise ConfigError(f"unknown teacher {spec!r}{hint}; kinds: {', '.join(KINDS)}", field="teacher")
    if kind.name == "scripted":
        from vla_distill.teachers.scripted import ScriptedTeacher, scripted_options

        return ScriptedTeacher(**scripted_options(options))
    if kind.name == "noisy":
        from vla_distill.teachers.noisy import NoisyTeacher

        return NoisyTeacher(make_teacher(kind.inner, options), kind.noise, spec)
    if kind.name == "checkpoint":
        from vla_distill.teachers.checkpoint import CheckpointTeacher

        return CheckpointTeacher(spec, kind.path, options.get("device", "auto"))
    from vla_distill.teachers.remote import remote_config

    if kind.name == "openpi":
        from vla_distill.teachers.openpi import DEFAULTS
        from vla_distill.teachers.openpi import OpenPITeacher as client
    else:
        from vla_distill.teachers.openvla import DEFAULTS
        from vla_distill.teachers.openvla import OpenVLATeacher as client
    return client(spec, kind.host, kind.port, remote_config(options, DEFAULTS))
