"""Fixtures shared by the training tests: small datasets written by the real recorder's writer (no sim needed)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from dreamvla_client.conventions import ACTION_NAMES, STATE_DIM, STATE_LAYOUT
from teleop.dataset import CameraSpec, DatasetConfig, DatasetWriter
from teleop.dataset import layout as L

# (episode, frame, camera) -> (rgb HxWx3 uint8, depth HxW uint16 mm)
FrameFn = Callable[[int, int, str], tuple[np.ndarray, np.ndarray]]


def textured_frame(ep: int, i: int, cam: str, height: int = 48, width: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic, smoothly varying picture and a depth ramp (mm) with a hole in the top-left corner."""
    y, x = np.mgrid[0:height, 0:width]
    phase = 0.3 * i + ep + (cam == "wrist")
    rgb = np.stack([128 + 100 * np.sin(x / 7 + phase), 128 + 100 * np.cos(y / 5 - phase),
                    128 + 60 * np.sin((x + y) / 11)], axis=-1).astype(np.uint8)
    depth = (500 + 10 * x + 5 * y + 3 * i).astype(np.uint16)
    depth[:4, :6] = 0
    return rgb, depth


def write_dataset(root: Path, lengths: Sequence[int], frame: FrameFn = textured_frame,
                  cameras: Sequence[str] = ("static", "wrist"), size: tuple[int, int] = (48, 64),
                  instructions: Sequence[str] | None = None, seeds: Sequence[int | None] | None = None) -> Path:
    """A dv-teleop-layout dataset (h264 video, 16-bit depth PNGs) with `lengths[e]` frames in episode e; the
    state/action of row i of episode e are i + 100*e in every component, so a reader's row order is checkable."""
    h, w = size
    cfg = DatasetConfig(fps=15, cameras={c: CameraSpec(height=h, width=w, depth=True) for c in cameras},
                        state_names=list(STATE_LAYOUT), action_names=list(ACTION_NAMES), video_codec="h264")
    with DatasetWriter(root, cfg) as writer:
        for ep, n in enumerate(lengths):
            task = instructions[ep] if instructions else "pick up the bottle"
            with writer.episode(task) as episode:
                for i in range(n):
                    pics = {c: frame(ep, i, c) for c in cameras}
                    v = np.full(STATE_DIM, i + 100 * ep, np.float32)
                    episode.add_frame(v, -v, images={c: p[0] for c, p in pics.items()},
                                      depth={c: p[1] for c, p in pics.items()})
    if seeds is not None:
        session = {"task": "pick_bottle", "episodes": {str(e): {"seed": s} for e, s in enumerate(seeds)}}
        L.atomic_write_json(root / "meta" / "dv_sessions" / "session.json", session)
    return root


@pytest.fixture
def dataset_factory(tmp_path: Path) -> Callable[..., Path]:
    """write_dataset into a fresh folder under tmp_path (name it with `name=`)."""

    def make(lengths: Sequence[int], name: str = "ds", **kwargs) -> Path:
        return write_dataset(tmp_path / name, lengths, **kwargs)

    return make


def read_info(root: Path) -> dict:
    return json.loads((root / L.INFO).read_text())
