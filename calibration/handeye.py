"""Hand-eye calibration: AX = XB solved by every classic method, with the quality gates of issue 5 §5.

Conventions (shared/CONVENTIONS.md): `T_a_b` maps points of frame b into frame a; camera frames are OpenCV
optical frames. Two setups:

- ``eye_in_hand`` (wrist camera, board fixed in the world): solves ``T_ee_cam`` from pairs
  (``T_base_ee``, ``T_cam_board``).
- ``eye_to_base`` (static camera, board held by the hand): solves ``T_base_cam`` from the same pairs
  (the board is then fixed in ``ee``).

The OpenCV 5 wheel in this environment exposes the ``CALIB_HAND_EYE_*`` constants but no
``calibrateHandEye`` binding, so the five OpenCV methods (Tsai, Park, Horaud, Andreff, Daniilidis) are
implemented here in NumPy following the same papers and the same input/output convention as
``cv2.calibrateHandEye``; when a build does expose it, `opencv_handeye` is used for a cross-check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

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


# ---------------------------------------------------------------------------------------------- helpers


def make_T(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.asarray(t).reshape(3)
    return T


def inv_T(T: np.ndarray) -> np.ndarray:
    R, t = T[:3, :3], T[:3, 3]
    return make_T(R.T, -R.T @ t)


def skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])


def project_to_so3(M: np.ndarray) -> np.ndarray:
    U, _, Vt = np.linalg.svd(M)
    R = U @ Vt
    if np.linalg.det(R) < 0:
        R = U @ np.diag([1, 1, -1]) @ Vt
    return R


def pose_error(T_est: np.ndarray, T_true: np.ndarray) -> tuple[float, float]:
    """(translation error in metres, rotation error in degrees)."""
    dt = float(np.linalg.norm(T_est[:3, 3] - T_true[:3, 3]))
    dR = T_est[:3, :3].T @ T_true[:3, :3]
    ang = float(np.degrees(np.linalg.norm(Rotation.from_matrix(dR).as_rotvec())))
    return dt, ang


def _quat_wxyz(R: np.ndarray) -> np.ndarray:
    x, y, z, w = Rotation.from_matrix(R).as_quat()
    q = np.array([w, x, y, z])
    return q if w >= 0 else -q


def _qmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return np.array([
        w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
        w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
        w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
        w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
    ])


def _qL(q: np.ndarray) -> np.ndarray:  # q * p = L(q) p
    w, x, y, z = q
    return np.array([[w, -x, -y, -z], [x, w, -z, y], [y, z, w, -x], [z, -y, x, w]])


def _qR(q: np.ndarray) -> np.ndarray:  # p * q = R(q) p
    w, x, y, z = q
    return np.array([[w, -x, -y, -z], [x, w, z, -y], [y, -z, w, x], [z, y, -x, w]])


# ---------------------------------------------------------------------------------------------- AX = XB


def relative_motions(
    T_base_gripper: Sequence[np.ndarray], T_cam_target: Sequence[np.ndarray]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A_i, B_i with A_i X = X B_i, X = T_gripper_cam (consecutive pairs plus a wrap-around for conditioning)."""
    n = len(T_base_gripper)
    pairs = [(i, i + 1) for i in range(n - 1)] + [(i, i + 2) for i in range(n - 2)]
    A, B = [], []
    for i, j in pairs:
        A.append(inv_T(T_base_gripper[j]) @ T_base_gripper[i])
        B.append(T_cam_target[j] @ inv_T(T_cam_target[i]))
    return A, B


def _solve_translation(A: list[np.ndarray], B: list[np.ndarray], R_X: np.ndarray) -> np.ndarray:
    # (R_A - I) t_X = R_X t_B - t_A
    M = np.vstack([a[:3, :3] - np.eye(3) for a in A])
    y = np.concatenate([R_X @ b[:3, 3] - a[:3, 3] for a, b in zip(A, B, strict=True)])
    return np.linalg.lstsq(M, y, rcond=None)[0]


def _rot_tsai(A, B) -> np.ndarray:
    def mrp(R):  # modified Rodrigues: 2 sin(theta/2) * axis
        rv = Rotation.from_matrix(R).as_rotvec()
        th = np.linalg.norm(rv)
        return np.zeros(3) if th < 1e-12 else 2 * np.sin(th / 2) * rv / th

    M, y = [], []
    for a, b in zip(A, B, strict=True):
        pg, pc = mrp(a[:3, :3]), mrp(b[:3, :3])
        M.append(skew(pg + pc))
        y.append(pc - pg)
    p_ = np.linalg.lstsq(np.vstack(M), np.concatenate(y), rcond=None)[0]
    p = 2 * p_ / np.sqrt(1 + p_ @ p_)
    n2 = p @ p
    return project_to_so3((1 - n2 / 2) * np.eye(3) + 0.5 * (np.outer(p, p) + np.sqrt(4 - n2) * skew(p)))


def _rot_park(A, B) -> np.ndarray:
    M = np.zeros((3, 3))
    for a, b in zip(A, B, strict=True):
        alpha = Rotation.from_matrix(a[:3, :3]).as_rotvec()
        beta = Rotation.from_matrix(b[:3, :3]).as_rotvec()
        M += np.outer(beta, alpha)
    w, V = np.linalg.eigh(M.T @ M)
    inv_sqrt = V @ np.diag(1 / np.sqrt(w)) @ V.T
    return project_to_so3(inv_sqrt @ M.T)


