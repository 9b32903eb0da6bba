#!/usr/bin/env bash
# Compatibility check against lerobot's own dataset code (lerobot-dataset 0.4.4, the standalone
# LeRobotDataset package). It needs torch 2.10 + torchvision + torchcodec, which must never enter .venv,
# so it lives in its own environment, .venv-lerobot (several GB: PyPI's torch builds carry CUDA libraries;
# they run on the CPU). torchcodec decodes with the system FFmpeg libraries.
#   scripts/lerobot_interop.sh            build the environment if needed, run the interop tests
#   scripts/lerobot_interop.sh --golden   also regenerate tests/fixtures/lerobot_v30 (a lerobot-written dataset)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3.11}
LRV=.venv-lerobot
ffmpeg_libs="libavcodec59 libavformat59 libavutil57 libswscale6 libswresample4 libavdevice59 libavfilter8"
if ! ldconfig -p | grep -q 'libavcodec.so'; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "installing the FFmpeg libraries torchcodec needs: $ffmpeg_libs"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $ffmpeg_libs >/dev/null
  else
    echo "error: torchcodec needs FFmpeg. Run: sudo apt-get install -y $ffmpeg_libs" >&2; exit 1
  fi
fi
if [ ! -f "$LRV/.installed" ]; then
  $PY -m venv "$LRV"
  "$LRV/bin/pip" install -q --disable-pip-version-check "lerobot-dataset==0.4.4" "torch==2.10.0" "torchvision==0.25.0" "torchcodec>=0.9,<0.11"
  touch "$LRV/.installed"
fi
if [ "${1:-}" = "--golden" ]; then
  rm -rf tests/fixtures/lerobot_v30
  mkdir -p tests/fixtures
  "$LRV/bin/python" tests/interop/lerobot_side.py write tests/fixtures/lerobot_v30 tests/fixtures/lerobot_v30_expected.npz
  rm -rf tests/fixtures/lerobot_v30/images tests/fixtures/lerobot_v30_expected.json
fi
VLA_DISTILL_LEROBOT_PYTHON="$LRV/bin/python" .venv/bin/pytest -q -m interop tests/test_lerobot_interop.py
