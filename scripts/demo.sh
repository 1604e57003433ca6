#!/usr/bin/env bash
# The main job until the sim workcell lands: a tiny DreamVLA checkpoint answering synthetic observations.
set -euo pipefail
cd "$(dirname "$0")/.."
ckpt=runs/tiny-demo
[[ -f $ckpt/config.json ]] || .venv/bin/dv-model init --config tiny --out "$ckpt"
.venv/bin/dv-model info "$ckpt"
.venv/bin/dv-model try "$ckpt" --steps 3
