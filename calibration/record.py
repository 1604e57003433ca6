"""What a stored calibration entry carries besides its numbers: a UTC timestamp (so `dv-calib check` can tell
its age, DROID's 1 h rule) and a short hash of the numbers (so a hand edit or a copy from another rig shows)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from robot.geometry import make_T


def utc_now_iso() -> str:
    """Now as ISO 8601 with the +00:00 offset, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def numbers_hash(numbers: dict[str, Any]) -> str:
    """sha256 (first 16 hex digits) of the numbers as sorted-key JSON: stable across runs and YAML round trips."""
    return hashlib.sha256(json.dumps(numbers, sort_keys=True).encode()).hexdigest()[:16]


def pose_numbers(T: np.ndarray) -> dict[str, list[float]]:
    """A 4x4 transform as the launch config stores it: xyz in metres and a unit quaternion (x, y, z, w)."""
    return {"xyz": [round(float(v), 6) for v in T[:3, 3]],
            "quat_xyzw": [round(float(v), 8) for v in Rotation.from_matrix(T[:3, :3]).as_quat()]}


def pose_from_numbers(xyz: Any, quat_xyzw: Any) -> np.ndarray:
    """The inverse of `pose_numbers`."""
    return make_T(Rotation.from_quat(np.asarray(quat_xyzw, float)).as_matrix(), xyz)


def stamped(numbers: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """`numbers` + `extra` fields + timestamp + the hash of `numbers` alone."""
    return {**numbers, **extra, "timestamp": utc_now_iso(), "hash": numbers_hash(numbers)}
