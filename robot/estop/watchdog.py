"""`Watchdog`: the e-stop supervisor, on a thread of its own beside whatever thread commands the arm.

Why: the control loop used to be the only thread that looked at the e-stop, so a stop waited for the loop. Between
episodes nobody looked, during a blocking move home nobody looked, and a stalled loop (a blocking call, a Python
stall: docs/safety.md S2) delayed the stop by the stall. The watchdog runs at `1 / period_s` (100 Hz by default) and
trips on either of two things:

- the console (the dead-man heartbeat): while it runs, the watchdog owns the e-stop listener (ZeroMQ sockets belong
  to one thread; the owner hands it over at `start()` and gets it back at `close()`). It waits on the listener's
  socket (`EStopListener.wait`), so a STOP is applied the moment it arrives (E1: the stop is issued within
  milliseconds of the console sending it) and the 200 ms silence rule is checked at least every period (E2);
- the loop's own tick: the loop calls `beat()` on every tick and every wait slice; while `watch(True)` (an episode
  runs), no beat for `tick_timeout_s` trips (S2: the loop is stuck, so nothing it commanded is supervised).

A trip calls `on_trip(reason, code)` once (e.g. the runner's `request_stop`, which calls `halt`): the arm's
interlock latches, the arm and the gripper are told to stop, from this thread, whatever the loop's thread is doing
(a blocking move home included). The watchdog keeps servicing the listener afterwards, so its `state` stays current
(a RESUME shows as ARMED); nothing restarts motion but a new start by the operator.

Limits: a thread of this process. It runs while the loop's thread sleeps, waits on I/O, or sits in a C call that
releases the GIL (`time.sleep`, a socket, franky's blocking move); it cannot run while another thread holds the GIL
for long (a C extension that keeps it, a long garbage-collection pass), nor after the process died. A second process
cannot take over the stop: FCI allows one controlling client, so it could not command the arm. What a process can do
is the opt-in backstop (`kill_after_s`): a child process that SIGKILLs this one when the watchdog has not cycled for
that long. The FCI link then drops and the robot stops on its own within 20 ms (libfranka's
communication_constraints_violation); franky-sim holds the joints where they are once its client disconnects (with an
in-process franky-sim the simulation dies too). The price is the episode being recorded and an arm that needs
recovery, so it is off unless a launch file sets it. The hardware e-stop stays the safety function (docs/safety.md).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from robot.estop.listener import EStopState

log = logging.getLogger(__name__)

DEFAULT_PERIOD_S = 0.01  # 100 Hz
DEFAULT_TICK_TIMEOUT_S = 0.15


class Listener(Protocol):
    """The e-stop listener (`EStopListener`, or a test double): `check` drains it and returns its state.
    An optional `wait(timeout_s)` (block until a message arrives, then check) lets the watchdog sleep on the
    socket instead of polling it."""

    def check(self, now_ns: int | None = None) -> EStopState: ...


@runtime_checkable
class Latching(Protocol):
    """An arm with an e-stop interlock: `latch_stop` refuses every later motion until the operator's new start."""

    def latch_stop(self, reason: str) -> None: ...


@runtime_checkable
class Braking(Protocol):
    """An arm that can brake: `stop` ends the current motion."""

    def stop(self) -> bool: ...


@runtime_checkable
class StoppableGripper(Protocol):
    """A gripper the e-stop can halt: `stop` latches its fault and pre-empts a command in flight (E4)."""

    def stop(self, reason: str) -> bool: ...


