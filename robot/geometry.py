"""Rigid transforms as 4x4 NumPy matrices: build one, invert one, compare two.

One home for the few lines every part of the stack needs (the robot, the sim, calibration, teleop), so that
`T_a_b` means the same everywhere (docs/conventions.md#frames: `p_a = T_a_b · p_b`, `T_a_c = T_a_b · T_b_c`).
Rotation conversions themselves (Euler, quaternions, rotation vectors) stay SciPy's `Rotation`; the action
convention's Euler pose is `robot.execution`'s. NumPy and SciPy only, no robot imports: anything can import it.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.spatial.transform import Rotation


def make_T(R: ArrayLike, t: ArrayLike) -> np.ndarray:
    """The (4, 4) float64 transform with rotation `R` (3, 3) and translation `t` (3,)."""
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.asarray(t, dtype=np.float64).reshape(3)
    return T


def inv_T(T: np.ndarray) -> np.ndarray:
    """`T_b_a` from `T_a_b`: (Rᵀ, -Rᵀ t), exact for a rigid transform (no general matrix inverse)."""
    R, t = T[:3, :3], T[:3, 3]
    return make_T(R.T, -R.T @ t)


def pose_error(T_est: np.ndarray, T_true: np.ndarray) -> tuple[float, float]:
    """(translation error in metres, rotation error in degrees) between two poses of the same frame."""
    dt = float(np.linalg.norm(T_est[:3, 3] - T_true[:3, 3]))
    dR = T_est[:3, :3].T @ T_true[:3, :3]
    return dt, float(np.degrees(np.linalg.norm(Rotation.from_matrix(dR).as_rotvec())))
