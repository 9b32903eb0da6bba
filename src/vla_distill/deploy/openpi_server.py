"""A policy behind openpi's websocket protocol (what `scripts/serve_policy.py` speaks).

On connect: one msgpack frame with the metadata. Then per request: obs dict in, {"actions": (H, D), "policy_timing"}
out. A request that fails gets a text frame with the error, and the connection is closed, as openpi does.
`GET /healthz` answers 200 OK.
"""

from __future__ import annotations

import http
import time
import traceback
from typing import Callable

import numpy as np
import torch
from websockets.sync.server import serve

from vla_distill.deploy.msgpack_numpy import packb, unpackb
from vla_distill.models.base import observation_to_batch

InferFn = Callable[[dict], np.ndarray]  # obs dict (our keys) -> (H, D) actions


def policy_infer_fn(policy) -> InferFn:
    """Wrap a vla-distill Policy: accepts our keys or openpi-style 'observation/<name>' keys and 'prompt'."""
    keys = policy.input_keys

    @torch.no_grad()
    def infer(obs: dict) -> np.ndarray:
        obs = {k.replace("/", "."): v for k, v in obs.items()}
        missing = [k for k in keys if k not in obs]
        if missing:
            raise KeyError(f"observation lacks {missing[0]!r} (expects {list(keys)})")
        batch = observation_to_batch(obs, keys, str(obs.get("prompt", obs.get("task", ""))))
        return policy.predict_action_chunk(batch)[0].float().numpy()

    return infer


def _health(connection, request):
    if request.path == "/healthz":
        return connection.respond(http.HTTPStatus.OK, "OK\n")
    return None


def make_server(infer: InferFn, metadata: dict, host: str = "127.0.0.1", port: int = 8000):
    """Returns a websockets server; call .serve_forever() (and .shutdown() from another thread)."""

    def handler(ws):
        ws.send(packb(metadata))
        for message in ws:
            try:
                t0 = time.perf_counter()
                actions = np.asarray(infer(unpackb(message)), np.float32)
                ws.send(packb({"actions": actions, "policy_timing": {"infer_ms": (time.perf_counter() - t0) * 1e3}}))
            except Exception:
                ws.send(traceback.format_exc())
                ws.close(1011, "internal error")
                return

    return serve(handler, host, port, compression=None, max_size=None, process_request=_health)
