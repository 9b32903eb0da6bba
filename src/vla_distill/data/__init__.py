"""LeRobotDataset v3.0 (and v2.1 read) on pyarrow + PyAV, the training-side windows, annotation readers, and openpi's
wire encoding. `from vla_distill.data import RobotDataset, WindowedDataset, split_episodes` imports lazily, so a
module that needs only the wire encoding does not pull pyarrow in."""

_EXPORTS = {"RobotDataset": "vla_distill.data.dataset", "WindowedDataset": "vla_distill.data.windows",
            "split_episodes": "vla_distill.data.windows", "deltas_from_timestamps": "vla_distill.data.windows"}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vla_distill.data' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
