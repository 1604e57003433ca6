"""`dv-serve`'s transport: a ZeroMQ ROUTER that speaks protocol v1 and micro-batches inference.

Torch-free on purpose: the policy sits behind `Backend` (the DreamVLA one is `policy_server.serving.backend`),
so the transport can be tested and benchmarked with `EchoBackend` and no model at all.

Threads: the socket thread owns the ROUTER and every table (peers, sessions, statistics); it decodes,
validates and answers everything that needs no model. `infer` and `reset` become jobs for one worker
thread that forms micro-batches and calls the backend, then hands the finished jobs back through an
in-process queue plus a wake-up socket, so the socket loop never waits on inference.

Neither thread dies of a bug: a batch that fails is answered with `internal` to each of its requests, a
reply that cannot be built costs that reply, and a chunk the model should not have produced (non-finite,
outside the contract's action range) is answered with `bad_output` and its frame leaves the history.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import zmq

from dreamvla_client.contract import ObservationCheck, OutputCheck, contract_mismatches
from dreamvla_client.frames import NOBLOCK, recv_frames, send_frames
from dreamvla_client.latency import LatencyStats
from dreamvla_client.protocol import (
    DEFAULT_LIMITS,
    REQUESTS,
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
    Stats,
    StatsRequest,
    WireObservation,
    decode,
    encode,
    encode_parts,
    pack,
)
from dreamvla_client.security import check_bind_policy, secure_server, start_authenticator
from policy_server.serving.tables import ExpiringMap

log = logging.getLogger(__name__)

# Stages of a chunk's `timing_ms`, in the order a request goes through them.
STAGES = ("receive", "decode", "queue", "encode", "backbone", "diffusion", "send")
POLL_MS = 50  # how often an idle socket loop looks at the stop flag and the session clock
DRAIN_TIMEOUT_S = 30.0  # a backend stuck longer than this at shutdown is abandoned (logged)
ACTIVE_WINDOW_S = 1.0  # a session that sent `infer` this recently is worth waiting for in a batch


class Backend(Protocol):
    """The policy behind the server: the server knows nothing of models, devices or tensors."""

    def contract(self) -> ModelContract:
        """What the model expects and returns; robots are checked against it at `hello`."""
        ...

    def identity(self) -> tuple[str, str, str]:
        """(model id, checkpoint hash, normalisation hash) for `hello_ack`."""
        ...

    def new_session(self, instruction: str, seed: int | None) -> Any:
        """Opaque per-episode state (history, noise generator); a random seed when `seed` is None."""
        ...

    def infer_batch(self, states: list[Any], observations: list[WireObservation]
                    ) -> tuple[list[np.ndarray], dict[str, float]]:
        """One step for each session: (chunk_length, 7) float32 chunks in robot units, and the seconds
        spent per stage (a subset of encode, backbone, diffusion). A chunk must not depend on who else
        was in the batch. All or nothing: a call that raises leaves every session as it was."""
        ...

    def discard_step(self, state: Any) -> None:
        """Forget the session's last `infer_batch` step (its chunk was refused): the next step must see
        the history it would have seen had that observation never arrived."""
        ...


# ------------------------------------------------------------------------------------- tables


def wire_stages(latency: LatencyStats) -> dict[str, dict[str, float]]:
    """`stats_reply.stages_ms`: per stage p50, p95, p99 and the count of chunks, floats (docs/protocol.md)."""
    return {stage: {"p50": s["p50"], "p95": s["p95"], "p99": s["p99"], "count": float(s["n"])}
            for stage, s in latency.summary().items()}


@dataclass
class _Peer:
    """A connected client (one ZMQ identity) after its `hello`; `last_seq` is the highest `infer` seq
    this socket has sent (-1: none yet), kept across a second `hello` on the same socket."""

    client_id: str
    check: ObservationCheck
    last_seq: int = -1


@dataclass
class _Session:
    """One robot episode; `state` is the backend's, created by the worker when the reset job runs."""

    episode_id: str
    state: Any = None
    ready: bool = False  # the reset ran (a backend may well use None as its state)


