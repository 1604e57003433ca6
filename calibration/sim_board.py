"""Hand-eye data from the sim workcell: the real franky-sim arm moves, a virtual ChArUco board is observed.

The board is not rendered (no ChArUco texture in the MuJoCo scene yet): each observation projects the board's
corners through the sim camera's true intrinsics and its true pose at the arm pose franky-sim actually reached
(`ArmState.T_base_ee` read after the motion), plus pixel noise. For the wrist camera the board lies fixed on the
table (`T_base_board`); for the static camera it is mounted on the hand (`T_ee_board`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from calibration.charuco import BoardSpec, board_pose, camera_matrix, synthetic_observation
from calibration.handeye import BoardNotVisibleError, Mode, Observation, inv_T, make_T, pose_error
from calibration.poses import generate_poses

# wrist: board flat on the table in front of the robot
T_BASE_BOARD = make_T(np.eye(3), [0.45, -0.10, 0.0])
# static: a plate on the hand, its normal along ee +y (towards the static camera at the home pose)
T_EE_BOARD = make_T(Rotation.from_euler("x", -90, degrees=True).as_matrix(), [-0.12, 0.06, 0.08])


@dataclass(frozen=True)
class CameraSetup:
    mode: Mode
    target: np.ndarray  # where the aimed axis points
    axis_in_ee: np.ndarray  # the rough view axis (wrist) / board normal (static), from the mount's CAD
    lo: np.ndarray
    hi: np.ndarray


SETUPS = {
    "wrist": CameraSetup("eye_in_hand", np.array([0.57, 0.0, 0.0]), np.array([0.34, 0.0, 0.94]),
                         np.array([0.30, -0.20, 0.30]), np.array([0.55, 0.20, 0.50])),
    # the static D415 sits front-right, high (roughly (0.85, -0.8, 0.75) in base: a tape-measure guess)
    "static": CameraSetup("eye_to_base", np.array([0.85, -0.8, 0.75]), T_EE_BOARD[:3, 2],
                          np.array([0.35, -0.20, 0.25]), np.array([0.60, 0.15, 0.50])),
}


@dataclass
class SimCollection:
    observations: list[Observation]
    K: np.ndarray
    image_size: tuple[int, int]
    T_true: np.ndarray  # ground truth: T_ee_cam (wrist) or T_base_cam (static)
    mode: Mode
    reached: int
    skipped_unreachable: int
    skipped_not_visible: int


def clip_to_workspace(lo, hi, margin: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    from robot.safety import SafetyConfig

    box = SafetyConfig().workspace
    blo, bhi = np.asarray(box.lo) + margin, np.asarray(box.hi) - margin
    return np.clip(lo, blo, bhi), np.clip(hi, blo, bhi)


def collect_sim(
    camera: str,
    n_poses: int = 12,
    noise_px: float = 0.2,
    seed: int = 0,
    workcell=None,
    spec: BoardSpec | None = None,
    poses: list[np.ndarray] | None = None,
    dynamics: float = 0.4,
) -> SimCollection:
    """Drive the sim arm through `n_poses` poses (or the given `poses`) and observe the virtual board."""
    from contextlib import ExitStack

    from robot.arm import Arm, ArmConfig
    from robot.cameras.sim import SimCamera, SimCameraConfig
    from robot.sim.workcell import SimWorkcell

    if camera not in SETUPS:
        raise ValueError(f"camera must be 'wrist' or 'static', got {camera!r}")
    setup, spec = SETUPS[camera], spec or BoardSpec()
    rng = np.random.default_rng(seed)
    with ExitStack() as stack:
        cell = workcell or stack.enter_context(SimWorkcell("drawer_open", seed=seed, cameras=[]))
        cam = SimCamera(SimCameraConfig(name=camera), source=cell)  # ground truth only, never connected
        intr = cam.intrinsics
        K = camera_matrix(intr.fx, intr.fy, intr.cx, intr.cy)
        size = (intr.width, intr.height)
        if poses is None:
            lo, hi = clip_to_workspace(setup.lo, setup.hi)
            poses = generate_poses(n_poses, setup.target, setup.axis_in_ee, lo, hi, seed=seed,
                                   toward_target=True)
        cfg = ArmConfig(host=cell.hostname, realtime="ignore", relative_dynamics_factor=dynamics)
        arm = stack.enter_context(Arm(cfg))
        obs, unreachable, invisible = [], 0, 0
        for T_goal in poses:
            ok = arm.move_to(T_goal, asynchronous=False)
            T = arm.read_state().T_base_ee
            dt, dr = pose_error(T, T_goal)
            if not ok or arm.poll_error() is not None or dt > 0.01 or dr > 2.0:
                unreachable += 1
                arm.recover()
                continue
            if setup.mode == "eye_in_hand":
                T_cam_board = inv_T(T @ cam.T_mount_cam) @ T_BASE_BOARD
            else:
                T_cam_board = inv_T(cam.T_mount_cam) @ T @ T_EE_BOARD
            try:
                o, i = synthetic_observation(T_cam_board, spec, K, size, noise_px, rng)
            except BoardNotVisibleError:
                invisible += 1
                continue
            obs.append(Observation(T, o, i, board_pose(o, i, K)))
        return SimCollection(obs, K, size, cam.T_mount_cam.copy(), setup.mode, len(poses) - unreachable,
                             unreachable, invisible)
