"""Calibration results in the launch file: the targeted, validated, atomic write; `dv-calib intrinsics` (a
librealsense playback for the factory path, the sim's ground truth, ChArUco); `dv-calib check` (ok, missing,
stale, off, and bad inputs as exit 2 with the reason)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from calibration.cli import main
from calibration.launch_file import LaunchWriteError, write_calibration
from calibration.record import numbers_hash, pose_from_numbers, pose_numbers, stamped
from robot.launch.config import load_launch_config

REPO = Path(__file__).resolve().parents[2]
SIM, REAL = REPO / "launch" / "sim.yaml", REPO / "launch" / "real_fr3.yaml"
POSE = stamped({"xyz": [-0.065, 0.0, -0.088], "quat_xyzw": [0.0, 0.0, 0.0, 1.0]}, method="refined",
               reprojection_px=0.3)


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    dst.write_bytes(src.read_bytes())
    return dst


def _outside_calibration(text: str) -> list[str]:
    """The file's lines minus the top-level `calibration:` line and the indented lines under it."""
    out, inside = [], False
    for line in text.splitlines(keepends=True):
        inside = line.startswith("calibration:") or (inside and line[:1].isspace() and bool(line.strip()))
        if not inside:
            out.append(line)
    return out


# ------------------------------------------------------------------------------------------------ writing


@pytest.mark.parametrize("src", [SIM, REAL])
def test_write_keeps_every_other_line_and_loads(tmp_path, src):
    path = _copy(src, tmp_path)
    write_calibration(path, {"T_ee_cam_wrist": POSE})
    text = path.read_text()
    assert _outside_calibration(text) == _outside_calibration(src.read_text())
    comments = [line[line.index("#"):] for line in src.read_text().splitlines() if "#" in line]
    assert comments and all(c in text for c in comments)  # the calibration line's own comment included
    cfg = load_launch_config(path)
    assert cfg.calibration.T_ee_cam_wrist.xyz == (-0.065, 0.0, -0.088)
    assert cfg.calibration.T_ee_cam_wrist.hash == POSE["hash"] and cfg.calibration.T_ee_cam_wrist.method == "refined"
    # a second write merges: the wrist entry stays, the static one and intrinsics join it
    intr = stamped({"width": 640, "height": 480, "fx": 615.0, "fy": 615.0, "cx": 320.0, "cy": 240.0,
                    "model": "none", "coeffs": [], "depth_scale_m": 0.001}, source="sim")
    write_calibration(path, {"T_base_cam_static": POSE, "intrinsics": {"wrist": intr}})
    write_calibration(path, {"intrinsics": {"static": intr}})
    cfg = load_launch_config(path)
    assert cfg.calibration.T_ee_cam_wrist.calibrated and cfg.calibration.T_base_cam_static.calibrated
    assert set(cfg.calibration.intrinsics) == {"static", "wrist"}
    assert _outside_calibration(path.read_text()) == _outside_calibration(src.read_text())
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_write_appends_a_missing_section(tmp_path):
    path = tmp_path / "no_calibration.yaml"
    original = "".join(line for line in SIM.read_text().splitlines(keepends=True)
                       if not line.startswith("calibration:"))
    path.write_text(original)
    write_calibration(path, {"T_ee_cam_wrist": POSE})
    assert path.read_text().startswith(original)
    assert load_launch_config(path).calibration.T_ee_cam_wrist.calibrated


@pytest.mark.parametrize(("update", "problem"), [
    ({"T_ee_cam_wrist": {**POSE, "quat_xyzw": [0, 0, 0, 0.5]}}, "calibration.T_ee_cam_wrist.quat_xyzw: quaternion"),
    ({"T_ee_cam_wrist": {**POSE, "timestamp": "last tuesday"}}, "timestamp 'last tuesday' is not ISO 8601"),
    ({"intrinsics": {"wrist": {"width": 640, "height": 480, "fx": -1, "fy": 600, "cx": 320, "cy": 240,
                               "source": "sim", "timestamp": POSE["timestamp"]}}}, "intrinsics.wrist.fx"),
    ({"intrinsics": {"wrist": {"width": 640, "height": 480, "fx": 600, "fy": 600, "cx": 900, "cy": 240,
                               "source": "sim", "timestamp": POSE["timestamp"]}}}, "principal point"),
    ({"T_ee_cam_wrist": {**POSE, "colour": "red"}}, "colour: Extra inputs are not permitted"),
])
def test_failed_validation_leaves_the_file_untouched(tmp_path, update, problem):
    path = _copy(REAL, tmp_path)
    with pytest.raises(LaunchWriteError, match="result would not load") as err:
        write_calibration(path, update)
    assert problem in str(err.value)
    assert path.read_bytes() == REAL.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == [REAL.name]  # no temp file left behind