@dataclass
class _Job:
    """A `reset` or `infer` travelling socket thread -> worker -> socket thread."""

    identity: bytes
    key: tuple[str, str]  # (client id, session): sessions survive a client's reconnect, not its rename
    session: _Session
    request: Reset | Infer
    timing_ms: dict[str, float]
    enqueued: float
    reply: Chunk | None = None  # filled by the worker
    error: ProtocolError | None = None


# ------------------------------------------------------------------------------------- worker


class _Batcher:
    """The inference thread: micro-batches queued jobs (at most one per session per batch, so each
    session's requests run in the order they came) and runs them on the backend."""

    def __init__(self, backend: Backend, *, max_batch: int, max_wait_s: float,
                 active_sessions: Callable[[], int], finished: Callable[[list[_Job]], None]) -> None:
        self._backend, self._max_batch, self._max_wait_s = backend, max_batch, max_wait_s
        self._check_output = OutputCheck(backend.contract())
        self._active_sessions, self._finished = active_sessions, finished
        self._inbox: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._backlog: deque[_Job] = deque()  # jobs held back because their session is already in a batch
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="policy-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: _Job) -> None:
        self._inbox.put(job)

    def close(self, timeout_s: float) -> None:
        """Finish what was submitted, then stop."""
        self._inbox.put(None)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._execute(batch)
            except Exception as exc:  # a bug must cost this batch, never the worker (every client would hang)
                log.exception("batch failed size=%d", len(batch))
                self._fail(batch, ProtocolError("internal", f"the batch failed: {type(exc).__name__}: {exc}"))
            self._finished(batch)

    def _hold(self, job: _Job | None) -> None:
        if job is None:
            self._closing = True
        else:
            self._backlog.append(job)

    def _place(self, job: _Job | None, batch: list[_Job], keys: set[tuple[str, str]]) -> None:
        """Into the batch if there is room and its session is not in it yet; else back to the backlog."""
        if job is not None and len(batch) < self._max_batch and job.key not in keys:
            batch.append(job)
            keys.add(job.key)
        else:
            self._hold(job)

    def _next_batch(self) -> list[_Job] | None:
        """Oldest jobs first, one per session; waits up to max_wait for more, and only while more
        sessions are active than the batch holds (a lone robot never pays the batching wait). None
        once closed and everything submitted has run."""
        while not self._backlog and not self._closing:
            self._hold(self._inbox.get())
        if not self._backlog:
            return None
        pending, self._backlog = self._backlog, deque()
        batch: list[_Job] = []
        keys: set[tuple[str, str]] = set()
        for job in pending:
            self._place(job, batch, keys)
        # Counted from when this batch could start, not from the oldest arrival: a request that queued
        # behind a long batch would otherwise never wait, and clients settle into alternating halves.
        deadline = max(batch[0].enqueued, time.perf_counter()) + self._max_wait_s
        while len(batch) < min(self._max_batch, self._active_sessions()) and not self._closing:
            remaining = deadline - time.perf_counter()
            try:
                job = self._inbox.get(timeout=remaining) if remaining > 0 else self._inbox.get_nowait()
            except queue.Empty:
                break
            self._place(job, batch, keys)
        return batch

    def _execute(self, batch: list[_Job]) -> None:
        start = time.perf_counter()
        for job in batch:
            job.timing_ms["queue"] = (start - job.enqueued) * 1e3
        for job in batch:
            if isinstance(job.request, Reset):
                self._reset(job)
        ready = []
        for job in batch:
            if isinstance(job.request, Infer):
                if not job.session.ready:
                    job.error = ProtocolError("unknown_session", "the session cannot go on (its reset failed, or its "
                                                                 "history could not be repaired): send reset")
                else:
                    ready.append(job)
        if ready:
            self._infer(ready)

    def _reset(self, job: _Job) -> None:
        request = job.request
        try:
            job.session.state = self._backend.new_session(request.instruction, request.seed)
            job.session.ready = True
        except Exception as exc:
            log.exception("reset failed session=%s", job.key)
            job.error = ProtocolError("internal", f"reset failed: {type(exc).__name__}: {exc}")

    def _infer(self, jobs: list[_Job]) -> None:
        try:
            chunks, stages = self._backend.infer_batch([j.session.state for j in jobs],
                                                       [j.request.observation for j in jobs])
        except Exception as exc:  # the backend left its sessions as they were
            log.exception("inference failed batch=%d", len(jobs))
            for job in jobs:
                job.error = ProtocolError("internal", f"inference failed: {type(exc).__name__}: {exc}")
            return
        if len(chunks) != len(jobs):  # it stepped every session but its answer is unusable
            self._fail(jobs, ProtocolError("internal", f"the backend returned {len(chunks)} chunks for "
                                                       f"{len(jobs)} requests"), stepped=True)
            return
        for job, chunk in zip(jobs, chunks, strict=True):
            try:
                job.reply = self._chunk(job, self._check_output(chunk), stages)
            except Exception as exc:  # a refused chunk, or one no reply can carry
                error = exc if isinstance(exc, ProtocolError) else ProtocolError(
                    "internal", f"the backend's reply is unusable: {type(exc).__name__}: {exc}")
                log.error("chunk refused session=%s code=%s: %s", job.key, error.code, error.message)
                self._fail([job], error, stepped=True)

    @staticmethod
    def _chunk(job: _Job, actions: np.ndarray, stages_s: dict[str, float]) -> Chunk:
        """The reply, with `send` still 0: the socket thread times the encoding."""
        request = job.request
        timing = dict.fromkeys(STAGES, 0.0) | job.timing_ms | {k: s * 1e3 for k, s in stages_s.items()}
        return Chunk(session=request.session, seq=request.seq, capture_ts_ns=request.capture_ts_ns,
                     actions=actions, timing_ms=timing)

    def _fail(self, jobs: list[_Job], error: ProtocolError, stepped: bool | None = None) -> None:
        """Answer `jobs` with `error`. Their sessions forget the step when the backend took it (`stepped`;
        None: those that got as far as a reply), so a refused output never stays in a history."""
        for job in jobs:
            if isinstance(job.request, Infer) and (stepped or (stepped is None and job.reply is not None)):
                self._discard(job)
            job.reply, job.error = None, error

    def _discard(self, job: _Job) -> None:
        try:
            self._backend.discard_step(job.session.state)
        except Exception:  # a history that cannot be repaired must not be continued
            log.exception("discard failed session=%s: it must be reset", job.key)
            job.session.ready = False


