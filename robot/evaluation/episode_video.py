"""One mp4 per evaluated episode from one camera, with the task, step and outcome drawn on it: a success rate says
how often, the video says how (a near miss, a slip, a wrong object)."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from robot.runner import EpisodeRecord, TickRecord
from robot.video import VideoStream

log = logging.getLogger(__name__)


class EpisodeVideo:
    """A `StepSink`: keeps one camera's frames during the episode (no I/O on the loop's thread) and encodes them
    after the episode, when the outcome is known and the arm is at rest."""

    def __init__(self, out_dir: Path, camera: str, fps: int, task: str, codec: str = "h264") -> None:
        self.out_dir, self.camera, self.fps, self.task, self.codec = out_dir, camera, fps, task, codec
        self._frames: list[tuple[int, np.ndarray]] = []
        self._episode = 0
        self.paths: dict[int, Path] = {}

    def begin(self, episode: int, instruction: str) -> None:
        self._episode, self._frames = episode, []

    def record(self, tick: TickRecord) -> None:
        frame = tick.frames.get(self.camera) if tick.frames is not None else None
        if frame is not None:
            self._frames.append((tick.tick, frame.color.copy()))  # a driver may recycle its buffer

    def end(self, record: EpisodeRecord) -> None:
        if not self._frames:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"{self.task}-episode{record.index:03d}-{record.outcome.replace(':', '-')}.mp4"
        height, width = self._frames[0][1].shape[:2]
        stream = VideoStream(path, self.codec, self.fps, width, height)
        try:
            for tick, rgb in self._frames:
                stream.write(overlay(rgb, f"{self.task}  step {tick}", record.outcome, record.success))
        finally:
            stream.release()
            self._frames = []
        self.paths[record.index] = path


def overlay(rgb: np.ndarray, text: str, outcome: str, success: bool) -> np.ndarray:
    """A copy of the frame with a one-line caption; the outcome is coloured so a grid of thumbnails reads at once."""
    out = np.ascontiguousarray(rgb).copy()
    scale = max(0.3, out.shape[1] / 640 * 0.5)
    thickness = 1
    colour = (40, 200, 40) if success else (220, 60, 40)
    (_, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    cv2.rectangle(out, (0, 0), (out.shape[1], 2 * h + 8), (0, 0, 0), -1)
    cv2.putText(out, text, (3, h + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    cv2.putText(out, outcome, (3, 2 * h + 6), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)
    return out
