"""The hand-eye collector (`calibration.collect`) with a fake arm and camera: what the real rig's collection does
on a refused pose, an arm error, frames without the board, too few poses, an e-stop latch, the dynamics cap
and settling. The same collector runs the sim's `--render` path (tests/calibration/test_handeye.py)."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from calibration.charuco import BoardSpec, camera_matrix
from calibration.collect import CollectionAborted, check_pose, collect, pivot_point, poses_around
from calibration.handeye import TooFewPosesError
from calibration.poses import TOOL_DOWN
from robot.geometry import make_T
from robot.safety import SafetyConfig

SAFETY = SafetyConfig()
K = camera_matrix(600.0, 600.0, 319.5, 239.5)
SPEC = BoardSpec()


def _board_image() -> np.ndarray:
    img = np.full((480, 640, 3), 255, np.uint8)
    board = SPEC.image(60)
    img[40:40 + board.shape[0], 60:60 + board.shape[1]] = board[..., None]
    return img


BOARD, BLANK = _board_image(), np.full((480, 640, 3), 128, np.uint8)


def _poses(n: int) -> list[np.ndarray]:
    """Tool-down poses inside the default workspace box, each turned a little about a different axis."""
    axes = np.eye(3)
    return [make_T(Rotation.from_rotvec(axes[k % 3] * 0.15).as_matrix() @ TOOL_DOWN, [0.40 + 0.02 * k, 0.0, 0.30])
            for k in range(n)]


class FakeArm:
    """Moves instantly; its joints keep changing for `settle_reads` reads after each move; `errors` maps a move
    number (1-based) to the error `poll_error` reports once that move has been sent."""

    def __init__(self, settle_reads: int = 0, errors: dict[int, object] | None = None, ceiling: float = 1.0) -> None:
        self.config = SimpleNamespace(relative_dynamics_factor=ceiling)
        self.T, self.q = make_T(TOOL_DOWN, [0.45, 0.0, 0.35]), np.zeros(7)
        self.moves: list[tuple[np.ndarray, float]] = []
        self.stops, self.settle_reads, self._unsettled = 0, settle_reads, 0
        self.errors = errors or {}
        self.latched: str | None = None
        self.stop_times: list[int] = []

    @property
    def settled(self) -> bool:
        return self._unsettled == 0

    def read_state(self) -> SimpleNamespace:
        if self._unsettled:
            self._unsettled -= 1
            self.q = self.q + 1e-3
        return SimpleNamespace(T_base_ee=self.T.copy(), joint_positions=self.q.copy())

    def move_to(self, T: np.ndarray, asynchronous: bool = True, dynamics_factor: float = 1.0) -> bool:
        if self.latched is not None:  # the real arm's interlock
            return False
        self.moves.append((T, dynamics_factor))
        self.T, self._unsettled = np.array(T), self.settle_reads
        return True

    def wait(self, timeout_s: float) -> bool:
        return True

    def stop(self) -> bool:
        self.stops += 1
        self.stop_times.append(time.monotonic_ns())
        return True

    def latch_stop(self, reason: str) -> None:
        self.latched = self.latched or reason

    def poll_error(self) -> object | None:
        return self.errors.pop(len(self.moves), None)


class FakeCamera:
    """A new frame per read (30 fps), stamped now; `visible[i]` says whether frames at the i-th pose show the board."""

    def __init__(self, arm: FakeArm, visible: list[bool] | None = None) -> None:
        self.arm, self.visible, self.reads, self.settled_at_read = arm, visible, 0, []

    def read(self, timeout_s: float = 0.2) -> SimpleNamespace:
        time.sleep(1 / 30)
        seen = True if self.visible is None else self.visible[len(self.arm.moves) - 1]
        self.reads += 1
        self.settled_at_read.append(self.arm.settled)
        return SimpleNamespace(color=BOARD if seen else BLANK, capture_ns=time.monotonic_ns())


def _collect(arm, camera, poses, **kw):
    kw.setdefault("safety", SAFETY)
    return collect(arm, camera, K, SPEC, poses, "eye_in_hand", **kw)


def test_collects_settled_frames_at_a_capped_dynamics_factor():
    arm = FakeArm(settle_reads=4, ceiling=0.5)
    cam = FakeCamera(arm)
    col = _collect(arm, cam, _poses(6), dynamics=0.3)
    assert len(col.observations) == 6 and col.refused == [] and col.not_visible == 0
    assert all(cam.settled_at_read), "a frame was read while the joints were still moving"
    # effective factor = the arm's ceiling x the motion's factor, never above safety.relative_dynamics_factor
    assert all(0.5 * f <= SAFETY.relative_dynamics_factor + 1e-12 for _, f in arm.moves)
    assert arm.stops == 0


def test_pose_outside_the_envelope_is_refused_and_never_sent():
    poses = _poses(6)
    outside_box = make_T(TOOL_DOWN, [0.95, 0.0, 0.30])
    outside_cone = make_T(Rotation.from_euler("x", 60, degrees=True).as_matrix() @ TOOL_DOWN, [0.45, 0.0, 0.3])
    arm = FakeArm()
    col = _collect(arm, FakeCamera(arm), [poses[0], outside_box, *poses[1:3], outside_cone, *poses[3:]])
    assert len(col.refused) == 2 and len(col.observations) == 6 and col.planned == 8
    assert "pose 2/8" in col.refused[0] and "workspace box" in col.refused[0]
    assert "pose 5/8" in col.refused[1] and "orientation cone" in col.refused[1]
    sent = [T for T, _ in arm.moves]
    assert len(sent) == 6 and not any(np.allclose(T, bad) for T in sent for bad in (outside_box, outside_cone))
    assert check_pose(outside_box, SAFETY) and check_pose(poses[0], SAFETY) is None


def test_arm_error_mid_collection_aborts_with_a_clear_message():
    error = SimpleNamespace(kind="ControlException", message="cartesian_reflex", during="motion")
    arm = FakeArm(errors={2: error})
    with pytest.raises(CollectionAborted, match=r"pose 2/5: arm error ControlException: cartesian_reflex .*"
                                                r"the arm was stopped and nothing was calibrated"):
        _collect(arm, FakeCamera(arm), _poses(5))
    assert len(arm.moves) == 2 and arm.stops == 1


def test_frames_without_the_board_are_counted_and_too_few_poses_refused():
    arm = FakeArm()
    cam = FakeCamera(arm, visible=[True, False, True, False, False, True])
    with pytest.raises(TooFewPosesError, match=r"3 usable poses, need at least 5: .*3 without the board in view"):
        _collect(arm, cam, _poses(6))
    arm = FakeArm()
    col = _collect(arm, FakeCamera(arm, visible=[True, False, True, True, True, True, True]), _poses(7))
    assert col.not_visible == 1 and len(col.observations) == 6 and col.reached == 7


def test_estop_latch_stops_the_collection():
    """E1 during calibration: the collector's e-stop watchdog checks the listener at 100 Hz on its own thread; the
    check that reports STOPPED latches the arm's interlock and stops it ≤ 10 ms later (mid-move, not at the next
    pose), the collection aborts naming the e-stop, and no pose is sent after it."""

    class Latching:
        def __init__(self, after: int) -> None:
            self.calls, self.after, self.stopped_ns = 0, after, 0

        def check(self, now_ns: int | None = None) -> SimpleNamespace:
            self.calls += 1
            if self.calls <= self.after:
                return SimpleNamespace(may_move=True, describe=lambda: "RUN")
            self.stopped_ns = self.stopped_ns or time.monotonic_ns()
            return SimpleNamespace(may_move=False, describe=lambda: "STOPPED (stop_command)")

    arm = FakeArm()
    estop = Latching(after=4)
    with pytest.raises(CollectionAborted, match=r"e-stop STOPPED \(stop_command\)"):
        _collect(arm, FakeCamera(arm), _poses(6), estop=estop)
    moved = len(arm.moves)
    assert 1 <= moved < 6 and arm.stops == 1
    assert arm.latched and (arm.stop_times[0] - estop.stopped_ns) / 1e6 <= 10
    # not in RUN (waiting for a console, or armed without a start): no move at all
    arm = FakeArm()
    with pytest.raises(CollectionAborted, match="pose 1/6: e-stop"):
        _collect(arm, FakeCamera(arm), _poses(6), estop=Latching(after=0))
    assert arm.moves == []


def test_poses_around_the_start_pose_stay_in_the_envelope_and_spread():
    start = make_T(Rotation.from_euler("y", 15, degrees=True).as_matrix() @ TOOL_DOWN, [0.45, 0.0, 0.35])
    pivot = pivot_point(start, "eye_in_hand", np.array([0.34, 0.0, 0.94]))
    assert np.linalg.norm(pivot - start[:3, 3]) == pytest.approx(0.35)
    poses = poses_around(start, 10, SAFETY, pivot, seed=0)
    assert len(poses) == 10 and all(check_pose(T, SAFETY) is None for T in poses)
    # the pivot (where the camera looks) stays in front of the camera: its offset in ee barely moves
    local = [np.linalg.solve(T, np.append(pivot, 1))[:3] for T in poses]
    ref = np.linalg.solve(start, np.append(pivot, 1))[:3]
    assert max(np.linalg.norm(p - ref) for p in local) < 0.09  # the random offset (<= 0.05 m per axis) only
    axes = [Rotation.from_matrix(b[:3, :3] @ a[:3, :3].T).as_rotvec() for a, b in zip(poses, poses[1:], strict=False)]
    axes = np.array([a / np.linalg.norm(a) for a in axes])
    assert np.linalg.svd(axes, compute_uv=False)[1] > 0.3  # relative rotation axes not all parallel


# ------------------------------------------------------------------------------------------------ real rig path
# `dv-calib handeye/check --launch <real rig>` with the FR3 and the D415 replaced by fakes: a pinhole camera on
# the wrist that warps the printed board into its image from the arm's settled pose, so the whole real path
# (launch file, capped arm config, factory intrinsics, poses around the start pose, collector, hand-eye, write,
# re-measure) runs here; only the hardware does not.

X_TRUE = make_T(Rotation.from_euler("xyz", [-20, 0, -90], degrees=True).as_matrix(), [-0.065, 0.0, -0.088])
BOARD_CENTRE = np.array([0.41, 0.10, 0.001])
T_BASE_BOARD = make_T(Rotation.from_euler("x", 180, degrees=True).as_matrix(),
                      BOARD_CENTRE + [-0.14, 0.10, 0.0])  # print up: board x = base x, board y = -base y
START = make_T(TOOL_DOWN, [0.30, 0.10, 0.40])
PX_PER_SQUARE = 100
# static: the board on the hand (print facing ee +y, as in the sim), the camera front-right and high, aimed at it
T_EE_BOARD = make_T(Rotation.from_euler("x", 90, degrees=True).as_matrix(), [-0.14, 0.11, -0.02])
START_STATIC = make_T(TOOL_DOWN, [0.45, 0.0, 0.35])


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross([0.0, 0.0, -1.0], z)
    x /= np.linalg.norm(x)
    return make_T(np.column_stack([x, np.cross(z, x), z]), eye)


X_STATIC = _look_at(np.array([0.85, -0.8, 0.75]), (START_STATIC @ T_EE_BOARD @ [0.14, 0.10, 0, 1])[:3])


class RigArm(FakeArm):
    """`robot.arm.Arm(config)` as a context manager, starting at `START` (where the operator jogged it)."""

    built: list[RigArm] = []

    start = START

    def __init__(self, config) -> None:
        super().__init__(settle_reads=2)
        self.config, self.T = config, self.start.copy()
        RigArm.built.append(self)

    def __enter__(self) -> RigArm:
        return self

    def __exit__(self, *exc) -> None:
        pass


class RigGripper:
    """`robot.arm.Gripper(config)`: the workcell opens the hand too; a calibration never moves it."""

    def __init__(self, config) -> None:
        self.config = config

    def __enter__(self) -> RigGripper:
        return self

    def __exit__(self, *exc) -> None:
        pass


class RigCamera:
    """`make_camera(config)`: a D415 as a pinhole (wrist: at X_TRUE on the hand; static: at X_STATIC, the board
    on the hand), rendering the board at the pose of the arm the workcell opened after it."""

    def __init__(self, config) -> None:
        self.config, self.name, self.role = config, config.name, config.name
        self.board = SPEC.image(PX_PER_SQUARE)

    @property
    def arm(self) -> RigArm:
        return RigArm.built[-1]

    def connect(self) -> None:
        pass

    def disconnect(self) -> None:
        pass

    def factory_intrinsics(self) -> SimpleNamespace:
        return SimpleNamespace(fx=K[0, 0], fy=K[1, 1], cx=K[0, 2], cy=K[1, 2], model="brown_conrady",
                               coeffs=(0.0,) * 5)

    def read(self, timeout_s: float = 0.2) -> SimpleNamespace:
        import cv2

        time.sleep(1 / 30)
        if self.role == "wrist":
            T_cam_board = np.linalg.inv(self.arm.T @ X_TRUE) @ T_BASE_BOARD
        else:
            T_cam_board = np.linalg.inv(X_STATIC) @ self.arm.T @ T_EE_BOARD
        s = SPEC.square_m / PX_PER_SQUARE  # metres per board-image pixel (pixel centres at +0.5)
        H = K @ T_cam_board[:3][:, [0, 1, 3]] @ np.array([[s, 0, 0.5 * s], [0, s, 0.5 * s], [0, 0, 1]])
        gray = cv2.warpPerspective(self.board, H, (640, 480), flags=cv2.INTER_AREA, borderValue=255)
        return SimpleNamespace(color=np.repeat(gray[..., None], 3, axis=2), capture_ns=time.monotonic_ns())


@pytest.fixture(params=["wrist", "static"])
def rig(request, tmp_path, monkeypatch):
    """A copy of launch/real_fr3.yaml (e-stop on a free port) with the arm and cameras faked."""
    import robot.arm
    import robot.cameras

    monkeypatch.setattr(robot.arm, "Arm", RigArm)
    monkeypatch.setattr(robot.arm, "Gripper", RigGripper)
    monkeypatch.setattr(robot.cameras, "make_camera", RigCamera)
    monkeypatch.setattr(RigArm, "start", START if request.param == "wrist" else START_STATIC)
    RigArm.built.clear()
    src = (Path(__file__).resolve().parents[2] / "launch" / "real_fr3.yaml").read_text()
    path = tmp_path / "rig.yaml"
    path.write_text(src.replace("endpoint: tcp://127.0.0.1:5560", "endpoint: tcp://127.0.0.1:*")
                    .replace("endpoint: tcp://127.0.0.1:5561", "endpoint: tcp://127.0.0.1:*"))
    return request.param, path


def test_real_rig_handeye_and_check_through_the_cli(rig, tmp_path, monkeypatch, capsys):
    from calibration import rig as rig_module
    from calibration.cli import main
    from calibration.record import pose_from_numbers
    from robot.geometry import pose_error
    from robot.launch.config import load_launch_config

    camera, rig = rig
    monkeypatch.setattr(rig_module, "start_estop", lambda cell, wait_s, progress: None)
    args = ["--camera", camera, "--poses", "8"]
    if camera == "wrist":
        args += ["--board-in-base", ",".join(map(str, BOARD_CENTRE))]
    assert main(["handeye", "--launch", str(rig), "--write-launch", str(rig), *args]) == 0, capsys.readouterr().err
    arm = RigArm.built[-1]
    safety = load_launch_config(rig).safety
    assert arm.config.relative_dynamics_factor <= safety.relative_dynamics_factor
    assert all(check_pose(T, safety) is None for T, _ in arm.moves)
    assert np.allclose(arm.moves[-1][0], RigArm.start)  # back where the operator left it
    calibration = load_launch_config(rig).calibration
    stored = calibration.T_ee_cam_wrist if camera == "wrist" else calibration.T_base_cam_static
    dt, dr = pose_error(pose_from_numbers(stored.xyz, stored.quat_xyzw), X_TRUE if camera == "wrist" else X_STATIC)
    err = capsys.readouterr().err
    with capsys.disabled():
        print(f"{err}stored {camera} extrinsic vs the fake mount: {dt * 1e3:.2f} mm {dr:.3f} deg")
    assert "8 usable of 8 poses" in err and dt < 2e-3 and dr < 0.5, (dt, dr)
    assert main(["check", "--launch", str(rig), "--seed", "1", *args]) == 0
    err = capsys.readouterr().err
    assert "OK: re-measured T_" in err
    with capsys.disabled():
        print(err.splitlines()[-1])


def test_real_rig_waits_for_the_estop_console(rig):
    from contextlib import ExitStack

    from calibration.rig import collect_real
    from calibration.workcell import calibration_plan
    from robot.workcell import open_workcell

    camera, rig = rig
    plan = calibration_plan(rig, [camera])
    assert plan.launch is not None and plan.launch.estop_required
    with ExitStack() as stack:
        cell = open_workcell(plan, stack)  # connects the arm (moves nothing), binds the e-stop listener
        assert cell.estop is not None and [c.name for c in plan.cameras] == [camera]
        with pytest.raises(CollectionAborted, match="e-stop WAITING: no motion allowed; start the dv-estop console"):
            collect_real(cell, camera, 6, estop_wait_s=0.2, progress=lambda m: None)
    assert [arm.moves for arm in RigArm.built] == [[]]  # without a console the arm was never commanded to move
    assert np.allclose(RigArm.built[0].T, RigArm.start)


def test_the_calibration_plan_holds_one_camera_and_clamps_the_arm_ceiling(tmp_path):
    """`dv-calib` plans its rig as a workcell with only the camera it calibrates, and clamps an arm dynamics ceiling
    above the safety one (which `open_workcell` refuses for a run) instead of refusing it."""
    import yaml

    from calibration.workcell import calibration_plan
    from robot.errors import UsageError

    data = yaml.safe_load((Path(__file__).resolve().parents[2] / "launch" / "real_fr3.yaml").read_text())
    data["robot"]["arm"]["relative_dynamics_factor"] = 0.3
    path = tmp_path / "fast_arm.yaml"
    path.write_text(yaml.safe_dump(data))
    plan = calibration_plan(path, ["wrist"])
    assert not plan.sim and [c.name for c in plan.cameras] == ["wrist"]
    assert plan.launch is not None and plan.launch.robot.arm.relative_dynamics_factor == 0.1
    assert plan.launch.safety.relative_dynamics_factor == plan.safety.relative_dynamics_factor == 0.1
    assert [c.name for c in calibration_plan(path, ["static", "wrist"]).cameras] == ["static", "wrist"]
    with pytest.raises(UsageError, match="no camera named 'side' in cameras"):
        calibration_plan(path, ["side"])
