"""openpi's own client (PyPI openpi-client, WebsocketClientPolicy) against `vla-distill serve`, unchanged.

openpi-client pins numpy < 2, so it runs from its own environment, .venv-openpi (`make interop` builds it), as it
would on a robot computer: the two sides share only the socket.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
OPENPI_PY = os.environ.get("VLA_DISTILL_OPENPI_PYTHON", str(HERE.parent / ".venv-openpi" / "bin" / "python"))

pytestmark = pytest.mark.interop


def test_openpi_client_uses_our_server_unchanged(tiny_student, tmp_path):
    from vla_distill.deploy.export import export
    from vla_distill.models.bundle import REFERENCE_FILE

    if not Path(OPENPI_PY).exists():
        pytest.skip(f"{OPENPI_PY} missing: run `make interop`")
    export(tiny_student, tmp_path / "bundle", "bundle", log=lambda *_: None)
    server = subprocess.Popen([sys.executable, "-m", "vla_distill.cli", "serve", "--policy", str(tmp_path / "bundle"),
                               "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        host, port = line.split("ws://")[1].split()[0].split(":")
        proc = subprocess.run([OPENPI_PY, str(HERE / "interop" / "openpi_client_side.py"), host, port,
                               str(tmp_path / "bundle" / REFERENCE_FILE)], capture_output=True, text=True, timeout=120)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["numpy"].startswith("1.")  # really the client's own environment
    assert out["n"] == 32 and out["max_error"] <= 1e-5
    assert out["spec"]["observation.images.corner2"] == {"shape": [64, 64, 3], "dtype": "uint8"}
    assert out["spec"]["prompt"] == {"shape": [], "dtype": "str"} and out["action_shape"] == [1, 4]
    assert "Error in inference server" in out["bad_request"] and "missing" in out["bad_request"]
