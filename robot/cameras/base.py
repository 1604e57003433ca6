"""The camera driver interface: a pydantic config, a `Camera` class, and a factory keyed by the config's type.

The shape follows LeRobot's cameras (DESIGN.md, "Shapes worth borrowing"): `connect()`, a blocking `read()`
that returns a *new* frame or raises `CameraTimeout`, a never-blocking `read_latest()`, `disconnect()` and a
context manager. The control loop, not the driver, decides whether a frame is too old to use, so every
`Frame` carries the host's monotonic receive time next to the device timestamp and frame number
(docs/conventions.md, "Units and clocks").

Drivers register themselves with `@register_camera`; `make_camera` imports `robot.cameras.<type>` on first use,
so adding a driver never means editing this file and the factory never imports a vendor SDK it does not need.
"""

from __future__ import annotations

import importlib
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from robot.connection import Connectable


class CameraError(RuntimeError):
    """A camera could not be opened or stopped delivering frames."""


class CameraTimeout(CameraError):
    """No new frame arrived within the read timeout; the message names the camera and the wait."""


class CameraConfig(BaseModel):
    """Fields every camera shares. Subclasses narrow `type` to a `Literal` that names their driver."""

    model_config = ConfigDict(extra="forbid")

    type: str
    name: str = Field(description="Role of the camera in the rig, e.g. 'static' or 'wrist' (docs/conventions.md).")
    width: int = Field(640, gt=0)
    height: int = Field(480, gt=0)
    fps: int = Field(30, gt=0)
    depth: bool = Field(True, description="Also deliver depth aligned to the colour image.")


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics of a colour image, OpenCV convention (pixel centres at integer coordinates)."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float


@dataclass(frozen=True)
class Frame:
    """One colour (+ depth) capture.

    color: uint8 (H, W, 3) RGB. depth: uint16 (H, W) millimetres aligned to `color`, 0 = no data, or None.
    capture_ns: `time.monotonic_ns()` when the host received the frame — the clock the control loop uses.
    device_ts_ms: the camera's own timestamp; frame_number: the camera's counter (repeats reveal duplicates).
    """

    color: np.ndarray
    depth: np.ndarray | None
    capture_ns: int
    device_ts_ms: float
    frame_number: int

    def age_s(self, now_ns: int | None = None) -> float:
        """Seconds since the host received this frame (on the monotonic clock)."""
        return ((time.monotonic_ns() if now_ns is None else now_ns) - self.capture_ns) * 1e-9


@dataclass
class CameraStats:
    """Counters a driver keeps so that the loop and the benchmark can report camera health.

    frames: published; duplicates: dropped because the device repeated a frame number; dropped: frame numbers
    skipped by the device or the host (gaps); stale: frames handed out older than the driver's `stale_after_s`;
    timeouts: reads that got no new frame; reconnects: device restarts after the stream stalled.
    """

    frames: int = 0
    duplicates: int = 0
    dropped: int = 0
    stale: int = 0
    timeouts: int = 0
    reconnects: int = 0


