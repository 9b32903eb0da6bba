#!/usr/bin/env bash
# Compatibility check against openpi's own client (PyPI openpi-client 0.1.2). It pins numpy < 2, which must never
# enter .venv, so it lives in its own small environment, .venv-openpi (~60 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3.11}
OPV=.venv-openpi
if [ ! -f "$OPV/.installed" ]; then
  $PY -m venv "$OPV"
  # openpi-client 0.1.2 imports typing_extensions without declaring it
  "$OPV/bin/pip" install -q --disable-pip-version-check "openpi-client==0.1.2" typing_extensions
  touch "$OPV/.installed"
fi
VLA_DISTILL_OPENPI_PYTHON="$OPV/bin/python" .venv/bin/pytest -q -m interop tests/test_openpi_client_interop.py
