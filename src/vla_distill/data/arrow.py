"""numpy <-> arrow conversion for feature columns, with shape checks that name the field."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from vla_distill.data.format import arrow_type, feature_shape
from vla_distill.errors import DatasetError


def check_values(key: str, values: np.ndarray, feature: dict, num_frames: int, path: Path | None = None) -> np.ndarray:
    """Validates (T, *shape) values against a feature declaration; scalars may come as (T,) or (T, 1)."""
    values = np.asarray(values)
    shape = feature_shape(feature)
    if values.shape[0] != num_frames:
        raise DatasetError(f"has {values.shape[0]} frames, expected {num_frames}", path=path, field=key)
    if shape == (1,) and values.ndim == 1:
        values = values[:, None]
    if values.shape[1:] != shape:
        raise DatasetError(f"shape {list(values.shape[1:])} disagrees with info.json shape {list(shape)}", path=path,
                           field=key)
    bad = first_nonfinite_row(values)
    if bad is not None:
        raise DatasetError(f"holds NaN/inf (first at frame {bad})", path=path, field=key)
    return values


def first_nonfinite_row(values: np.ndarray) -> int | None:
    """Position of the first row of a float array holding NaN/inf, or None."""
    if values.dtype.kind != "f" or np.isfinite(values).all():
        return None
    return int(np.argwhere(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))[0, 0])


def to_arrow(values: np.ndarray, feature: dict) -> pa.Array:
    """(T, *shape) -> the arrow column lerobot writes for this feature."""
    dtype = feature["dtype"]
    if dtype == "image":
        return pa.array([{"bytes": encode_png(img), "path": None} for img in values], type=arrow_type(feature))
    if dtype == "string":
        return pa.array([str(v) for v in values], type=pa.string())
    shape = feature_shape(feature)
    flat = np.ascontiguousarray(values, dtype=np.dtype(dtype))
    if shape == (1,):
        return pa.array(flat.reshape(-1))
    arr: pa.Array = pa.array(flat.reshape(-1))
    for dim in reversed(shape):
        arr = pa.FixedSizeListArray.from_arrays(arr, dim)
    return arr


def from_arrow(column: pa.ChunkedArray | pa.Array, feature: dict, key: str, path: Path | None = None) -> np.ndarray:
    """Inverse of to_arrow for numeric features -> (N, *shape), or (N,) for scalars; accepts the
    variable-length lists of older writers."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    shape = feature_shape(feature)
    n = len(column)
    values = column
    depth = 0
    while any(is_list(values.type) for is_list in (pa.types.is_list, pa.types.is_fixed_size_list,
                                                    pa.types.is_large_list)):
        values = values.flatten()
        depth += 1
    try:
        out = values.to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise DatasetError(f"cannot convert column to numpy ({e})", path=path, field=key) from None
    expected = n * int(np.prod(shape))
    if out.size != expected or (depth == 0 and shape != (1,)):
        raise DatasetError(
            f"column holds {out.size // max(n, 1)} values per frame, info.json shape is {list(shape)}", path=path,
            field=key
        )
    # Scalar features (shape [1]) come back as (N,), as lerobot returns them per frame as 0-d values.
    return out.reshape((n,) if shape == (1,) else (n,) + shape).astype(np.dtype(feature["dtype"]), copy=False)


def encode_png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(img, dtype=np.uint8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_png(data: bytes, key: str, path: Path | None = None) -> np.ndarray:
    try:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    except Exception as e:  # PIL raises many types for corrupt data
        raise DatasetError(f"cannot decode image bytes ({e})", path=path, field=key) from None
