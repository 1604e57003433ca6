#!/usr/bin/env bash
# Set up this checkout on a fresh Debian/Ubuntu machine: system libraries, then a virtualenv in .venv
# with every extra. Idempotent: re-running only installs what is missing.
#   scripts/setup.sh          robot + server + sim
#   scripts/setup.sh --dev    ... plus the test tools
set -euo pipefail
cd "$(dirname "$0")/.."

extras="server,robot,sim"
[[ "${1:-}" == "--dev" ]] && extras="$extras,dev"

# libusb for pyrealsense2; EGL/GL for MuJoCo's offscreen renderer.
apt_packages=(libusb-1.0-0 libegl1 libgl1 libglib2.0-0)
missing=()
for p in "${apt_packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
# torch first and pinned: the pin takes a local CPU wheel where one is provided, CUDA elsewhere.
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e ".[$extras]"
echo "set up: .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
