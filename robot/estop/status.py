"""The status channel: the runner publishes `RobotStatus`, the console shows the newest one.

The runner binds (it is the long-lived party), consoles connect. PUB never blocks the control loop, and
CONFLATE on both ends means a slow or absent console costs the runner nothing and always sees the newest status.
One thread owns a `StatusPublisher` (ZeroMQ sockets are not thread-safe).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import zmq

from robot.estop.wire import (
    MAX_STATUS_BYTES,
    STATUS_ENDPOINT,
    RobotStatus,
    SocketEndpoint,
    StatusEnvelope,
    WireError,
    check_endpoint,
    decode_status,
    encode_status,
    make_socket,
)

log = logging.getLogger(__name__)


class StatusPublisher(SocketEndpoint):
    """`publish(status)` stamps a sequence number and the monotonic send time and never blocks."""

    def __init__(self, endpoint: str = STATUS_ENDPOINT, *, allow_remote: bool = False,
                 context: zmq.Context | None = None) -> None:
        check_endpoint(endpoint, allow_remote)
        self._sock = make_socket(context or zmq.Context.instance(), zmq.PUB, conflate=True)
        self._sock.bind(endpoint)
        self.endpoint: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._seq = 0

    def publish(self, status: RobotStatus) -> None:
        raw = encode_status(StatusEnvelope(seq=self._seq, sent_ns=time.monotonic_ns(), status=status))
        if len(raw) > MAX_STATUS_BYTES:  # consoles would drop it; say why here instead
            raise ValueError(f"status of {len(raw)} bytes exceeds {MAX_STATUS_BYTES} (last_error too long?)")
        self._seq += 1
        self._sock.send(raw, zmq.NOBLOCK)  # PUB drops for an absent or slow console; it never blocks



@dataclass(frozen=True)
class ReceivedStatus:
    """A status as the console saw it; `received_ns` is the console's monotonic clock."""

    status: RobotStatus
    seq: int
    received_ns: int

    def age_s(self, now_ns: int | None = None) -> float:
        return ((time.monotonic_ns() if now_ns is None else now_ns) - self.received_ns) * 1e-9


class StatusSubscriber(SocketEndpoint):
    """The console's end: `poll()` returns the newest status (or the previous one if nothing new arrived)."""

    def __init__(self, endpoint: str = STATUS_ENDPOINT, context: zmq.Context | None = None) -> None:
        self._sock = make_socket(context or zmq.Context.instance(), zmq.SUB, conflate=True,
                                 max_bytes=MAX_STATUS_BYTES)
        self._sock.connect(endpoint)
        self.latest: ReceivedStatus | None = None
        self.last_error = ""

    def poll(self) -> ReceivedStatus | None:
        while True:
            try:
                raw = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return self.latest
            try:
                env = decode_status(raw)
            except WireError as exc:
                self.last_error = str(exc)
                log.warning("ignored a bad status message: %s", exc)
                continue
            self.latest = ReceivedStatus(env.status, env.seq, time.monotonic_ns())