@dataclass
class LatestFrame:
    """A thread-safe slot holding the newest frame, shared by a capture thread and the readers.

    `publish` drops (and counts) a frame whose number repeats the previous one, so a stalled device never
    looks like fresh data, and counts gaps in the numbering as dropped frames. `wait_new` returns a frame no
    reader has consumed yet, or None after the timeout. `stale_after_s` only counts old frames handed out;
    deciding what to do with them is the caller's job.
    """

    stale_after_s: float = 0.25
    stats: CameraStats = field(default_factory=CameraStats)
    _frame: Frame | None = field(default=None, init=False, repr=False)
    _seq: int = field(default=0, init=False, repr=False)  # frames published
    _consumed: int = field(default=0, init=False, repr=False)  # value of _seq when a reader last took a frame
    _cond: threading.Condition = field(default_factory=threading.Condition, init=False, repr=False)

    def publish(self, frame: Frame) -> bool:
        """Store `frame` as the newest; False (and counted) if it duplicates the previous frame number."""
        with self._cond:
            previous = self._frame.frame_number if self._frame is not None else None
            if frame.frame_number == previous:
                self.stats.duplicates += 1
                return False
            if previous is not None and frame.frame_number > previous + 1:  # a restart counts from 0: no gap
                self.stats.dropped += frame.frame_number - previous - 1
            self._frame = frame
            self._seq += 1
            self.stats.frames += 1
            self._cond.notify_all()
            return True

    def latest(self) -> Frame | None:
        """The newest frame (new or not) without waiting."""
        with self._cond:
            self._consumed = self._seq
            return self._checked(self._frame)

    def wait_new(self, timeout_s: float) -> Frame | None:
        """The newest frame not yet handed out, waiting up to `timeout_s`; None (counted) on timeout."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._seq > self._consumed, timeout=timeout_s):
                self.stats.timeouts += 1
                return None
            self._consumed = self._seq
            return self._checked(self._frame)

    def _checked(self, frame: Frame | None) -> Frame | None:
        if frame is not None and frame.age_s() > self.stale_after_s:
            self.stats.stale += 1
        return frame


class Camera(Connectable, ABC):
    """A connected source of `Frame`s. Subclasses implement connect/disconnect and fill `self._slot`.

    The default `read`/`read_latest` serve frames from a `LatestFrame` slot that a background capture thread
    (or a synchronous renderer) publishes into, so every driver has the same blocking/timeout semantics.
    """

    def __init__(self, config: CameraConfig, stale_after_s: float = 0.25) -> None:
        self.config = config
        self._slot = LatestFrame(stale_after_s=stale_after_s)
        self.last_error: str | None = None  # why frames stopped, if known; quoted in CameraTimeout

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def stats(self) -> CameraStats:
        return self._slot.stats

    @property
    @abstractmethod
    def is_connected(self) -> bool: ...

    @abstractmethod
    def connect(self) -> None:
        """Open the device and start delivering frames; raises `CameraError` if it cannot."""

    @abstractmethod
    def disconnect(self) -> None:
        """Stop delivering frames and release the device; must return promptly and be safe to call twice."""

    def read(self, timeout_s: float = 0.2) -> Frame:
        """Block until a frame not returned before arrives; raise `CameraTimeout` after `timeout_s`."""
        if not self.is_connected:
            raise CameraError(f"camera {self.name!r} is not connected")
        frame = self._slot.wait_new(timeout_s)
        if frame is None:
            why = f" ({self.last_error})" if self.last_error else ""
            raise CameraTimeout(f"camera {self.name!r}: no new frame within {timeout_s * 1e3:.0f} ms{why}")
        return frame

    def read_latest(self) -> Frame | None:
        """The newest frame, possibly one already returned, or None if none has arrived; never blocks."""
        return self._slot.latest()


_REGISTRY: dict[str, tuple[type[CameraConfig], type[Camera]]] = {}


def register_camera(config_cls: type[CameraConfig]) -> Callable[[type[Camera]], type[Camera]]:
    """Class decorator: `@register_camera(MyConfig)` makes `make_camera` build the class for `MyConfig.type`."""
    type_name = config_cls.model_fields["type"].default
    if not isinstance(type_name, str):
        raise TypeError(f"{config_cls.__name__}.type needs a string default naming the driver")

    def decorate(camera_cls: type[Camera]) -> type[Camera]:
        _REGISTRY[type_name] = (config_cls, camera_cls)
        return camera_cls

    return decorate


def _lookup(type_name: str) -> tuple[type[CameraConfig], type[Camera]]:
    if type_name not in _REGISTRY:
        try:
            importlib.import_module(f"{__package__}.{type_name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{type_name}":
                raise  # the driver exists but its SDK is missing: say so, not "unknown type"
        if type_name not in _REGISTRY:
            raise ValueError(f"unknown camera type {type_name!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[type_name]


def camera_config_from_dict(data: dict[str, Any]) -> CameraConfig:
    """Validate a launch-file camera entry with the config class its `type` names (errors name the field)."""
    return _lookup(str(data.get("type")))[0].model_validate(data)


def make_camera(config: CameraConfig) -> Camera:
    """Build the camera driver registered for `config.type` (not connected yet)."""
    config_cls, camera_cls = _lookup(config.type)
    if not isinstance(config, config_cls):
        config = config_cls.model_validate(config.model_dump())
    return camera_cls(config)
