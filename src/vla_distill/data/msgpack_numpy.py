"""openpi's wire encoding: msgpack with numpy arrays as bytes-keyed dicts. It lives with the data formats so that
both ends of the protocol, the openpi teacher client and our policy server, read it from one place.

ndarray -> {b"__ndarray__": True, b"data": raw bytes, b"dtype": dtype.str, b"shape": shape}
np.generic -> {b"__npgeneric__": True, b"data": item, b"dtype": dtype.str}
Object, void and complex arrays are refused, as openpi refuses them (no pickle fallback).
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np


def _encode(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in ("V", "O", "c"):
        raise ValueError(f"unsupported dtype for the openpi wire format: {obj.dtype}")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def _decode(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        return np.ndarray(buffer=obj[b"data"], dtype=np.dtype(obj[b"dtype"]), shape=obj[b"shape"])
    if b"__npgeneric__" in obj:
        return np.dtype(obj[b"dtype"]).type(obj[b"data"])
    return obj


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_encode)


def unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, object_hook=_decode)
