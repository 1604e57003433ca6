"""The e-stop outside the loop's ticks and a stalled loop, on franky-sim (the cases are in `estop_motion_cases.py`).

They run in a pytest process of their own: every case stops the gripper mid-command, and franky-sim (1.0.4) never
answers a gripper command that a stop pre-empted, so the stranded gripper connection (see `robot.arm.gripper`) stays
in the process that ran them. In the suite's process it disturbed the in-process and subprocess sims of later
modules (their first episodes saw `lead` and `tcp_speed` jumps); a process of their own takes it away with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def test_estop_motion_cases_pass_in_their_own_process():
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                             str(HERE / "estop_motion_cases.py")], cwd=HERE.parents[1], capture_output=True,
                            text=True, timeout=300, env={**os.environ})
    print(result.stdout[-4000:])
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-4000:]
    assert result.stdout.strip().splitlines()[-1].startswith("4 passed"), result.stdout[-2000:]