def test_a_failed_write_leaves_the_file_untouched(tmp_path, monkeypatch):
    import calibration.launch_file as lf

    path = _copy(REAL, tmp_path)

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lf.os, "replace", full_disk)
    with pytest.raises(LaunchWriteError, match="cannot write .*No space left on device .the file is unchanged"):
        write_calibration(path, {"T_ee_cam_wrist": POSE})
    assert path.read_bytes() == REAL.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == [REAL.name]


def test_invalid_or_missing_file_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SIM.read_text().replace("episodes: 3", "episodes: 0"))
    before = bad.read_bytes()
    with pytest.raises(LaunchWriteError, match="episodes"):
        write_calibration(bad, {"T_ee_cam_wrist": POSE})
    assert bad.read_bytes() == before
    with pytest.raises(LaunchWriteError, match="cannot read"):
        write_calibration(tmp_path / "nope.yaml", {"T_ee_cam_wrist": POSE})


def test_a_hand_eye_entry_measured_under_an_override_records_it(tmp_path):
    """A real rig calibrated under `estop.allow_real_robot_without_estop`: the entry dv-calib writes names the
    override (the run's own record), and the launch file still loads; without overrides the entry has none."""
    from types import SimpleNamespace

    import numpy as np

    from calibration.cli import overrides, result_fragment

    data = yaml.safe_load(REAL.read_text())
    data["estop"].update(required=False, console=False, allow_real_robot_without_estop=True)
    path = tmp_path / "real.yaml"
    path.write_text(yaml.safe_dump(data))
    notes = overrides(load_launch_config(path))
    assert notes == ["OVERRIDE estop.allow_real_robot_without_estop: the real robot moves with no software e-stop"]
    result = SimpleNamespace(best=SimpleNamespace(T=np.eye(4), method="refined", reproj_px=0.25))
    write_calibration(path, result_fragment("static", result, notes)["calibration"])
    assert load_launch_config(path).calibration.T_base_cam_static.overrides == notes
    assert "overrides" not in result_fragment("static", result, overrides(load_launch_config(REAL)))["calibration"][
        "T_base_cam_static"]


# ------------------------------------------------------------------------------------------------ intrinsics


def test_realsense_factory_intrinsics_through_playback(tmp_path):
    pytest.importorskip("pyrealsense2")
    from tests.robot.test_cameras import DEPTH_UNIT_M, H, W, record_d415_like

    recording = tmp_path / "d415.db3"
    record_d415_like(recording)
    launch = tmp_path / "real.yaml"
    launch.write_text(REAL.read_text()
                      .replace('serial: "000000000000"', f"playback_file: {recording}")
                      .replace('serial: "111111111111"', f"playback_file: {recording}, depth: false"))
    assert main(["intrinsics", "--launch", str(launch), "--write-launch", str(launch)]) == 0
    intr = load_launch_config(launch).calibration.intrinsics
    static, wrist = intr["static"], intr["wrist"]
    assert (static.width, static.height, static.fx, static.fy, static.cx, static.cy) == (W, H, 615.0, 615.0,
                                                                                            W / 2, H / 2)
    assert static.model == "brown_conrady" and static.coeffs == [0.0] * 5 and static.source == "factory"
    assert static.depth_scale_m == pytest.approx(DEPTH_UNIT_M)
    assert wrist.depth_scale_m is None  # depth off in its config: no depth sensor opened
    assert static.hash and datetime.fromisoformat(static.timestamp).tzinfo is not None
    # --sim is refused with a real rig's file, without touching it
    before = launch.read_bytes()
    assert main(["intrinsics", "--launch", str(launch), "--sim", "--write-launch", str(launch)]) == 2
    assert launch.read_bytes() == before


