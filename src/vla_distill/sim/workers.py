"""Worker processes for simulator rollouts (collect, eval): one per core, each with its own simulator.

forkserver on Linux: workers fork from a clean server (with the given modules imported, for a fast start), never from
the caller, whose GL contexts or OpenMP threads (a test, a notebook) would deadlock a forked child; spawn elsewhere.
Each worker exits on its own once the process that made the pool is gone. Without that, a `kill -9` of collect or eval
left its workers (and their server) running forever: a worker waits on the pool's job queue, whose write end every
worker holds, so it never sees the end of it.

A worker that dies abruptly (a native crash in a simulator, renderer or encoder; the OOM killer) breaks a
ProcessPoolExecutor for good, and every job on it fails. `JobPool` starts new workers and reruns the jobs that were
unfinished, a few times per run: CI once saw glibc abort a MetaWorld collect worker ("free(): corrupted unsorted
chunks") in a test that has passed every rerun since, and an hours-long evaluation should not end there.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from vla_distill.errors import WorkerDied


def worker_pool(workers: int, initializer: Callable | None = None, initargs: tuple = (),
                preload: tuple[str, ...] = ()) -> ProcessPoolExecutor:
    ctx = mp.get_context("forkserver" if sys.platform == "linux" else "spawn")
    if sys.platform == "linux" and preload:
        ctx.set_forkserver_preload(list(preload))
    owner = os.getpid()
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_start_worker,
                               initargs=(owner, _identity(owner), initializer, initargs))


class JobPool:
    """worker_pool's executor, replaced when one of its workers dies, with the jobs it held rerun on the new one.

    Jobs must be safe to run twice: each writes its output atomically, and a seeded job rerun is the same job.
    More than `restarts` deaths in one run raise WorkerDied (the stage's own resume picks up from there)."""

    def __init__(self, workers: int, initializer: Callable | None = None, initargs: tuple = (),
                 preload: tuple[str, ...] = (), restarts: int = 3):
        self._make = lambda: worker_pool(workers, initializer, initargs, preload)
        self._pool = self._make()
        self._jobs: dict[Future, tuple[Hashable, Callable, tuple]] = {}
        self.restarts_left = restarts

    def submit(self, key: Hashable, fn: Callable, *args) -> None:
        self._jobs[self._pool.submit(fn, *args)] = (key, fn, args)

    def running(self) -> list[Hashable]:
        return [key for key, _, _ in self._jobs.values()]

    def finished(self) -> list[tuple[Hashable, object]]:
        """Waits until a job ends; (key, result) of those that ended. A job's own exception propagates."""
        done, _ = wait(self._jobs, return_when=FIRST_COMPLETED)
        results, lost = [], []
        for fut in done:
            job = self._jobs.pop(fut)
            try:
                results.append((job[0], fut.result()))
            except BrokenProcessPool:
                lost.append(job)
        if lost:
            results += self._replace(lost)
        return results

    def _replace(self, lost: list) -> list[tuple[Hashable, object]]:
        # a broken executor fails every job it held; those that had ended first keep their results
        results = []
        for fut, job in list(self._jobs.items()):
            del self._jobs[fut]
            if fut.done() and not isinstance(fut.exception(), BrokenProcessPool):
                results.append((job[0], fut.result()))  # a job's own error propagates
            else:
                lost.append(job)
        how = _how_died(self._pool)
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self.restarts_left == 0:
            raise WorkerDied(f"a worker process died ({how}) once more than the run allows; run the same command "
                             "again to resume")
        self.restarts_left -= 1
        print(f"\nwarning: a worker process died ({how}); starting new workers and rerunning its {len(lost)} "
              f"unfinished jobs ({self.restarts_left} restarts left)", file=sys.stderr)
        self._pool = self._make()
        for key, fn, args in lost:
            self.submit(key, fn, *args)
        return results

    def shutdown(self, wait: bool = True, cancel: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel)


def _how_died(pool: ProcessPoolExecutor) -> str:
    """The dead worker's signal or exit code. The executor terminates the others (SIGTERM) once one has died."""
    codes = [p.exitcode for p in getattr(pool, "_processes", {}).values()]  # private: only for the message
    # 255: what a forkserver's child reports when the server could not learn its status
    dead = [c for c in codes if c not in (None, 0, 255, -signal.SIGTERM)]
    if not dead:
        return "exit status unknown"
    code = dead[0]
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


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
