"""A device that is missing or failing ends every command as one line naming it and what to check, exit code 2,
no traceback, and nothing moved: a RealSense serial that is not plugged in, an FCI host that refuses, a policy
server endpoint with nothing behind it, and a required e-stop console that never speaks, through the real
`dv-robot`, `dv-teleop`, `dv-calib` and `dv-launch` processes.

The cameras that do open are librealsense playbacks of a D415-like recording (the RealSense driver's own path);
the arm that does open is franky-sim behind a `robot.kind: real` launch file, so the real rig's code runs and
"nothing moved" is read from the simulator's joints. A real robot under `estop.allow_real_robot_without_estop`
prints the override in red at the start and the end and records it in the run's summary JSON.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

pytest.importorskip("pyrealsense2")
pytest.importorskip("franky_sim")

REPO = Path(__file__).resolve().parents[2]
REAL = REPO / "launch" / "real_fr3.yaml"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "80"}  # a narrow terminal: the line must not wrap
REFUSING_FCI_HOST = "127.254.3.7"  # loopback, nothing listens there: libfranka's connect is refused at once
ARM_JOINTS = [f"robot0_fr3_joint{i}" for i in range(1, 8)] + ["robot0_finger_joint1", "robot0_finger_joint2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _endpoint() -> str:
    return f"tcp://127.0.0.1:{_free_port()}"


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.robot.test_cameras import record_d415_like

    path = tmp_path_factory.mktemp("realsense") / "d415_like.db3"
    record_d415_like(path)
    return path


def _real_launch(tmp_path: Path, change: Callable[[dict[str, Any]], None] = lambda d: None) -> Path:
    """launch/real_fr3.yaml with a closed server address, free e-stop endpoints, logs under tmp_path."""
    data = yaml.safe_load(REAL.read_text())
    data["server"].update(start=False, address=_endpoint())
    data["estop"].update(endpoint=_endpoint(), status_endpoint=_endpoint())
    data["processes"]["logs_dir"] = str(tmp_path / "logs")
    change(data)
    path = tmp_path / "real.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _playback_cameras(recording: Path) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        data["cameras"] = [{"type": "realsense", "name": "static", "playback_file": str(recording)},
                           {"type": "realsense", "name": "wrist", "playback_file": str(recording), "depth": False}]
    return change


def _arm_at(host: str) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        data["robot"]["arm"].update(host=host, realtime="ignore")
    return change


def _both(*changes: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        for c in changes:
            c(data)
    return change


def _without_estop(data: dict[str, Any]) -> None:
    data["estop"].update(required=False, console=False, allow_real_robot_without_estop=True)


COMMANDS: dict[str, Callable[[Path, Path], list[str]]] = {
    "dv-robot": lambda launch, tmp: ["robot.cli", "run", "pick_bottle", "--launch", str(launch),
                                     "--summary", str(tmp / "summary.json")],
    "dv-teleop": lambda launch, tmp: ["teleop.cli", "record", "--task", "pick_bottle", "--launch", str(launch),
                                      "--device", "keyboard", "--root", str(tmp / "dataset")],
    "dv-calib": lambda launch, tmp: ["calibration.cli", "handeye", "--camera", "static", "--launch", str(launch),
                                     "--out", str(tmp / "handeye.json")],
    "dv-launch": lambda launch, tmp: ["robot.launch.supervisor", str(launch)],
}


def _run(module_args: list[str], cwd: Path, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *module_args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout_s)


def _one_clear_line(out: subprocess.CompletedProcess[str], device: str, check: str) -> str:
    """Exit code 2, no traceback, and exactly one line naming `device`, which also says what to check."""
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if device in line]
    assert len(lines) == 1, text
    assert "check " in lines[0] and check in lines[0], lines[0]
    return lines[0]


def _arm_joints(cell: Any) -> np.ndarray:
    import mujoco

    data = mujoco.MjData(cell.model)
    cell.copy_state(data)
    return np.array([data.qpos[cell.model.joint(name).qposadr[0]] for name in ARM_JOINTS])


# ------------------------------------------------------------------------------------------------ cameras


@pytest.mark.parametrize("command", ["dv-robot", "dv-teleop", "dv-launch"])
def test_a_realsense_that_is_not_plugged_in(command, tmp_path):
    """The issue's reproduction: a real launch file whose D415 serial is not connected (the shipped placeholder)."""
    launch = _real_launch(tmp_path, lambda d: d["estop"].update(console=False))  # still required: see below
    out = _run(COMMANDS[command](launch, tmp_path), tmp_path)
    line = _one_clear_line(out, "camera 'static'", "rs-enumerate-devices")
    assert "no RealSense with serial 000000000000" in line
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / "dataset" / "meta").exists()