def halt(arm: object, gripper: object | None, reason: str) -> None:
    """What every e-stop trip does to the devices, in order of urgency: latch the arm's interlock (no motion is
    accepted from now on, whichever thread sends it), stop the arm, then stop the gripper. What a device cannot do
    is skipped (a read-only arm in hand-guiding); a failure of one step never prevents the next."""
    steps: list[tuple[str, Callable[[], object]]] = []
    if isinstance(arm, Latching):
        steps.append(("latching the arm", lambda: arm.latch_stop(reason)))
    if isinstance(arm, Braking):
        steps.append(("stopping the arm", arm.stop))
    if isinstance(gripper, StoppableGripper):
        steps.append(("stopping the gripper", lambda: gripper.stop(f"stop: {reason}")))
    for what, step in steps:
        try:
            step()
        except Exception:  # noqa: BLE001 - the next step must still run
            log.exception("e-stop: %s failed", what)


class Watchdog:
    """The e-stop supervisor thread (see the module docstring). Use as a context manager around the motion it
    supervises, or `start()` / `close()`."""

    def __init__(self, on_trip: Callable[[str, str], None], listener: Listener | None = None, *,
                 period_s: float = DEFAULT_PERIOD_S, tick_timeout_s: float = DEFAULT_TICK_TIMEOUT_S,
                 kill_after_s: float | None = None, clock: Callable[[], int] = time.monotonic_ns) -> None:
        if not 0 < period_s <= 0.01:
            raise ValueError(f"period_s must be in (0, 0.01] (at least 100 Hz), got {period_s}")
        if tick_timeout_s <= 2 * period_s:
            raise ValueError(f"tick_timeout_s must exceed two periods ({2 * period_s} s), got {tick_timeout_s}")
        if kill_after_s is not None and kill_after_s <= 10 * period_s:
            raise ValueError(f"kill_after_s must exceed ten periods ({10 * period_s} s), got {kill_after_s}")
        self._backstop = ProcessBackstop(kill_after_s) if kill_after_s is not None else None
        self._on_trip, self._listener, self._clock = on_trip, listener, clock
        self._period_s, self._timeout_ns = period_s, round(tick_timeout_s * 1e9)
        self._wait: Callable[[float], EStopState] | None = getattr(listener, "wait", None)
        self._state: EStopState | None = None
        self._tripped: str | None = None
        self._trip_lock = threading.Lock()
        self._beat_ns = 0
        self._watching = False
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self.cycles = 0

    # ------------------------------------------------------------------ the supervised thread's side

    def beat(self) -> None:
        """The loop is alive (call it every tick and every wait slice; a plain store, safe from any thread)."""
        self._beat_ns = self._clock()

    def watch(self, on: bool) -> None:
        """Start (an episode's loop begins) or stop watching the loop's tick; starting counts as a beat."""
        self._beat_ns = self._clock()
        self._watching = on

    @property
    def state(self) -> EStopState | None:
        """The listener's state at the newest cycle (None without a listener, or before the first cycle)."""
        return self._state

    @property
    def tripped(self) -> str | None:
        """Why the watchdog tripped, or None."""
        return self._tripped

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Check once on the caller's thread (a stop already latched trips before anything can move), then take
        the listener over and run."""
        if self._thread is not None:
            raise RuntimeError("the e-stop watchdog is already running")
        self._cycle(0.0)
        self._closing.clear()
        if self._backstop is not None:
            self._backstop.start()
        self._thread = threading.Thread(target=self._run, name="estop-watchdog", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 1.0) -> None:
        """Stop the thread and hand the listener back to the caller's thread. Safe to call twice."""
        self._closing.set()
        self._watching = False
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("the e-stop watchdog did not stop within %.1f s", timeout_s)
            self._thread = None
        if self._backstop is not None:
            self._backstop.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ the watchdog's thread

    def _run(self) -> None:
        """Cycles on an absolute grid of `period_s` (a message wakes an extra cycle; an overrun skips slots)."""
        period_ns = round(self._period_s * 1e9)
        next_ns = self._clock()
        try:
            while not self._closing.is_set():
                next_ns += period_ns
                self._cycle(max(0.0, (next_ns - self._clock()) / 1e9))
                next_ns = max(next_ns, self._clock() - period_ns)
        except Exception as exc:  # noqa: BLE001 - a watchdog that dies must stop the arm, not vanish
            log.exception("the e-stop watchdog failed")
            self._trip(f"e-stop watchdog failed: {type(exc).__name__}: {exc}", "watchdog")

    def _cycle(self, wait_s: float) -> None:
        """One cycle: the listener (waiting on its socket up to `wait_s`), then the loop's tick."""
        listener = self._listener
        if listener is not None and self._wait is not None and wait_s > 0:
            self._state = self._wait(wait_s)
        else:
            if wait_s > 0:
                self._closing.wait(wait_s)
            if listener is not None:
                self._state = listener.check(self._clock())
        state = self._state
        if state is not None and not state.may_move:
            self._trip(f"e-stop {state.describe()}", "estop")
        if self._watching:
            silent_ns = self._clock() - self._beat_ns
            if silent_ns > self._timeout_ns:
                self._trip(f"control loop stalled: no tick for {silent_ns / 1e6:.0f} ms "
                           f"(limit {self._timeout_ns / 1e6:.0f} ms)", "loop_stall")
        if self._backstop is not None:
            self._backstop.beat()
        self.cycles += 1

    def _trip(self, reason: str, code: str) -> None:
        with self._trip_lock:
            if self._tripped is not None:
                return
            self._tripped = reason
        log.warning("e-stop watchdog tripped: %s", reason)
        try:
            self._on_trip(reason, code)
        except Exception:  # noqa: BLE001 - the trip handler halts devices; its failure is logged, the latch stays
            log.exception("the e-stop watchdog's stop failed")