def test_realsense_charuco_without_a_board_is_a_clear_error(tmp_path, capsys):
    pytest.importorskip("pyrealsense2")
    from tests.robot.test_cameras import record_d415_like

    recording = tmp_path / "d415.db3"
    record_d415_like(recording)
    launch = tmp_path / "real.yaml"
    launch.write_text(REAL.read_text().replace('serial: "000000000000"', f"playback_file: {recording}"))
    assert main(["intrinsics", "--launch", str(launch), "--camera", "static", "--charuco", "--views", "6"]) == 1
    assert "ChArUco board was not visible in any of" in capsys.readouterr().err


def test_sim_intrinsics_and_charuco_recovers_the_truth(tmp_path, capsys):
    path = _copy(SIM, tmp_path)
    assert main(["intrinsics", "--launch", str(path), "--write-launch", str(path)]) == 0
    truth = load_launch_config(path).calibration.intrinsics
    assert truth["wrist"].source == "sim" and truth["wrist"].depth_scale_m == 0.001
    assert truth["static"].cx == pytest.approx(319.5) and truth["static"].fx > 0
    assert main(["intrinsics", "--launch", str(path), "--camera", "static", "--charuco",
                 "--write-launch", str(path)]) == 0
    got, t = load_launch_config(path).calibration.intrinsics["static"], truth["static"]
    print(f"charuco vs truth: fx {got.fx:.2f}/{t.fx:.2f} fy {got.fy:.2f}/{t.fy:.2f} cx {got.cx:.2f}/{t.cx:.2f} "
          f"cy {got.cy:.2f}/{t.cy:.2f} rms {got.reprojection_px} px")
    assert got.source == "charuco" and got.reprojection_px < 0.4  # 0.2 px noise per axis
    assert abs(got.fx - t.fx) < 2.0 and abs(got.fy - t.fy) < 2.0
    assert abs(got.cx - t.cx) < 3.0 and abs(got.cy - t.cy) < 3.0
    assert load_launch_config(path).calibration.intrinsics["wrist"].source == "sim"  # the other role kept


# ------------------------------------------------------------------------------------------------ check


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> Path:
    """A sim launch file with the wrist camera calibrated by `dv-calib handeye` itself."""
    path = _fast_sim(tmp_path_factory.mktemp("check"))
    assert main(["handeye", "--camera", "wrist", "--poses", "8", "--dynamics", "0.4", "--write-launch", str(path)]) == 0
    return path


def _fast_sim(tmp_path: Path) -> Path:
    """launch/sim.yaml with a dynamics ceiling of 0.4 instead of 0.1: dv-calib caps its moves at the file's
    safety.relative_dynamics_factor, and in sim the bring-up value only costs test time."""
    path = tmp_path / "sim_fast.yaml"
    path.write_text(re.sub(r"^safety:.*$", r"\g<0>\n  relative_dynamics_factor: 0.4", SIM.read_text(), count=1,
                           flags=re.M))
    assert load_launch_config(path).safety.relative_dynamics_factor == 0.4
    return path


def _with_wrist(src: Path, dst: Path, **changes) -> Path:
    entry = yaml.safe_load(src.read_text())["calibration"]["T_ee_cam_wrist"]
    entry.update(changes)
    entry["hash"] = numbers_hash({"xyz": entry["xyz"], "quat_xyzw": entry["quat_xyzw"]})
    dst.write_bytes(src.read_bytes())
    write_calibration(dst, {"T_ee_cam_wrist": entry})
    return dst


def test_check_fresh_and_consistent(calibrated, capsys):
    assert main(["check", "--launch", str(calibrated), "--camera", "wrist", "--dynamics", "0.4"]) == 0
    err = capsys.readouterr().err
    assert "OK: re-measured T_ee_cam_wrist differs by" in err
    print(err)


