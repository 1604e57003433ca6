"""What the console's keys do. STOP is one key; RESUME takes two (R, then Y within a few seconds).

STOP must be as easy as possible and RESUME deliberately not: a single stray key can stop the robot but never
release it. An unconfirmed RESUME expires, so a later "y" typed for something else cannot complete it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum

from robot.estop.heartbeat import HeartbeatSender

STOP_KEYS = frozenset({" ", "s", "S"})
RESUME_KEYS = frozenset({"r", "R"})
CONFIRM_KEYS = frozenset({"y", "Y"})
QUIT_KEYS = frozenset({"q", "Q"})
HELP = "SPACE stop · R then Y resume · Q quit (quitting stops the robot)"


class Action(StrEnum):
    """What a key press did."""

    NONE = "NONE"
    STOP = "STOP"
    ASK = "ASK"  # waiting for the RESUME confirmation
    RESUME = "RESUME"
    CANCEL = "CANCEL"
    QUIT = "QUIT"


class Controls:
    """Turns key presses into heartbeat commands; `message` says what the last key did, for the panel."""

    def __init__(self, sender: HeartbeatSender, confirm_timeout_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._sender = sender
        self._confirm_timeout_s = confirm_timeout_s
        self._clock = clock
        self._confirm_since: float | None = None
        self.message = HELP

    @property
    def confirming(self) -> bool:
        """True while a RESUME waits for its Y."""
        if self._confirm_since is not None and self._clock() - self._confirm_since > self._confirm_timeout_s:
            self._confirm_since = None
            self.message = "resume not confirmed in time; cancelled"
        return self._confirm_since is not None

    def press(self, key: str) -> Action:
        """Apply one key and say what it did."""
        confirming = self.confirming
        self._confirm_since = None
        if key in STOP_KEYS:
            self._sender.stop()
            self.message = "STOP sent"
            return Action.STOP
        if key in QUIT_KEYS:
            self.message = "quit"
            return Action.QUIT
        if key in CONFIRM_KEYS and confirming:
            self._sender.resume()
            self.message = "RESUME sent: the robot is armed and moves only after a new start"
            return Action.RESUME
        if key in RESUME_KEYS:
            self._confirm_since = self._clock()
            self.message = f"resume? press Y to confirm (any other key cancels; {self._confirm_timeout_s:.0f} s)"
            return Action.ASK
        if confirming:
            self.message = "resume cancelled"
            return Action.CANCEL
        return Action.NONE
