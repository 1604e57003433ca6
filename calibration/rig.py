"""Hand-eye collection on the real rig: the opened workcell's FR3, camera and e-stop (`robot.workcell`, opened
by `dv-calib` from the launch file, `calibration.workcell`), the camera's intrinsics and the plan's safety
envelope, all handed to `calibration.collect`, the same collector the sim's `--render` path runs.

The operator puts the ChArUco board in view (on the table for the wrist camera, on the hand for the static
one) and jogs the arm to a start pose where the camera sees it; the poses are generated around that pose
(`poses_around`), the arm returns to it at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from calibration.charuco import BoardSpec, camera_matrix
from calibration.collect import (
    CALIBRATION_DYNAMICS,
    Collection,
    CollectionAborted,
    check_pose,
    collect,
    go_to,
    pivot_point,
    poses_around,
    wait_settled,
)
from calibration.handeye import CalibrationError, Mode, TooFewPosesError

if TYPE_CHECKING:
    from robot.estop import EStopListener
    from robot.workcell import Workcell

MODES: dict[str, Mode] = {"wrist": "eye_in_hand", "static": "eye_to_base"}
# the wrist D415's rough view axis in `ee` (mount CAD; the calibration measures the real one)
WRIST_VIEW_AXIS = np.array([0.34, 0.0, 0.94])
OPENCV_MODELS = ("brown_conrady", "none")  # librealsense models whose coefficients are OpenCV's (k1 k2 p1 p2 k3)


def lens_model(numbers: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(K, dist) from intrinsics numbers (a launch-file entry or a driver's factory values)."""
    K = camera_matrix(numbers["fx"], numbers["fy"], numbers["cx"], numbers["cy"])
    coeffs = np.asarray(numbers.get("coeffs") or [], float)
    model = numbers.get("model", "none")
    if model in OPENCV_MODELS or not np.any(coeffs):
        return K, np.pad(coeffs, (0, max(0, 5 - len(coeffs))))[:5] if model != "none" else np.zeros(5)
    raise CalibrationError(f"distortion model {model!r} with non-zero coefficients has no OpenCV equivalent here; "
                           "run `dv-calib intrinsics --charuco` to store Brown-Conrady intrinsics first")


def camera_numbers(config: Any, role: str, camera: Any) -> dict[str, Any]:
    """The launch file's `calibration.intrinsics.<role>` when present, else what the driver reports."""
    stored = config.calibration.intrinsics.get(role)
    if stored is not None:
        return stored.model_dump()
    factory = getattr(camera, "factory_intrinsics", None)
    values = factory() if factory is not None else camera.intrinsics
    return {k: getattr(values, k) for k in ("fx", "fy", "cx", "cy")} | {
        "model": getattr(values, "model", "none"), "coeffs": list(getattr(values, "coeffs", ()))}


def start_estop(cell: Workcell, wait_s: float, progress: Callable[[str], None]) -> EStopListener | None:
    """The workcell's e-stop listener when the launch file requires one (a real robot by default): wait up to
    `wait_s` for a console, then begin motion (ARMED -> RUN). None when the launch file requires none."""
    launch = cell.plan.launch
    if cell.estop is None or launch is None or not launch.estop_required:
        return None
    from robot.estop.listener import start_motion

    progress(f"waiting up to {wait_s:g} s for the e-stop console (`dv-estop --endpoint {launch.estop.endpoint}`)")
    state = start_motion(cell.estop, wait_s)
    if not state.may_move:
        raise CollectionAborted(f"e-stop {state.describe()}: no motion allowed; start the dv-estop console "
                                f"on {launch.estop.endpoint} and release any stop")
    return cell.estop


def collect_real(
    cell: Workcell,
    camera: str,
    n_poses: int,
    seed: int = 0,
    board_in_base: np.ndarray | None = None,
    dynamics: float = CALIBRATION_DYNAMICS,
    estop_wait_s: float = 30.0,
    spec: BoardSpec | None = None,
    progress: Callable[[str], None] = print,
) -> Collection:
    """Collect hand-eye observations for `camera` ('wrist' | 'static') on the opened real rig `cell`: its arm,
    its camera of that name and its e-stop (which must allow motion before anything moves, and guards every move
    through `collect`'s watchdog). The arm ends back at the start pose the operator jogged it to."""
    assert cell.plan.launch is not None  # a real rig is planned from its launch file (robot.workcell.plan_workcell)
    mode, safety, arm, cam = MODES[camera], cell.plan.safety, cell.arm, cell.cameras[camera]
    estop = start_estop(cell, estop_wait_s, progress)
    K, dist = lens_model(camera_numbers(cell.plan.launch, camera, cam))
    T_start = np.array(wait_settled(arm).T_base_ee)
    why = check_pose(T_start, safety)
    if why is not None:
        raise CalibrationError(f"the start pose is outside the safety envelope ({why}): jog the arm to a pose "
                               "inside it where the camera sees the board")
    pivot = pivot_point(T_start, mode, WRIST_VIEW_AXIS, board_in_base)
    poses = poses_around(T_start, n_poses, safety, pivot, seed=seed)
    if len(poses) < n_poses:
        progress(f"only {len(poses)} of {n_poses} poses fit in the envelope around the start pose")
    try:
        col = collect(arm, cam, K, spec or BoardSpec(), poses, mode, safety, dist=dist, dynamics=dynamics,
                      estop=estop, progress=progress)
    except TooFewPosesError:
        go_to(arm, T_start, safety, dynamics=dynamics, estop=estop, what="the start pose")
        raise
    go_to(arm, T_start, safety, dynamics=dynamics, estop=estop, what="the start pose")
    return col
