"""Shared by the benchmark scripts: where results go and how they are written."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
BIN = [sys.executable, "-m", "vla_distill.cli"]  # the CLI, as a user runs it
DEMO_TASKS = "button-press-topdown-v3,window-open-v3,drawer-open-v3"


def cli(*args: str) -> None:
    print("$ vla-distill " + " ".join(args), flush=True)
    subprocess.run(BIN + list(args), check=True)


def write_result(out: str | Path, result: dict) -> None:
    """Writes the result JSON with the machine it was measured on."""
    result = {**result, "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine()}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
