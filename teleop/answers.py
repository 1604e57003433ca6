"""Where the operator's y/n answers come from while the loop is idle: a line on stdin, or the keyboard device's
own key stream (its thread owns the terminal in cbreak mode, so a second reader would steal its keys).

Both give up when `cancelled()` turns true (Ctrl-C or SIGTERM latched a stop): a blocking `input()` would keep the
process waiting forever after the signal.
"""

from __future__ import annotations

import queue
import select
import sys
from collections.abc import Callable
from typing import Protocol, TextIO


class Answers(Protocol):
    def ask(self, cancelled: Callable[[], bool]) -> str | None:
        """'y' or 'n', or None if cancelled or no answer can come (end of input)."""
        ...


class LineAnswers:
    """y/n lines on a text stream (stdin)."""

    def __init__(self, stream: TextIO = sys.stdin) -> None:
        self._stream = stream

    def ask(self, cancelled: Callable[[], bool]) -> str | None:
        while not cancelled():
            ready, _, _ = select.select([self._stream], [], [], 0.1)
            if not ready:
                continue
            line = self._stream.readline()
            if not line:
                return None
            if (word := line.strip().lower()[:1]) in ("y", "n"):
                return word
        return None


class KeyAnswers:
    """y/n key presses collected by `KeyboardSource`."""

    def __init__(self, answers: queue.Queue[str]) -> None:
        self._answers = answers

    def ask(self, cancelled: Callable[[], bool]) -> str | None:
        while not self._answers.empty():  # presses made during the episode are not answers
            self._answers.get_nowait()
        while not cancelled():
            try:
                return self._answers.get(timeout=0.1)
            except queue.Empty:
                continue
        return None
