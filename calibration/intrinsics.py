"""Camera intrinsics for the launch config: factory values (a D415 reports its own), the sim's ground truth, or a
ChArUco re-calibration with its RMS reprojection error.

Why store factory intrinsics at all: the policy never needs them, but hand-eye, depth back-projection and any
later re-calibration do, and a D415 swapped on the rig (or a firmware update) changes them silently. The
launch file keeps what was measured, when, and a hash.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from calibration.charuco import BoardSpec, detect, synthetic_observation
from calibration.handeye import BoardNotVisibleError, CalibrationError
from calibration.record import stamped
from robot.geometry import make_T

if TYPE_CHECKING:
    from robot.cameras import Camera

SIM_DEPTH_SCALE_M = 0.001  # the sim renders depth as uint16 millimetres
MIN_VIEWS = 6
View = tuple[np.ndarray, np.ndarray]  # (obj_points (N, 3), img_points (N, 2)) of one image


def sim_intrinsics(cameras: Mapping[str, Camera]) -> dict[str, dict[str, Any]]:
    """The opened sim cameras' ground truth (MuJoCo's pinhole: no distortion) at their configured resolutions."""
    return {name: {**asdict(cam.intrinsics), "model": "none", "coeffs": [],  # type: ignore[attr-defined]  # SimCamera
                   "depth_scale_m": SIM_DEPTH_SCALE_M if cam.config.depth else None}
            for name, cam in cameras.items()}


def factory_intrinsics(cameras: Mapping[str, Camera]) -> dict[str, dict[str, Any]]:
    """What each opened RealSense reports (`RealSenseCamera.factory_intrinsics`), at its stream settings."""
    out = {}
    for name, camera in cameras.items():
        values = asdict(camera.factory_intrinsics())  # type: ignore[attr-defined]  # a RealSenseCamera
        values["coeffs"] = list(values["coeffs"])
        out[name] = values
    return out


def entry(numbers: dict[str, Any], source: str, reprojection_px: float | None = None) -> dict[str, Any]:
    """A `calibration.intrinsics.<role>` entry: the numbers, where they come from, a timestamp and a hash."""
    extra: dict[str, Any] = {"source": source}
    if reprojection_px is not None:
        extra["reprojection_px"] = round(float(reprojection_px), 4)
    return stamped(numbers, **extra)


# ------------------------------------------------------------------------------------------------ ChArUco


def views_from_images(images: Iterable[np.ndarray], spec: BoardSpec) -> tuple[list[View], int]:
    """Detected board corners per image, and how many images showed no usable board."""
    views, missed = [], 0
    for image in images:
        try:
            views.append(detect(image, spec))
        except BoardNotVisibleError:
            missed += 1
    return views, missed


def synthetic_views(
    K: np.ndarray, image_size: tuple[int, int], n: int = 15, noise_px: float = 0.2, seed: int = 0,
    spec: BoardSpec | None = None,
) -> list[View]:
    """Board poses a person would show a camera (0.35–0.7 m away, tilted up to ±35°, across the image),
    projected through `K` with pixel noise: the sim's stand-in until the board is rendered in the scene."""
    spec, rng = spec or BoardSpec(), np.random.default_rng(seed)
    size = np.ptp(spec.corners(), axis=0)
    views: list[View] = []
    while len(views) < n:
        z = rng.uniform(0.35, 0.7)
        R = Rotation.from_euler("xyz", [*rng.uniform(-35, 35, 2), rng.uniform(-20, 20)], degrees=True).as_matrix()
        centre = np.array([*rng.uniform(-0.3, 0.3, 2) * z, z])
        T_cam_board = make_T(R, centre - R @ np.r_[size[:2] / 2, 0.0])
        try:
            views.append(synthetic_observation(T_cam_board, spec, K, image_size, noise_px, rng))
        except BoardNotVisibleError:
            continue
    return views


def charuco_calibrate(views: Sequence[View], image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, float]:
    """(K, distortion (k1, k2, p1, p2, k3), RMS reprojection px) from ChArUco corner views.

    OpenCV 5 dropped `aruco.calibrateCameraCharuco`; its replacement is `calibrateCamera` on the matched
    board/image points, which `detect` already returns.
    """
    if len(views) < MIN_VIEWS:
        raise CalibrationError(f"{len(views)} views with the ChArUco board, need at least {MIN_VIEWS} "
                               "(move the board to different distances, tilts and image regions)")
    obj = [np.asarray(o, np.float32) for o, _ in views]
    img = [np.asarray(i, np.float32).reshape(-1, 1, 2) for _, i in views]
    rms, K, dist, _, _ = cv2.calibrateCamera(obj, img, image_size, None, None)
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise CalibrationError("ChArUco calibration diverged (non-finite or negative focal length)")
    return K, dist.reshape(-1), float(rms)


def charuco_numbers(K: np.ndarray, dist: np.ndarray, image_size: tuple[int, int],
                    depth_scale_m: float | None) -> dict[str, Any]:
    """The numbers of an `intrinsics` entry from a ChArUco result (OpenCV's 5 coefficients = Brown-Conrady)."""
    return {"width": image_size[0], "height": image_size[1], "fx": round(float(K[0, 0]), 4),
            "fy": round(float(K[1, 1]), 4), "cx": round(float(K[0, 2]), 4), "cy": round(float(K[1, 2]), 4),
            "model": "brown_conrady", "coeffs": [round(float(c), 8) for c in dist],
            "depth_scale_m": depth_scale_m}


def capture_images(camera: Camera, n_frames: int, timeout_s: float = 1.0) -> list[np.ndarray]:
    """Up to `n_frames` colour images from an opened camera (a person moves the board meanwhile)."""
    from robot.cameras import CameraTimeout

    images = []
    for _ in range(n_frames):
        try:
            images.append(camera.read(timeout_s).color)
        except CameraTimeout:
            break
    return images
