"""robot.geometry: the one place a rigid transform is built, inverted and compared."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from robot.geometry import inv_T, make_T, pose_error


def _random_poses(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [make_T(Rotation.random(random_state=rng).as_matrix(), rng.uniform(-1, 1, 3)) for _ in range(n)]


def test_make_T_places_rotation_and_translation_and_maps_points_as_T_a_b():
    R = Rotation.from_euler("xyz", [0.1, -0.2, 0.3]).as_matrix()
    T = make_T(R, [[0.4], [0.5], [0.6]])  # any shape with 3 values
    assert T.dtype == np.float64 and T.shape == (4, 4)
    np.testing.assert_array_equal(T[:3, :3], R)
    np.testing.assert_array_equal(T[:3, 3], [0.4, 0.5, 0.6])
    np.testing.assert_array_equal(T[3], [0.0, 0.0, 0.0, 1.0])
    p_b = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose((T @ np.append(p_b, 1.0))[:3], R @ p_b + [0.4, 0.5, 0.6])


def test_inv_T_is_the_rigid_inverse():
    for T in _random_poses(20):
        np.testing.assert_allclose(inv_T(T), np.linalg.inv(T), atol=1e-12)
        np.testing.assert_allclose(inv_T(T) @ T, np.eye(4), atol=1e-12)
        np.testing.assert_array_equal(inv_T(T)[3], [0.0, 0.0, 0.0, 1.0])


def test_pose_error_in_metres_and_degrees():
    for T in _random_poses(5, seed=1):
        moved = T @ make_T(Rotation.from_rotvec([0.0, 0.0, np.radians(7.0)]).as_matrix(), [0.0, 0.0, 0.0])
        moved[:3, 3] += [0.003, -0.004, 0.0]
        dt, deg = pose_error(moved, T)
        assert np.isclose(dt, 0.005) and np.isclose(deg, 7.0)
        assert pose_error(T, T) == (0.0, 0.0)
