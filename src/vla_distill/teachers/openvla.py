"""`openvla://HOST:PORT`: a client of OpenVLA's deploy server (vla-scripts/deploy.py).

POST /act with a json-numpy body {"image": (H, W, 3) uint8, "instruction": str, "unnorm_key": str?};
the reply is a json-numpy (7,) action, or the JSON string "error".
"""

from __future__ import annotations

import http.client

import json_numpy
import numpy as np

from vla_distill.teachers.remote import RemoteTeacher, TeacherError
from vla_distill.types import TASK, camera_key

DEFAULTS = {
    "obs_map": {"image": camera_key("corner2"), "instruction": TASK},
    "gripper": "keep",
}


class OpenVLATeacher(RemoteTeacher):
    def _connect(self):
        return http.client.HTTPConnection(self.host, self.port, timeout=self.cfg.timeout_s)

    def request(self, obs: dict) -> dict:
        req = super().request(obs)
        if self.cfg.unnorm_key:
            req["unnorm_key"] = self.cfg.unnorm_key
        return req

    def _infer(self, conn, request: dict) -> np.ndarray:
        conn.request("POST", "/act", body=json_numpy.dumps(request), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {body[:200]!r}")
        out = json_numpy.loads(body)
        if isinstance(out, str):
            raise RuntimeError(f"server answered {out!r}")
        if not isinstance(out, np.ndarray):
            raise TeacherError(f"http://{self.host}:{self.port}/act: expected an action array, got "
                               f"{type(out).__name__}")
        return out

    def _close_client(self, conn) -> None:
        conn.close()