def test_dv_calib_intrinsics_of_a_camera_that_is_not_plugged_in(tmp_path):
    out = _run(["calibration.cli", "intrinsics", "--launch", str(_real_launch(tmp_path))], tmp_path)
    line = _one_clear_line(out, "camera 'static'", "rs-enumerate-devices")
    assert line.startswith("dv-calib intrinsics: camera 'static': no RealSense with serial 000000000000")


# ------------------------------------------------------------------------------------------------ the arm


@pytest.mark.parametrize("command", ["dv-robot", "dv-teleop", "dv-calib"])
def test_an_fci_host_that_refuses(command, recording, tmp_path):
    """Cameras open (playback); the FR3 address refuses the connection. dv-calib runs under the no-e-stop override
    here (it would wait 30 s for a console first), so it also shows the override in red at the start and the end."""
    change = _both(_playback_cameras(recording), _arm_at(REFUSING_FCI_HOST))
    launch = _real_launch(tmp_path, _both(change, _without_estop) if command == "dv-calib" else change)
    out = _run(COMMANDS[command](launch, tmp_path), tmp_path)
    line = _one_clear_line(out, f"arm (FCI at {REFUSING_FCI_HOST})", "FCI is activated in Desk")
    assert "Connection to FCI refused" in line
    if command == "dv-calib":
        assert out.stderr.count("OVERRIDE estop.allow_real_robot_without_estop") == 2, out.stderr
        assert not (tmp_path / "handeye.json").exists()


# ------------------------------------------------------------------------------------------------ server, e-stop


def test_a_policy_server_with_nothing_behind_it(cell, recording, tmp_path):
    """The arm (franky-sim) and cameras open; the server endpoint is closed: the hello pre-flight fails before the
    move home, so the arm never moved and no summary was written."""
    launch = _real_launch(tmp_path, _both(_playback_cameras(recording), _arm_at(cell.hostname),
                                          lambda d: d["runner"].update(policy_reset_timeout_s=1.0)))
    before = _arm_joints(cell)
    out = _run(COMMANDS["dv-robot"](launch, tmp_path), tmp_path)
    address = yaml.safe_load(launch.read_text())["server"]["address"]
    line = _one_clear_line(out, f"policy server at {address}", "dv-serve runs at that address")
    assert "no reply to hello" in line
    np.testing.assert_allclose(_arm_joints(cell), before, atol=1e-3)
    assert not (tmp_path / "summary.json").exists()


def test_a_required_e_stop_console_that_never_speaks(cell, recording, tmp_path):
    """`estop.console: false` on a real robot keeps the e-stop required (the operator runs dv-estop elsewhere): with
    no console heard within runner.estop_wait_s the run ends before the move home, naming the console."""
    launch = _real_launch(tmp_path, _both(_playback_cameras(recording), _arm_at(cell.hostname),
                                          lambda d: d["estop"].update(console=False),
                                          lambda d: d["runner"].update(estop_wait_s=0.5)))
    np.save(tmp_path / "still.npy", np.zeros((5, 7)))
    before = _arm_joints(cell)
    out = _run([*COMMANDS["dv-robot"](launch, tmp_path), "--policy", "replay", "--replay",
                str(tmp_path / "still.npy")], tmp_path)
    endpoint = yaml.safe_load(launch.read_text())["estop"]["endpoint"]
    line = _one_clear_line(out, "e-stop console", f"dv-estop runs with --endpoint {endpoint}")
    assert f"no heartbeat on {endpoint} within 0.5 s" in line
    np.testing.assert_allclose(_arm_joints(cell), before, atol=1e-3)
    assert not (tmp_path / "summary.json").exists()


def test_a_real_robot_run_under_the_no_estop_override_says_so_and_records_it(cell, recording, tmp_path):
    """The only way past the load-time refusal is the override; the run prints it in red at its start and end and
    its summary JSON records it."""
    launch = _real_launch(tmp_path, _both(_playback_cameras(recording), _arm_at(cell.hostname), _without_estop))
    np.save(tmp_path / "still.npy", np.zeros((5, 7)))
    out = _run([*COMMANDS["dv-robot"](launch, tmp_path), "--policy", "replay", "--replay",
                str(tmp_path / "still.npy"), "--max-episode-s", "1"], tmp_path, timeout_s=180)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    marks = [i for i, line in enumerate(lines) if "OVERRIDE estop.allow_real_robot_without_estop" in line]
    assert len(marks) == 2 and marks[0] == 0 and marks[1] == len(lines) - 1, out.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["overrides"] == ["OVERRIDE estop.allow_real_robot_without_estop: the real robot moves with no "
                                    "software e-stop"]
