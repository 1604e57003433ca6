"""3Dconnexion SpaceMouse teleoperation through `pyspacemouse` (HID; Linux needs hidapi and a udev rule).

The device's six axes (each -1..1, read in pyspacemouse's ROS convention: x forward, y left, z up, rotations
about those axes) become a velocity of `ee` in `base` after a dead zone, scaled to `speed_mps`/`turn_rps`, and
rotated by `yaw_offset_deg` about z so that "forward" on the puck is forward for where the operator stands
(0: behind the robot, looking along base x; 180: facing it across the table). Left button: toggle the gripper;
right button: end the episode. A reader thread polls the device at `poll_hz` (as diffusion_policy
does at 200 Hz), so the control loop only ever reads the newest state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.spatial.transform import Rotation

from teleop.devices.command import TeleopCommand


class SpaceMouseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    speed_mps: float = Field(0.1, gt=0, le=0.25, description="Translation speed at full deflection.")
    turn_rps: float = Field(0.5, gt=0, le=1.0, description="Rotation speed at full deflection.")
    deadzone: float = Field(0.08, ge=0, lt=1, description="Deflections below this (per axis) count as zero.")
    yaw_offset_deg: float = Field(0.0, description="Rotation of the operator's frame about base z.")
    poll_hz: float = Field(200.0, gt=0, le=1000)
    stale_s: float = Field(0.25, gt=0, description="Without a fresh reading for this long the command is zero.")


class SpaceMouseUnavailable(RuntimeError):
    """pyspacemouse is not installed or no device could be opened; the message says what to do."""


def open_pyspacemouse() -> Any:
    try:
        import pyspacemouse
    except ImportError as exc:
        raise SpaceMouseUnavailable("--device spacemouse needs pyspacemouse: pip install pyspacemouse (and the "
                                    "hidapi library, e.g. apt install libhidapi-hidraw0)") from exc
    try:
        return pyspacemouse.open(axis_convention=pyspacemouse.AxisConvention.ROS)
    except Exception as exc:  # noqa: BLE001 - pyspacemouse raises RuntimeError/OSError/ValueError variously
        raise SpaceMouseUnavailable(f"no SpaceMouse could be opened ({exc}); is it plugged in, and may this user "
                                    "read /dev/hidraw*?") from exc


def _deadzone(v: np.ndarray, dz: float) -> np.ndarray:
    """Zero below the dead zone, then rescaled so the output still spans 0..1 (no jump at the threshold)."""
    mag = np.clip((np.abs(v) - dz) / (1.0 - dz), 0.0, 1.0)
    return np.sign(v) * mag


class SpaceMouseSource:
    """A `CommandSource` reading a pyspacemouse device (`open_device` returns an object with `read()` and
    `close()`, whose state has x, y, z, roll, pitch, yaw and buttons)."""

    def __init__(self, config: SpaceMouseConfig | None = None,
                 open_device: Callable[[], Any] = open_pyspacemouse) -> None:
        self.config = config or SpaceMouseConfig()
        self._device = open_device()
        self._frame = Rotation.from_euler("z", self.config.yaw_offset_deg, degrees=True).as_matrix()
        self._lock = threading.Lock()
        self._axes = np.zeros(6)
        self._buttons: list[int] = []
        self._gripper_open, self._end = True, False
        self._read_at = time.monotonic()
        self.error: str | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._poll, name="spacemouse", daemon=True)
        self._thread.start()

    def start(self) -> None:
        with self._lock:
            self._gripper_open, self._end = True, False

    def command(self) -> TeleopCommand:
        with self._lock:
            axes, gripper_open, end = self._axes.copy(), self._gripper_open, self._end
            if time.monotonic() - self._read_at > self.config.stale_s:  # unplugged or hung: never keep moving
                axes[:] = 0.0
        axes = _deadzone(axes, self.config.deadzone)
        return TeleopCommand(self._frame @ axes[:3] * self.config.speed_mps,
                             self._frame @ axes[3:] * self.config.turn_rps, gripper_open, end)

    def apply(self, state: Any) -> None:
        """Take one device state: the axes, and a button that went down since the last state."""
        buttons = [int(b) for b in state.buttons]
        with self._lock:
            pressed = [i for i, b in enumerate(buttons) if b and not (i < len(self._buttons) and self._buttons[i])]
            self._axes = np.array([state.x, state.y, state.z, state.roll, state.pitch, state.yaw], dtype=float)
            self._buttons = buttons
            self._read_at = time.monotonic()
            if 0 in pressed:
                self._gripper_open = not self._gripper_open
            if 1 in pressed:
                self._end = True

    def _poll(self) -> None:
        period = 1.0 / self.config.poll_hz
        while not self._closing:
            try:
                state = self._device.read()
            except Exception as exc:  # noqa: BLE001 - a lost device must stop the arm, not kill silently
                self.error = f"SpaceMouse read failed: {exc}"
                return  # command() goes to zero once the last reading is stale
            self.apply(state)
            time.sleep(period)

    def close(self) -> None:
        self._closing = True
        self._thread.join(1.0)
        self._device.close()
