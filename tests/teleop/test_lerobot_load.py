"""The real lerobot library loads what we write: scripts/check_lerobot_load.py (the writer, both codecs, against
lerobot's own `create()`), and a dataset recorded by `dv-teleop record --sim`, run in lerobot's venv.

lerobot (0.6, Python >= 3.12, its own torch pin) cannot share the project's venv, so it lives in `.venv-lerobot`,
made by `scripts/setup.sh --dev` (or wherever DV_LEROBOT_PYTHON points). The tests are skipped only where setup
recorded that it could not make it (`.venv-lerobot.skipped`: no Python 3.12); a venv that is simply missing is a
failure, so CI cannot pass without running them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
PYTHON = Path(os.environ.get("DV_LEROBOT_PYTHON", REPO / ".venv-lerobot/bin/python"))
SKIPPED = REPO / ".venv-lerobot.skipped"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}

# Loads a dataset with LeRobotDataset and prints what the test compares, as JSON.
LOAD = """
import json, sys
from lerobot.datasets.lerobot_dataset import LeRobotDataset
ds = LeRobotDataset("local/dv", root=sys.argv[1])
items = [ds[i] for i in range(len(ds))]
print(json.dumps({"len": len(ds), "episodes": ds.num_episodes, "task": items[0]["task"],
                  "state": [x["observation.state"].tolist() for x in items],
                  "action": [x["action"].tolist() for x in items],
                  "image_shape": list(items[0]["observation.images.wrist"].shape),
                  "image_mean": [float(x["observation.images.static"].mean()) for x in items]}))
"""


@pytest.fixture(scope="module")
def lerobot_python() -> Path:
    if not PYTHON.exists():
        if SKIPPED.exists():
            pytest.skip(SKIPPED.read_text().strip())
        pytest.fail(f"{PYTHON} missing: run scripts/setup.sh --dev")
    return PYTHON


def test_lerobot_loads_what_the_writer_writes(lerobot_python: Path, tmp_path: Path) -> None:
    out = subprocess.run([str(lerobot_python), str(REPO / "scripts/check_lerobot_load.py"), "--root",
                          str(tmp_path / "ds")], capture_output=True, text=True, timeout=300, env=ENV)
    report = out.stdout + out.stderr[-3000:]
    assert out.returncode == 0, report
    assert "  pyav: 3 episodes, 16 frames" in out.stdout, report
    assert " 0 failed" in out.stdout, report


def test_lerobot_loads_a_dv_teleop_recording(lerobot_python: Path, tmp_path: Path) -> None:
    pytest.importorskip("franky_sim")
    import yaml

    launch = yaml.safe_load((REPO / "launch/sim.yaml").read_text())
    launch["cameras"] = [{"type": "sim", "name": n, "width": 96, "height": 72} for n in ("static", "wrist")]
    (tmp_path / "sim.yaml").write_text(yaml.safe_dump(launch))
    root = tmp_path / "ds"
    rec = subprocess.run([sys.executable, "-m", "teleop.cli", "record", "--task", "pick_bottle", "--sim", "--launch",
                          str(tmp_path / "sim.yaml"), "--device", "scripted", "--episodes", "1", "--keep", "all",
                          "--root", str(root)], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**ENV, "PYTHONPATH": str(REPO), "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")})
    assert rec.returncode == 0, rec.stdout + rec.stderr
    out = subprocess.run([str(lerobot_python), "-c", LOAD, str(root)], capture_output=True, text=True, timeout=300,
                         env=ENV)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    rows = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert loaded["len"] == rows.num_rows and loaded["episodes"] == 1 and loaded["task"] == "pick up the bottle"
    np.testing.assert_array_equal(np.array(loaded["state"], np.float32),
                                  np.array(rows.column("observation.state").to_pylist(), np.float32))
    np.testing.assert_array_equal(np.array(loaded["action"], np.float32),
                                  np.array(rows.column("action").to_pylist(), np.float32))
    assert loaded["image_shape"] == [3, 72, 96]
    assert 0.05 < np.mean(loaded["image_mean"]) < 0.95  # decoded frames of the scene, not black or blank
