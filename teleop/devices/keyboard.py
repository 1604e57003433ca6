"""Keyboard teleoperation from a terminal: each key press moves the target along one `base` axis for a moment.

    w/s  +x/-x    a/d  +y/-y    r/f  +z/-z      (metres per second: `speed_mps`)
    u/o  roll     i/k  pitch    j/l  yaw         (radians per second: `turn_rps`)
    space  toggle the gripper        enter  end the episode        y/n  answer the keep/discard question

A terminal reports a held key as repeated presses (after the first, at its auto-repeat rate), so a press keeps
its axis moving for `hold_s`: long enough to bridge the repeats, short enough that letting go stops the arm
within a few ticks. Keys come from `robot.estop.keys` sources (a raw terminal, or any `KeySource` in tests).
"""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from robot.estop.keys import KeySource
from teleop.devices.command import TeleopCommand

_AXES = {"w": (0, 1), "s": (0, -1), "a": (1, 1), "d": (1, -1), "r": (2, 1), "f": (2, -1),
         "u": (3, 1), "o": (3, -1), "i": (4, 1), "k": (4, -1), "j": (5, 1), "l": (5, -1)}
HELP = "w/s a/d r/f move x/y z · u/o i/k j/l roll/pitch/yaw · space gripper · enter end episode"


class KeyboardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    speed_mps: float = Field(0.05, gt=0, le=0.25, description="Translation speed while a key is held.")
    turn_rps: float = Field(0.3, gt=0, le=1.0, description="Rotation speed while a key is held.")
    hold_s: float = Field(0.15, gt=0, le=1.0, description="How long one press keeps its axis moving.")


class KeyboardSource:
    """A `CommandSource` fed by a thread that reads `keys`."""

    def __init__(self, keys: KeySource, config: KeyboardConfig | None = None) -> None:
        self.config = config or KeyboardConfig()
        self._keys = keys
        self._lock = threading.Lock()
        self._until = np.zeros(6)  # per axis: monotonic time until which it moves
        self._sign = np.zeros(6)
        self._gripper_open, self._end = True, False
        self.answers: queue.Queue[str] = queue.Queue()  # y/n presses, for `KeyAnswers`
        self._closing = False
        self._thread = threading.Thread(target=self._read, name="keyboard", daemon=True)
        self._thread.start()

    def start(self) -> None:
        with self._lock:
            self._until[:], self._gripper_open, self._end = 0.0, True, False

    def command(self) -> TeleopCommand:
        now = time.monotonic()
        with self._lock:
            moving = np.where(self._until > now, self._sign, 0.0)
            return TeleopCommand(moving[:3] * self.config.speed_mps, moving[3:] * self.config.turn_rps,
                                 self._gripper_open, self._end)

    def press(self, key: str) -> None:
        """Apply one key (the reader thread calls this; unknown keys are ignored)."""
        with self._lock:
            if key in _AXES:
                axis, sign = _AXES[key]
                self._sign[axis], self._until[axis] = sign, time.monotonic() + self.config.hold_s
            elif key == " ":
                self._gripper_open = not self._gripper_open
            elif key in ("\n", "\r"):
                self._end = True
            elif key in ("y", "n"):
                self.answers.put(key)

    def _read(self) -> None:
        while not self._closing:
            key = self._keys.read(0.05)
            if key is not None:
                self.press(key.lower())

    def close(self) -> None:
        self._closing = True
        self._thread.join(1.0)
        self._keys.close()
