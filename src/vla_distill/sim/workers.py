"""Worker processes for simulator rollouts (collect, eval): one per core, each with its own simulator.

forkserver on Linux: workers fork from a clean server (with the given modules imported, for a fast start), never from
the caller, whose GL contexts or OpenMP threads (a test, a notebook) would deadlock a forked child; spawn elsewhere.
Each worker exits on its own once the process that made the pool is gone. Without that, a `kill -9` of collect or eval
left its workers (and their server) running forever: a worker waits on the pool's job queue, whose write end every
worker holds, so it never sees the end of it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def worker_pool(workers: int, initializer: Callable | None = None, initargs: tuple = (),
                preload: tuple[str, ...] = ()) -> ProcessPoolExecutor:
    ctx = mp.get_context("forkserver" if sys.platform == "linux" else "spawn")
    if sys.platform == "linux" and preload:
        ctx.set_forkserver_preload(list(preload))
    owner = os.getpid()
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_start_worker,
                               initargs=(owner, _identity(owner), initializer, initargs))


def _start_worker(owner: int, identity: str, initializer: Callable | None, initargs: tuple) -> None:
    threading.Thread(target=_exit_with, args=(owner, identity), name="exit-with-owner", daemon=True).start()
    if initializer is not None:
        initializer(*initargs)


def _exit_with(owner: int, identity: str, every_s: float = 1.0) -> None:
    while _identity(owner) == identity:
        time.sleep(every_s)
    os._exit(1)


def _identity(pid: int) -> str:
    """The process's start time (so a reused pid is not taken for it), "gone" once it has exited (a zombie included);
    where there is no /proc, only whether the pid exists."""
    if not Path("/proc/self/stat").exists():
        return _exists(pid)
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return "gone"
    return "gone" if fields[0] in ("Z", "X") else fields[19]


def _exists(pid: int) -> str:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        pass
    return "alive"
