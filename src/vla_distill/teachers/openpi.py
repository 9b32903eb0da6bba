"""`openpi://HOST:PORT`: a client of openpi's websocket policy server (scripts/serve_policy.py).

Session: connect, receive one msgpack frame with the policy's metadata, then one request frame (the obs dict)
and one reply frame ({"actions": (K, D), ...}) per inference. A text frame is the server's error traceback.
"""

from __future__ import annotations

import numpy as np
from websockets.sync.client import connect

from vla_distill.data.msgpack_numpy import packb, unpackb
from vla_distill.teachers.remote import RemoteConfig, RemoteTeacher, TeacherError
from vla_distill.types import OBS_STATE, TASK, camera_key

# openpi's LIBERO example keys, mapped from our MetaWorld-style keys by default.
DEFAULTS = {
    "obs_map": {
        "observation/image": camera_key("corner2"),
        "observation/wrist_image": camera_key("gripper"),
        "observation/state": OBS_STATE,
        "prompt": TASK,
    },
}


class OpenPITeacher(RemoteTeacher):
    def __init__(self, spec: str, host: str, port: int, cfg: RemoteConfig):
        super().__init__(spec, host, port, cfg)
        self.uri = f"ws://{host}:{port}"

    def _connect(self):
        headers = {"Authorization": f"Api-Key {self.cfg.api_key}"} if self.cfg.api_key else None
        ws = connect(self.uri, compression=None, max_size=None, open_timeout=self.cfg.timeout_s,
                     additional_headers=headers, legacy=True)  # a long-lived connection per worker thread
        meta = ws.recv(timeout=self.cfg.timeout_s)
        if isinstance(meta, str):
            ws.close()
            raise TeacherError(f"{self.uri}: expected the metadata frame on connect, got text: {meta[:200]}")
        self.metadata = _plain(unpackb(meta))
        return ws

    def _infer(self, ws, request: dict) -> np.ndarray:
        ws.send(packb(request))
        reply = ws.recv(timeout=self.cfg.timeout_s)
        if isinstance(reply, str):
            raise RuntimeError(f"server error: {reply.strip().splitlines()[-1] if reply.strip() else reply}")
        result = unpackb(reply)
        if "actions" not in result:
            raise TeacherError(f"{self.uri}: reply has no 'actions' (keys: {sorted(map(str, result))})")
        return result["actions"]

    def _close_client(self, ws) -> None:
        ws.close()


def _plain(obj):
    """Metadata for provenance JSON: arrays become lists, bytes keys become str."""
    if isinstance(obj, dict):
        return {(k.decode() if isinstance(k, bytes) else k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
