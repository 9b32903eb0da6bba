"""openpi's wire encoding: msgpack with numpy arrays as bytes-keyed dicts. It lives with the data formats so that
both ends of the protocol, the openpi teacher client and our policy server, read it from one place.

ndarray -> {b"__ndarray__": True, b"data": raw bytes, b"dtype": dtype.str, b"shape": shape}
np.generic -> {b"__npgeneric__": True, b"data": item, b"dtype": dtype.str}

Only bool, integer and float dtypes cross the wire, either way. The decoder reads bytes from a network peer: an object
dtype would make numpy read those bytes as pointers (a crafted frame crashed the server), and void, structured,
string and datetime dtypes are nothing a policy exchanges. Anything else is a WireError naming the field.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

WIRE_KINDS = "biuf"  # numpy dtype kinds: bool, signed and unsigned integers, floats
MAX_DIMS = 32  # numpy's own limit is 64; no observation or action has more than 4


class WireError(ValueError):
    """A frame that is not valid msgpack-numpy."""


def _wire_dtype(raw: Any) -> np.dtype:
    """The dtype named by a frame's `dtype` field, if it is a plain numeric or bool one."""
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    if not isinstance(raw, str):
        raise WireError(f"dtype: expected a string such as '<f4', got {type(raw).__name__}")
    try:
        dtype = np.dtype(raw)
    except (TypeError, ValueError, SyntaxError):
        raise WireError(f"dtype: {raw[:40]!r} is not a numpy dtype") from None
    if dtype.kind not in WIRE_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise WireError(f"dtype: {raw[:40]!r} is not allowed (only bool, integer and float arrays cross the wire)")
    return dtype


def _wire_shape(raw: Any) -> tuple[int, ...]:
    if not isinstance(raw, (list, tuple)) or len(raw) > MAX_DIMS:
        raise WireError(f"shape: expected a list of at most {MAX_DIMS} sizes, got {type(raw).__name__}")
    if not all(type(n) is int and n >= 0 for n in raw):
        bad = next(n for n in raw if not (type(n) is int and n >= 0))
        raise WireError(f"shape: expected non-negative integers, got {type(bad).__name__} {str(bad)[:20]!r}")
    return tuple(raw)


def _encode(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind not in WIRE_KINDS:
        raise WireError(f"unsupported dtype for the openpi wire format: {obj.dtype}")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def _decode_array(obj: dict) -> np.ndarray:
    data = obj.get(b"data")
    if not isinstance(data, bytes):
        raise WireError(f"data: expected bytes, got {type(data).__name__}")
    dtype, shape = _wire_dtype(obj.get(b"dtype")), _wire_shape(obj.get(b"shape"))
    if math.prod(shape) * dtype.itemsize != len(data):
        raise WireError(f"data: {len(data)} bytes, shape {list(shape)} of {dtype.str} needs "
                        f"{math.prod(shape) * dtype.itemsize}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _decode_scalar(obj: dict) -> np.generic:
    dtype, data = _wire_dtype(obj.get(b"dtype")), obj.get(b"data")
    if type(data) not in (bool, int, float):
        raise WireError(f"data: expected a number, got {type(data).__name__}")
    try:
        with np.errstate(over="raise", invalid="raise"):
            return dtype.type(data)
    except (OverflowError, ValueError, FloatingPointError):
        raise WireError(f"data: {data!r} does not fit {dtype.str}") from None


def _decode(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        return _decode_array(obj)
    if b"__npgeneric__" in obj:
        return _decode_scalar(obj)
    return obj


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_encode)


def unpackb(data: bytes) -> Any:
    """msgpack-numpy bytes -> Python objects and numpy arrays; WireError when they are not msgpack-numpy."""
    try:
        return msgpack.unpackb(data, object_hook=_decode)
    except WireError:
        raise
    except Exception as e:  # noqa: BLE001 (msgpack's errors: ExtraData, FormatError, StackError, ValueError...)
        raise WireError(f"{type(e).__name__}: {str(e) or _MSGPACK_ERRORS.get(type(e).__name__, 'malformed')}") from None


# msgpack raises some of its errors without a message
_MSGPACK_ERRORS = {"FormatError": "not a msgpack frame (unknown type byte)", "StackError": "nested too deeply",
                   "OutOfData": "the frame ends early", "ExtraData": "bytes after the end of the frame"}
