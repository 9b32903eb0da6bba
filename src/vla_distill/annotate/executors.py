"""Where episodes are annotated: in this process, or sharded by episode over Ray actors.

Both run the same `EpisodeWorker.annotate` and hand each result to the driver's `on_result`, which stages it; the
driver is the only writer. A Ray actor holds one teacher client and one VLM client for its whole life and gets the
next episode the moment it returns one. A lost actor (killed process, lost node) is replaced and its episode asked
again, up to `max_retries` times per episode; an error raised by the annotation itself (a teacher that never
answers, a dataset that is not what it claims) stops the run with that error.

Ray is an optional extra (`pip install 'vla-distill[ray]'`); nothing imports it unless `--executor ray` is asked for.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Callable

from vla_distill.annotate.episode import EpisodeResult, EpisodeWorker, WorkerSpec
from vla_distill.errors import ConfigError, VlaDistillError

OnResult = Callable[[EpisodeResult], None]
EXECUTORS = ("local", "ray")


class AnnotationError(VlaDistillError):
    """Annotation could not finish (workers kept dying on an episode)."""


class LocalExecutor:
    name = "local"

    def run(self, spec: WorkerSpec, pending: list[int], on_result: OnResult) -> dict:
        t0 = time.perf_counter()
        worker = EpisodeWorker(spec)
        try:
            worker.info()
            ready = time.perf_counter()
            for e in pending:
                on_result(worker.annotate(e))
        finally:
            worker.close()
        return {"executor": "local", "workers": 1, **_timing(t0, ready)}


@dataclass
class RayExecutor:
    """address: "local" starts a Ray instance in this process (all of this machine's cores); "auto" joins the
    cluster this machine belongs to (`ray start`); anything else is passed to ray.init (HOST:PORT, ray://HOST:10001).
    A running Ray in this process (ray.init done by the caller) is used as it is."""

    address: str = "local"
    workers: int = 0  # 0 = as many as the cluster's CPUs (and GPUs, for GPU workers) hold
    worker_cpus: float = 1.0
    worker_gpus: float | None = None  # None = 1 GPU each for an in-process model teacher when the cluster has GPUs
    max_retries: int = 3  # per episode, after its worker was lost
    name = "ray"

    def __post_init__(self):
        if self.workers < 0:
            raise ConfigError("must be >= 0 (0 = as many as the cluster holds)", field="workers")
        if self.worker_cpus <= 0:
            raise ConfigError("must be > 0", field="worker_cpus")
        if self.worker_gpus is not None and self.worker_gpus < 0:
            raise ConfigError("must be >= 0", field="worker_gpus")
        self.lost = 0
        self.busy: dict[int, int] = {}  # worker pid -> episode it is annotating

    def run(self, spec: WorkerSpec, pending: list[int], on_result: OnResult) -> dict:
        ray = _import_ray()
        t0 = time.perf_counter()
        started = self._connect(ray)
        actors: list = []
        try:
            have = ray.cluster_resources()
            cpus, gpus, n = self._size(have, spec, len(pending))
            nodes = sum(k.startswith("node:") and k != "node:__internal_head__" for k in have)
            print(f"ray: {n} workers of {cpus:g} CPU, {gpus:g} GPU on a cluster of {have.get('CPU', 0):g} CPU, "
                  f"{have.get('GPU', 0):g} GPU, {nodes} node(s)", file=sys.stderr)
            remote = ray.remote(EpisodeWorker).options(num_cpus=cpus, num_gpus=gpus, max_restarts=0)

            actor_spec = replace(spec, journal="")  # the journal is on the driver's disk; an actor resumes by episode

            def start():
                return remote.remote(actor_spec, max(1, int(cpus)))

            actors = [start() for _ in range(n)]
            infos = [_get(ray, a.info.remote()) for a in actors]
            pids = [i["pid"] for i in infos]
            ready = time.perf_counter()
            self._schedule(ray, actors, pids, start, deque(pending), on_result)
            _close(ray, actors)
            return {"executor": "ray", "address": self.address, "workers": n, "worker_cpus": cpus, "worker_gpus": gpus,
                    "hosts": sorted({i["host"] for i in infos}), "lost_workers": self.lost, **_timing(t0, ready)}
        finally:  # on an error or Ctrl-C the workers are ended at once, mid-episode or not
            for a in actors:
                ray.kill(a)
            if started:
                ray.shutdown()

    def _schedule(self, ray, actors: list, pids: list[int], start, queue: deque, on_result: OnResult) -> None:
        futures: dict = {}  # ObjectRef -> (worker slot, episode)
        attempts: dict[int, int] = {}

        def submit(slot: int) -> None:
            if queue:
                e = queue.popleft()
                futures[actors[slot].annotate.remote(e)] = (slot, e)
                self.busy[pids[slot]] = e

        for slot in range(len(actors)):
            submit(slot)
        while futures:
            (ref,), _ = ray.wait(list(futures), num_returns=1)
            slot, e = futures.pop(ref)
            self.busy.pop(pids[slot], None)
            try:
                result = _get(ray, ref)
            except ray.exceptions.RayActorError as err:
                attempts[e] = attempts.get(e, 0) + 1
                self.lost += 1
                if attempts[e] > self.max_retries:
                    raise AnnotationError(f"workers died {attempts[e]} times on episode {e}; last: "
                                          f"{_first_line(err)}") from None
                print(f"ray: worker {pids[slot]} lost on episode {e} ({_first_line(err)}); "
                      f"starting another and asking again ({attempts[e]}/{self.max_retries})", file=sys.stderr)
                ray.kill(actors[slot])
                actors[slot] = start()
                pids[slot] = _get(ray, actors[slot].info.remote())["pid"]
                queue.appendleft(e)
            else:
                on_result(result)
            submit(slot)

    def _connect(self, ray) -> bool:
        if ray.is_initialized():
            return False
        try:
            ray.init(address=self.address, include_dashboard=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConfigError(f"cannot reach Ray at {self.address!r}: {_first_line(e)}", field="address") from None
        return True

    def _size(self, have: dict, spec: WorkerSpec, pending: int) -> tuple[float, float, int]:
        """(CPUs per worker, GPUs per worker, workers) for a cluster of `have` resources."""
        cpus_total, gpus_total = have.get("CPU", 0.0), have.get("GPU", 0.0)
        in_process_model = "checkpoint:" in spec.cfg.teacher  # also inside noisy[...]:checkpoint:PATH
        default_gpus = 1.0 if in_process_model and gpus_total >= 1 else 0.0
        gpus = self.worker_gpus if self.worker_gpus is not None else default_gpus
        if self.worker_cpus > cpus_total or gpus > gpus_total:
            raise ConfigError(f"a worker asks for {self.worker_cpus:g} CPU and {gpus:g} GPU; the cluster has "
                              f"{cpus_total:g} CPU and {gpus_total:g} GPU",
                              field="worker_cpus" if self.worker_cpus > cpus_total else "worker_gpus")
        n = self.workers or max(1, int(cpus_total // self.worker_cpus))
        if gpus and not self.workers:
            n = min(n, int(gpus_total // gpus))
        return self.worker_cpus, gpus, max(1, min(n, pending))


def _close(ray, actors: list) -> None:
    """Idle workers close their teacher and VLM clients, so each server sees a clean goodbye."""
    ray.wait([a.close.remote() for a in actors], num_returns=len(actors), timeout=10)


def _timing(t0: float, ready: float) -> dict:
    """startup_s: until every worker holds its teacher; annotate_s: the episodes themselves."""
    return {"startup_s": round(ready - t0, 3), "annotate_s": round(time.perf_counter() - ready, 3)}


def _get(ray, ref):
    """ray.get, with an error raised inside the worker re-raised as itself (one line at the CLI)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, Exception) and not isinstance(cause, ray.exceptions.RayActorError):
            raise cause from None
        raise


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("Ray is not installed: pip install 'vla-distill[ray]'", field="executor") from None
    return ray


def make_executor(name: str, **options) -> LocalExecutor | RayExecutor:
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        _import_ray()
        return RayExecutor(**options)
    raise ConfigError(f"{name!r} is not one of {EXECUTORS}", field="executor")