def _rot_horaud(A, B) -> np.ndarray:
    # q_A * q_X = q_X * q_B  ->  (L(q_A) - R(q_B)) q_X = 0, least squares over unit quaternions
    M = np.zeros((4, 4))
    for a, b in zip(A, B, strict=True):
        C = _qL(_quat_wxyz(a[:3, :3])) - _qR(_quat_wxyz(b[:3, :3]))
        M += C.T @ C
    _, V = np.linalg.eigh(M)
    w, x, y, z = V[:, 0]
    return Rotation.from_quat([x, y, z, w]).as_matrix()


def _andreff(A, B) -> tuple[np.ndarray, np.ndarray]:
    # Linear formulation: (I9 - R_A (x) R_B) vec(R_X) = 0 and (I3 (x) t_B^T) vec(R_X) + (I3 - R_A) t_X = t_A
    # (row-major vec). Solved jointly in 12 unknowns, then R_X re-orthonormalised and t_X re-solved.
    rows, rhs = [], []
    for a, b in zip(A, B, strict=True):
        Ra, ta, Rb, tb = a[:3, :3], a[:3, 3], b[:3, :3], b[:3, 3]
        rows.append(np.hstack([np.eye(9) - np.kron(Ra, Rb), np.zeros((9, 3))]))
        rhs.append(np.zeros(9))
        rows.append(np.hstack([np.kron(np.eye(3), tb.reshape(1, 3)), np.eye(3) - Ra]))
        rhs.append(ta)
    M, y = np.vstack(rows), np.concatenate(rhs)
    # homogeneous rotation part: null space of the rotation rows; fix scale with det = 1
    Mr = np.vstack([r[:9, :9] for r in rows[0::2]])
    _, _, Vt = np.linalg.svd(Mr)
    Rv = Vt[-1].reshape(3, 3)
    d = np.linalg.det(Rv)
    Rv = Rv * np.sign(d) / abs(d) ** (1 / 3)
    R = project_to_so3(Rv)
    t = np.linalg.lstsq(M[:, 9:], y - M[:, :9] @ R.reshape(9), rcond=None)[0]
    return R, t


def _daniilidis(A, B) -> tuple[np.ndarray, np.ndarray]:
    def dq(T):
        q = _quat_wxyz(T[:3, :3])
        qd = 0.5 * _qmul(np.r_[0.0, T[:3, 3]], q)
        return q, qd

    S = []
    for a, b in zip(A, B, strict=True):
        qa, qad = dq(a)
        qb, qbd = dq(b)
        av, adv, bv, bdv = qa[1:], qad[1:], qb[1:], qbd[1:]
        top = np.hstack([(av - bv).reshape(3, 1), skew(av + bv), np.zeros((3, 4))])
        bot = np.hstack([(adv - bdv).reshape(3, 1), skew(adv + bdv), (av - bv).reshape(3, 1), skew(av + bv)])
        S.append(np.vstack([top, bot]))
    _, _, Vt = np.linalg.svd(np.vstack(S))
    v7, v8 = Vt[-2], Vt[-1]
    u1, w1, u2, w2 = v7[:4], v7[4:], v8[:4], v8[4:]
    a_, b_, c_ = u1 @ w1, u1 @ w2 + u2 @ w1, u2 @ w2
    if abs(a_) < 1e-12:
        ss = [-c_ / b_]
    else:
        disc = max(b_ * b_ - 4 * a_ * c_, 0.0)
        ss = [(-b_ + np.sqrt(disc)) / (2 * a_), (-b_ - np.sqrt(disc)) / (2 * a_)]
    best = None
    for s in ss:
        val = s * s * (u1 @ u1) + 2 * s * (u1 @ u2) + u2 @ u2
        if best is None or val > best[0]:
            best = (val, s)
    val, s = best
    l2 = np.sqrt(1 / val)
    l1 = s * l2
    q = l1 * u1 + l2 * u2
    qd = l1 * w1 + l2 * w2
    t = 2 * _qmul(qd, q * np.array([1, -1, -1, -1]))[1:]
    w, x, y, z = q
    return Rotation.from_quat([x, y, z, w]).as_matrix(), t


def solve_ax_xb(A: list[np.ndarray], B: list[np.ndarray], method: str) -> np.ndarray:
    if method == "tsai":
        R = _rot_tsai(A, B)
    elif method == "park":
        R = _rot_park(A, B)
    elif method == "horaud":
        R = _rot_horaud(A, B)
    elif method == "andreff":
        return make_T(*_andreff(A, B))
    elif method == "daniilidis":
        return make_T(*_daniilidis(A, B))
    else:
        raise ValueError(f"unknown hand-eye method {method!r}; choose from {METHODS}")
    return make_T(R, _solve_translation(A, B, R))


def opencv_handeye() -> object | None:
    """`calibrateHandEye` where this OpenCV build exposes it (cv2 or a cv2.calib submodule), else None."""
    for mod in (cv2, getattr(cv2, "calib", None), getattr(cv2, "calib3d", None)):
        fn = getattr(mod, "calibrateHandEye", None) if mod is not None else None
        if fn is not None:
            return fn
    return None


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
class Observation:
    """One pose: the robot's T_base_ee and the board seen by the camera (corners and its PnP pose)."""

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


def _gripper_and_target(obs: Sequence[Observation], mode: Mode) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if mode == "eye_in_hand":
        return [o.T_base_ee for o in obs], [o.T_cam_board for o in obs]
    if mode == "eye_to_base":
        return [inv_T(o.T_base_ee) for o in obs], [o.T_cam_board for o in obs]
    raise ValueError(f"mode must be 'eye_in_hand' or 'eye_to_base', got {mode!r}")


def _fixed_board(obs: Sequence[Observation], X: np.ndarray, mode: Mode) -> tuple[np.ndarray, float, float]:
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
    observations: Sequence[Observation],
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
    A, B = relative_motions(G, C)
    results: dict[str, MethodResult] = {}
    for m in methods:
        X = solve_ax_xb(A, B, m)
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
