"""A policy behind openpi's websocket protocol (what openpi's `scripts/serve_policy.py` speaks, and what its
`openpi_client.WebsocketClientPolicy` expects).

On connect: one msgpack frame with the metadata (self-describing: observation_spec, action shape, provenance).
Per request: one msgpack obs dict in; {"actions": (K, D) float32, "policy_timing", "server_timing"} out.
A bad request (not msgpack, not a dict, missing key, wrong shape or dtype, over the size limit) gets a text frame
naming the problem and the connection stays usable; an internal error gets the traceback as a text frame and the
connection is closed (1011), as openpi does. Either way the server goes on serving everyone else. Actions that come
out non-finite (an input far outside what the policy was trained on) are never sent: the request gets an error frame.
A prompt the policy was not trained on is embedded on its own connection's thread by the text encoder loaded before
the server says it is ready, and kept in a bounded cache: a client's new instruction never stalls the others.
`GET /healthz` answers 503 while the server warms up (text encoder, first forward pass), then 200 with the counts.

Request keys: ours ("observation.images.corner2") or openpi's slash form ("observation/images/corner2"); the
instruction under "prompt" (openpi) or "task"; a camera also without ".images" (openpi's LIBERO client sends
"observation/image" and "observation/wrist_image": a policy trained on lerobot's LIBERO datasets, whose cameras are
observation.images.image and .wrist_image, needs no map); other names through the server's key map
(`serve --obs-map CLIENT=OURS`).
"""

from __future__ import annotations

import http
import json
import queue
import threading
import time
import traceback
from collections import OrderedDict
from concurrent.futures import Future
from typing import Callable

import numpy as np
import torch
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import serve

from vla_distill.data.msgpack_numpy import WireError, packb, unpackb
from vla_distill.errors import ConfigError
from vla_distill.models.backends import weights_bytes
from vla_distill.models.base import frames_to_batch
from vla_distill.models.onnx_policy import instruction_table
from vla_distill.types import TASK, TASK_EMBEDDING

InferFn = Callable[[dict], "np.ndarray | tuple[np.ndarray, dict]"]  # request -> (K, D) actions [, policy timing]
MAX_MESSAGE_BYTES = 16 * 2**20  # a 224 px 3-camera request is ~0.5 MB
MAX_PROMPT_CHARS = 2000  # LIBERO's and MetaWorld's instructions are under 200
MAX_ERROR_CHARS = 1000  # an error frame quotes the request at most this far
PROMPT_CACHE = 1024  # embeddings of prompts the policy was not trained on, least recently used dropped first


class RequestError(ValueError):
    """The client's request is malformed: answered with an error frame, the connection kept."""


def normalize_request(obs, spec: dict[str, dict], obs_map: dict[str, str] | None = None) -> dict:
    """A decoded request -> {our key: array} plus "task", checked against the policy's observation_spec.
    obs_map: {client key: our key}, applied before the slash form is read."""
    if not isinstance(obs, dict):
        raise RequestError(f"request must be a map of observation keys, got {type(obs).__name__}")
    obs_map = obs_map or {}
    keys = ((k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k), v) for k, v in obs.items())
    obs = {obs_map.get(k, k.replace("/", ".")): v for k, v in keys}
    out = {TASK: request_prompt(obs, any(s["dtype"] == "str" for s in spec.values()))}
    for key, s in spec.items():
        if s["dtype"] == "str":
            continue
        short = key.replace(".images.", ".", 1)  # openpi's LIBERO keys: observation/image for observation.images.image
        key_in = short if key not in obs and short in obs else key
        if key_in not in obs:
            expected = sorted(k for k in spec if spec[k]["dtype"] != "str")
            raise RequestError(f"{key}: missing (expected keys: {expected})")
        value = obs[key_in]
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "uif":
            raise RequestError(f"{key}: expected a numeric numpy array, got {type(value).__name__}")
        if list(value.shape) != list(s["shape"]):
            raise RequestError(f"{key}: shape {list(value.shape)}, expected {s['shape']}")
        if s["dtype"] == "uint8" and value.dtype != np.uint8:
            raise RequestError(f"{key}: dtype {value.dtype}, expected uint8 (H, W, 3) pixels")
        if not np.all(np.isfinite(value)):
            raise RequestError(f"{key}: contains NaN or inf")
        out[key] = value
    return out


