"""Remote teachers: a VLA behind its own server, asked one frame at a time.

Shared by the openpi and OpenVLA clients: mapping our keys to the server's, resizing, gripper conventions,
a bounded number of requests in flight, per-request timeouts, and retries with exponential backoff.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, fields

import numpy as np
from PIL import Image

from vla_distill.errors import ConfigError, VlaDistillError
from vla_distill.teachers.base import EpisodeFrames, OnResult
from vla_distill.types import is_camera

GRIPPER_MODES = ("keep", "flip", "unit_to_signed", "unit_to_signed_flip")


class TeacherError(VlaDistillError):
    pass


@dataclass(frozen=True)
class RemoteConfig:
    """obs_map: server key -> our key (a camera, observation.state, or task). gripper: how the teacher's gripper
    value maps onto ours: keep, flip (negate), unit_to_signed ([0, 1] -> [-1, 1], OpenVLA's RLDS convention),
    or unit_to_signed_flip (that, then negated: OpenVLA on LIBERO)."""

    obs_map: dict = field(default_factory=dict)
    image_size: int = 224  # resize_with_pad to a square of this side; 0 sends images as stored
    action_dim: int = 0  # keep the first D dims of the teacher's action; 0 = all
    horizon: int = 0  # keep the first K steps of a chunk; 0 = all
    gripper: str = "keep"
    gripper_dim: int = -1
    concurrency: int = 4
    timeout_s: float = 30.0
    retries: int = 3
    backoff_s: float = 0.5
    unnorm_key: str = ""  # OpenVLA: which dataset statistics un-normalize the action
    api_key: str = ""  # openpi: sent as "Authorization: Api-Key <key>"

    def __post_init__(self):
        if self.gripper not in GRIPPER_MODES:
            raise ConfigError(f"{self.gripper!r} is not one of {GRIPPER_MODES}", field="gripper")
        if self.concurrency < 1:
            raise ConfigError("must be >= 1", field="concurrency")
        if self.retries < 0 or self.timeout_s <= 0:
            raise ConfigError("retries must be >= 0 and timeout_s > 0", field="retries")


def remote_config(options: dict[str, str], defaults: dict) -> RemoteConfig:
    """Build from `--teacher-opt key=value` strings; obs_map.<server key>=<our key> entries build obs_map."""
    types = {f.name: f.type for f in fields(RemoteConfig)}
    obs_map = dict(defaults.get("obs_map", {}))
    kw = {k: v for k, v in defaults.items() if k != "obs_map"}
    for key, value in options.items():
        if key.startswith("obs_map."):
            obs_map[key[len("obs_map."):]] = value
        elif key not in types or key == "obs_map":
            raise ConfigError(f"unknown teacher option (known: {sorted(types)} and obs_map.<server key>)", field=key)
        else:
            kw[key] = {"int": int, "float": float}.get(types[key], str)(value)
    return RemoteConfig(obs_map=obs_map, **kw)


def resize_with_pad(img: np.ndarray, size: int) -> np.ndarray:
    """Keep the aspect ratio (bilinear), pad with zeros to size x size, centered: openpi's resize_with_pad."""
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
    out = np.zeros((size, size, 3), np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out


class RemoteTeacher:
    """Subclasses implement _connect() -> client and _infer(client, request) -> (K, D_teacher) actions."""

    needs_images = True
    horizon = 0  # known after the first answer
    action_dim = 0

    def __init__(self, spec: str, host: str, port: int, cfg: RemoteConfig):
        self.spec, self.host, self.port, self.cfg = spec, host, port, cfg
        self.needs_images = any(is_camera(v) for v in cfg.obs_map.values())
        self._local = threading.local()
        self._clients: list = []
        self._lock = threading.Lock()
        self.metadata: dict = {}
        self.requests = 0  # answered requests, for tests and the run summary

    # -- to implement
    def _connect(self):
        raise NotImplementedError

    def _infer(self, client, request: dict) -> np.ndarray:
        raise NotImplementedError

    def _close_client(self, client) -> None:
        pass

    # -- shared
    def request(self, obs: dict) -> dict:
        req = {}
        for server_key, our_key in self.cfg.obs_map.items():
            if our_key not in obs:
                raise ConfigError(f"obs_map asks for {our_key!r}, which this dataset does not have",
                                  field=f"obs_map.{server_key}")
            value = obs[our_key]
            if is_camera(our_key) and self.cfg.image_size:
                value = resize_with_pad(value, self.cfg.image_size)
            elif isinstance(value, np.ndarray):
                value = np.ascontiguousarray(value, dtype=np.uint8 if value.dtype == np.uint8 else np.float32)
            req[server_key] = value
        return req

    def convert(self, actions: np.ndarray) -> np.ndarray:
        a = np.asarray(actions, np.float32)
        a = a.reshape(1, -1) if a.ndim == 1 else a
        if a.ndim != 2:
            raise TeacherError(f"{self.spec}: expected actions of shape (K, D) or (D,), got {a.shape}")
        if self.cfg.horizon:
            a = a[: self.cfg.horizon]
        if self.cfg.action_dim:
            a = a[:, : self.cfg.action_dim]
        a = a.copy()
        g = a[:, self.cfg.gripper_dim]
        if self.cfg.gripper.startswith("unit_to_signed"):
            g = 2.0 * g - 1.0
        if self.cfg.gripper.endswith("flip"):
            g = -g
        a[:, self.cfg.gripper_dim] = g
        return a

    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._connect()
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _drop_client(self) -> None:
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            with self._lock:
                if client in self._clients:
                    self._clients.remove(client)
            try:
                self._close_client(client)
            except Exception:
                pass

    def infer(self, obs: dict) -> np.ndarray:
        """One observation -> (K, D), retrying connection and protocol failures with exponential backoff."""
        request = self.request(obs)
        last: Exception | None = None
        for attempt in range(self.cfg.retries + 1):
            try:
                out = self.convert(self._infer(self._client(), request))
                with self._lock:
                    self.requests += 1
                return out
            except (ConfigError, TeacherError):
                raise
            except Exception as e:  # network, timeout, server error text: reconnect and retry
                last = e
                self._drop_client()
                if attempt < self.cfg.retries:
                    time.sleep(self.cfg.backoff_s * 2**attempt)
        raise TeacherError(f"{self.spec}: no answer after {self.cfg.retries + 1} attempts: {type(last).__name__}: "
                           f"{last}")

    def label(self, episode: EpisodeFrames, rows: np.ndarray, on_result: OnResult | None = None) -> np.ndarray:
        results: dict[int, np.ndarray] = {}
        with ThreadPoolExecutor(self.cfg.concurrency, thread_name_prefix="teacher") as pool:
            pending = {}
            todo = iter(enumerate(rows))
            try:
                for i, r in todo:  # keep at most `concurrency` requests in flight
                    pending[pool.submit(self.infer, episode.observation(int(r)))] = i
                    if len(pending) >= self.cfg.concurrency:
                        self._drain(pending, results, on_result, FIRST_COMPLETED)
                self._drain(pending, results, on_result, ALL_COMPLETED)
            except BaseException:
                for f in pending:
                    f.cancel()
                raise
        out = np.stack([results[i] for i in range(len(rows))]) if len(rows) else np.zeros((0, 1, 1), np.float32)
        if len(rows):
            self.horizon, self.action_dim = out.shape[1], out.shape[2]
        return out

    @staticmethod
    def _drain(pending: dict, results: dict, on_result: OnResult | None, mode) -> None:
        done, _ = wait(list(pending), return_when=mode)
        for f in done:
            i = pending.pop(f)
            results[i] = f.result()
            if on_result is not None:
                on_result(i, results[i])

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for c in clients:
            try:
                self._close_client(c)
            except Exception:
                pass

    def provenance(self) -> dict:
        cfg = {f.name: getattr(self.cfg, f.name) for f in fields(RemoteConfig) if f.name != "api_key"}
        return {"kind": self.spec.split("://")[0], "url": f"{self.host}:{self.port}", "config": cfg,
                "server_metadata": self.metadata}