# ------------------------------------------------------------------------------------- server


class PolicyServer:
    """Protocol v1 over a ROUTER socket: hello/contract check, sessions, micro-batched inference.

    The socket is bound at construction (so a bad or busy address fails here, and `endpoint` is known
    before serving); `serve_forever` runs the loop in the calling thread until `stop`.
    """

    def __init__(self, backend: Backend, bind: str = "tcp://127.0.0.1:5555", *, max_batch: int = 8,
                 max_wait_ms: float = 2.0, session_ttl_s: float = 600.0, max_sessions: int = 64,
                 key: bytes | None = None, limits: Limits = DEFAULT_LIMITS, batching: bool = True) -> None:
        check_bind_policy(bind, key)
        if max_batch < 1 or max_sessions < 1:
            raise ValueError("max_batch and max_sessions must be >= 1")
        self._key, self._limits = key, limits
        self._contract = backend.contract()
        self._identity = backend.identity()
        self._sessions: ExpiringMap[tuple[str, str], _Session] = ExpiringMap(session_ttl_s, max_sessions)
        self._peers: ExpiringMap[bytes, _Peer] = ExpiringMap(session_ttl_s, 4 * max_sessions)
        self._max_in_flight = 4 * max_sessions
        self._in_flight = 0
        self._active = 0  # sessions active in the last ACTIVE_WINDOW_S, read by the worker
        self._last_batch = 0
        self._next_sweep = 0.0
        self._counters: Counter[str] = Counter()
        self._latency = LatencyStats()
        self._stopping = threading.Event()
        self._done: queue.SimpleQueue[list[_Job]] = queue.SimpleQueue()
        self._ctx = zmq.Context()
        self._auth = start_authenticator(self._ctx, key) if key is not None else None  # before the bind
        self._sock = self._router(bind)
        wake_address = f"inproc://policy-server-wake-{secrets.token_hex(8)}"
        self._wake_rx = self._ctx.socket(zmq.PAIR)
        self._wake_rx.bind(wake_address)
        self._wake_tx = self._ctx.socket(zmq.PAIR)  # used by the worker thread only
        self._wake_tx.connect(wake_address)
        self._batcher = _Batcher(backend, max_batch=max_batch if batching else 1, max_wait_s=max_wait_ms / 1e3,
                                 active_sessions=lambda: self._active, finished=self._on_finished)

    def _router(self, bind: str) -> zmq.Socket:
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unroutable reply raises instead of vanishing
        sock.setsockopt(zmq.MAXMSGSIZE, self._limits.max_message_bytes)  # libzmq drops an oversized peer
        if self._key is not None:
            secure_server(sock, self._key)
        try:
            sock.bind(bind)
        except zmq.ZMQError as exc:
            sock.close()
            self._stop_auth()
            self._ctx.term()
            raise ValueError(f"cannot bind {bind}: {exc}") from exc
        return sock

    def _stop_auth(self) -> None:
        if self._auth is not None:
            self._auth.stop()

    @property
    def endpoint(self) -> str:
        """The bound endpoint, with the port the OS chose when bound to port `*`."""
        return self._sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def stop(self) -> None:
        """Stop accepting work (new requests get `shutting_down`), finish in-flight jobs, then return
        from `serve_forever`. Safe from signal handlers and other threads."""
        self._stopping.set()

    # ---------------------------------------------------------------------------- loop

    def serve_forever(self) -> None:
        self._batcher.start()
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._wake_rx, zmq.POLLIN)
        log.info("serving endpoint=%s model=%s auth=%s", self.endpoint, self._identity[0],
                 "curve" if self._key else "none")
        drain_deadline = None
        try:
            while True:
                if self._stopping.is_set():
                    drain_deadline = drain_deadline or time.monotonic() + DRAIN_TIMEOUT_S
                    if self._in_flight == 0:
                        break
                    if time.monotonic() > drain_deadline:
                        log.error("abandoning %d in-flight jobs after %.0f s", self._in_flight, DRAIN_TIMEOUT_S)
                        break
                ready = dict(poller.poll(POLL_MS))
                if self._wake_rx in ready:
                    self._reply_finished()
                if self._sock in ready:
                    self._receive_all()
                self._sweep()
        finally:
            self._close()
        log.info("stopped requests=%d errors=%d", self._counters["requests"], self._counters["errors"])

    def _close(self) -> None:
        self._batcher.close(timeout_s=1.0)
        for sock in (self._sock, self._wake_rx, self._wake_tx):
            sock.close(linger=0)
        self._stop_auth()
        self._ctx.term()

    def _on_finished(self, jobs: list[_Job]) -> None:
        """Worker thread: hand a finished batch to the socket thread and wake it."""
        self._done.put(jobs)
        self._wake_tx.send(b"")

    def _receive_all(self, budget: int = 64) -> None:
        """Take up to `budget` messages off the socket (then let finished jobs out)."""
        for _ in range(budget):
            start = time.perf_counter()
            try:
                frames = recv_frames(self._sock, NOBLOCK)
            except zmq.Again:
                return
            receive_ms = (time.perf_counter() - start) * 1e3
            identity, payload = frames[0].bytes, [f.buffer for f in frames[1:]]
            try:
                self._on_request(identity, payload, receive_ms, start)
            except Exception as exc:  # a bug must cost one request, never the server
                log.exception("unhandled error")
                self._send_error(identity, ProtocolError("internal", f"{type(exc).__name__}: {exc}"))

    def _on_request(self, identity: bytes, payload: list[memoryview], receive_ms: float, start: float) -> None:
        self._counters["requests"] += 1
        request: Message | None = None
        try:
            request = decode(payload, limits=self._limits, accept=REQUESTS)
            reply = self._dispatch(identity, request, {"receive": receive_ms}, start)
        except ProtocolError as exc:
            self._send_error(identity, exc, request)
            return
        if reply is not None:
            self._send(identity, reply)

    def _dispatch(self, identity: bytes, request: Message, timing: dict[str, float], start: float
                  ) -> Message | None:
        """The reply to send now, or None when a job was queued (the worker's result is the reply).
        `timing` holds the receive stage; decode (decoding + validation) is added here."""
        if isinstance(request, Ping):
            self._peers.get(identity, time.monotonic())  # any traffic keeps a connection's hello alive
            return self._pong(request)
        if isinstance(request, StatsRequest):
            return Stats(stages_ms=wire_stages(self._latency), counters=dict(self._counters))
        if self._stopping.is_set():
            raise ProtocolError("shutting_down", "the server is shutting down; reconnect to another or retry later")
        if isinstance(request, Hello):
            return self._hello(identity, request)
        assert isinstance(request, Reset | Infer), request.type  # decode accepts requests only
        now = time.monotonic()
        peer = self._peers.get(identity, now)
        if peer is None:
            raise ProtocolError("not_hello", "send hello first (a new or reconnected socket, a server restart, "
                                             "or this socket was idle too long)")
        if isinstance(request, Infer):
            self._check_seq(peer, request.seq)
        if self._in_flight >= self._max_in_flight:
            raise ProtocolError("overloaded", f"{self._in_flight} requests in flight; retry later")
        key = (peer.client_id, request.session)
        if isinstance(request, Reset):
            session = _Session(request.episode_id)
            for evicted in self._sessions.put(key, session, now):
                self._counters["sessions_evicted"] += 1
                log.info("session evicted (cap) client=%s session=%s", *evicted)
            log.info("reset client=%s session=%s episode=%s", peer.client_id, request.session, request.episode_id)
        else:
            session = self._sessions.get(key, now)
            if session is None:
                raise ProtocolError("unknown_session", f"session {request.session!r} is unknown or expired "
                                                       f"(evicted, or the server restarted): send reset")
            peer.check(request)
        now_pc = time.perf_counter()
        timing["decode"] = (now_pc - start) * 1e3 - timing["receive"]
        self._in_flight += 1
        self._batcher.submit(_Job(identity, key, session, request, timing, now_pc))
        return None

    @staticmethod
    def _check_seq(peer: _Peer, seq: int) -> None:
        """Strictly increasing per socket (docs/protocol.md §4.2); a refused seq is not recorded."""
        if seq <= peer.last_seq:
            raise ProtocolError("stale_seq", f"seq {seq} is not greater than {peer.last_seq}, the last this "
                                             f"socket sent: a repeated or reordered infer")
        peer.last_seq = seq

    def _hello(self, identity: bytes, hello: Hello) -> HelloAck:
        """A second hello on a socket replaces the first; a refused one leaves the socket with none."""
        now = time.monotonic()
        earlier = self._peers.get(identity, now)
        mismatches = contract_mismatches(hello.contract, self._contract)
        if mismatches:
            self._peers.discard(identity, earlier)
            log.warning("contract mismatch client=%s reasons=%s", hello.client_id, mismatches)
            raise ProtocolError("contract_mismatch", "; ".join(mismatches.values()), contract=self._contract,
                                fields=sorted(mismatches))
        peer = _Peer(hello.client_id, ObservationCheck(hello.contract, self._contract))
        peer.last_seq = earlier.last_seq if earlier is not None else -1
        self._peers.put(identity, peer, now)
        log.info("hello client=%s cameras=%s", hello.client_id, [c.name for c in hello.contract.cameras])
        model_id, checkpoint_hash, normalization_hash = self._identity
        return HelloAck(model_id=model_id, checkpoint_hash=checkpoint_hash,
                        normalization_hash=normalization_hash, contract=self._contract)

    def _pong(self, ping: Ping) -> Pong:
        return Pong(client_ts_ns=ping.client_ts_ns, server_ts_ns=time.monotonic_ns(),
                    health="shutting_down" if self._stopping.is_set() else "ok",
                    load={"queue_depth": self._in_flight, "sessions": len(self._sessions),
                          "clients": len(self._peers), "last_batch_size": self._last_batch})

    # --------------------------------------------------------------------------- replies

    def _reply_finished(self) -> None:
        """Answer one finished batch. The worker queues a batch, then sends one wake-up for it, so a
        wake-up received means a batch is waiting; further batches have wake-ups of their own, which the
        next poll returns at once (no empty read ends each turn: pyzmq's Again costs more than the read)."""
        self._wake_rx.recv()
        jobs = self._done.get_nowait()
        self._counters["batches"] += 1
        self._last_batch = len(jobs)
        for job in jobs:
            self._in_flight -= 1
            try:
                self._reply_job(job)
            except Exception as exc:  # a bug must cost this reply, never the socket thread
                log.exception("reply failed")
                self._send_error(job.identity, ProtocolError("internal", f"the reply failed: "
                                                                         f"{type(exc).__name__}: {exc}"),
                                 job.request)

    def _reply_job(self, job: _Job) -> None:
        request = job.request
        if job.error is not None:
            if isinstance(request, Reset):
                self._sessions.discard(job.key, job.session)  # a session whose reset failed must not look alive
            self._send_error(job.identity, job.error, request)
        elif isinstance(request, Reset):
            self._send(job.identity, ResetAck(session=request.session, episode_id=request.episode_id))
        else:
            self._send_chunk(job)

    def _send_chunk(self, job: _Job) -> None:
        """The chunk's `send` stage is the time to encode this reply: its header map and array frames, all
        but packing the header that carries the number (a reply cannot time its own transmission). One
        encoding: the number is put into the header map before it is packed."""
        chunk = job.reply
        assert chunk is not None, "a finished infer without an error has its reply"
        start = time.perf_counter()
        header, buffers = encode_parts(chunk)
        send_ms = (time.perf_counter() - start) * 1e3
        header["timing_ms"]["send"] = chunk.timing_ms["send"] = send_ms
        self._send_frames(job.identity, pack(header, buffers), chunk.type)
        self._latency.add_timing(chunk.timing_ms)

    def _send_error(self, identity: bytes, exc: ProtocolError, request: Message | None = None) -> None:
        """The `error` reply echoes the request's seq and session: from the request when it decoded, else
        whatever of them the codec could read."""
        self._counters["errors"] += 1
        self._counters[f"error.{exc.code}"] += 1
        log.info("error code=%s message=%s", exc.code, exc.message)
        ids = {k: getattr(request, k) for k in ("seq", "session") if hasattr(request, k)}
        self._send(identity, Error(code=exc.code, message=exc.message, **(exc.reply | ids)))

    def _send(self, identity: bytes, message: Message) -> None:
        self._send_frames(identity, encode(message), message.type)

    def _send_frames(self, identity: bytes, frames: list[Any], kind: str) -> None:
        """Never blocks: a client that left (EHOSTUNREACH) or stopped reading (HWM) loses its reply."""
        try:
            send_frames(self._sock, [identity, *frames], NOBLOCK)
            self._counters["replies"] += 1
        except zmq.ZMQError as exc:
            self._counters["unroutable"] += 1
            log.info("reply dropped type=%s reason=%s", kind, exc)

    # ------------------------------------------------------------------------ housekeeping

    def _sweep(self) -> None:
        """Once a second: expire idle sessions and peers, and refresh the active-session count."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + ACTIVE_WINDOW_S
        for key in self._sessions.expire(now):
            self._counters["sessions_expired"] += 1
            log.info("session expired client=%s session=%s", *key)
        self._peers.expire(now)
        self._active = max(1, self._sessions.used_since(now - ACTIVE_WINDOW_S))
