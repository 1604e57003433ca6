"""Hand-eye calibration: AX = XB by OpenCV's five solvers, our quality gates and a reprojection refinement on top.

Conventions (docs/conventions.md): `T_a_b` maps points of frame b into frame a; camera frames are OpenCV
optical frames. Two setups:

- ``eye_in_hand`` (wrist camera, board fixed in the world): solves ``T_ee_cam`` from pairs
  (``T_base_ee``, ``T_cam_board``).
- ``eye_to_base`` (static camera, board held by the hand): solves ``T_base_cam`` from the same pairs
  (the board is then fixed in ``ee``).

The closed-form solutions are ``cv2.calibrateHandEye`` (Tsai, Park, Horaud, Andreff, Daniilidis). What this
module adds is what OpenCV leaves to the caller: refusing pose sets that cannot determine X (too few poses,
too little rotation, parallel axes), scoring every method on held-out poses by corner reprojection, and a joint
Levenberg-Marquardt refinement of X and the fixed board pose, seeded by the best closed form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from robot.geometry import inv_T, make_T, pose_error

Mode = Literal["eye_in_hand", "eye_to_base"]
METHODS = ("tsai", "park", "horaud", "andreff", "daniilidis")
MIN_POSES = 5


class CalibrationError(RuntimeError):
    """Base class: calibration refused rather than returning a wrong matrix."""


class BoardNotVisibleError(CalibrationError):
    pass


class TooFewPosesError(CalibrationError):
    pass


class DegenerateMotionError(CalibrationError):
    pass


# ---------------------------------------------------------------------------------------------- AX = XB

# OpenCV's solvers, by our method names. Each takes the same inputs and returns the same X.
_CV_METHODS = {
    "tsai": cv2.CALIB_HAND_EYE_TSAI,
    "park": cv2.CALIB_HAND_EYE_PARK,
    "horaud": cv2.CALIB_HAND_EYE_HORAUD,
    "andreff": cv2.CALIB_HAND_EYE_ANDREFF,
    "daniilidis": cv2.CALIB_HAND_EYE_DANIILIDIS,
}


def solve_hand_eye(T_base_gripper: Sequence[np.ndarray], T_cam_target: Sequence[np.ndarray], method: str) -> np.ndarray:
    """X = T_gripper_cam from absolute poses, by `cv2.calibrateHandEye`.

    Eye-in-hand passes (T_base_ee, T_cam_board) and gets T_ee_cam. Eye-to-base passes the inverted robot poses
    (T_ee_base) and gets T_base_cam: OpenCV documents this substitution for a camera fixed in the world."""
    if method not in _CV_METHODS:
        raise ValueError(f"unknown hand-eye method {method!r}; choose from {METHODS}")
    R, t = cv2.calibrateHandEye(
        [T[:3, :3] for T in T_base_gripper], [T[:3, 3] for T in T_base_gripper],
        [T[:3, :3] for T in T_cam_target], [T[:3, 3] for T in T_cam_target], method=_CV_METHODS[method])
    return make_T(R, t)


# ---------------------------------------------------------------------------------------------- gates


def check_motions(
    T_base_gripper: Sequence[np.ndarray], min_rotation_deg: float = 10.0, min_axis_spread_deg: float = 15.0
) -> None:
    """Refuse pose sets that cannot determine X: too little rotation, or all rotation axes parallel."""
    n = len(T_base_gripper)
    if n < MIN_POSES:
        raise TooFewPosesError(f"{n} usable poses, need at least {MIN_POSES} (board seen in each)")
    axes, max_angle = [], 0.0
    for i in range(n):
        for j in range(i + 1, n):
            rv = Rotation.from_matrix((inv_T(T_base_gripper[j]) @ T_base_gripper[i])[:3, :3]).as_rotvec()
            ang = float(np.degrees(np.linalg.norm(rv)))
            max_angle = max(max_angle, ang)
            if ang > 2.0:
                axes.append(rv / np.linalg.norm(rv))
    if max_angle < min_rotation_deg:
        raise DegenerateMotionError(
            f"degenerate motions: largest relative rotation {max_angle:.1f} deg < {min_rotation_deg} deg; "
            "the hand must rotate between poses")
    # spread of the axes: smallest singular value of the axis set (0 when all parallel)
    Ax = np.array(axes)
    sv = np.linalg.svd(Ax, compute_uv=False) / np.sqrt(len(axes))
    spread = float(np.degrees(np.arcsin(min(1.0, sv[1]))))
    if spread < min_axis_spread_deg:
        raise DegenerateMotionError(
            f"degenerate motions: rotation axes are (nearly) parallel (spread {spread:.1f} deg < "
            f"{min_axis_spread_deg} deg); rotate about at least two different axes")


# ---------------------------------------------------------------------------------------------- top level


@dataclass
class HandEyeSample:
    """One calibration pose: the robot's T_base_ee and the board as the camera saw it there (its corners and their
    PnP pose)."""

    T_base_ee: np.ndarray
    obj_points: np.ndarray  # (N, 3) board frame
    img_points: np.ndarray  # (N, 2) pixels
    T_cam_board: np.ndarray


@dataclass
class MethodResult:
    method: str
    T: np.ndarray  # T_ee_cam (eye_in_hand) or T_base_cam (eye_to_base)
    reproj_px: float  # RMS reprojection on the held-out poses
    consistency_mm: float = float("nan")  # spread of the predicted fixed board pose (training poses)
    consistency_deg: float = float("nan")


@dataclass
class HandEyeResult:
    mode: Mode
    best: MethodResult
    methods: dict[str, MethodResult] = field(default_factory=dict)
    n_train: int = 0
    n_holdout: int = 0


def _gripper_and_target(obs: Sequence[HandEyeSample], mode: Mode) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if mode == "eye_in_hand":
        return [o.T_base_ee for o in obs], [o.T_cam_board for o in obs]
    if mode == "eye_to_base":
        return [inv_T(o.T_base_ee) for o in obs], [o.T_cam_board for o in obs]
    raise ValueError(f"mode must be 'eye_in_hand' or 'eye_to_base', got {mode!r}")


def _fixed_board(obs: Sequence[HandEyeSample], X: np.ndarray, mode: Mode) -> tuple[np.ndarray, float, float]:
    """The constant pose (T_base_board or T_ee_board) implied by X, averaged, with its spread."""
    G, C = _gripper_and_target(obs, mode)
    Ts = [g @ X @ c for g, c in zip(G, C, strict=True)]
    t = np.mean([T[:3, 3] for T in Ts], axis=0)
    R = Rotation.from_matrix(np.array([T[:3, :3] for T in Ts])).mean().as_matrix()
    T_mean = make_T(R, t)
    errs = [pose_error(T, T_mean) for T in Ts]
    return T_mean, 1e3 * float(np.mean([e[0] for e in errs])), float(np.mean([e[1] for e in errs]))


def _reprojection(obs, X, T_fixed, mode, K, dist) -> float:
    G, _ = _gripper_and_target(obs, mode)
    sq, n = 0.0, 0
    for o, g in zip(obs, G, strict=True):
        T_cam_board = inv_T(g @ X) @ T_fixed
        rvec, _ = cv2.Rodrigues(T_cam_board[:3, :3])
        proj, _ = cv2.projectPoints(o.obj_points.astype(np.float64), rvec, T_cam_board[:3, 3], K, dist)
        d = proj.reshape(-1, 2) - o.img_points.reshape(-1, 2)
        sq += float((d**2).sum())
        n += len(d)
    return float(np.sqrt(sq / max(n, 1)))


def _vec_T(v: np.ndarray) -> np.ndarray:
    return make_T(Rotation.from_rotvec(v[:3]).as_matrix(), v[3:6])


def _T_vec(T: np.ndarray) -> np.ndarray:
    return np.r_[Rotation.from_matrix(T[:3, :3]).as_rotvec(), T[:3, 3]]


def refine_reprojection(obs, X0: np.ndarray, mode: Mode, K: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Minimise the corner reprojection error over X and the fixed board pose jointly (Levenberg-Marquardt)."""
    from scipy.optimize import least_squares

    G, _ = _gripper_and_target(obs, mode)
    T_fixed0, _, _ = _fixed_board(obs, X0, mode)

    def residuals(v):
        X, Tf = _vec_T(v[:6]), _vec_T(v[6:])
        out = []
        for o, g in zip(obs, G, strict=True):
            T = inv_T(g @ X) @ Tf
            P = (T[:3, :3] @ o.obj_points.T).T + T[:3, 3]
            uv = (K @ (P / P[:, 2:3]).T).T[:, :2] if not np.any(dist) else cv2.projectPoints(
                o.obj_points.astype(np.float64), cv2.Rodrigues(T[:3, :3])[0], T[:3, 3], K, dist)[0].reshape(-1, 2)
            out.append((uv - o.img_points).ravel())
        return np.concatenate(out)

    sol = least_squares(residuals, np.r_[_T_vec(X0), _T_vec(T_fixed0)], method="lm")
    return _vec_T(sol.x[:6])


