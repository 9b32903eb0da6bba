"""Frozen config dataclasses to and from their JSON form (config.json, train_config.json)."""

from __future__ import annotations

import dataclasses
import typing


def from_dict(cls: type, d: dict):
    """cls(**d) with JSON lists back to tuples and nested config dataclasses rebuilt; unknown keys raise TypeError."""
    hints = typing.get_type_hints(cls)
    out = {}
    for k, v in d.items():
        kind = hints.get(k)
        if isinstance(v, dict) and dataclasses.is_dataclass(kind):
            v = from_dict(kind, v)
        elif isinstance(v, list):
            v = tuple(v)
        out[k] = v
    return cls(**out)


def to_dict(config) -> dict:
    """A config dataclass (nested ones included) as JSON-ready data: tuples become lists."""
    return _plain(dataclasses.asdict(config))


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
