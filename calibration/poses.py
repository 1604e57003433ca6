"""Automatic calibration poses inside the safety envelope's workspace box.

Each pose points a chosen axis of the end-effector (the camera's approximate view axis for the wrist camera,
the board's normal for the static one) at a target point, from positions spread over a region of the box,
with varied roll about that axis so the relative rotations have well-spread axes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.spatial.transform import Rotation

from robot.geometry import make_T

TOOL_DOWN = np.diag([1.0, -1.0, -1.0])  # franky's home orientation of `ee` in `base`


def _align(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smallest rotation taking unit vector a onto unit vector b."""
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    v, c = np.cross(a, b), float(a @ b)
    if np.linalg.norm(v) < 1e-9:
        return np.eye(3) if c > 0 else Rotation.from_rotvec(np.pi * np.array([1.0, 0, 0])).as_matrix()
    return Rotation.from_rotvec(v / np.linalg.norm(v) * np.arctan2(np.linalg.norm(v), c)).as_matrix()


def generate_poses(
    n: int,
    target: np.ndarray,
    axis_in_ee: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    max_roll_deg: float = 40.0,
    jitter_deg: float = 8.0,
    seed: int = 0,
    toward_target: bool = True,
    accept: Callable[[np.ndarray], bool] | None = None,
    tries: int = 20,
) -> list[np.ndarray]:
    """`n` T_base_ee with positions in [lo, hi] (clip to the workspace box first) and `axis_in_ee` aimed at
    `target` (toward_target) or at the direction from `target` to the pose (away, e.g. a board facing a camera).

    `accept` (e.g. inside the safety envelope's orientation cone): a pose it rejects is drawn again, up to
    `tries` times, with its roll and jitter shrinking towards zero; the last draw is kept either way (the
    collector refuses it, counted).
    """
    rng = np.random.default_rng(seed)
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    poses = []
    for k in range(n):
        for attempt in range(tries if accept is not None else 1):
            shrink = 1.0 - attempt / tries
            # stratified along x/y so the set spans the region even for small n
            u = (k + rng.uniform(0.2, 0.8)) / n
            p = lo + (hi - lo) * np.array([u, rng.uniform(), rng.uniform()])
            d = target - p if toward_target else p - target
            d /= np.linalg.norm(d)
            R = _align(TOOL_DOWN @ axis_in_ee, d) @ TOOL_DOWN
            roll = shrink * np.radians(max_roll_deg) * (2 * ((k * 0.618) % 1.0) - 1)
            R = Rotation.from_rotvec(d * roll).as_matrix() @ R
            R = Rotation.from_rotvec(shrink * np.radians(jitter_deg) * rng.uniform(-1, 1, 3)).as_matrix() @ R
            T = make_T(R, p)
            if accept is None or accept(T):
                break
        poses.append(T)
    return poses
