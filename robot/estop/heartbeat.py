"""`HeartbeatSender`: the console's dead-man signal, sent from its own thread every 50 ms.

A thread of its own so that nothing the console's UI does (drawing the panel, waiting for a key, a slow
terminal) can delay a heartbeat; if the process hangs or exits, the heartbeats stop and the robot latches a
stop. `stop()` and `resume()` wake the thread so the new state leaves at once instead of at the next period.
The PUB socket lives and dies in that thread (ZeroMQ sockets are not thread-safe).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import zmq

from robot.estop.wire import (
    HEARTBEAT_ENDPOINT,
    HEARTBEAT_HWM,
    HEARTBEAT_PERIOD_S,
    Command,
    Heartbeat,
    encode_heartbeat,
    make_socket,
)


@dataclass(frozen=True)
class SenderState:
    """What the console is currently telling the robot."""

    command: Command
    stops: int
    resumes: int
    sent: int  # heartbeats sent so far


class HeartbeatSender:
    """Connects a PUB socket to the robot's heartbeat endpoint and sends `Heartbeat`s until `close()`."""

    def __init__(self, endpoint: str = HEARTBEAT_ENDPOINT, period_s: float = HEARTBEAT_PERIOD_S,
                 context: zmq.Context | None = None) -> None:
        self.endpoint = endpoint
        self.nonce = os.urandom(8)
        self._period_ns = int(period_s * 1e9)
        self._context = context or zmq.Context.instance()
        self._lock = threading.Lock()
        self._state = SenderState(Command.RUN, stops=0, resumes=0, sent=0)
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="estop-heartbeat", daemon=True)
        self._thread.start()
        self._ready.wait(5.0)
        if self._error is not None:
            raise self._error

    @property
    def state(self) -> SenderState:
        with self._lock:
            return self._state

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Command STOP now (idempotent while stopped)."""
        with self._lock:
            s = self._state
            if s.command is not Command.STOP:
                self._state = SenderState(Command.STOP, s.stops + 1, s.resumes, s.sent)
        self._wake.set()

    def resume(self) -> None:
        """Send a confirmed RESUME: the robot unlatches into ARMED (it does not move until a new start)."""
        with self._lock:
            s = self._state
            self._state = SenderState(Command.RUN, s.stops, s.resumes + 1, s.sent)
        self._wake.set()

    def close(self, timeout_s: float = 1.0) -> None:
        """Stop heartbeating (the robot will latch a stop after its timeout)."""
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout_s)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _run(self) -> None:
        try:
            sock = make_socket(self._context, zmq.PUB, hwm=HEARTBEAT_HWM)
            sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        next_ns = time.monotonic_ns()
        try:
            while not self._closing.is_set():
                with self._lock:
                    s = self._state
                    self._state = SenderState(s.command, s.stops, s.resumes, s.sent + 1)
                hb = Heartbeat(nonce=self.nonce, counter=s.sent, command=s.command, stops=s.stops,
                               resumes=s.resumes, sent_ns=time.monotonic_ns())
                sock.send(encode_heartbeat(hb), zmq.NOBLOCK)  # PUB never blocks; no subscriber = dropped
                now = time.monotonic_ns()
                # The next slot of the 50 ms grid: an early (woken) send keeps the grid, and an oversleep skips
                # slots rather than sending a burst.
                if next_ns <= now:
                    next_ns += ((now - next_ns) // self._period_ns + 1) * self._period_ns
                self._wake.wait((next_ns - now) / 1e9)
                self._wake.clear()
        finally:
            sock.close(linger=0)
