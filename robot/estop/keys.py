"""Where the console's keys come from: a raw terminal, or command lines on stdin when there is no TTY.

Both wait with `select` and a timeout, so the console's loop keeps redrawing while no key is pressed; the
heartbeat never depends on this loop anyway (it has its own thread). The terminal is put in cbreak mode
(one key at a time, no echo) but keeps ISIG, so Ctrl-C still interrupts; `close()` restores it.
"""

from __future__ import annotations

import os
import select
import termios
import time
import tty
from types import TracebackType
from typing import Protocol, Self

# stdin command words (no-TTY mode) and the key each stands for
WORDS = {"stop": " ", "resume": "r", "yes": "y", "y": "y", "no": "n", "n": "n", "quit": "q", "q": "q"}


class KeySource(Protocol):
    def read(self, timeout_s: float) -> str | None:
        """One key, or None if none arrived within `timeout_s`."""
        ...

    def close(self) -> None: ...


class RawKeys:
    """Single key presses from a terminal file descriptor."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)

    def read(self, timeout_s: float) -> str | None:
        ready, _, _ = select.select([self._fd], [], [], timeout_s)
        if not ready:
            return None
        data = os.read(self._fd, 1)
        return data.decode("latin-1") if data else None

    def close(self) -> None:
        termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class LineCommands:
    """Words on stdin, one per line (`stop`, `resume`, `yes`, `no`, `quit`), for tests and headless runs.

    End of input is not a quit: the console keeps heartbeating until it is told to quit or is terminated, so a
    launcher can start it with stdin from /dev/null.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = b""
        self._pending: list[str] = []
        self._eof = False

    def read(self, timeout_s: float) -> str | None:
        if not self._pending and not self._eof:
            ready, _, _ = select.select([self._fd], [], [], timeout_s)
            if ready:
                self._fill()
        elif self._eof and not self._pending:
            time.sleep(timeout_s)  # nothing more will come: just wait out the tick
        return self._pending.pop(0) if self._pending else None

    def _fill(self) -> None:
        data = os.read(self._fd, 4096)
        if not data:
            self._eof = True
            return
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            word = line.decode("utf-8", "replace").strip().lower()
            if word:
                self._pending.append(WORDS.get(word, "?"))

    def close(self) -> None:
        """Nothing to restore: stdin belongs to the caller."""
