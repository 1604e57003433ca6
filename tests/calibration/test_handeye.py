"""Hand-eye calibration: every method on synthetic data, the clear errors, and accuracy in the sim workcell."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from calibration.charuco import BoardSpec, board_pose, camera_matrix, detect, synthetic_observation
from calibration.handeye import (
    METHODS,
    BoardNotVisibleError,
    DegenerateMotionError,
    HandEyeSample,
    TooFewPosesError,
    calibrate,
)
from calibration.poses import generate_poses
from robot.geometry import inv_T, make_T, pose_error
from robot.safety import SafetyConfig

K = camera_matrix(615.57, 615.57, 319.5, 239.5)
SIZE = (640, 480)
X_WRIST = make_T(Rotation.from_euler("xyz", [-20, 0, -90], degrees=True).as_matrix(), [-0.065, 0.0, -0.088])
T_BASE_BOARD = make_T(np.eye(3), [0.45, -0.14, 0.0])


def _eye_in_hand_obs(poses, X=X_WRIST, noise=0.2, seed=1):
    rng = np.random.default_rng(seed)
    obs = []
    for T in poses:
        T_cam_board = inv_T(T @ X) @ T_BASE_BOARD
        try:
            o, i = synthetic_observation(T_cam_board, BoardSpec(), K, SIZE, noise, rng)
        except BoardNotVisibleError:
            continue
        obs.append(HandEyeSample(T, o, i, board_pose(o, i, K)))
    return obs


def _wrist_poses(n=20, seed=0):
    return generate_poses(n, np.array([0.55, 0, 0]), np.array([0.34, 0, 0.94]), [0.3, -0.2, 0.3], [0.55, 0.2, 0.5],
                          seed=seed)


def test_camera_matches_X():
    """The camera axis of X_WRIST is the one the pose generator aims (sanity of the fixture)."""
    assert np.allclose(X_WRIST[:3, 2], [0.342, 0, 0.94], atol=1e-3)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_eye_in_hand_synthetic(method):
    obs = _eye_in_hand_obs(_wrist_poses())
    assert len(obs) >= 15
    r = calibrate(obs, "eye_in_hand", K, methods=[method], refine=False)
    dt, dr = pose_error(r.methods[method].T, X_WRIST)
    assert dt < 3e-3 and dr < 0.5, (method, dt, dr)
    assert r.methods[method].reproj_px < 1.0


@pytest.mark.parametrize("method", METHODS)
def test_every_method_eye_to_base_synthetic_noise_free(method):
    X = make_T(Rotation.from_euler("xyz", [-120, 10, 30], degrees=True).as_matrix(), [0.85, -0.8, 0.75])
    T_ee_board = make_T(Rotation.from_euler("x", -90, degrees=True).as_matrix(), [-0.12, 0.06, 0.08])
    poses = generate_poses(15, X[:3, 3], T_ee_board[:3, 2], [0.35, -0.2, 0.25], [0.6, 0.15, 0.5], seed=3)
    obs = []
    for T in poses:
        T_cam_board = inv_T(X) @ T @ T_ee_board
        try:
            o, i = synthetic_observation(T_cam_board, BoardSpec(), K, SIZE, 0.0)
        except BoardNotVisibleError:
            continue
        obs.append(HandEyeSample(T, o, i, board_pose(o, i, K)))
    assert len(obs) >= 10
    r = calibrate(obs, "eye_to_base", K, methods=[method])
    for res in r.methods.values():
        dt, dr = pose_error(res.T, X)
        assert dt < 1e-3 and dr < 0.05, (res.method, dt, dr)


def test_refined_beats_closed_form_with_noise():
    obs = _eye_in_hand_obs(_wrist_poses(), noise=0.3)
    r = calibrate(obs, "eye_in_hand", K)
    dt, dr = pose_error(r.methods["refined"].T, X_WRIST)
    assert dt < 1e-3 and dr < 0.1
    assert r.best.reproj_px <= min(m.reproj_px for m in r.methods.values())


def test_no_board_visible():
    with pytest.raises(BoardNotVisibleError, match="not detected in any pose"):
        calibrate([], "eye_in_hand", K)
    with pytest.raises(BoardNotVisibleError, match="not visible"):
        detect(np.full((480, 640, 3), 128, np.uint8), BoardSpec())
    away = make_T(np.eye(3), [0, 0, -1.0])  # behind the camera
    with pytest.raises(BoardNotVisibleError):
        synthetic_observation(away, BoardSpec(), K, SIZE)


def test_detects_rendered_board():
    spec = BoardSpec()
    img = np.full((480, 640), 255, np.uint8)
    board = spec.image(60)
    img[40:40 + board.shape[0], 60:60 + board.shape[1]] = board
    obj, uv = detect(img, spec)
    assert len(obj) == (spec.squares_x - 1) * (spec.squares_y - 1)
    T = board_pose(obj, uv, K)
    assert T[2, 3] > 0


def test_too_few_poses():
    obs = _eye_in_hand_obs(_wrist_poses())[:4]
    with pytest.raises(TooFewPosesError, match="need at least 5"):
        calibrate(obs, "eye_in_hand", K)


def test_degenerate_parallel_axes():
    base = _wrist_poses(1)[0]
    poses = [base @ make_T(Rotation.from_euler("z", a, degrees=True).as_matrix(), [0.01 * k, 0, 0])
             for k, a in enumerate(range(-30, 31, 10))]
    obs = _eye_in_hand_obs(poses)
    assert len(obs) >= 5
    with pytest.raises(DegenerateMotionError, match="parallel"):
        calibrate(obs, "eye_in_hand", K)


def test_degenerate_too_little_rotation():
    base = _wrist_poses(1)[0]
    poses = [base @ make_T(np.eye(3), [0.02 * k, 0.01 * (k % 2), 0]) for k in range(7)]
    obs = _eye_in_hand_obs(poses)
    with pytest.raises(DegenerateMotionError, match="rotation"):
        calibrate(obs, "eye_in_hand", K)


# ------------------------------------------------------------------------------------------- sim workcell

# the sim's own envelope with a faster dynamics ceiling than the bring-up 0.1: the collector caps every move at
# the config's factor (tests/calibration/test_collect.py), and in sim the factor only costs test time
FAST_SIM = SafetyConfig(relative_dynamics_factor=0.4)


@pytest.fixture(scope="module")
def workcell():
    """The sim workcell `dv-calib handeye --sim` opens (no cameras: the board is projected), with FAST_SIM."""
    import contextlib
    import dataclasses

    from calibration.workcell import calibration_plan
    from robot.workcell import open_workcell

    plan = dataclasses.replace(calibration_plan(None, [], sim=True), safety=FAST_SIM)
    with contextlib.ExitStack() as stack:
        yield open_workcell(plan, stack)


@pytest.mark.parametrize("camera", ["wrist", "static"])
def test_sim_handeye_within_2mm_half_degree(workcell, camera):
    from calibration.cli import result_fragment
    from calibration.sim_board import collect_sim

    col = collect_sim(workcell, camera, n_poses=10, noise_px=0.2, seed=0, dynamics=0.4)
    assert len(col.observations) >= 8
    r = calibrate(col.observations, col.mode, col.K)
    dt, dr = pose_error(r.best.T, col.T_true)
    assert dt < 2e-3 and dr < 0.5, (camera, r.best.method, dt, dr)
    key = "T_ee_cam_wrist" if camera == "wrist" else "T_base_cam_static"
    frag = result_fragment(camera, r)["calibration"]
    assert np.allclose(frag[key]["xyz"], col.T_true[:3, 3], atol=2e-3)
    assert abs(np.linalg.norm(frag[key]["quat_xyzw"]) - 1) < 1e-6
    json.dumps(frag)


@pytest.mark.parametrize("camera", ["wrist", "static"])
def test_sim_handeye_rendered_board_within_2mm_half_degree(camera):
    """The board as a textured plate in the MuJoCo scene, rendered by the sim camera and detected by `detect` as a
    D415 image is, collected by `calibration.collect.collect`: the real rig's collector (envelope check, settled
    arm, a frame captured after it settled)."""
    import dataclasses

    from calibration.sim_board import collect_sim_rendered, rendered_board_workcell
    from calibration.workcell import calibration_plan

    plan = dataclasses.replace(calibration_plan(None, [], sim=True), safety=FAST_SIM)
    with rendered_board_workcell(plan, camera) as cell:
        col = collect_sim_rendered(cell, camera, n_poses=10, seed=0, dynamics=0.4)
    assert col.collection.refused == [] and col.collection.planned == 10
    assert len(col.observations) >= 8 and min(len(o.obj_points) for o in col.observations) >= 12
    r = calibrate(col.observations, col.mode, col.K)
    dt, dr = pose_error(r.best.T, col.T_true)
    print(f"{camera}: {r.best.method} {dt * 1e3:.2f} mm {dr:.3f} deg, held-out reprojection {r.best.reproj_px:.3f} px")
    assert dt < 2e-3 and dr < 0.5, (camera, r.best.method, dt, dr)
    assert r.best.reproj_px < 1.0
