"""The real lerobot library loads what teleop.dataset writes: scripts/check_lerobot_load.py, run in lerobot's venv.

lerobot (0.6, Python >= 3.12, its own torch pin) cannot share the project's venv, so it lives in `.venv-lerobot`
(made by `scripts/setup.sh --dev`) or wherever DV_LEROBOT_PYTHON points. Without it the test is skipped, unless
DV_REQUIRE_LEROBOT=1, where a missing venv fails.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYTHON = Path(os.environ.get("DV_LEROBOT_PYTHON", REPO / ".venv-lerobot/bin/python"))


def test_lerobot_loads_our_dataset(tmp_path: Path) -> None:
    if not PYTHON.exists():
        if os.environ.get("DV_REQUIRE_LEROBOT") == "1":
            pytest.fail(f"{PYTHON} missing (DV_REQUIRE_LEROBOT=1): run scripts/setup.sh --dev")
        pytest.skip(f"no lerobot venv at {PYTHON} (scripts/setup.sh --dev makes it)")
    out = subprocess.run([str(PYTHON), str(REPO / "scripts/check_lerobot_load.py"), "--root", str(tmp_path / "ds")],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    report = out.stdout + out.stderr[-3000:]
    assert out.returncode == 0, report
    assert "  pyav: 3 episodes, 16 frames" in out.stdout, report
    assert " 0 failed" in out.stdout, report
