"""A TCP proxy on loopback that adds latency, for network-fault tests (the role `tc netem delay` or Toxiproxy's
`latency` toxic plays on a bench, without root or extra tools).

ZeroMQ over tcp:// is a plain byte stream, so holding bytes back delays whole messages, handshakes included. Every
chunk read from one side is written to the other `delay ± jitter` seconds after it arrived; a chunk is never
written before the one read before it, so the stream stays in order whatever the jitter. Requests (client to
server, "up") and replies ("down") have their own delay, and `set_delay` changes both mid-run (bytes already held
keep the delay they were read with).

Bounded on purpose, since tests leave it running in the background: it binds 127.0.0.1 only, forwards only to a
port on 127.0.0.1, accepts at most `max_connections` connections (later ones are closed at once), and shuts
itself down after `lifetime_s` even if nobody closes it. One asyncio loop in one daemon thread does all the work.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
Direction = Literal["up", "down"]
_READ_BYTES = 1 << 16


@dataclass
class ProxyStats:
    """What went through: connections accepted and refused (over `max_connections`), bytes per direction."""

    accepted: int = 0
    refused: int = 0
    up_bytes: int = 0
    down_bytes: int = 0


class DelayProxy:
    """Listens on 127.0.0.1 (a free port) and forwards every connection to 127.0.0.1:`upstream_port`, late."""

    def __init__(self, upstream_port: int, *, up_s: float = 0.0, down_s: float = 0.0, jitter_s: float = 0.0,
                 max_connections: int = 16, lifetime_s: float = 60.0, seed: int = 0) -> None:
        if min(up_s, down_s, jitter_s) < 0 or max_connections < 1 or lifetime_s <= 0:
            raise ValueError("delays and jitter must be >= 0, max_connections >= 1 and lifetime_s > 0")
        self.upstream_port, self.jitter_s = upstream_port, jitter_s
        self.max_connections, self.lifetime_s = max_connections, lifetime_s
        self.stats = ProxyStats()
        self._delay: dict[Direction, float] = {"up": up_s, "down": down_s}
        self._random = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._stopping: asyncio.Event | None = None
        self._tasks: set[asyncio.Task] = set()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._run, name="delay-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(5.0):
            raise RuntimeError("delay proxy did not start within 5 s")
        if self._error is not None:
            raise self._error

    @property
    def endpoint(self) -> str:
        """The ZeroMQ endpoint a client connects to instead of the server's."""
        return f"tcp://{HOST}:{self.port}"

    def set_delay(self, up_s: float, down_s: float) -> None:
        """New delays for bytes read from now on (thread-safe: plain float stores read by the loop's thread)."""
        self._delay = {"up": up_s, "down": down_s}

    def close(self, timeout_s: float = 5.0) -> None:
        """Drop every connection and stop listening; bounded, and safe to call twice."""
        if self._thread.is_alive() and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout_s)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ the loop's thread

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        try:
            server = await asyncio.start_server(self._on_connection, HOST, 0)
        except OSError as exc:
            self._error = exc
            self._ready.set()
            return
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await asyncio.wait_for(self._stopping.wait(), self.lifetime_s)
        except TimeoutError:
            log.warning("delay proxy: lifetime of %.0f s is over; shutting down", self.lifetime_s)
        server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await server.wait_closed()

    async def _on_connection(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.stats.accepted >= self.max_connections:
            self.stats.refused += 1
            client_w.close()
            return
        self.stats.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        server_w: asyncio.StreamWriter | None = None
        try:
            server_r, server_w = await asyncio.open_connection(HOST, self.upstream_port)
            pumps = [asyncio.ensure_future(self._pump(client_r, server_w, "up")),
                     asyncio.ensure_future(self._pump(server_r, client_w, "down"))]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)  # one side closed: so does the other
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except OSError as exc:
            log.info("delay proxy: connection ended: %s", exc)
        finally:
            for writer in (client_w, server_w):
                if writer is not None:
                    writer.close()
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: Direction) -> None:
        """Read as it comes; write each chunk at its due time, in order; end after the peer's EOF is passed on."""
        held: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def read() -> None:
            last_due = 0.0
            try:
                while data := await reader.read(_READ_BYTES):
                    jitter = self._random.uniform(-self.jitter_s, self.jitter_s) if self.jitter_s else 0.0
                    last_due = max(last_due, loop.time() + max(0.0, self._delay[direction] + jitter))
                    held.put_nowait((last_due, data))
            except OSError as exc:  # a reset peer ends the stream like an EOF
                log.info("delay proxy: %s stream ended: %s", direction, exc)
            finally:
                held.put_nowait(None)

        reading = asyncio.ensure_future(read())
        try:
            while (item := await held.get()) is not None:
                due, data = item
                await asyncio.sleep(max(0.0, due - loop.time()))
                writer.write(data)
                await writer.drain()
                if direction == "up":
                    self.stats.up_bytes += len(data)
                else:
                    self.stats.down_bytes += len(data)
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
