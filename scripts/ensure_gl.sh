#!/usr/bin/env bash
# MuJoCo renders offscreen through EGL (Mesa llvmpipe on a CPU-only machine). Make sure the
# system libraries are there: install them when we are root, otherwise print the command to run.
set -euo pipefail
pkgs="libegl1 libegl-mesa0 libgl1-mesa-dri libgles2"
have_gl() { ldconfig -p | grep -q 'libEGL.so.1' && ldconfig -p | grep -q 'libEGL_mesa.so.0'; }
if have_gl; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "installing the EGL libraries MuJoCo's offscreen renderer needs: $pkgs"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs >/dev/null
  have_gl && exit 0
fi
echo "error: MuJoCo offscreen rendering needs EGL. Run: sudo apt-get install -y $pkgs" >&2
exit 1
