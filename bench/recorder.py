"""`dv-bench record`: what writing one recorded tick costs, per video codec, against the control tick it must fit in.

One run writes the same frames (two 640x480 cameras with depth, as the rig records them; moving synthetic
content, so the encoders have real motion to code) through the dataset writer for each codec, timing each
`add_frame` (video encode + depth PNG + row) and the commit, and reports the bytes per frame. The recorder's
writer thread has the whole tick period for one `add_frame`; the loop itself only pays for a queue put.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from rich.console import Console
from rich.table import Table

from dreamvla_client.conventions import ACTION_NAMES, STATE_LAYOUT
from teleop.dataset import DatasetWriter
from teleop.dataset.layout import CameraSpec, DatasetConfig

CODECS = ("mp4v", "h264")


@dataclass(frozen=True)
class CodecResult:
    codec: str
    frames: int
    add_p50_ms: float
    add_p95_ms: float
    add_max_ms: float
    commit_s: float
    video_kb_per_frame: float
    depth_kb_per_frame: float
    decoded_error: float  # mean |decoded - written| over the static camera's frames, in 8-bit levels


def synthetic_frames(n: int, height: int, width: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """RGB + depth (mm) frames of a textured scene with a block moving across it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 // width), (y * 255 // height), ((x + y) * 127 // (width + height))], -1)
    base = (base + rng.integers(0, 24, (height, width, 3))).clip(0, 255).astype(np.uint8)
    out = []
    for i in range(n):
        rgb, depth = base.copy(), np.full((height, width), 900, np.uint16) + (y // 4).astype(np.uint16)
        x0 = (i * 7) % (width - 80)
        rgb[height // 3:height // 3 + 80, x0:x0 + 80] = (200, 40, 40)
        depth[height // 3:height // 3 + 80, x0:x0 + 80] = 650
        out.append((rgb, depth))
    return out


def bench_codec(codec: str, frames: list[tuple[np.ndarray, np.ndarray]], fps: int, root: Path) -> CodecResult:
    height, width = frames[0][1].shape
    cfg = DatasetConfig(fps=fps, cameras={c: CameraSpec(height=height, width=width, depth=True)
                                          for c in ("static", "wrist")},
                        state_names=list(STATE_LAYOUT), action_names=list(ACTION_NAMES), video_codec=codec)
    times = []
    with DatasetWriter(root, cfg) as writer:
        episode = writer.begin_episode("benchmark")
        state, action = np.zeros(7, np.float32), np.zeros(7, np.float32)
        for rgb, depth in frames:
            t = time.perf_counter()
            episode.add_frame(state, action, {"static": rgb, "wrist": rgb[::-1]}, {"static": depth, "wrist": depth})
            times.append(time.perf_counter() - t)
        t = time.perf_counter()
        episode.commit()
        commit_s = time.perf_counter() - t
    decoded_error = _decoded_error(next((root / "videos" / "observation.images.static").rglob("*.mp4")),
                                   [rgb for rgb, _ in frames])
    video = sum(f.stat().st_size for f in (root / "videos").rglob("*.mp4"))
    depth_bytes = sum(f.stat().st_size for f in (root / "depth").rglob("*.png"))
    ms = np.array(times) * 1e3
    n = len(frames)
    return CodecResult(codec, n, float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), float(ms.max()),
                       commit_s, video / 2 / n / 1024, depth_bytes / 2 / n / 1024, decoded_error)


def _decoded_error(path: Path, written: list[np.ndarray]) -> float:
    """Size alone says nothing without quality: how far the decoded frames are from what was written."""
    capture = cv2.VideoCapture(str(path))
    errors = []
    try:
        for rgb in written:
            ok, bgr = capture.read()
            if not ok:
                raise RuntimeError(f"{path}: decoded {len(errors)} of {len(written)} frames")
            errors.append(np.abs(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(int) - rgb).mean())
    finally:
        capture.release()
    return float(np.mean(errors))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=150, help="ticks per codec (150 = 10 s at 15 Hz)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=int, default=15)


def command(args: argparse.Namespace) -> int:
    if args.frames < 2 or args.width < 96 or args.height < 96:
        raise ValueError("--frames must be >= 2 and the image at least 96x96")
    console = Console()
    frames = synthetic_frames(args.frames, args.height, args.width)
    tmp = Path(tempfile.mkdtemp(prefix="dv-bench-record-"))
    try:
        results = {codec: bench_codec(codec, frames, args.fps, tmp / codec) for codec in CODECS}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    budget_ms = 1e3 / args.fps
    table = Table(title=f"writing one tick: 2 cameras {args.width}x{args.height} RGB + depth, {args.frames} ticks "
                        f"per codec; budget {budget_ms:.1f} ms per tick at {args.fps} Hz")
    for col in ("codec", "add_frame p50 [ms]", "p95 [ms]", "max [ms]", "p95 / budget", "commit [s]",
                "video [KiB/frame]", "decoded error", "depth [KiB/frame]"):
        table.add_column(col, justify="left" if col == "codec" else "right")
    for r in results.values():
        table.add_row(r.codec, f"{r.add_p50_ms:.1f}", f"{r.add_p95_ms:.1f}", f"{r.add_max_ms:.1f}",
                      f"{r.add_p95_ms / budget_ms:.2f}", f"{r.commit_s:.2f}", f"{r.video_kb_per_frame:.1f}",
                      f"{r.decoded_error:.2f}", f"{r.depth_kb_per_frame:.1f}")
    console.print(table)
    a, b = results["h264"], results["mp4v"]
    console.print(f"h264 / mp4v (same run): add_frame p50 {a.add_p50_ms / b.add_p50_ms:.2f}x, "
                  f"video size {a.video_kb_per_frame / b.video_kb_per_frame:.2f}x, "
                  f"decoded error {a.decoded_error / b.decoded_error:.2f}x (error in mean 8-bit levels)")
    return 0
