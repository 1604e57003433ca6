"""`Gripper`: the Franka Hand over franky, commanded without ever blocking the arm's control loop.

Why a worker thread: franky's `*_async` gripper calls return a future, but a second command issued while one
is in flight blocks the caller until the first finishes (measured against franky-sim: `open_async` during a
`move_async` took ~350 ms; `Gripper.stop()` blocked as long). So the loop only records the *desired* state
(`open()` / `close()`, O(1)); one daemon worker issues at most one franky command at a time, latest request
wins, and it keeps a cached width so reading the gripper never touches the network on the loop's thread.

Faults latch: a command that raises or reports failure (or `latch_fault()` from the safety layer, e.g. on an
arm reflex) stops all further commands — the fingers keep whatever they hold — until `clear_fault()`.
Hysteresis on the policy's gripper signal is the safety layer's job, not this class's.

`stop()` (the e-stop, E4; and a command past its timeout, R9) also halts the fingers mid-command: franky's
`Gripper.stop()` pre-empts the command in flight (~5 ms against franky-sim), and the worker stops following that
command. franky's stop is a blocking TCP call, so it runs on a helper thread that the caller waits for at most
`STOP_WAIT_S`: a dead link never holds up the e-stop path. franky-sim (1.0.4) never answers a command that a stop
pre-empted, and franky then holds every later command behind it, so after a stop mid-command in sim this gripper
takes no further command for the rest of the process (a real Franka Hand answers the pre-empted command).
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from dataclasses import dataclass

import franky
from pydantic import BaseModel, ConfigDict, Field

from robot.connection import Connectable

log = logging.getLogger(__name__)

STOP_WAIT_S = 0.2  # the longest the caller of `stop()` waits for franky's stop to be acknowledged


def _strand(obj: object) -> None:
    """Never destroy `obj`: a franky command future (or the Gripper holding it) whose command a stop pre-empted and
    franky-sim never answers. Its C++ destructor joins the thread waiting for that reply, so destroying it (when a
    local goes out of scope, or in the interpreter's final garbage collection at exit) would hang the process. One
    reference that is never released keeps it alive until the OS reclaims the process; it happens at most once
    per gripper, since this gripper then takes no further command."""
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


def _franky_stop(gripper: franky.Gripper) -> bool:
    """franky's blocking stop; a failure is logged (the caller has latched the fault either way)."""
    try:
        return bool(gripper.stop())
    except Exception as e:  # noqa: BLE001 - franky raises several unrelated types
        log.warning("gripper stop failed: %s: %s", type(e).__name__, e)
        return False


class GripperConfig(BaseModel):
    """Franka Hand command parameters (same host as the arm)."""

    model_config = ConfigDict(extra="forbid")

    host: str
    speed_mps: float = Field(0.1, gt=0.0, le=0.2, description="Finger speed for open and close.")
    force_n: float = Field(20.0, gt=0.0, le=70.0, description="Grasp force.")
    grasp_epsilon_m: float = Field(
        0.1, ge=0.0, description="Grasp tolerance either side of width 0: wide, so closing on nothing is not a fault."
    )
    poll_period_s: float = Field(0.02, gt=0.0, description="How often the worker refreshes the cached width.")
    command_timeout_s: float = Field(5.0, gt=0.0, description="A command still running after this latches a fault.")


@dataclass(frozen=True)
class GripperState:
    """The worker's latest view. width_m: finger opening; target_open: last requested (None = none yet);
    busy: a request is in flight or waiting to be sent; fault: why commands are latched off (None = healthy);
    capture_ns: monotonic time of the width reading."""

    width_m: float
    is_grasped: bool
    target_open: bool | None
    busy: bool
    fault: str | None
    capture_ns: int


class Gripper(Connectable):
    """Open/close requests that return at once; a daemon worker turns them into franky commands."""

    def __init__(self, config: GripperConfig) -> None:
        self.config = config
        self._gripper: franky.Gripper | None = None
        self._cond = threading.Condition()
        self._target_open: bool | None = None  # requested by the loop
        self._issued_open: bool | None = None  # last sent to franky
        self._fault: str | None = None
        self._busy = False
        self._width = float("nan")
        self._grasped = False
        self._width_ns = 0
        self._closing = False
        self._worker: threading.Thread | None = None
        self._abandon = False  # a stop pre-empted the command the worker follows: stop following it
        self._stranded = False  # franky still holds a pre-empted command: the connection cannot be released

    # -- lifecycle -------------------------------------------------------------------------------------------

    def connect(self) -> None:
        """Connect (blocking TCP; raises franky.NetworkException if unreachable) and start the worker."""
        if self._worker is not None:
            return
        self._gripper = franky.Gripper(self.config.host)
        self._refresh()
        self._closing = False
        self._worker = threading.Thread(target=self._run, name="gripper-worker", daemon=True)
        self._worker.start()

    def disconnect(self, timeout_s: float = 2.0) -> None:
        """Let an in-flight command finish (bounded wait), stop the worker and release the connection.

        franky's Gripper destructor waits for an in-flight command while holding the GIL, which deadlocks
        against an in-process franky-sim; so the connection is only released once the worker has finished.
        If it has not within `timeout_s`, the (daemon) worker and connection are left to the process exit.
        """
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout_s)
            if self._worker.is_alive():
                return
        self._worker = None
        if self._stranded:
            _strand(self._gripper)  # its destructor would wait, holding the GIL, for a reply that never comes
        self._gripper = None

    # -- the loop's side: never blocks on I/O --------------------------------------------------------------------

    def open(self) -> bool:
        """Request fully open. False (nothing requested) while a fault is latched."""
        return self._request(True)

    def close(self) -> bool:
        """Request a grasp (close with the configured force). False while a fault is latched."""
        return self._request(False)

    @property
    def state(self) -> GripperState:
        with self._cond:
            busy = self._busy or self._pending()
            return GripperState(self._width, self._grasped, self._target_open, busy, self._fault, self._width_ns)

    def latch_fault(self, reason: str) -> None:
        """Hold the fingers as they are and refuse commands (e.g. the arm faulted) until `clear_fault()`."""
        with self._cond:
            self._fault = self._fault or reason

    def stop(self, reason: str) -> bool:
        """Halt the fingers now and latch `reason` (the e-stop: E4). A command in flight is pre-empted by franky's
        stop and no longer followed; no new command is sent until `clear_fault()`. Waits at most `STOP_WAIT_S`;
        True if franky acknowledged the stop in that time."""
        with self._cond:
            self._fault = self._fault or reason
            self._abandon = self._busy
            self._cond.notify_all()
        gripper = self._gripper
        if gripper is None:
            return False
        done, acknowledged = threading.Event(), [False]

        def call() -> None:
            acknowledged[0] = _franky_stop(gripper)
            done.set()

        threading.Thread(target=call, name="gripper-stop", daemon=True).start()
        return done.wait(STOP_WAIT_S) and acknowledged[0]

    def clear_fault(self) -> None:
        """Allow commands again; the next request is sent even if it matches the last one issued."""
        with self._cond:
            self._fault = None
            self._issued_open = None

    def _request(self, open_: bool) -> bool:
        with self._cond:
            if self._fault is not None:
                return False
            self._target_open = open_
            self._cond.notify_all()
            return True

    # -- the worker's side -----------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(self._has_work, timeout=self.config.poll_period_s)
                if self._closing:
                    return
                target = self._target_open if self._has_work() else None
            if target is None:
                self._refresh()
            else:
                self._execute(target)

    def _has_work(self) -> bool:
        return self._closing or self._pending()

    def _pending(self) -> bool:
        """A request the worker has yet to send (call with the lock held)."""
        return self._target_open is not None and self._target_open != self._issued_open and self._fault is None

    def _execute(self, open_: bool) -> None:
        """Send one command and follow it to the end, refreshing the width; any failure latches a fault."""
        cfg = self.config
        gripper = self._gripper
        assert gripper is not None
        what = "open" if open_ else "grasp"
        with self._cond:
            if self._fault is not None:  # a stop (or a fault) came after the request was taken: send nothing
                return
            self._busy, self._abandon = True, False
            self._issued_open = open_
        try:
            if open_:
                future = gripper.open_async(cfg.speed_mps)
            else:
                eps = cfg.grasp_epsilon_m
                future = gripper.grasp_async(0.0, cfg.speed_mps, cfg.force_n, eps, eps)
            if self._abandon:  # a stop came while the command was being sent: it may have reached franky first
                _franky_stop(gripper)
            deadline = time.monotonic() + cfg.command_timeout_s
            while not future.wait(cfg.poll_period_s):
                self._refresh()
                if not self._abandon and time.monotonic() > deadline:  # R9: a hung command is stopped
                    self.stop(f"gripper {what} still running after {cfg.command_timeout_s} s")
                if self._abandon:  # pre-empted by a stop: franky may never complete this future
                    self._stranded = True
                    _strand(future)
                    return
            if not future.get() and not self._abandon:
                self.latch_fault(f"gripper {what} reported failure")
        except Exception as e:  # noqa: BLE001 - franky raises several unrelated types; all mean "fault"
            self.latch_fault(f"{type(e).__name__}: {e}")
        finally:
            with self._cond:
                self._busy = False
            self._refresh()

    def _refresh(self) -> None:
        gripper = self._gripper
        if gripper is None:
            return
        try:
            s = gripper.state
        except Exception as e:  # noqa: BLE001
            self.latch_fault(f"reading gripper state: {type(e).__name__}: {e}")
            return
        with self._cond:
            self._width, self._grasped, self._width_ns = float(s.width), bool(s.is_grasped), time.monotonic_ns()
