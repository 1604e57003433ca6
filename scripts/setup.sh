#!/usr/bin/env bash
# Set up this checkout on a fresh Debian/Ubuntu machine: system libraries, then a virtualenv in .venv
# with every extra. Idempotent: re-running only installs what is missing.
#   scripts/setup.sh          robot + server + sim
#   scripts/setup.sh --dev    ... plus the test tools
set -euo pipefail
cd "$(dirname "$0")/.."

extras="server,robot,sim"
[[ "${1:-}" == "--dev" ]] && extras="$extras,dev"

# libusb for pyrealsense2; EGL/GL for MuJoCo's offscreen renderer; hidapi for the SpaceMouse (pyspacemouse).
apt_packages=(libusb-1.0-0 libegl1 libgl1 libglib2.0-0 libhidapi-hidraw0)
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

# --dev: lerobot itself, to test that its LeRobotDataset loads what dv-teleop records. lerobot 0.6 needs Python
# 3.12 and its own torch (< 2.12), so it gets a venv of its own (~2 min, ~5 GB). Without a Python 3.12 the test
# is skipped, and .venv-lerobot.skipped says why.
if [[ "${1:-}" == "--dev" && ! -x .venv-lerobot/bin/python ]]; then
  py312=""
  for candidate in python3.12 "$(pyenv root 2>/dev/null || echo /nonexistent)"/versions/3.12*/bin/python3; do
    "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null && { py312=$candidate; break; }
  done
  if [[ -n "$py312" ]]; then
    rm -f .venv-lerobot.skipped
    "$py312" -m venv .venv-lerobot
    .venv-lerobot/bin/pip install -q --upgrade pip
    .venv-lerobot/bin/pip install -q "lerobot[dataset]==0.6.1" pydantic
    echo "set up: .venv-lerobot ($(.venv-lerobot/bin/python -c 'import lerobot; print("lerobot", lerobot.__version__)'))"
  else
    echo "no Python 3.12 on this machine: lerobot 0.6.1 needs it" > .venv-lerobot.skipped
    echo "skipped .venv-lerobot: $(cat .venv-lerobot.skipped)"
  fi
fi