def test_check_off(calibrated, tmp_path, capsys):
    stored = yaml.safe_load(calibrated.read_text())["calibration"]["T_ee_cam_wrist"]
    T = pose_from_numbers(stored["xyz"], stored["quat_xyzw"])
    T[:3, 3] += [0.005, 0.0, 0.0]  # a camera bumped by 5 mm
    path = _with_wrist(calibrated, tmp_path / "off.yaml", **pose_numbers(T))
    assert main(["check", "--launch", str(path), "--camera", "wrist", "--dynamics", "0.4"]) == 1
    err = capsys.readouterr().err
    assert re.search(r"OFF: T_ee_cam_wrist is off: re-measured T_ee_cam_wrist differs by [45]\.\d\d mm", err)
    print(err)


def test_check_stale_missing_and_tampered(calibrated, tmp_path, capsys):
    old = (datetime.now(UTC) - timedelta(hours=3)).isoformat(timespec="seconds")
    path = _with_wrist(calibrated, tmp_path / "stale.yaml", timestamp=old)
    assert main(["check", "--launch", str(path), "--camera", "wrist"]) == 1
    assert "STALE: T_ee_cam_wrist is stale: calibrated 3.0 h ago" in capsys.readouterr().err
    assert main(["check", "--launch", str(path), "--camera", "wrist", "--max-age-h", "4", "--age-only"]) == 0
    assert main(["check", "--launch", str(calibrated), "--camera", "static"]) == 1
    assert "MISSING: T_base_cam_static is not calibrated" in capsys.readouterr().err
    tampered = tmp_path / "tampered.yaml"
    tampered.write_bytes(calibrated.read_bytes())
    entry = yaml.safe_load(calibrated.read_text())["calibration"]["T_ee_cam_wrist"]
    write_calibration(tampered, {"T_ee_cam_wrist": {**entry, "hash": "0000"}})
    assert main(["check", "--launch", str(tampered), "--camera", "wrist", "--age-only"]) == 1
    assert "does not match its hash 0000" in capsys.readouterr().err


def test_check_bad_inputs(tmp_path, capsys):
    assert main(["check", "--launch", str(tmp_path / "missing.yaml"), "--camera", "wrist"]) == 2
    assert "missing.yaml: cannot read" in capsys.readouterr().err
    bad = tmp_path / "bad_ts.yaml"
    bad.write_text(SIM.read_text().replace(
        "calibration: {}", "calibration:\n  T_ee_cam_wrist: {xyz: [0, 0, 0.1], quat_xyzw: [0, 0, 0, 1], "
        "timestamp: yesterday}\n"))
    assert main(["check", "--launch", str(bad), "--camera", "wrist"]) == 2
    assert "calibration.T_ee_cam_wrist.timestamp: timestamp 'yesterday' is not ISO 8601" in capsys.readouterr().err
    # a real rig's file: nothing stored yet, so MISSING before any re-measurement would move the arm
    assert main(["check", "--launch", str(REAL), "--camera", "wrist"]) == 1
    assert "MISSING: T_ee_cam_wrist is not calibrated" in capsys.readouterr().err
    assert main(["check", "--launch", str(REAL), "--camera", "wrist", "--age-only"]) == 1
    assert main(["check", "--launch", str(REAL), "--camera", "wrist", "--sim"]) == 2
    assert "--sim needs a sim launch file" in capsys.readouterr().err
    assert main(["check", "--launch", str(SIM), "--camera", "wrist", "--tol-mm", "-1"]) == 2
    assert main(["handeye", "--camera", "wrist"]) == 2
    assert "name the rig with --launch FILE" in capsys.readouterr().err
    assert main(["handeye", "--camera", "wrist", "--launch", str(REAL), "--sim"]) == 2
    assert "--sim needs a sim launch file" in capsys.readouterr().err
    assert main(["handeye", "--camera", "wrist", "--sim", "--dynamics", "1.5"]) == 2
    assert "--dynamics must be" in capsys.readouterr().err
    fast = _fast_sim(tmp_path)
    assert main(["handeye", "--camera", "wrist", "--launch", str(fast), "--poses", "3", "--dynamics", "0.4"]) == 1
    assert "calibration refused: 3 usable poses, need at least 5: 3 usable of 3 poses" in capsys.readouterr().err
    assert main(["intrinsics", "--launch", str(SIM), "--camera", "wrist", "--out", str(tmp_path / "no" / "x")]) == 2
    assert "cannot write --out" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["check", "--launch", str(SIM), "--camera", "elbow"])
    assert e.value.code == 2