def request_prompt(obs: dict, required: bool) -> str:
    """The instruction under "prompt" (openpi) or "task": a string. A policy that reads one gets no default (an empty
    or guessed instruction would act on the wrong task); a policy that reads none ignores a missing prompt."""
    key = "prompt" if "prompt" in obs else TASK
    if key not in obs:
        if required:
            raise RequestError("prompt: missing (this policy conditions on an instruction; send it as a string under "
                               "'prompt')")
        return ""
    if not isinstance(obs[key], str):
        raise RequestError(f"{key}: expected a string, got {type(obs[key]).__name__}")
    return obs[key]


class Batcher:
    """One inference thread: requests from all connections queue here; up to max_batch that arrive within
    wait_ms of the first run as one batch. With max_batch 1 it only serializes (torch calls from 32 connection
    threads at once would contend for the same cores). A batch waits only while a connected client has no request
    in it yet (openpi clients send one at a time): a lone robot never pays the wait."""

    def __init__(self, run_batch: Callable[[list[dict]], np.ndarray], max_batch: int = 1, wait_ms: float = 2.0):
        self.run_batch, self.max_batch, self.wait = run_batch, max(1, max_batch), wait_ms / 1e3
        self.q: queue.Queue = queue.Queue()
        self.batches = self.requests = 0
        self.clients = 0  # connections open now (the server counts them); 0: unknown, wait for max_batch
        self._count = threading.Lock()
        threading.Thread(target=self._loop, daemon=True, name="inference").start()

    def connected(self, change: int) -> None:
        with self._count:
            self.clients += change

    def _fill(self) -> int:
        return min(self.max_batch, self.clients or self.max_batch)

    def submit(self, obs: dict) -> tuple[np.ndarray, dict]:
        fut: Future = Future()
        self.q.put((obs, fut))
        return fut.result()

    def _loop(self) -> None:
        while True:
            items = [self.q.get()]
            first = time.perf_counter()
            deadline = first + self.wait
            while len(items) < self._fill():
                remaining = deadline - time.perf_counter()
                try:
                    items.append(self.q.get(timeout=remaining) if remaining > 0 else self.q.get_nowait())
                except queue.Empty:
                    break
            t0 = time.perf_counter()
            try:
                actions = self.run_batch([obs for obs, _ in items])
            except Exception as e:  # noqa: BLE001 (every waiting request gets the failure)
                for _, fut in items:
                    fut.set_exception(e)
                continue
            timing = {"infer_ms": (time.perf_counter() - t0) * 1e3, "batch_size": len(items),
                      "batch_wait_ms": (t0 - first) * 1e3}
            self.batches += 1
            self.requests += len(items)
            for i, (_, fut) in enumerate(items):
                fut.set_result((actions[i], timing))


class Prompts:
    """Instruction embeddings for the server, off the inference thread: the policy's own instructions are looked up;
    any other prompt is embedded on the asking connection's thread (one at a time) by the encoder warm() loads before
    the server is ready, and kept in a least-recently-used cache of `capacity` prompts."""

    def __init__(self, policy, capacity: int = PROMPT_CACHE, max_chars: int = MAX_PROMPT_CHARS):
        self.table = instruction_table(policy)  # None: the policy reads no instruction embedding
        self.capacity, self.max_chars = capacity, max_chars
        self.cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.lock, self.encoding = threading.Lock(), threading.Lock()
        self.encoder, self.missing = None, ""  # missing: why this machine cannot embed new prompts
        self.embedded = 0

    def warm(self) -> str:
        """Loads the text encoder; returns why it cannot be loaded ("" when it can or is not needed): then only the
        policy's own instructions are served (a robot's computer may have no sentence-transformers)."""
        if self.table is not None and self.encoder is None and not self.missing:
            from vla_distill.models.text import TextEncoder

            try:
                self.encoder = TextEncoder(self.table.config.text_encoder)
            except (ImportError, ConfigError) as e:
                self.missing = str(e)
        return self.missing

    def embedding(self, prompt: str) -> np.ndarray:
        """(E,) float32 for one prompt."""
        if len(prompt) > self.max_chars:
            raise RequestError(f"prompt: {len(prompt)} characters, the limit is {self.max_chars}")
        known = self.table.instruction_embedding(prompt)
        if known is not None:
            return known
        with self.lock:
            if prompt in self.cache:
                self.cache.move_to_end(prompt)
                return self.cache[prompt]
        with self.encoding:
            if self.warm():
                raise RequestError(f"prompt {prompt[:60]!r} is not one of the policy's instructions and this server "
                                   f"cannot embed new ones (no text encoder: {self.missing})")
            e = np.asarray(self.encoder.encode([prompt])[0], np.float32)
        with self.lock:
            self.cache[prompt] = e
            while len(self.cache) > self.capacity:
                self.cache.popitem(last=False)
            self.embedded += 1
        return e


