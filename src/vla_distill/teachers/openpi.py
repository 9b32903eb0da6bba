"""`openpi://HOST:PORT`: openpi's websocket policy server (scripts/serve_policy.py) as a teacher, through the one
openpi client (data/openpi_client.py); one connection per worker thread, held open."""

from __future__ import annotations

import numpy as np

from vla_distill.data.openpi_client import OpenPIClient, jsonable
from vla_distill.teachers.remote import RemoteTeacher, TeacherError
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
    def _connect(self) -> OpenPIClient:
        client = OpenPIClient(self.host, self.port, self.cfg.timeout_s, self.cfg.api_key)
        self.metadata = jsonable(client.connect())
        return client

    def _infer(self, client: OpenPIClient, request: dict) -> np.ndarray:
        result = client.infer(request)
        if "actions" not in result:
            raise TeacherError(f"{client.uri}: reply has no 'actions' (keys: {sorted(map(str, result))})")
        return result["actions"]

    def _close_client(self, client: OpenPIClient) -> None:
        client.close()
