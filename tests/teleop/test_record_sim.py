"""dv-teleop end to end in the sim workcell, as a user runs it: record with the scripted device, verify the
dataset, replay an episode through the runtime and compare paths, resume refusal, and SIGINT finalisation."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from teleop.dataset.verify import verify

pytest.importorskip("franky_sim")

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
# Replayed vs recorded TCP on drawer_open (issue 5 §4): the replayed TCP's distance from the recorded path.
# Measured on the 2-core dev VM with other processes loading it: 4.2 mm and 7.0 mm max (RMS 0.4 / 0.7 mm); the
# commanded targets were identical (0.000 mm), which is the part a convention mismatch would break.
REPLAY_TOLERANCE_MM = 20.0


def _launch_file(tmp_path: Path, width: int = 64, height: int = 48) -> Path:
    data = yaml.safe_load((REPO / "launch/sim.yaml").read_text())
    data["cameras"] = [{"type": "sim", "name": n, "width": width, "height": height} for n in ("static", "wrist")]
    path = tmp_path / f"sim-{width}x{height}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _teleop(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "teleop.cli", *args], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("teleop")
    launch, root = _launch_file(tmp), tmp / "drawer_open"
    out = _teleop("record", "--task", "drawer_open", "--sim", "--launch", str(launch), "--device", "scripted",
                  "--episodes", "2", "--keep", "all", "--root", str(root))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 of 2 episodes kept" in out.stdout
    return launch, root


def test_recorded_dataset_holds_both_cameras_depth_proprio_actions_and_the_session(recorded):
    launch, root = recorded
    assert verify(root).ok
    info = json.loads((root / "meta/info.json").read_text())
    assert info["total_episodes"] == 2 and info["fps"] == 15
    for key in ("observation.images.static", "observation.images.wrist", "observation.state", "action",
                "action.target", "observation.joints", "observation.gripper", "observation.capture_s"):
        assert key in info["features"], key
    rows = pq.read_table(root / "data/chunk-000/file-000.parquet")
    state = np.array(rows.column("observation.state").to_pylist())
    np.testing.assert_allclose(state[0, :3], [0.3069, 0.0, 0.4869], atol=2e-3)  # starts at home
    assert state[0, 6] == 1.0 and (state[:, 6] == 0.0).any()  # the gripper closed on the handle
    capture = np.array(rows.column("observation.capture_s").to_pylist())
    assert np.all(np.diff(capture[:, 0]) > 0) and np.all(np.abs(capture[:, 1:] - capture[:, :1]) < 0.25)
    depth = sorted((root / "depth/observation.depth.static/chunk-000/file-000").glob("*.png"))
    assert len(depth) == rows.num_rows
    import cv2

    d = cv2.imread(str(depth[0]), cv2.IMREAD_UNCHANGED)
    assert d.dtype == np.uint16 and 300 < np.median(d[d > 0]) < 3000  # millimetres of a table ~1 m away
    sessions = list((root / "meta/dv_sessions").glob("*.json"))
    assert len(sessions) == 1
    session = json.loads(sessions[0].read_text())
    assert {k: v["seed"] for k, v in session["episodes"].items()} == {"0": 0, "1": 1}
    assert session["launch"]["cameras"][0]["width"] == 64 and session["calibration_hash"]


def test_replay_tracks_the_recorded_path(recorded, tmp_path):
    launch, root = recorded
    out = _teleop("replay", str(root), "--episode", "1", "--sim", "--launch", str(launch),
                  "--tolerance-mm", str(REPLAY_TOLERANCE_MM), "--json", str(tmp_path / "replay.json"))
    print(out.stdout)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads((tmp_path / "replay.json").read_text())
    tracking = result["tracking"]
    assert result["outcome"] == "success" and tracking["compared"] >= 0.9 * result["recorded"]
    assert tracking["path_deviation_max_m"] <= REPLAY_TOLERANCE_MM / 1e3
    assert tracking["target_error_max_m"] < 1e-4  # the same targets: float32 storage is the only difference


def test_resuming_with_other_cameras_is_refused_naming_the_difference(recorded, tmp_path):
    _, root = recorded
    other = _launch_file(tmp_path, width=80, height=60)
    out = _teleop("record", "--task", "drawer_open", "--sim", "--launch", str(other), "--device", "scripted",
                  "--episodes", "1", "--keep", "all", "--root", str(root))
    assert out.returncode == 2
    assert "refusing to resume" in out.stdout and "cameras" in out.stdout
    assert verify(root).ok and json.loads((root / "meta/info.json").read_text())["total_episodes"] == 2


def _recording_past_first_commit(launch: Path, root: Path) -> subprocess.Popen[str]:
    """A 3-episode scripted recording, returned once its first episode is committed."""
    proc = subprocess.Popen([sys.executable, "-m", "teleop.cli", "record", "--task", "pick_bottle", "--sim",
                             "--launch", str(launch), "--device", "scripted", "--episodes", "3", "--keep", "all",
                             "--root", str(root)], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    info = root / "meta/info.json"
    deadline = time.monotonic() + 120
    while not (info.exists() and json.loads(info.read_text())["total_episodes"] >= 1):
        assert proc.poll() is None and time.monotonic() < deadline, "the first episode was never committed"
        time.sleep(0.1)
    return proc


def test_sigint_mid_episode_finalises_the_dataset(tmp_path):
    launch, root = _launch_file(tmp_path), tmp_path / "pick"
    info = root / "meta/info.json"
    proc = _recording_past_first_commit(launch, root)
    time.sleep(1.5)  # well inside episode 2
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "1 of 2 episodes kept" in out and "aborted:interrupted" in out
    assert verify(root).ok and json.loads(info.read_text())["total_episodes"] == 1
    assert not any((root / ".dv/staging").iterdir())


def test_kill_9_of_dv_teleop_mid_recording_leaves_a_dataset_that_opens(tmp_path):
    """D1 on the real process (the recorder-level trials in test_record.py do 20 at random moments): SIGKILL of
    dv-teleop at a random moment of episode 2 or 3; reopening recovers, verify passes, committed episodes are
    whole, and the next session resumes into it."""
    import random

    from teleop.dataset import DatasetConfig, DatasetWriter

    launch, root = _launch_file(tmp_path), tmp_path / "killed"
    proc = _recording_past_first_commit(launch, root)
    time.sleep(random.Random(3).uniform(0.2, 6.0))
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    cfg = DatasetConfig.model_validate_json((root / "meta/dv_config.json").read_text())
    with DatasetWriter(root, cfg) as writer:
        committed = writer.num_episodes
    assert committed >= 1 and verify(root).ok
    assert not any((root / ".dv/staging").iterdir())
    out = _teleop("record", "--task", "pick_bottle", "--sim", "--launch", str(launch), "--device", "scripted",
                  "--episodes", "1", "--keep", "all", "--root", str(root), "--seed", "7")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads((root / "meta/info.json").read_text())["total_episodes"] == committed + 1 and verify(root).ok


def test_hand_guided_demo_in_sim_records_and_replays(tmp_path):
    """--device guiding --sim: a scripted hand moves the arm while the passive loop records measured deltas; the
    recorded actions, replayed as commands, redo the task. Commanded replay lags a hand-moved arm by about a tick
    of controller lag, so its bound is looser: measured 13 mm and 33 mm max (the latter with another process
    loading the 2 cores)."""
    launch, root = _launch_file(tmp_path), tmp_path / "guided"
    out = _teleop("record", "--task", "pick_bottle", "--sim", "--launch", str(launch), "--device", "guiding",
                  "--episodes", "1", "--keep", "success", "--root", str(root))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 of 1 episodes kept" in out.stdout and verify(root).ok
    out = _teleop("replay", str(root), "--episode", "0", "--sim", "--launch", str(launch), "--tolerance-mm", "50")
    print(out.stdout)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "replay outcome: success, success: True" in out.stdout


def test_the_operator_keeps_or_discards_each_episode(tmp_path):
    """--keep ask: after each episode the outcome (the sim's predicate) is shown and a y/n line decides."""
    launch, root = _launch_file(tmp_path), tmp_path / "asked"
    out = subprocess.run([sys.executable, "-m", "teleop.cli", "record", "--task", "pick_bottle", "--sim",
                          "--launch", str(launch), "--device", "scripted", "--episodes", "2", "--keep", "ask",
                          "--root", str(root)], cwd=REPO, env=ENV, input="n\ny\n", capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("keep it? [y/n]") == 2 and "(success: True)" in out.stdout
    assert "1 of 2 episodes kept" in out.stdout
    info = json.loads((root / "meta/info.json").read_text())
    assert info["total_episodes"] == 1
    session = json.loads(next((root / "meta/dv_sessions").glob("*.json")).read_text())
    assert session["episodes"]["0"]["seed"] == 1  # the kept one is the second episode, layout seed 1


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux for a real terminal")
def test_keyboard_teleop_in_a_terminal_records_the_keys_motion(tmp_path):
    """--device keyboard in a real terminal (tmux): held `w` moves the arm along +x through the envelope, enter
    ends the episode, `y` keeps it; the recorded actions move the target along +x and nothing else."""
    launch, root = _launch_file(tmp_path), tmp_path / "keys"
    session = f"teleop-test-{os.getpid()}"
    exit_file = tmp_path / "exit.txt"
    cmd = (f"cd {REPO} && MUJOCO_GL={ENV['MUJOCO_GL']} PYTHONPATH={REPO} {sys.executable} -m teleop.cli record "
           f"--task pick_bottle --sim --launch {launch} --device keyboard --episodes 1 --root {root}; "
           f"echo $? > {exit_file}; sleep 30")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "50", cmd], check=True)

    def screen() -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-S", "-200", "-t", session], capture_output=True,
                              text=True).stdout

    def wait_for(cond, what: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not cond():
            assert time.monotonic() < deadline, f"{what}; screen:\n{screen()}"
            time.sleep(0.2)

    try:
        wait_for(lambda: "step" in screen() and "episode      1/1" in screen(), "the episode never started")
        time.sleep(1.0)
        for _ in range(20):  # a held key: repeated presses, as a terminal's auto-repeat sends them
            subprocess.run(["tmux", "send-keys", "-t", session, "w"], check=True)
            time.sleep(0.05)
        time.sleep(0.5)
        subprocess.run(["tmux", "send-keys", "-t", session, "Enter"], check=True)
        wait_for(lambda: "keep it?" in screen(), "no keep question")
        subprocess.run(["tmux", "send-keys", "-t", session, "y"], check=True)
        wait_for(exit_file.exists, "dv-teleop did not exit")
        text = screen()
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    assert exit_file.read_text().strip() == "0" and "1 of 1 episodes kept" in text, text
    rows = pq.read_table(root / "data/chunk-000/file-000.parquet")
    target = np.array(rows.column("action.target").to_pylist())
    moved = target[-1, :3] - target[0, :3]
    assert moved[0] > 0.03 and abs(moved[1]) < 0.005 and abs(moved[2]) < 0.005, moved


def test_a_recalibrated_rig_resumes_and_each_session_keeps_its_calibration(tmp_path):
    """Resume identity is the robot and cameras, not the calibration (recalibrated hourly): a second session
    after a recalibration appends, and each session file records the calibration its episodes used."""
    launch, root = _launch_file(tmp_path), tmp_path / "recal"
    args = ["record", "--task", "pick_bottle", "--sim", "--device", "scripted", "--episodes", "1", "--keep", "all",
            "--root", str(root)]
    assert _teleop(*args, "--launch", str(launch)).returncode == 0
    data = yaml.safe_load(launch.read_text())
    data["calibration"] = {"T_base_cam_static": {"xyz": [1.0, 0.0, 0.5], "quat_xyzw": [0.0, 0.0, 0.0, 1.0],
                                                 "timestamp": "2026-11-22T00:00:00+00:00", "hash": "x"}}
    recalibrated = tmp_path / "recalibrated.yaml"
    recalibrated.write_text(yaml.safe_dump(data))
    out = _teleop(*args, "--launch", str(recalibrated), "--seed", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads((root / "meta/info.json").read_text())["total_episodes"] == 2 and verify(root).ok
    sessions = [json.loads(p.read_text()) for p in sorted((root / "meta/dv_sessions").glob("*.json"))]
    assert len({s["calibration_hash"] for s in sessions}) == 2
    assert sorted(k for s in sessions for k in s["episodes"]) == ["0", "1"]


def test_spacemouse_without_a_device_is_a_clear_error(tmp_path):
    """The real pyspacemouse + hidapi path on a machine with no SpaceMouse: exit 2 with what to check, nothing
    recorded, nothing moved."""
    out = _teleop("record", "--task", "pick_bottle", "--sim", "--launch", str(_launch_file(tmp_path)), "--device",
                  "spacemouse", "--episodes", "1", "--root", str(tmp_path / "ds"))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "no SpaceMouse could be opened" in " ".join(out.stdout.split())  # pyspacemouse and hidapi are installed
    info = tmp_path / "ds/meta/info.json"
    assert not info.exists() or json.loads(info.read_text())["total_episodes"] == 0