def policy_runner(policy) -> Callable[[list[dict]], np.ndarray]:
    """Normalized requests (with their instruction embedded, where the policy reads one) -> (B, K, D) actions from one
    batched forward pass."""
    keys = policy.input_keys

    def run(requests: list[dict]) -> np.ndarray:
        frames = {k: np.stack([r[k] for r in requests]) for k in keys}
        batch = frames_to_batch(frames, keys, [r[TASK] for r in requests])
        if all(TASK_EMBEDDING in r for r in requests):
            batch[TASK_EMBEDDING] = torch.from_numpy(np.stack([r[TASK_EMBEDDING] for r in requests]))
        with torch.inference_mode():
            return policy.predict_action_chunk(batch).float().cpu().numpy()

    return run


def check_obs_map(obs_map: dict[str, str], spec: dict[str, dict]) -> dict[str, str]:
    """{client key: our key}, every target one of the policy's inputs (or the prompt)."""
    for client, ours in obs_map.items():
        if ours not in spec and ours != TASK:
            raise ConfigError(f"{client}={ours}: the policy has no input {ours!r} (inputs: {sorted(spec)})",
                              field="obs_map")
    return obs_map


def policy_infer_fn(policy, max_batch: int = 1, wait_ms: float = 2.0, prompts: Prompts | None = None,
                    obs_map: dict[str, str] | None = None) -> InferFn:
    """request (openpi or our keys) -> ((K, D) actions, policy timing); validated, its prompt embedded (prompts), then
    batched with concurrent requests; actions that are not all finite are refused, never sent."""
    spec = policy.observation_spec
    obs_map = check_obs_map(obs_map or {}, spec)
    batcher = Batcher(policy_runner(policy), max_batch, wait_ms)
    prompts = prompts or Prompts(policy)

    def infer(obs) -> tuple[np.ndarray, dict]:
        request = normalize_request(obs, spec, obs_map)
        if prompts.table is not None:
            request[TASK_EMBEDDING] = prompts.embedding(request[TASK])
        actions, timing = batcher.submit(request)
        if not np.all(np.isfinite(actions)):
            raise RequestError("the policy's actions for this observation are not finite (inputs far outside its "
                               "training range?); none were sent")
        return actions, timing

    infer.batcher, infer.prompts = batcher, prompts
    return infer


def warm_up(infer: InferFn, policy) -> str:
    """Loads the text encoder and runs one request with a blank observation: the first client waits for neither.
    Returns why new prompts cannot be embedded ("" when they can)."""
    missing = infer.prompts.warm()
    spec = policy.observation_spec
    blank = {k: np.zeros(s["shape"], np.uint8 if s["dtype"] == "uint8" else np.float32)
             for k, s in spec.items() if s["dtype"] != "str"}
    try:
        infer({**blank, "prompt": (list(getattr(policy.config, "tasks", ())) or [""])[0]})
    except RequestError:  # a blank observation may be far from anything seen; the forward pass ran all the same
        pass
    return missing


def metadata_for(policy, backend: str, max_message_bytes: int = MAX_MESSAGE_BYTES, max_batch: int = 1) -> dict:
    """What a client needs to build requests without reading our code: the metadata frame."""
    spec = {k: v for k, v in policy.observation_spec.items() if v["dtype"] != "str"}
    if TASK in policy.observation_spec:
        spec["prompt"] = {"shape": [], "dtype": "str"}
    return {
        "server": "vla-distill", "protocol": "openpi websocket, msgpack-numpy",
        "policy_type": getattr(policy, "name", type(policy).__name__), "backend": backend,
        "observation_spec": spec,
        "action_shape": [policy.horizon, policy.action_dim], "action_dtype": "float32",
        "action_horizon": policy.horizon, "action_dim": policy.action_dim,
        "instructions": list(getattr(policy.config, "tasks", ())),
        "weights_bytes": weights_bytes(policy),
        "max_message_bytes": max_message_bytes, "max_batch": max_batch,
        "provenance": _jsonable(getattr(policy, "provenance", {})),
    }


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj if isinstance(obj, (str, int, float, bool)) or obj is None else str(obj)


