"""An mp4 stream fed RGB frames: the recorder writes one per camera per episode, the evaluator one per episode."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import cv2
import numpy as np


def count_video_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return -1
        n = 0
        while cap.grab():
            n += 1
        return n
    finally:
        cap.release()


class VideoStream:
    """One camera's mp4, fed RGB frames. ``mp4v`` (MPEG-4 Part 2) through OpenCV, no extra dependency; ``h264``
    through PyAV's libx264 with LeRobot's encoder defaults (keyframe every 2 frames, crf 30), which LeRobot's
    dataset tools (delete/split/re-encode) and browsers also accept. OpenCV decodes both (count_video_frames)."""

    def __init__(self, path: Path, codec: str, fps: int, width: int, height: int) -> None:
        self.codec, self._open = codec, True
        if codec == "h264":
            try:
                import av
            except ImportError as exc:
                raise OSError(errno.ENOPKG, "video_codec 'h264' needs the PyAV package (pip install av)") from exc
            self._box = av.open(str(path), "w")
            self._st = self._box.add_stream("libx264", rate=fps)
            self._st.width, self._st.height, self._st.pix_fmt = width, height, "yuv420p"
            self._st.options = {"g": "2", "crf": "30"}
            self._frame = av.VideoFrame.from_ndarray
        else:
            self._cv = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), float(fps), (width, height))
            self._open = self._cv.isOpened()

    def isOpened(self) -> bool:  # noqa: N802 - cv2.VideoWriter's name
        return self._open

    def write(self, rgb: np.ndarray) -> None:
        if self.codec == "h264":
            self._encode(self._frame(rgb, format="rgb24"))
        else:
            self._cv.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def _encode(self, frame: Any) -> None:
        try:
            for pkt in self._st.encode(frame):
                self._box.mux(pkt)
        except OSError:
            raise
        except Exception as exc:  # PyAV's FFmpegError that is not an OSError: an encoder failure all the same
            raise OSError(errno.EIO, f"h264 encoder: {exc}") from exc

    def release(self) -> None:
        """Flush and close; idempotent."""
        if self.codec != "h264":
            self._cv.release()
        elif self._open:
            self._open = False
            try:
                self._encode(None)
            finally:
                self._box.close()
