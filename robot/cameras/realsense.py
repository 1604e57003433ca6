"""Intel RealSense D4xx driver (the rig's two D415s) on a librealsense `rs.pipeline`.

A daemon thread pulls framesets with a short `wait_for_frames` timeout (≤ 200 ms, so it notices a stop request
quickly), aligns depth to colour with `rs.align`, converts depth to uint16 millimetres with the device's own
depth scale, and publishes into the `LatestFrame` slot that `read()`/`read_latest()` serve.

Choices and why:
- Identity of a frame is the *colour* frame (its number and device timestamp): the pipeline completes
  every frameset with the last frame of a missing stream, so each colour frame is emitted again next to the
  following depth frame. That re-emission is skipped silently; a colour frame *number* that repeats with a
  new timestamp is a device duplicate and is counted (`stats.duplicates`).
- With depth on, only pairs whose timestamps are within half a frame period (the syncer's own tolerance)
  are published, so a colour frame never carries depth from another instant.
- A stream that publishes nothing new for `reconnect_after_s` (a USB drop, a hung device) is restarted
  with exponential backoff, from the capture thread; a recording that reached its end is not (it is over,
  and reads time out with the reason). Nothing here can block `disconnect()` beyond its bounded join, and
  the thread is a daemon, so Ctrl-C / SIGTERM always end the process.
- Live devices get `auto_exposure_priority` off, so the colour stream holds its frame rate in low light
  instead of stretching exposure (librealsense #7837).

`playback_file` replaces `serial` with a librealsense recording (.db3/.bag): the same code path, which is how
the tests exercise this driver without a camera.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyrealsense2 as rs
from pydantic import Field, model_validator

from robot.cameras.base import Camera, CameraConfig, CameraError, Frame, Intrinsics, register_camera

_BACKOFF_START_S = 0.25


class RealSenseConfig(CameraConfig):
    """A RealSense by serial number, or a recording played back through the same pipeline."""

    type: Literal["realsense"] = "realsense"
    serial: str | None = Field(None, description="Device serial (`rs-enumerate-devices`); required for live use.")
    playback_file: Path | None = Field(None, description="A librealsense recording to play instead of a device.")
    playback_realtime: bool = Field(
        True, description="Play at the recorded pace (frames may drop, as live); False: every frame, in order."
    )
    wait_timeout_ms: int = Field(100, gt=0, le=200, description="wait_for_frames timeout in the capture thread.")
    stale_after_s: float = Field(0.25, gt=0.0, description="A frame older than this when handed out counts stale.")
    reconnect_after_s: float = Field(1.0, gt=0.0, description="Restart the pipeline after this long without frames.")
    max_backoff_s: float = Field(5.0, gt=0.0, description="Longest wait between restart attempts.")

    @model_validator(mode="after")
    def _one_source(self) -> RealSenseConfig:
        if (self.serial is None) == (self.playback_file is None):
            raise ValueError("set exactly one of 'serial' (a device) or 'playback_file' (a recording)")
        return self


@dataclass
class _Session:
    """One started pipeline and what is needed to turn its framesets into `Frame`s."""

    pipeline: rs.pipeline
    device: rs.device
    playback: rs.playback | None
    align: rs.align | None
    depth_to_mm: float  # raw z16 × this = millimetres (1.0 for a stock D415, whose depth unit is 1 mm)


@dataclass(frozen=True)
class FactoryIntrinsics(Intrinsics):
    """The colour stream's intrinsics as the device reports them (its factory calibration) and the depth scale.

    `dv-calib intrinsics` stores these in the launch config; depth is aligned to colour, so the colour
    intrinsics are the ones that describe every pixel a `Frame` carries.
    """

    model: str  # librealsense's distortion model name, e.g. 'brown_conrady' or 'inverse_brown_conrady'
    coeffs: tuple[float, ...]
    depth_scale_m: float | None  # metres per raw z16 unit; None when the config has depth off


@register_camera(RealSenseConfig)
class RealSenseCamera(Camera):
    """Colour (RGB8) + depth aligned to colour from one RealSense, captured by a background thread."""

    config: RealSenseConfig

    def __init__(self, config: RealSenseConfig) -> None:
        super().__init__(config, stale_after_s=config.stale_after_s)
        self._session: _Session | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._connected = False
        self._last_color: tuple[int, float] | None = None

    @property
    def is_connected(self) -> bool:
        return self._connected

    @property
    def device(self) -> rs.device | None:
        """The librealsense device of the running pipeline (for diagnostics, or to pause a playback)."""
        session = self._session
        return session.device if session is not None else None

    def connect(self) -> None:
        """Start the pipeline now (so a wrong serial or file fails here, loudly) and the capture thread."""
        if self._connected:
            return
        self._stop.clear()
        self._last_color = None
        self._session = self._open()
        self._thread = threading.Thread(target=self._run, name=f"realsense-{self.name}", daemon=True)
        self._connected = True
        self._thread.start()

    def disconnect(self, timeout_s: float = 2.0) -> None:
        """Ask the capture thread to stop the pipeline and wait at most `timeout_s` for it."""
        self._connected = False
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def factory_intrinsics(self) -> FactoryIntrinsics:
        """Read the colour intrinsics and depth scale from the running pipeline, or from a briefly opened one."""
        session = self._session
        if session is not None:
            return _read_intrinsics(session)
        session = self._open()
        try:
            return _read_intrinsics(session)
        finally:
            self._close(session)

    # -- the capture thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        session = self._session
        while session is not None:
            outcome = self._stream(session)
            self._close(session)
            self._session = None
            session = self._reopen() if outcome == "stalled" else None

    def _stream(self, session: _Session) -> Literal["stopping", "ended", "stalled"]:
        cfg = self.config
        last_new = time.monotonic()
        while not self._stop.is_set():
            try:
                frames = session.pipeline.wait_for_frames(cfg.wait_timeout_ms)
            except RuntimeError as e:  # librealsense reports both timeouts and device errors this way
                if session.playback is not None and session.playback.current_status() == rs.playback_status.stopped:
                    self.last_error = "playback reached the end of the recording"
                    return "ended"
                problem = str(e)
            else:
                frame = self._to_frame(frames, session, time.monotonic_ns())
                if frame is not None and self._slot.publish(frame):
                    last_new = time.monotonic()
                    self.last_error = None
                    continue
                problem = "framesets arrive but none is new (repeated frame numbers or no colour/depth pair)"
            if time.monotonic() - last_new > cfg.reconnect_after_s:
                self.last_error = f"no new frame for {cfg.reconnect_after_s:.1f} s: {problem}; restarting"
                return "stalled"
        return "stopping"

    def _reopen(self) -> _Session | None:
        """Restart after a stall, backing off exponentially; None if asked to stop meanwhile."""
        delay = _BACKOFF_START_S
        while not self._stop.wait(delay):
            try:
                session = self._open()
            except CameraError as e:
                self.last_error = str(e)
                delay = min(2 * delay, self.config.max_backoff_s)
                continue
            self._session = session
            self._last_color = None
            self.stats.reconnects += 1
            return session
        return None

    def _to_frame(self, frames: rs.composite_frame, session: _Session, capture_ns: int) -> Frame | None:
        color = frames.get_color_frame()
        if not color:
            return None
        key = (color.get_frame_number(), color.get_timestamp())
        if key == self._last_color:
            return None  # the pipeline re-emitted this colour frame beside a newer depth frame
        depth_mm = None
        if session.align is not None:
            depth = frames.get_depth_frame()
            if not depth or abs(depth.get_timestamp() - key[1]) > 500.0 / self.config.fps:
                return None  # not a pair from one instant; the matching set follows
            aligned = session.align.process(frames).get_depth_frame()
            depth_mm = _to_millimetres(np.asanyarray(aligned.get_data()), session.depth_to_mm)
        self._last_color = key
        # Copy: librealsense recycles frame buffers once the frame object is released.
        return Frame(np.array(np.asanyarray(color.get_data())), depth_mm, capture_ns, key[1], key[0])

    # -- pipeline setup --------------------------------------------------------------------------------------

    def _open(self) -> _Session:
        cfg = self.config
        rs_cfg = rs.config()
        if cfg.playback_file is not None:
            if not cfg.playback_file.is_file():
                raise CameraError(f"camera {self.name!r}: recording {cfg.playback_file} does not exist")
            rs_cfg.enable_device_from_file(str(cfg.playback_file), False)  # no repeat: the end is the end
            source = f"recording {cfg.playback_file}"
        else:
            present = [d.get_info(rs.camera_info.serial_number) for d in rs.context().query_devices()]
            if cfg.serial not in present:  # checked first: pipeline.start would wait ~15 s for it to appear
                raise CameraError(f"camera {self.name!r}: no RealSense with serial {cfg.serial} (connected: {present})")
            rs_cfg.enable_device(cfg.serial)
            source = f"RealSense {cfg.serial}"
        rs_cfg.enable_stream(rs.stream.color, cfg.width, cfg.height, rs.format.rgb8, cfg.fps)
        if cfg.depth:
            rs_cfg.enable_stream(rs.stream.depth, cfg.width, cfg.height, rs.format.z16, cfg.fps)
        pipeline = rs.pipeline()
        try:
            # Settings go on the resolved device before start (pipeline.start reuses it): a playback switched
            # to non-real-time only after start has already dropped its first frames.
            _configure(rs_cfg.resolve(pipeline).get_device(), cfg)
            device = pipeline.start(rs_cfg).get_device()
        except RuntimeError as e:
            raise CameraError(
                f"camera {self.name!r}: cannot start {source} with colour"
                f"{' + depth' if cfg.depth else ''} {cfg.width}x{cfg.height}@{cfg.fps}: {e}"
            ) from e
        playback = device.as_playback() if cfg.playback_file is not None else None
        depth_to_mm = device.first_depth_sensor().get_depth_scale() * 1000.0 if cfg.depth else 1.0
        align = rs.align(rs.stream.color) if cfg.depth else None
        return _Session(pipeline, device, playback, align, depth_to_mm)

    @staticmethod
    def _close(session: _Session) -> None:
        try:
            session.pipeline.stop()
        except RuntimeError:
            pass  # already stopped, or the device is gone: nothing left to release


def _read_intrinsics(session: _Session) -> FactoryIntrinsics:
    profile = session.pipeline.get_active_profile().get_stream(rs.stream.color).as_video_stream_profile()
    i = profile.get_intrinsics()
    depth_sensor = session.device.first_depth_sensor() if session.align is not None else None
    return FactoryIntrinsics(
        width=i.width, height=i.height, fx=i.fx, fy=i.fy, cx=i.ppx, cy=i.ppy, model=i.model.name,
        coeffs=tuple(float(c) for c in i.coeffs),
        depth_scale_m=float(depth_sensor.get_depth_scale()) if depth_sensor is not None else None,
    )


def _configure(device: rs.device, cfg: RealSenseConfig) -> None:
    """A playback's pace; on a live device, auto-exposure priority off (constant frame rate, #7837)."""
    if cfg.playback_file is not None:
        device.as_playback().set_real_time(cfg.playback_realtime)
        return
    for sensor in device.query_sensors():
        if sensor.is_color_sensor() and sensor.supports(rs.option.auto_exposure_priority):
            sensor.set_option(rs.option.auto_exposure_priority, 0.0)


def _to_millimetres(raw: np.ndarray, depth_to_mm: float) -> np.ndarray:
    """Raw z16 depth units → uint16 mm (0 stays 0 = no data); a copy, since the buffer is recycled."""
    if abs(depth_to_mm - 1.0) < 1e-9:
        return np.array(raw, dtype=np.uint16)
    return np.clip(np.rint(raw * depth_to_mm), 0, np.iinfo(np.uint16).max).astype(np.uint16)
