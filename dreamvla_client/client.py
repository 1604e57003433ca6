"""The robot PC's client of `dv-serve` (protocol v1): torch-free, deadline-bound, never stale.

One DEALER socket, one request outstanding at a time, every wait a poll with a deadline (zguide's
Lazy Pirate): on a timeout the socket is closed with LINGER 0 and reopened, so a late reply dies with
the old socket, and each `infer` reply must also echo the request's seq. What to do after a timeout
(retry, SAFE-HOLD, abort the episode) is the caller's decision; `infer` is never retried here because
every `infer` appends a frame to the session's history on the server.

With a shared key the socket speaks ZeroMQ CURVE (`bind_policy`): a failed handshake (the server has
another key, or none) is reported at once as `auth_failed` instead of waiting out the deadline.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from types import TracebackType
from typing import NoReturn, TypeVar

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from dreamvla_client.conventions import ACTION_DIM
from dreamvla_client.frames import NOBLOCK, recv_frames, send_frames
from dreamvla_client.protocol import (
    DEFAULT_LIMITS,
    REPLIES,
    Chunk,
    Error,
    Hello,
    HelloAck,
    Infer,
    Limits,
    Message,
    ModelContract,
    Ping,
    Pong,
    ProtocolError,
    Reset,
    ResetAck,
    RobotContract,
    Stats,
    StatsRequest,
    WireObservation,
    decode,
    encode,
)
from dreamvla_client.security import HANDSHAKE_FAILED, check_connect_policy, secure_client

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)


class PolicyError(Exception):
    """Base of everything the client raises instead of returning a chunk."""


class PolicyTimeout(PolicyError):
    """No reply within the deadline; the socket has been reopened and the next call re-hellos."""


class ServerError(PolicyError):
    """The server answered with an `error` (or sent a reply that could not be accepted)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class ContractMismatch(ServerError):
    """The server refused this robot's contract: `fields` names the robot contract's fields that differ,
    `contract` is the model's (what hello_ack would have carried), the message says why."""

    def __init__(self, code: str, message: str, contract: ModelContract | None = None,
                 fields: list[str] | None = None) -> None:
        super().__init__(code, message)
        self.contract, self.fields = contract, fields or []


class SessionLost(ServerError):
    """The server no longer holds the session (restart, expiry, eviction): the episode's history is
    gone. The client has already re-helloed; call `reset` to start a new episode."""


