"""Rebuilding frozen config dataclasses from their JSON form (config.json, train_config.json)."""

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
