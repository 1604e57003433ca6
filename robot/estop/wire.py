"""The two e-stop channels and their messages: heartbeats (console → robot) and status (robot → console).

Why PUB/SUB with the robot binding both sockets:
- The robot is the long-lived party; consoles come and go (a restarted console just connects again).
- PUB never blocks and never queues for an absent peer, so the console's heartbeat thread cannot stall, and a
  robot that reconnects never receives a burst of old heartbeats that would look fresh (the PUSH/DEALER hazard
  in zguide ch. 4).
- Heartbeats are *not* conflated: with ZMQ_CONFLATE, libzmq 4.3.5 discards a queued message when its sender
  disconnects before it is read (measured), so a console's last STOP — sent as it quits — could vanish. A small
  high-water mark on both ends bounds the backlog instead, and the listener drains all of it every check.
- A heartbeat still carries the console's whole state, never an edge: the command level (RUN/STOP) plus two
  cumulative counters, `stops` and `resumes`, so a message lost at a high-water mark loses no operator action.
- `counter` strictly increases within one console session (`nonce`), which exposes replays and frozen senders.
- Status is conflated on both ends: the console only ever wants the newest, and the runner must not care
  whether a console keeps up.

Messages are single-frame msgpack maps, decoded with size limits, no ext types and strict pydantic schemas;
nothing is ever unpickled. Unauthenticated: both channels bind on loopback unless the caller explicitly allows
otherwise.
"""

from __future__ import annotations

from enum import StrEnum
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import msgpack
import zmq
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dreamvla_client.security import is_loopback

M = TypeVar("M", bound=BaseModel)

HEARTBEAT_ENDPOINT = "tcp://127.0.0.1:5560"
STATUS_ENDPOINT = "tcp://127.0.0.1:5561"
HEARTBEAT_PERIOD_S = 0.05
HEARTBEAT_TIMEOUT_S = 0.2
MAX_HEARTBEAT_BYTES = 256
MAX_STATUS_BYTES = 64 << 10
HEARTBEAT_HWM = 16  # messages queued per peer: 0.8 s of heartbeats


class WireError(ValueError):
    """A message that is not a valid heartbeat or status; it is ignored (and counted), never acted on."""


class Command(StrEnum):
    """The console's command level, repeated in every heartbeat until the operator changes it."""

    RUN = "RUN"
    STOP = "STOP"


class Heartbeat(BaseModel):
    """One console heartbeat. `sent_ns` is the console's monotonic clock (only differences are used)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    v: Literal[1] = 1
    nonce: bytes = Field(min_length=8, max_length=16, description="Random per console session.")
    counter: int = Field(ge=0, description="Strictly increasing within one nonce.")
    command: Command = Field(strict=False)  # the wire carries the enum's string value
    stops: int = Field(ge=0, description="STOP presses in this session (cumulative).")
    resumes: int = Field(ge=0, description="Confirmed RESUMEs in this session (cumulative).")
    sent_ns: int = Field(ge=0)


class RobotState(StrEnum):
    """What the runner is doing, as the console panel shows it."""

    RUN = "RUN"  # executing policy actions
    PAUSE = "PAUSE"  # between episodes, or armed after a RESUME and waiting for a new start
    HOLD = "HOLD"  # SAFE-HOLD: no new motion (policy silence, rejected chunks, ...)
    STOP = "STOP"  # e-stop latched
    FAULT = "FAULT"  # robot error that needs an operator


class Latency(BaseModel):
    """Percentiles of one pipeline stage, in milliseconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    p50_ms: float
    p95_ms: float


class RobotStatus(BaseModel):
    """What the runner reports each tick (or on change) for the console panel."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state: RobotState
    task: str = ""
    episode: int = Field(0, ge=0, description="1-based index of the running episode; 0 before the first.")
    episodes: int = Field(0, ge=0, description="Episodes planned for this run.")
    latency_ms: dict[str, Latency] = Field(default_factory=dict, description="Per stage, e.g. 'obs_to_action'.")
    interventions: dict[str, int] = Field(default_factory=dict, description="Safety interventions per rule.")
    last_error: str = ""
    estop: str = Field("", description="The robot's e-stop view, e.g. 'STOPPED (heartbeat_timeout)'.")


class StatusEnvelope(BaseModel):
    """A `RobotStatus` on the wire, stamped by the publisher."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    seq: int = Field(ge=0)
    sent_ns: int = Field(ge=0)
    status: RobotStatus


def _reject_ext(code: int, data: bytes) -> Any:
    raise WireError(f"msgpack ext type {code} is not allowed")


def _unpack(raw: bytes, limit: int) -> Any:
    if len(raw) > limit:
        raise WireError(f"message of {len(raw)} bytes exceeds {limit}")
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=True, ext_hook=_reject_ext, timestamp=0)
    except WireError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types for malformed input
        raise WireError(f"not msgpack: {type(exc).__name__}: {exc}") from None


def encode_heartbeat(hb: Heartbeat) -> bytes:
    return msgpack.packb(hb.model_dump(mode="python"), use_bin_type=True)


def _decode(raw: bytes, schema: type[M], limit: int, what: str) -> M:
    try:
        return schema.model_validate(_unpack(raw, limit))
    except ValidationError as exc:
        raise WireError(f"bad {what}: {exc.errors(include_url=False)}") from None


def decode_heartbeat(raw: bytes) -> Heartbeat:
    return _decode(raw, Heartbeat, MAX_HEARTBEAT_BYTES, "heartbeat")


def encode_status(envelope: StatusEnvelope) -> bytes:
    return msgpack.packb(envelope.model_dump(mode="json"), use_bin_type=True)


def decode_status(raw: bytes) -> StatusEnvelope:
    return _decode(raw, StatusEnvelope, MAX_STATUS_BYTES, "status")


def check_endpoint(endpoint: str, allow_remote: bool) -> None:
    """Refuse a non-loopback e-stop endpoint unless asked: anyone who reaches it could RESUME the robot."""
    if not allow_remote and not is_loopback(endpoint):
        raise ValueError(
            f"e-stop endpoint {endpoint} is not loopback; the channel is unauthenticated, so anyone who can reach "
            "it could resume the robot. Use tcp://127.0.0.1:PORT or pass allow_remote=True on a trusted network."
        )


def make_socket(context: zmq.Context, kind: int, *, conflate: bool = False, hwm: int | None = None,
                max_bytes: int | None = None) -> zmq.Socket:
    """A socket that never lingers on close (shutdown and stop paths must not hang: docs/safety.md#sockets)."""
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if conflate:
        sock.setsockopt(zmq.CONFLATE, 1)
    if hwm is not None:
        sock.setsockopt(zmq.SNDHWM if kind == zmq.PUB else zmq.RCVHWM, hwm)
    if max_bytes is not None:
        sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)
    if kind == zmq.SUB:
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    return sock


class SocketEndpoint:
    """An owner of one ZeroMQ socket that closes it without lingering (an e-stop path must never hang on
    exit), directly or by leaving a `with` block."""

    _sock: zmq.Socket

    def close(self) -> None:
        self._sock.close(linger=0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