class PolicyClient:
    """Synchronous client: `hello`, `reset`, `infer`, `ping`, `stats`."""

    def __init__(self, endpoint: str, contract: RobotContract, *, client_id: str, key: bytes | None = None,
                 allow_unauthenticated_remote: bool = False, deadline_s: float | None = None, retries: int = 3,
                 control_timeout_s: float = 2.0, limits: Limits = DEFAULT_LIMITS) -> None:
        """`key`: the shared key's bytes (the key file, surrounding whitespace stripped); required for a
        non-loopback `endpoint` unless `allow_unauthenticated_remote`. `deadline_s` bounds `infer`
        (default: one chunk horizon, chunk_length / control_rate_hz); `control_timeout_s` bounds each
        attempt of hello/reset/stats/ping, of which hello, reset and stats are sent up to `retries` times
        (they are idempotent)."""
        if retries < 1:
            raise ValueError("retries must be >= 1")
        check_connect_policy(endpoint, key, allow_unauthenticated_remote)
        self.endpoint, self.contract, self.client_id = endpoint, contract, client_id
        self.deadline_s = deadline_s if deadline_s is not None else contract.chunk_length / contract.control_rate_hz
        self.retries, self.control_timeout_s = retries, control_timeout_s
        self._key, self._limits = key, limits
        self.server: HelloAck | None = None  # the last hello_ack; None until (re-)helloed
        self.counters: Counter[str] = Counter()  # timeouts, reconnects, discarded (late or foreign replies)
        self._seq = itertools.count()
        # The process-wide context: a client dropped without close() (an exception in its owner) must not
        # leave a private context whose garbage-collected term() blocks interpreter exit.
        self._ctx = zmq.Context.instance()
        self._monitor: zmq.Socket | None = None  # handshake failures, with a key only
        self._poller: zmq.Poller | None = None
        self._socket = self._connect()

    def _connect(self) -> zmq.Socket:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self._limits.max_message_bytes)
        if self._key is not None:
            secure_client(sock, self._key)
            self._monitor = sock.get_monitor_socket(HANDSHAKE_FAILED)
            self._poller = zmq.Poller()
            self._poller.register(sock, zmq.POLLIN)
            self._poller.register(self._monitor, zmq.POLLIN)
        sock.connect(self.endpoint)
        return sock

    def _reconnect(self) -> None:
        """Lazy Pirate: a fresh socket (and identity), so nothing sent to the old one can reach us."""
        self.close()
        self._socket = self._connect()
        self.server = None
        self.counters["reconnects"] += 1

    def close(self) -> None:
        if self._monitor is not None:
            self._socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = self._poller = None
        self._socket.close(linger=0)  # only this client's socket: the context is shared

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------------------ API

    def hello(self) -> HelloAck:
        """Announce the robot's contract; `ContractMismatch` (the model's contract, the fields that differ
        and the reason) if refused."""
        self.server = self._retrying(Hello(client_id=self.client_id, contract=self.contract), HelloAck)
        return self.server

    def reset(self, session: str, episode_id: str, instruction: str, seed: int | None = None) -> ResetAck:
        """Start (or restart) `session` as a new episode: the server drops its history."""
        request = Reset(session=session, episode_id=episode_id, instruction=instruction, seed=seed)
        answers: Callable[[ResetAck], bool] = lambda r: r.session == session and r.episode_id == episode_id  # noqa: E731
        self._ensure_hello()
        try:
            return self._retrying(request, ResetAck, answers)
        except SessionLost as exc:
            if exc.code != "not_hello":
                raise
            self.hello()  # the server forgot this connection (a restart); a reset needs no history
            return self._retrying(request, ResetAck, answers)

    def infer(self, session: str, images: dict[str, np.ndarray], state: np.ndarray,
              capture_ts_ns: dict[str, int]) -> Chunk:
        """The chunk for this observation within `deadline_s`, or PolicyTimeout / SessionLost /
        ServerError. A re-hello needed after a timeout runs first, under the control timeout."""
        self._ensure_hello()
        seq = next(self._seq)
        request = Infer(session=session, seq=seq, capture_ts_ns=capture_ts_ns,
                        observation=WireObservation(images=images, state=state))
        try:
            chunk = self._exchange(request, Chunk, self.deadline_s, lambda r: r.seq == seq)
        except SessionLost as exc:
            if exc.code == "not_hello":  # a restarted server: it knows neither us nor the session
                self.hello()
            raise
        expected = (self.contract.chunk_length, ACTION_DIM)
        if chunk.actions.shape != expected or chunk.actions.dtype != np.float32:
            raise ServerError("bad_reply", f"chunk actions {chunk.actions.dtype} {chunk.actions.shape}; "
                                           f"expected float32 {expected}")
        return chunk

    def ping(self) -> tuple[int, int]:
        """(clock offset, round trip) in ns; offset = server monotonic clock - ours at the midpoint.
        One attempt: a ping that times out is itself the answer."""
        t0 = time.monotonic_ns()
        pong = self._exchange(Ping(client_ts_ns=t0), Pong, self.control_timeout_s, lambda r: r.client_ts_ns == t0)
        t1 = time.monotonic_ns()
        return pong.server_ts_ns - (t0 + t1) // 2, t1 - t0

    def stats(self) -> Stats:
        return self._retrying(StatsRequest(), Stats)

    # -------------------------------------------------------------------------- plumbing

    def _ensure_hello(self) -> None:
        if self.server is None:
            self.hello()

    def _retrying(self, request: Message, expect: type[M], matches: Callable[[M], bool] = lambda r: True) -> M:
        """An idempotent request, sent up to `retries` times under the control timeout."""
        for attempt in range(1, self.retries + 1):
            try:
                return self._exchange(request, expect, self.control_timeout_s, matches)
            except PolicyTimeout:
                if attempt == self.retries:
                    raise
                log.info("retrying %s (attempt %d of %d)", request.type, attempt + 1, self.retries)
        raise AssertionError("unreachable")

    def _exchange(self, request: Message, expect: type[M], timeout_s: float, matches: Callable[[M], bool]) -> M:
        """Send `request`, then poll (never a blocking recv) until its reply or the deadline. Replies
        that answer something else (a different seq) are discarded and counted."""
        deadline = time.monotonic() + timeout_s
        try:
            send_frames(self._socket, encode(request), NOBLOCK)
        except zmq.Again:
            return self._timeout(request, timeout_s)
        while True:
            remaining_ms = math.ceil((deadline - time.monotonic()) * 1e3)
            if remaining_ms <= 0 or not self._wait(remaining_ms):
                return self._timeout(request, timeout_s)
            frames = recv_frames(self._socket)
            try:
                reply = decode([f.buffer for f in frames], limits=self._limits, accept=REPLIES)
            except ProtocolError as exc:
                raise ServerError(exc.code, f"undecodable reply to {request.type}: {exc.message}") from None
            if isinstance(reply, Error) and reply.seq in (None, getattr(request, "seq", None)):
                raise _error_for(reply)
            if isinstance(reply, expect) and matches(reply):
                return reply
            self.counters["discarded"] += 1
            log.info("discarded a %s that does not answer %s", reply.type, request.type)

    def _wait(self, timeout_ms: int) -> bool:
        """True once a reply is ready, False at the timeout. With a key, a failed CURVE handshake raises
        `auth_failed` at once (the socket is reopened, so the next call tries afresh)."""
        if self._poller is None:
            return bool(self._socket.poll(timeout_ms, zmq.POLLIN))
        ready = dict(self._poller.poll(timeout_ms))
        if self._monitor in ready:
            event = recv_monitor_message(self._monitor)["event"]
            self._reconnect()
            raise ServerError("auth_failed", f"the encrypted handshake with {self.endpoint} failed "
                                             f"({zmq.Event(event).name}): the server has another key, or none")
        return self._socket in ready

    def _timeout(self, request: Message, timeout_s: float) -> NoReturn:
        self.counters["timeouts"] += 1
        self._reconnect()
        raise PolicyTimeout(f"no reply to {request.type} from {self.endpoint} within {timeout_s * 1e3:.0f} ms; "
                            f"socket reopened")


def _error_for(reply: Error) -> ServerError:
    if reply.code == "contract_mismatch":
        return ContractMismatch(reply.code, reply.message, reply.contract, reply.fields)
    if reply.code in ("unknown_session", "not_hello"):
        return SessionLost(reply.code, reply.message)
    return ServerError(reply.code, reply.message)
