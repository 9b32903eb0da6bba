"""The client side of openpi's websocket policy protocol (openpi's scripts/serve_policy.py; our `serve`), the one both
of our clients speak: the `openpi://` teacher (teachers/openpi.py) and the control loop's served policy
(deploy/remote_policy.py). It lives with the wire format (msgpack_numpy.py), low enough for both.

Session: connect; the server sends one msgpack frame with its metadata; then, per inference, one request frame (the
observation dict) and one reply frame ({"actions": (K, D), ...}). A text frame is the server's error (a traceback
from openpi, one line from ours). Network failures (refused, dropped, timed out) raise ServerUnreachable; the caller
decides whether to reconnect, retry or hold.
"""

from __future__ import annotations

import re

import numpy as np
from websockets.exceptions import WebSocketException
from websockets.sync.client import connect

from vla_distill.data.msgpack_numpy import WireError, packb, unpackb
from vla_distill.errors import ConfigError

NETWORK_ERRORS = (OSError, TimeoutError, WebSocketException)


class ServerError(RuntimeError):
    """The server answered with a text frame: its error message (the last line of a traceback)."""


class ServerUnreachable(ConnectionError):
    """No answer: the connection was refused, dropped or timed out, or a frame was not msgpack-numpy."""


def parse_address(spec: str, scheme: str = "openpi", field: str = "policy") -> tuple[str, int]:
    """"openpi://HOST:PORT" -> (HOST, PORT); a one-line ConfigError naming `field` otherwise."""
    m = re.fullmatch(rf"{scheme}://([^:/]+):(\d+)/?", spec)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ConfigError(f"expected {scheme}://HOST:PORT, got {spec!r}", field=field)
    return m.group(1), int(m.group(2))


def text_keys(obj):
    """A decoded frame with bytes keys (openpi's encoder writes some) as str keys, all the way down."""
    if isinstance(obj, dict):
        return {(k.decode() if isinstance(k, bytes) else k): text_keys(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [text_keys(v) for v in obj]
    return obj


def jsonable(obj):
    """Metadata for provenance JSON: arrays become lists, numpy scalars Python numbers."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.ndarray, np.generic)):
        return obj.tolist()
    return obj


class OpenPIClient:
    """One connection to an openpi-protocol server. `connect()` returns the metadata; `infer(request)` the reply."""

    def __init__(self, host: str, port: int, timeout_s: float = 10.0, api_key: str = ""):
        self.uri, self.timeout, self.api_key = f"ws://{host}:{port}", timeout_s, api_key
        self.ws = None
        self.metadata: dict = {}

    def connect(self) -> dict:
        headers = {"Authorization": f"Api-Key {self.api_key}"} if self.api_key else None
        try:
            self.ws = connect(self.uri, compression=None, max_size=None, open_timeout=self.timeout,
                              additional_headers=headers, legacy=True)  # held open across calls
            meta = self.ws.recv(timeout=self.timeout)
        except NETWORK_ERRORS as e:
            self.close()
            raise ServerUnreachable(f"{self.uri}: cannot connect ({type(e).__name__}: {e})") from None
        if isinstance(meta, str):
            self.close()
            raise ServerError(f"{self.uri}: expected the metadata frame on connect, got text: {meta[:200]}")
        self.metadata = text_keys(self._decode(meta))
        return self.metadata

    def infer(self, request: dict) -> dict:
        """One request frame out, one reply frame back: the reply with str keys."""
        if self.ws is None:
            self.connect()
        try:
            self.ws.send(packb(request))
            reply = self.ws.recv(timeout=self.timeout)
        except NETWORK_ERRORS as e:
            self.close()
            raise ServerUnreachable(f"{self.uri}: {type(e).__name__}: {e}") from None
        if isinstance(reply, str):
            raise ServerError(f"{self.uri}: {reply.strip().splitlines()[-1] if reply.strip() else 'error frame'}")
        out = text_keys(self._decode(reply))
        if not isinstance(out, dict):
            raise ServerUnreachable(f"{self.uri}: the reply is a {type(out).__name__}, not a map")
        return out

    def _decode(self, frame: bytes):
        try:
            return unpackb(frame)
        except WireError as e:
            self.close()
            raise ServerUnreachable(f"{self.uri}: not a msgpack-numpy frame ({e})") from None

    def close(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close()
            except NETWORK_ERRORS:
                pass
            self.ws = None