def make_server(infer: InferFn, metadata: dict, host: str = "127.0.0.1", port: int = 8000,
                max_message_bytes: int = MAX_MESSAGE_BYTES, ready: threading.Event | None = None):
    """Returns a websockets server; call .serve_forever() (and .shutdown() from another thread). Messages over
    max_message_bytes get an error frame; the websocket layer itself closes connections that send over 4x that.
    Until `ready` is set (None: ready now), /healthz answers 503 and a new connection waits for it before the metadata
    frame."""
    stats = {"requests": 0, "errors": 0, "dropped": 0}
    if ready is None:
        ready = threading.Event()
        ready.set()

    def health(connection, request):
        if request.path != "/healthz":
            return None
        if not ready.is_set():
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "warming up\n")
        prompts = getattr(infer, "prompts", None)
        counts = {**stats, "prompts_cached": len(prompts.cache) if prompts else 0}
        return connection.respond(http.HTTPStatus.OK, json.dumps({"ready": True, **counts}) + "\n")

    batcher = getattr(infer, "batcher", None)

    def handler(ws):
        ready.wait()
        if batcher is not None:
            batcher.connected(+1)
        try:
            answer(ws)
        except ConnectionClosed:  # a client that went away (killed, timed out) ends its own session, nothing else
            stats["dropped"] += 1
        finally:
            if batcher is not None:
                batcher.connected(-1)

    def answer(ws):
        ws.send(packb(metadata))
        for message in ws:
            t0 = time.perf_counter()
            try:
                if isinstance(message, str):
                    raise RequestError("expected a binary msgpack frame, got text")
                if len(message) > max_message_bytes:
                    raise RequestError(f"message of {len(message)} bytes exceeds the limit of {max_message_bytes}")
                try:
                    obs = unpackb(message)
                except WireError as e:
                    raise RequestError(f"not a msgpack-numpy message ({e})") from None
                result = infer(obs)
                actions, timing = result if isinstance(result, tuple) else (result, {})
                reply = {"actions": np.asarray(actions, np.float32), "policy_timing": timing,
                         "server_timing": {"total_ms": (time.perf_counter() - t0) * 1e3}}
                ws.send(packb(reply))
                stats["requests"] += 1
            except RequestError as e:
                stats["errors"] += 1
                ws.send("bad request: " + " ".join(str(e).split())[:MAX_ERROR_CHARS])  # one line, whatever was sent
            except ConnectionClosed:
                raise
            except Exception:  # noqa: BLE001
                stats["errors"] += 1
                ws.send(traceback.format_exc())
                ws.close(1011, "internal error")
                return

    server = serve(handler, host, port, compression=None, max_size=4 * max_message_bytes, process_request=health)
    server.stats, server.ready = stats, ready
    return server


def _warm_in_background(server, infer: InferFn, policy, ready: threading.Event, log) -> list[str]:
    """Warms up on another thread while the socket already listens; sets `ready`, or shuts the server down and leaves
    the reason in the returned list."""
    failed: list[str] = []

    def warm() -> None:
        t0 = time.perf_counter()
        try:
            missing = warm_up(infer, policy)
        except Exception as e:  # noqa: BLE001 (a policy that cannot answer a blank observation is not served)
            failed.append(f"{type(e).__name__}: {e}")
            server.shutdown()
            return
        if missing:
            log(f"no text encoder ({missing}): prompts other than the policy's "
                f"{len(getattr(policy.config, 'tasks', ()))} instructions get an error frame")
        ready.set()
        log(f"ready ({time.perf_counter() - t0:.1f} s warm-up)")

    threading.Thread(target=warm, daemon=True, name="warm-up").start()
    return failed


def serve_policy(policy, backend: str, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 1,
                 wait_ms: float = 2.0, max_message_bytes: int = MAX_MESSAGE_BYTES, log=print,
                 obs_map: dict[str, str] | None = None) -> None:
    """Serves until Ctrl-C; prints the address, the expected observation and the request counts at exit.
    obs_map: {client key: our key} for clients that name inputs their own way (openpi's LIBERO example)."""
    meta = metadata_for(policy, backend, max_message_bytes, max_batch)
    infer, ready = policy_infer_fn(policy, max_batch, wait_ms, obs_map=obs_map), threading.Event()
    meta["obs_map"] = dict(obs_map or {})
    try:
        server = make_server(infer, meta, host, port, max_message_bytes, ready)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e})", field="port") from None
    bound = server.socket.getsockname()
    log(f"serving {meta['policy_type']} ({backend}) on ws://{bound[0]}:{bound[1]}  (health: "
        f"http://{bound[0]}:{bound[1]}/healthz)")
    log("expects: " + ", ".join(f"{k} {v['dtype']}{v['shape']}" for k, v in meta["observation_spec"].items())
        + f"; returns actions float32{meta['action_shape']}")

    failed = _warm_in_background(server, infer, policy, ready, log)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        log(f"served {server.stats['requests']} requests, {server.stats['errors']} errors, "
            f"{server.stats['dropped']} clients gone mid-session")
    if failed:
        raise ConfigError(f"the policy could not answer a blank observation at warm-up ({failed[0]}); nothing served")
