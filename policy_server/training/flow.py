"""Point tracks for the dynamic-region mask: where a lattice of points moves between frame j and frame j + gap.

The lattice is (2*grid)^2 points at the centres of (R/(2*grid))-px cells of the model-resolution image, the
layout `policy_server.model.knowledge.flow_motion_mask` pools 2x2 into one cell per patch. Displacements are
(dx, dy) in pixels of that image; the last `gap` frames of an episode have no partner and stay 0, as the
released extractor writes them.

Two trackers:
- `dis` (default): OpenCV's dense DIS optical flow on CPU, averaged over each lattice cell (the cell's mean flow
  is its centre's displacement for a rigid patch, and is steadier than one pixel's). It needs no weights and
  runs the same on sim and real recordings.
- `cotracker`: CoTracker3 offline, as the released extractor, only when its weights and package are installed.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

COTRACKER_FILE = "scaled_offline.pth"
COTRACKER_URL = "https://huggingface.co/facebook/cotracker3/resolve/main/scaled_offline.pth"
# Where local teacher weights are looked for (no download at run time): $DV_WEIGHTS_DIR, then this folder.
WEIGHTS_DIR = Path("~/.cache/dreamvla/weights")
DIS_MIN_SIZE = 128  # px the dense flow runs at, at least (see dis_tracks)
EVIDENCE_GREY_LEVELS = 2.0  # how much of a cell's change (mean |difference|, 0-255 grey) its flow must explain


class MissingTeacherError(FileNotFoundError):
    """A teacher's weights (or package) are not on this machine; the message names what to install."""


def tracker_settings(method: str | None) -> dict[str, int | float | str]:
    """The settings a tracker's output depends on; a cache records them, so retuning one invalidates it."""
    if method == "dis":
        return {"preset": "medium", "min_size_px": DIS_MIN_SIZE, "evidence_grey_levels": EVIDENCE_GREY_LEVELS}
    if method == "cotracker":
        return {"weights": COTRACKER_FILE, "clip": "pairs"}
    return {}


def weights_dir() -> Path:
    return Path(os.environ.get("DV_WEIGHTS_DIR", str(WEIGHTS_DIR))).expanduser()


def _cell(size: int, grid: int) -> int:
    points = 2 * grid
    if size % points:
        raise ValueError(f"image size {size} is not a multiple of the {points}-point track lattice")
    return size // points


def lattice_centres(size: int, grid: int) -> np.ndarray:
    """((2*grid)^2, 2) (x, y) pixel coordinates of the lattice, row-major (row = y), as the tracks are ordered."""
    c = _cell(size, grid)
    ys, xs = np.mgrid[0 : 2 * grid, 0 : 2 * grid]
    return np.stack([xs.ravel(), ys.ravel()], axis=-1).astype(np.float32) * c + (c - 1) / 2


def dis_tracks(images: np.ndarray, gap: int, grid: int) -> np.ndarray:
    """(n, R, R, 3) uint8 RGB -> (n, (2*grid)^2, 2) float32 displacements from frame j to j + gap.

    Two choices, measured on sim recordings and on synthetic h264 clips (64 px, threshold 0.29 px):
    - The flow runs on frames upsampled to at least `DIS_MIN_SIZE` px: DIS's smallest patches (8 px) span an
      eighth of a 64-px image, and its motion boundaries bled a cell further.
    - A cell keeps its flow only where the flow explains the change: warping frame j + gap back by it must
      lower the cell's mean |grey difference| to frame j by `EVIDENCE_GREY_LEVELS` or more. Elsewhere the
      displacement is 0. DIS extrapolates flow into still or untextured cells from their neighbours: an
      untextured floor next to the arm read 0.2-0.4 px, an image corner 3.8 px, cells beside a moving edge
      1-2 px, and h264 noise on a still background 0.1-0.5 px, all above the threshold. A tracker reports a
      still point as still, and so does this rule: there, zero flow matches the next frame as well as DIS's
      flow does.
    """
    n, size = images.shape[0], images.shape[1]
    c, points = _cell(size, grid), 2 * grid
    out = np.zeros((n, points * points, 2), np.float32)
    if n <= gap:
        return out
    up = -(-DIS_MIN_SIZE // size)  # ceil
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    gray = [cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) for im in images]
    big = [cv2.resize(g, None, fx=up, fy=up, interpolation=cv2.INTER_CUBIC) if up > 1 else g for g in gray]
    cells = lambda x: x.reshape(points, c, points, c, *x.shape[2:]).mean(axis=(1, 3))  # noqa: E731
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    for j in range(n - gap):
        flow = dis.calc(big[j], big[j + gap], None)  # (uR, uR, 2): (dx, dy) per pixel, in upsampled pixels
        if up > 1:
            flow = cv2.resize(flow, (size, size), interpolation=cv2.INTER_AREA) / up
        now, later = gray[j].astype(np.float32), gray[j + gap].astype(np.float32)
        warped = cv2.remap(later, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
        explained = cells(np.abs(later - now)) - cells(np.abs(warped - now))  # (2g, 2g) grey levels
        cell_flow = cells(flow)  # (2g, 2g, 2)
        cell_flow[explained < EVIDENCE_GREY_LEVELS] = 0.0
        out[j] = cell_flow.reshape(-1, 2)
    return out


def cotracker_weights() -> Path:
    """The CoTracker3 checkpoint on disk, or MissingTeacherError naming the file and where to put it."""
    path = weights_dir() / COTRACKER_FILE
    if not path.is_file():
        raise MissingTeacherError(f"CoTracker3 weights not found at {path}: download {COTRACKER_FILE} "
                                  f"({COTRACKER_URL}) into {path.parent} (or set DV_WEIGHTS_DIR), or use --flow dis")
    try:
        import cotracker  # noqa: F401
    except ImportError:
        raise MissingTeacherError("--flow cotracker needs the `cotracker` package (pip install "
                                  "git+https://github.com/facebookresearch/co-tracker), or use --flow dis") from None
    return path


class CoTracker:
    """CoTracker3 offline on 2-frame clips (j, j + gap) from the lattice, as the released extractor runs it."""

    def __init__(self, path: Path) -> None:
        import torch
        from cotracker.predictor import CoTrackerPredictor

        self._torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = CoTrackerPredictor(checkpoint=str(path), offline=True, window_len=60).to(self.device).eval()

    def tracks(self, images: np.ndarray, gap: int, grid: int) -> np.ndarray:
        torch, n, size = self._torch, images.shape[0], images.shape[1]
        out = np.zeros((n, (2 * grid) ** 2, 2), np.float32)
        centres = torch.from_numpy(lattice_centres(size, grid))
        queries = torch.cat([torch.zeros(len(centres), 1), centres], dim=1)[None].to(self.device)  # (1, P, t x y)
        with torch.no_grad():
            for j in range(n - gap):
                clip = torch.from_numpy(images[[j, j + gap]]).permute(0, 3, 1, 2)[None].float().to(self.device)
                tracks, _ = self.model(clip, queries=queries)  # (1, 2, P, 2)
                out[j] = (tracks[0, 1] - tracks[0, 0]).cpu().numpy()
        return out
