"""FR3 forward kinematics and geometric Jacobian in NumPy, for the safety envelope (A4 joint targets, A8 κ).

Franka's published modified (Craig) DH parameters: frame i = frame i-1 · RotX(alpha_i) · TransX(a_i) · RotZ(q_i)
· TransZ(d_i), then the flange 0.107 m along joint 7's axis. The TCP is franky's `ee` frame (franky-sim's
default F_T_EE, the Franka hand's): the flange rotated -45° about z and moved 0.1034 m along z
(robot/sim/scene.py TCP_IN_HAND; franky-sim RobotParameters.ee_tcp_xyz/ee_tcp_rpy). `fk` reproduces
`ArmState.T_base_ee` (O_T_EE) when the robot's EE frame is that default (tests/robot/test_kinematics.py).
Panda and FR3 share these parameters; only their joint limits differ.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from robot.geometry import make_T

# (7,) per joint: a, d (metres), alpha (radians)
DH_A = np.array([0.0, 0.0, 0.0, 0.0825, -0.0825, 0.0, 0.088])
DH_D = np.array([0.333, 0.0, 0.316, 0.0, 0.384, 0.0, 0.0])
DH_ALPHA = np.array([0.0, -np.pi / 2, np.pi / 2, np.pi / 2, -np.pi / 2, np.pi / 2, np.pi / 2])
FLANGE_D = 0.107
TCP_Z = 0.1034  # flange -> ee along z (franky's default F_T_EE for the Franka hand)
TCP_YAW = -np.pi / 4  # the hand is mounted turned -45° about the flange z axis


def _dh(a: float, d: float, alpha: float, theta: float) -> np.ndarray:
    """(4, 4) RotX(alpha) · TransX(a) · RotZ(theta) · TransZ(d)."""
    ca, sa, ct, st = np.cos(alpha), np.sin(alpha), np.cos(theta), np.sin(theta)
    return np.array([[ct, -st, 0.0, a],
                     [st * ca, ct * ca, -sa, -d * sa],
                     [st * sa, ct * sa, ca, d * ca],
                     [0.0, 0.0, 0.0, 1.0]])


# joint-7 frame -> ee: the flange adds no rotation, then the TCP turns about and moves along the same z
_F_T_EE = make_T(Rotation.from_euler("z", TCP_YAW).as_matrix(), [0.0, 0.0, FLANGE_D + TCP_Z])


def joint_frames(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frames of joints 1..7 (7, 4, 4) in base, each at its joint axis (z) after rotating by q_i, and base_T_ee
    (4, 4). q: (7,) radians."""
    frames = np.empty((7, 4, 4))
    T = np.eye(4)
    for i in range(7):
        T = T @ _dh(DH_A[i], DH_D[i], DH_ALPHA[i], q[i])
        frames[i] = T
    return frames, T @ _F_T_EE


def fk(q: np.ndarray) -> np.ndarray:
    """base_T_ee (4, 4) for joint positions q (7,)."""
    return joint_frames(q)[1]


def jacobian(q: np.ndarray) -> np.ndarray:
    """Geometric Jacobian (6, 7) of the ee in base: rows [v (m/s); ω (rad/s)] per joint rate, like franky's
    `zero_jacobian(Frame.EndEffector)`."""
    frames, T_ee = joint_frames(q)
    z = frames[:, :3, 2]  # (7, 3) joint axes
    r = T_ee[:3, 3] - frames[:, :3, 3]  # (7, 3) joint origin -> ee
    return np.vstack([np.cross(z, r).T, z.T])


def condition_number(J: np.ndarray) -> float:
    """σ_max / σ_min of J (6, 7), unscaled (metres and radians, as MoveIt servo computes it)."""
    s = np.linalg.svd(J, compute_uv=False)
    return float(s[0] / s[-1]) if s[-1] > 0 else float("inf")


def dls_step(J: np.ndarray, twist: np.ndarray, damping: float = 1e-3) -> np.ndarray:
    """Joint change (7,) for an ee twist (6,) [dp; rotvec] by damped least squares: Jᵀ (J Jᵀ + λ² I)⁻¹ · twist."""
    return J.T @ np.linalg.solve(J @ J.T + damping**2 * np.eye(6), twist)