def calibrate(
    observations: Sequence[HandEyeSample],
    mode: Mode,
    K: np.ndarray,
    dist: np.ndarray | None = None,
    methods: Sequence[str] = METHODS,
    holdout_every: int = 5,
    refine: bool = True,
) -> HandEyeResult:
    """Run every method on the training poses, score each on held-out poses (every `holdout_every`-th).

    With `refine`, the best closed-form X seeds a joint reprojection-error minimisation over X and the fixed
    board pose (method 'refined'); `best` is the method with the lowest held-out reprojection error.
    """
    dist = np.zeros(5) if dist is None else np.asarray(dist, dtype=np.float64)
    obs = list(observations)
    if not obs:
        raise BoardNotVisibleError("the board was not detected in any pose")
    if len(obs) < MIN_POSES:
        raise TooFewPosesError(f"{len(obs)} usable poses, need at least {MIN_POSES} (board seen in each)")
    hold = [o for i, o in enumerate(obs) if holdout_every and len(obs) >= MIN_POSES + 2 and i % holdout_every == 2]
    train = [o for o in obs if not any(o is h for h in hold)]
    if len(train) < MIN_POSES:
        hold, train = [], obs
    G, C = _gripper_and_target(train, mode)
    check_motions([o.T_base_ee for o in train])
    results: dict[str, MethodResult] = {}
    for m in methods:
        X = solve_hand_eye(G, C, m)
        if not np.all(np.isfinite(X)):
            continue
        T_fixed, c_mm, c_deg = _fixed_board(train, X, mode)
        reproj = _reprojection(hold or train, X, T_fixed, mode, K, dist)
        results[m] = MethodResult(m, X, reproj, c_mm, c_deg)
    if not results:
        raise CalibrationError("every hand-eye method failed numerically")
    if refine:
        seed = min(results.values(), key=lambda r: r.reproj_px)
        X = refine_reprojection(train, seed.T, mode, K, dist)
        T_fixed, c_mm, c_deg = _fixed_board(train, X, mode)
        results["refined"] = MethodResult("refined", X, _reprojection(hold or train, X, T_fixed, mode, K, dist),
                                          c_mm, c_deg)
    best = min(results.values(), key=lambda r: r.reproj_px)
    return HandEyeResult(mode, best, results, len(train), len(hold))
