"""One exception type for bad input; the CLI prints it as one line and exits non-zero."""

from __future__ import annotations

from pathlib import Path


class VlaDistillError(Exception):
    """A user-facing error: names the file and/or field at fault."""

    def __init__(self, message: str, *, path: str | Path | None = None, field: str | None = None):
        self.path = str(path) if path is not None else None
        self.field = field
        self.message = message
        parts = [p for p in (self.path, f"field '{field}'" if field else None) if p]
        super().__init__(": ".join(parts + [message]))


class DatasetError(VlaDistillError):
    """A dataset on disk is missing, truncated, inconsistent with its info.json, or holds bad values."""


class ConfigError(VlaDistillError):
    """A configuration value or name is invalid."""


class WorkerDied(VlaDistillError):
    """Simulator worker processes kept dying abruptly (a native crash, the OOM killer): the run stops resumable."""


def did_you_mean(name: str, choices, n: int = 1) -> str:
    """" (did you mean 'x'?)" for the closest of choices, or ""."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=n)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
