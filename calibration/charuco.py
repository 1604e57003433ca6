"""ChArUco board: definition, detection in an image, board pose by solvePnP, and synthetic observations.

Board frame: OpenCV's (origin at a board corner, x/y in the board plane, z = x × y). `T_cam_board` maps board
points into the camera's optical frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from calibration.handeye import BoardNotVisibleError
from robot.geometry import make_T

MIN_CORNERS = 6


@dataclass(frozen=True)
class BoardSpec:
    squares_x: int = 7
    squares_y: int = 5
    square_m: float = 0.04
    marker_m: float = 0.03
    dictionary: int = cv2.aruco.DICT_5X5_100

    def board(self) -> cv2.aruco.CharucoBoard:
        d = cv2.aruco.getPredefinedDictionary(self.dictionary)
        return cv2.aruco.CharucoBoard((self.squares_x, self.squares_y), self.square_m, self.marker_m, d)

    def corners(self) -> np.ndarray:
        """(N, 3) chessboard inner corners in the board frame, index = ChArUco corner id."""
        return np.asarray(self.board().getChessboardCorners(), dtype=np.float64).reshape(-1, 3)

    def image(self, px_per_square: int = 80) -> np.ndarray:
        size = (self.squares_x * px_per_square, self.squares_y * px_per_square)
        return self.board().generateImage(size, marginSize=0)


def camera_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])


def detect(image: np.ndarray, spec: BoardSpec) -> tuple[np.ndarray, np.ndarray]:
    """ChArUco corners in `image`: (obj_points (N,3), img_points (N,2)); BoardNotVisibleError if too few."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    detector = cv2.aruco.CharucoDetector(spec.board())
    ch_corners, ch_ids, _, _ = detector.detectBoard(gray)
    if ch_ids is None or len(ch_ids) < MIN_CORNERS:
        n = 0 if ch_ids is None else len(ch_ids)
        raise BoardNotVisibleError(f"ChArUco board not visible: {n} corners detected, need {MIN_CORNERS}")
    ids = ch_ids.reshape(-1)
    return spec.corners()[ids], ch_corners.reshape(-1, 2).astype(np.float64)


def board_pose(obj: np.ndarray, img: np.ndarray, K: np.ndarray, dist: np.ndarray | None = None) -> np.ndarray:
    """T_cam_board by solvePnP (IPPE for the planar board, then iterative refinement)."""
    if len(obj) < MIN_CORNERS:
        raise BoardNotVisibleError(f"ChArUco board not visible: {len(obj)} corners, need {MIN_CORNERS}")
    dist = np.zeros(5) if dist is None else dist
    ok, rvec, tvec = cv2.solvePnP(obj, img, K, dist, flags=cv2.SOLVEPNP_IPPE)
    if not ok:
        raise BoardNotVisibleError("solvePnP failed on the detected ChArUco corners")
    ok, rvec, tvec = cv2.solvePnP(obj, img, K, dist, rvec, tvec, useExtrinsicGuess=True,
                                  flags=cv2.SOLVEPNP_ITERATIVE)
    R, _ = cv2.Rodrigues(rvec)
    return make_T(R, tvec.reshape(3))


def synthetic_observation(
    T_cam_board: np.ndarray,
    spec: BoardSpec,
    K: np.ndarray,
    image_size: tuple[int, int],
    noise_px: float = 0.0,
    rng: np.random.Generator | None = None,
    max_obliquity_deg: float = 70.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Project the board corners through a pinhole camera (the detector's output in a perfect world, + noise).

    Corners outside the image, behind the camera, or on a board seen too obliquely are dropped; raises
    BoardNotVisibleError when fewer than MIN_CORNERS remain.
    """
    obj = spec.corners()
    P = (T_cam_board[:3, :3] @ obj.T).T + T_cam_board[:3, 3]
    normal = T_cam_board[:3, 2]
    centre = P.mean(axis=0)
    cos = abs(normal @ centre) / np.linalg.norm(centre)
    if cos < np.cos(np.radians(max_obliquity_deg)) or centre[2] <= 0:
        raise BoardNotVisibleError("ChArUco board not visible: behind the camera or seen edge-on")
    keep = P[:, 2] > 0.05
    uv = (K @ (P / P[:, 2:3]).T).T[:, :2]
    w, h = image_size
    keep &= (uv[:, 0] >= 2) & (uv[:, 0] < w - 2) & (uv[:, 1] >= 2) & (uv[:, 1] < h - 2)
    if keep.sum() < MIN_CORNERS:
        raise BoardNotVisibleError(f"ChArUco board not visible: {int(keep.sum())} corners in view")
    if noise_px > 0:
        rng = rng or np.random.default_rng(0)
        uv = uv + rng.normal(0, noise_px, uv.shape)
    return obj[keep], uv[keep]
