"""`EStopListener`: the robot side of the dead-man heartbeat, checked from the control loop every tick.

It latches a stop on a STOP command, on 200 ms without a valid heartbeat, on a replayed or non-increasing
counter, on a heartbeat from an earlier console session, and when another console appears while the robot is
armed or moving (one console per robot).
A latch is released only by a RESUME the operator confirmed on the console (a `resumes` increase), and even
then only into ARMED: motion restarts when the runner calls `begin_motion()` at a new start, never by itself
(ISO 13850 "reset shall not restart"; docs/safety.md, rows E1-E3).

Silence is measured on the heartbeats' own timestamps, not on when `check()` happened to drain them: the
listener tracks the smallest (receive − send) offset over a sliding window and dates each heartbeat at
`sent_ns + offset`. A listener that stalled for 300 ms therefore sees that the heartbeat waiting in its queue
is old, instead of taking it for fresh. Only clock differences are used, so the console may run on another
host; the window bounds the effect of clock drift. Every input can only make the estimate older (never
fresher) than "received at the drain", so a misbehaving console can trip the stop early but never hold it off.

Threading: one thread owns the listener (calls `check`/`poll`/`wait`/`begin_motion`); other threads read `state`.
The owner hands it over only with a happens-before (a thread's start or join). In the runner, calibration and
hand-guiding the owner is `robot.estop.watchdog.Watchdog`: `begin_motion` runs on the caller's thread at the
start, then the watchdog's thread loops on `wait(10 ms)`, so a STOP is applied the moment it arrives.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Protocol

import zmq

from robot.estop.wire import (
    HEARTBEAT_ENDPOINT,
    HEARTBEAT_HWM,
    HEARTBEAT_TIMEOUT_S,
    MAX_HEARTBEAT_BYTES,
    Command,
    Heartbeat,
    SocketEndpoint,
    WireError,
    check_endpoint,
    decode_heartbeat,
    make_socket,
)

log = logging.getLogger(__name__)

_OFFSET_WINDOW = 100  # heartbeats (5 s at 20 Hz): drift between two hosts' clocks stays far below 1 ms
_RETIRED_NONCES = 64
_MAX_DRAIN = 256  # messages per check: the whole backlog (high-water mark 16) plus slack against a flood


class EStopMode(StrEnum):
    WAITING = "WAITING"  # no console heard yet and the e-stop is required: no motion
    ARMED = "ARMED"  # a live console, nothing latched, but motion needs the runner's begin_motion()
    RUN = "RUN"  # motion allowed
    STOPPED = "STOPPED"  # latched; only a confirmed RESUME releases it (into ARMED)


class StopReason(StrEnum):
    STOP_COMMAND = "stop_command"
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    COUNTER_REPLAY = "counter_replay"  # counter did not increase within a console session
    OLD_CONSOLE = "old_console"  # heartbeat from a console session that was already replaced
    CONSOLE_CHANGED = "console_changed"  # a new console appeared while the robot was armed or moving


@dataclass(frozen=True)
class EStopState:
    """An immutable snapshot of the listener (safe to hand to other threads).

    detected_ns: the `now_ns` of the check that latched the current stop (listener clock) — the start of the
        runner's "stop issued ≤ 10 ms" budget.
    cause_ns: when the stop condition arose: for a timeout, the heartbeat's estimated arrival + timeout
        (listener clock); for a command, the console's send time (the console's clock: comparable only when
        both run on one host, as in sim and the tests).
    stop_count: latches since start, so a runner can tell that a stop happened even if the state it sees
        next is already ARMED (STOP and RESUME both arrived between two ticks).
    """

    mode: EStopMode
    reason: StopReason | None = None
    detected_ns: int | None = None
    cause_ns: int | None = None
    stop_count: int = 0
    console: str | None = None
    last_heartbeat_ns: int | None = None

    @property
    def may_move(self) -> bool:
        return self.mode is EStopMode.RUN

    @property
    def latched(self) -> bool:
        return self.mode is EStopMode.STOPPED

    def describe(self) -> str:
        """One line for logs and the status channel, e.g. 'STOPPED (heartbeat_timeout)'."""
        return f"{self.mode.value} ({self.reason.value})" if self.reason and self.latched else self.mode.value


class EStopListener(SocketEndpoint):
    """Binds the heartbeat SUB socket and turns heartbeats into an `EStopState`.

    required=False (sim): the robot may move with no console at all; once a console is heard, the same rules
    apply as when required (its silence latches a stop).
    """

    def __init__(
        self,
        endpoint: str = HEARTBEAT_ENDPOINT,
        *,
        required: bool = True,
        timeout_s: float = HEARTBEAT_TIMEOUT_S,
        allow_remote: bool = False,
        context: zmq.Context | None = None,
    ) -> None:
        check_endpoint(endpoint, allow_remote)
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self._timeout_ns = int(timeout_s * 1e9)
        self._sock = make_socket(context or zmq.Context.instance(), zmq.SUB, hwm=HEARTBEAT_HWM,
                                 max_bytes=MAX_HEARTBEAT_BYTES)
        self._sock.bind(endpoint)
        self.endpoint: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._state = EStopState(EStopMode.WAITING if required else EStopMode.RUN)
        self._nonce: bytes | None = None
        self._counter = -1
        self._stops_seen = 0
        self._resumes_seen = 0
        self._offsets: collections.deque[int] = collections.deque(maxlen=_OFFSET_WINDOW)
        self._retired: collections.deque[bytes] = collections.deque(maxlen=_RETIRED_NONCES)
        self.bad_messages = 0

    @property
    def state(self) -> EStopState:
        return self._state

    def check(self, now_ns: int | None = None) -> EStopState:
        """Drain the socket without blocking, apply every heartbeat in order, then the silence timeout."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        for _ in range(_MAX_DRAIN):
            try:
                raw = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._on_message(raw, now)
        self._check_silence(now)
        return self._state

    def poll(self, timeout_s: float) -> bool:
        """Block up to `timeout_s` until a message is waiting (without consuming it)."""
        return bool(self._sock.poll(max(0, round(timeout_s * 1e3)), zmq.POLLIN))

    def wait(self, timeout_s: float) -> EStopState:
        """`poll` then `check`: a supervisor thread looping on this reacts to a STOP within the transport
        latency instead of a polling period, and still checks the silence timeout every `timeout_s`."""
        self.poll(timeout_s)
        return self.check()

    def begin_motion(self, now_ns: int | None = None) -> EStopState:
        """The runner's new start (e.g. a new episode): ARMED → RUN. A no-op in any other mode."""
        state = self.check(now_ns)
        if state.mode is EStopMode.ARMED:
            self._state = replace(state, mode=EStopMode.RUN)
        return self._state


    # ------------------------------------------------------------------------------------- internals

    def _on_message(self, raw: bytes, now: int) -> None:
        try:
            hb = decode_heartbeat(raw)
        except WireError as exc:
            self.bad_messages += 1
            log.warning("e-stop: ignored a bad heartbeat: %s", exc)
            return
        if hb.nonce in self._retired:
            self._latch(StopReason.OLD_CONSOLE, now, now)
            return
        if hb.nonce != self._nonce:
            self._adopt(hb, now)
        elif hb.counter <= self._counter:
            self._latch(StopReason.COUNTER_REPLAY, now, now)
            return
        self._counter = hb.counter
        self._date(hb, now)
        if hb.command is Command.STOP or hb.stops > self._stops_seen:
            self._latch(StopReason.STOP_COMMAND, now, hb.sent_ns)
        self._stops_seen = max(self._stops_seen, hb.stops)
        if hb.resumes > self._resumes_seen:
            self._resumes_seen = hb.resumes
            if self._state.latched and hb.command is Command.RUN:
                log.warning("e-stop: RESUME confirmed on console %s; armed, motion needs a new start", hb.nonce.hex())
                self._state = replace(self._state, mode=EStopMode.ARMED, reason=None)

    def _adopt(self, hb: Heartbeat, now: int) -> None:
        """A console session not seen before: its history (stops, resumes) does not count, only what it does
        from now on — a fresh console cannot release a latch without a fresh confirmation."""
        first = self._nonce is None
        if self._nonce is not None:
            self._retired.append(self._nonce)
        self._nonce, self._counter = hb.nonce, hb.counter
        self._stops_seen, self._resumes_seen = hb.stops, hb.resumes
        self._offsets.clear()
        self._state = replace(self._state, console=hb.nonce.hex())
        log.info("e-stop: console %s connected", hb.nonce.hex())
        if self._state.mode is EStopMode.WAITING:
            self._state = replace(self._state, mode=EStopMode.ARMED)
        elif not first and self._state.mode in (EStopMode.ARMED, EStopMode.RUN):
            self._latch(StopReason.CONSOLE_CHANGED, now, now)

    def _date(self, hb: Heartbeat, now: int) -> None:
        self._offsets.append(now - hb.sent_ns)
        self._state = replace(self._state, last_heartbeat_ns=hb.sent_ns + min(self._offsets))

    def _check_silence(self, now: int) -> None:
        last = self._state.last_heartbeat_ns
        if last is None or self._state.mode not in (EStopMode.ARMED, EStopMode.RUN):
            return
        if now - last > self._timeout_ns:
            self._latch(StopReason.HEARTBEAT_TIMEOUT, now, last + self._timeout_ns)

    def _latch(self, reason: StopReason, now: int, cause_ns: int) -> None:
        if self._state.latched:
            return  # keep the first reason and detection time
        log.warning("e-stop: STOP latched (%s)", reason.value)
        self._state = replace(self._state, mode=EStopMode.STOPPED, reason=reason, detected_ns=now,
                              cause_ns=cause_ns, stop_count=self._state.stop_count + 1)


class _Signal(Protocol):
    def check(self, now_ns: int | None = None) -> EStopState: ...

    def begin_motion(self, now_ns: int | None = None) -> EStopState: ...


def start_motion(estop: _Signal, wait_s: float, clock: Callable[[], int] = time.monotonic_ns) -> EStopState:
    """The operator's start of a run (the runner's, a recording's, a calibration's): wait up to `wait_s` for a
    required console to be heard, then ARMED -> RUN. The caller moves only if the result `may_move`."""
    deadline = clock() + round(wait_s * 1e9)
    state = estop.check(clock())
    while state.mode is EStopMode.WAITING and clock() < deadline:
        time.sleep(0.05)
        state = estop.check(clock())
    return estop.begin_motion(clock())
