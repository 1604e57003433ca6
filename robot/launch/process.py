"""`Supervised`: one child process of `dv-launch`, with its own log file and a clean, escalating shutdown.

- Each child leads its own process group (a new session), so Ctrl-C in the terminal reaches only the
  supervisor, which then stops the children in a chosen order; and a signal to the group also reaches whatever
  the child started itself (e.g. a simulator), so nothing is orphaned.
- Linux: each child gets PR_SET_PDEATHSIG = SIGTERM, so even a SIGKILLed supervisor leaves no child behind.
  (Safe in `preexec_fn` because the supervisor has no other threads.)
- Output goes straight to `<logs>/<name>.log` (appended, with a header per launch), never through a pipe: a
  slow or dead supervisor can never block a child on a full pipe. The supervisor reads the log's new bytes
  to find a READY line and to mirror the runner's output to the terminal.
- `stop()`: SIGINT (let it finish: the runner stops the arm and writes its summary), then SIGTERM, then SIGKILL,
  each after a timeout; then the rest of the process group the same way.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True)
class ProcessSpec:
    """What to run. `foreground`: the child gets this terminal (stdin/stdout) instead of a log for its output."""

    name: str
    argv: list[str]
    foreground: bool = False
    env: Mapping[str, str] = field(default_factory=dict)


class Supervised:
    """A started child process and its log."""

    def __init__(self, spec: ProcessSpec, logs_dir: Path) -> None:
        self.spec = spec
        self.name = spec.name
        self.log_path = logs_dir / f"{spec.name}.log"
        logs_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"=== dv-launch {stamp}: {' '.join(spec.argv)}\n".encode())
            self._offset = log.tell()
            out = None if spec.foreground else log
            self.proc = subprocess.Popen(
                spec.argv, stdin=None if spec.foreground else subprocess.DEVNULL, stdout=out,
                stderr=None if spec.foreground else subprocess.STDOUT, env={**os.environ, **spec.env},
                start_new_session=True, preexec_fn=_die_with_parent,
            )
        self.pid = self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def new_output(self) -> bytes:
        """Bytes appended to the log since the last call (the child's output, as it arrives)."""
        with self.log_path.open("rb") as log:
            log.seek(self._offset)
            data = log.read()
        self._offset += len(data)
        return data

    def stop(self, interrupt_timeout_s: float, terminate_timeout_s: float,
             force: Callable[[], bool] = lambda: False) -> int:
        """SIGINT → SIGTERM → SIGKILL to the whole process group, each after its timeout (or at once when
        `force()` turns true); returns the child's exit code (negative: killed by that signal)."""
        for sig, timeout_s in ((signal.SIGINT, interrupt_timeout_s), (signal.SIGTERM, terminate_timeout_s)):
            if self.proc.poll() is not None or force():
                break
            self._signal_group(sig)
            self._wait(lambda: self.proc.poll() is not None, timeout_s, force)
        if self.proc.poll() is None:
            self._signal_group(signal.SIGKILL)
        code = self.proc.wait()
        self._reap_group(terminate_timeout_s)
        return code

    def _signal_group(self, sig: int) -> bool:
        try:
            os.killpg(self.pid, sig)
            return True
        except ProcessLookupError:
            return False

    def _reap_group(self, timeout_s: float) -> None:
        """Whatever the child left running in its group (it exited, they did not): SIGTERM, then SIGKILL."""
        if self._signal_group(signal.SIGTERM) and not self._wait(lambda: not self._signal_group(0), timeout_s):
            self._signal_group(signal.SIGKILL)

    @staticmethod
    def _wait(done: Callable[[], bool], timeout_s: float, force: Callable[[], bool] = lambda: False) -> bool:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() >= deadline or force():
                return False
            time.sleep(0.02)
        return True
