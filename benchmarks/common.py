"""Shared by the benchmark scripts: where results go and how they are written."""

from __future__ import annotations

import fcntl
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
BIN = [sys.executable, "-m", "vla_distill.cli"]  # the CLI, as a user runs it


def _make_default(name: str) -> str:
    for line in (Path(__file__).parent.parent / "Makefile").read_text().splitlines():
        if line.startswith(f"{name} ?="):
            return line.split("?=", 1)[1].strip()
    raise KeyError(f"Makefile sets no {name}")


# the tasks `make demo` trains its student on, read from the Makefile: a copy here went stale when the demo gained push
DEMO_TASKS = _make_default("DEMO_TASKS")


def cli(*args: str) -> None:
    print("$ vla-distill " + " ".join(args), flush=True)
    subprocess.run(BIN + list(args), check=True)


def cpu() -> str:
    """The CPU model with the vector extensions that decide int8 and bf16 speed: these machines are not all alike
    (base's int8 ran at 31 Hz on one with AMX and at 70 Hz on a Zen 5), so a timing is read beside its CPU."""
    try:
        info = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    field = {k.strip(): v.strip() for k, v in fields.items()}
    ext = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8") if f in field.get("flags",
                                                                                                      "").split()]
    return (f"{field.get('model name', '?')} (family {field.get('cpu family', '?')}, model {field.get('model', '?')}; "
            f"{' '.join(ext)})")


def read_result(name: str) -> dict:
    """results/NAME as written so far ({} before its first run): what a benchmark writing one key of it keeps."""
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else {}


def write_result(out: str | Path, result: dict) -> None:
    """Writes the result JSON with the machine it was measured on, whole or not at all (a reader never sees half)."""
    result = {**result, "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(), "cpu": cpu()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    print(f"wrote {out}")


def update_result(name: str, change: Callable[[dict], dict]) -> dict:
    """results/NAME rewritten as change(what it holds now), under an exclusive lock: two benchmarks, one per core,
    share a result file (libero.json's suites), and one reading between the other's read and write dropped its update.
    Measure before calling: the lock is held only while the file is read and written."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = change(read_result(name))
        write_result(RESULTS / name, result)
    return result


def update_key(name: str, key: str, value: dict) -> dict:
    """results/NAME[key] updated with value's entries; the file's other keys, and key's other entries, stay."""
    return update_result(name, lambda old: old | {key: (old.get(key) or {}) | value})