class ProcessBackstop:
    """A child process that SIGKILLs this one when no `beat()` came for `kill_after_s` (the watchdog beats it every
    cycle, so silence means nothing in this process runs: a GIL held too long). Beats are bytes on a pipe, so a dead
    parent is an end of file and the child exits with it; `close()` disarms it first."""

    def __init__(self, kill_after_s: float) -> None:
        self.kill_after_s = kill_after_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._fd = -1

    def start(self) -> None:
        code = "import sys; from robot.estop.watchdog import backstop_main; backstop_main(int(sys.argv[1]), " \
               "float(sys.argv[2]))"
        self._proc = subprocess.Popen([sys.executable, "-c", code, str(os.getpid()), str(self.kill_after_s)],
                                      stdin=subprocess.PIPE)
        assert self._proc.stdin is not None
        self._fd = self._proc.stdin.fileno()
        os.set_blocking(self._fd, False)

    def beat(self) -> None:
        """Armed and alive (a full pipe is skipped: the child has bytes to read)."""
        self._write(b"A")

    def close(self) -> None:
        """Disarm, then let the child exit (end of file)."""
        if self._proc is None:
            return
        self._write(b"D")
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        try:
            self._proc.wait(1.0)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self._proc = None

    def _write(self, byte: bytes) -> None:
        try:
            os.write(self._fd, byte)
        except (BlockingIOError, BrokenPipeError, OSError):
            pass


def backstop_main(parent: int, kill_after_s: float) -> None:
    """The backstop process: beats on stdin ('A' armed, 'D' disarmed); armed and silent for `kill_after_s` ->
    SIGKILL the parent. Monotonic time is one clock for the whole host, as the beats' absence is measured here."""
    fd, armed, last = sys.stdin.fileno(), False, time.monotonic()
    while os.getppid() == parent:
        ready, _, _ = select.select([fd], [], [], 0.01)
        now = time.monotonic()
        if ready:
            data = os.read(fd, 4096)
            if not data:
                return
            armed, last = data.endswith(b"A"), now
        elif armed and now - last > kill_after_s:
            print(f"e-stop backstop: no watchdog cycle for {(now - last) * 1e3:.0f} ms; killing process {parent} "
                  "so that the FCI link drops and the robot stops", file=sys.stderr, flush=True)
            os.kill(parent, signal.SIGKILL)
            return
