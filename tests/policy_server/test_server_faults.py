"""The server against what should never reach a robot, over real ZeroMQ sockets on loopback.

- A finite but huge state (1e39 as float64, 3e38 as float32) is refused, and the tiny DreamVLA's next chunks are
  exactly those of a session that never saw it.
- A model output that is not finite or not within the contract's action range is refused (`bad_output`), and its
  frame leaves the history: the next chunks again match a session that never saw it.
- A backend bug (a ragged chunk, a wrong count, an exception, an unusable timing) costs the requests of that
  batch an `internal` error; the server keeps serving.
- With a key, the connection is CURVE: a captured TCP byte stream replayed into a new connection, or a captured
  message replayed into the victim's own connection, never reaches the server's sessions.
- The key file's surrounding whitespace is not part of the key, on either side.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serve_process import serving, spawned

from dreamvla_client.client import PolicyClient, ServerError, SessionLost
from dreamvla_client.conventions import STATE_LAYOUT
from dreamvla_client.protocol import CameraContract, RobotContract, WireObservation
from dreamvla_client.security import read_key_file
from policy_server.serving.echo import EchoBackend, echo_contract

H, W = 48, 64
STAMPS = {"state": 1, "static": 1, "wrist": 1}
KEY = b"a-shared-key-of-32-bytes-0123456"


def robot_contract() -> RobotContract:
    return RobotContract(cameras=[CameraContract(name=n, height=H, width=W) for n in ("static", "wrist")],
                         state_layout=list(STATE_LAYOUT), control_rate_hz=15.0, chunk_length=3)


def observations(count: int, seed: int) -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Random images and states within the physical ranges."""
    rng = np.random.default_rng(seed)
    low, high = np.array([-0.8, -0.8, 0.0, -3.1, -1.5, -3.1, 0.0]), np.array([0.8, 0.8, 0.8, 3.1, 1.5, 3.1, 1.0])
    return [({n: rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for n in ("static", "wrist")},
             rng.uniform(low, high).astype(np.float32)) for _ in range(count)]


def client(endpoint: str, key: bytes | None = None, name: str = "arm") -> PolicyClient:
    return PolicyClient(endpoint, robot_contract(), client_id=name, key=key, deadline_s=30.0)


# ------------------------------------------------------------------------ the tiny model's history


class PoisonedInput:
    """The tiny DreamVLA, except that the calls numbered in `poison` feed it a state of 3e38: the model itself
    then answers NaN, and that frame sits in its history like any other."""

    def __init__(self, backend: Any, poison: set[int]) -> None:
        self._backend, self._poison, self.calls = backend, poison, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def infer_batch(self, states: list[Any], obs: list[WireObservation]) -> tuple[list[np.ndarray], dict[str, float]]:
        call, self.calls = self.calls, self.calls + 1
        if call in self._poison:
            obs = [WireObservation(images=o.images, state=np.full(7, 3e38, np.float32)) for o in obs]
        return self._backend.infer_batch(states, obs)


def reference_chunks(ckpt: Path, seed: int, sent: list[tuple[dict[str, np.ndarray], np.ndarray]]) -> list[np.ndarray]:
    """What a session that only ever saw `sent` answers: the backend alone, no server, no bad input."""
    from policy_server.serving.backend import EngineBackend
    from policy_server.serving.engine import PolicyEngine

    backend = EngineBackend(PolicyEngine.from_checkpoint(ckpt))
    session = backend.new_session("pick up the bottle", seed)
    return [backend.infer_batch([session], [WireObservation(images=i, state=s)])[0][0] for i, s in sent]


@pytest.fixture(scope="module")
def engine_backend(ckpt):
    from policy_server.serving.backend import EngineBackend
    from policy_server.serving.engine import PolicyEngine

    return EngineBackend(PolicyEngine.from_checkpoint(ckpt))


def test_huge_finite_state_is_refused_and_the_session_stays_clean(ckpt, engine_backend):
    """1e39 (float64) overflows float32 to Inf; 3e38 (float32) is finite but overflows the model. Both are refused
    with out_of_range, never reach the history, and the next sequence_length chunks are the clean session's."""
    good = observations(2 + engine_backend.contract().sequence_length, seed=1)
    bad_states = [np.array([1e39, 0.0, 0.3, 0.0, 0.0, 0.0, 1.0]), np.array([0.4, 0.0, 3e38, 0, 0, 0, 1], np.float32)]
    with serving(engine_backend) as server, client(server.endpoint) as arm:
        arm.reset("s", "e", "pick up the bottle", seed=7)
        got = [arm.infer("s", *good[0], STAMPS).actions, arm.infer("s", *good[1], STAMPS).actions]
        for state in bad_states:
            with pytest.raises(ServerError) as refused:
                arm.infer("s", good[0][0], state, STAMPS)
            assert refused.value.code == "out_of_range" and "observation.state" in refused.value.message
        got += [arm.infer("s", *obs, STAMPS).actions for obs in good[2:]]
    for ours, clean in zip(got, reference_chunks(ckpt, 7, good), strict=True):
        assert np.isfinite(ours).all()
        np.testing.assert_allclose(ours, clean, rtol=1e-5, atol=1e-6)


def test_model_output_that_is_not_finite_is_refused_and_its_frame_evicted(ckpt, engine_backend):
    """The model answers NaN for a poisoned input: the reply is bad_output, and since that frame leaves the
    history (and its noise draw is returned), the next chunks are those of a session that never saw it."""
    good = observations(1 + engine_backend.contract().sequence_length, seed=2)
    with serving(PoisonedInput(engine_backend, poison={1})) as server, client(server.endpoint) as arm:
        arm.reset("s", "e", "pick up the bottle", seed=11)
        got = [arm.infer("s", *good[0], STAMPS).actions]
        with pytest.raises(ServerError) as refused:
            arm.infer("s", *good[1], STAMPS)  # call 1: the model sees 3e38 and answers NaN
        assert refused.value.code == "bad_output" and "NaN" in refused.value.message
        got += [arm.infer("s", *obs, STAMPS).actions for obs in good[1:]]
    for ours, clean in zip(got, reference_chunks(ckpt, 11, good), strict=True):
        assert np.isfinite(ours).all()
        np.testing.assert_allclose(ours, clean, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------- backend bugs


class FaultyEcho(EchoBackend):
    """The echo policy, with one fault on the calls numbered in `faults`; records the sessions it was told to
    forget a step of (`discard_step`), and can hold call 0 back so that later requests queue into one batch."""

    def __init__(self, faults: dict[int, str], hold_first_s: float = 0.0) -> None:
        super().__init__(echo_contract())
        self.faults, self.hold_first_s, self.calls, self.discarded = faults, hold_first_s, 0, 0

    def discard_step(self, state: Any) -> None:
        self.discarded += 1

    def infer_batch(self, states: list[Any], obs: list[WireObservation]) -> tuple[list[Any], dict[str, Any]]:
        call, self.calls = self.calls, self.calls + 1
        if call == 0:
            time.sleep(self.hold_first_s)
        chunks, stages = super().infer_batch(states, obs)
        fault = self.faults.get(call)
        if fault == "raise":
            raise RuntimeError("the model fell over")
        if fault == "ragged":
            return [[[0.0] * 7, [0.0] * 6, [0.0] * 7] for _ in obs], stages
        if fault == "short":
            return chunks[:-1], stages
        if fault == "shape":
            return [c[:2] for c in chunks], stages
        if fault == "nan":
            return [np.full((3, 7), np.nan, np.float32) for _ in obs], stages
        if fault == "overflow":
            return [np.full((3, 7), 1e39) for _ in obs], stages  # finite float64, Inf as float32
        if fault == "huge":
            return [np.full((3, 7), 1e6, np.float32) for _ in obs], stages  # beyond the action range
        if fault == "timing":
            return chunks, {"encode": "slow"}  # no chunk can carry it
        return chunks, stages


# fault -> (code, whether the backend had taken the step, so the server must have it forgotten)
FAULTS = {"ragged": ("internal", True), "short": ("internal", True), "shape": ("internal", True),
          "raise": ("internal", False), "timing": ("internal", True), "nan": ("bad_output", True),
          "overflow": ("bad_output", True), "huge": ("bad_output", True)}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_backend_bug_costs_one_reply_and_the_server_keeps_serving(fault):
    code, stepped = FAULTS[fault]
    backend = FaultyEcho({1: fault})
    (images, state), (images2, state2) = observations(2, seed=3)
    with serving(backend) as server, client(server.endpoint) as arm:
        arm.reset("s", "e", "pick")
        arm.infer("s", images, state, STAMPS)
        with pytest.raises(ServerError) as refused:
            arm.infer("s", images, state, STAMPS)
        assert refused.value.code == code, refused.value.message
        assert backend.discarded == int(stepped)
        np.testing.assert_array_equal(arm.infer("s", images2, state2, STAMPS).actions,  # served, unharmed
                                      np.arange(1, 4, dtype=np.float32)[:, None] * state2)
        with client(server.endpoint, name="bystander") as other:  # and so is everyone else
            other.reset("s", "e", "pick")
            assert other.infer("s", images2, state2, STAMPS).actions.shape == (3, 7)


def test_a_failed_batch_answers_each_of_its_requests_with_internal():
    """Two sessions queue behind a slow call and run as one batch, which raises: both get `internal`, then all
    are served. (The slow call lasts long enough for the server's once-a-second count of active sessions to see
    both waiting, so it batches them.)"""
    backend = FaultyEcho({1: "raise"}, hold_first_s=1.5)
    (images, state), = observations(1, seed=4)
    outcomes: dict[str, Any] = {}

    def infer(name: str, arm: PolicyClient) -> None:
        try:
            outcomes[name] = arm.infer("s", images, state, STAMPS)
        except ServerError as exc:
            outcomes[name] = exc.code

    with serving(backend) as server, client(server.endpoint, name="a") as a, \
            client(server.endpoint, name="b") as b, client(server.endpoint, name="c") as c:
        arms = {"a": a, "b": b, "c": c}
        for arm in arms.values():
            arm.reset("s", "e", "pick")
        threads = {name: threading.Thread(target=infer, args=(name, arm)) for name, arm in arms.items()}
        threads["a"].start()
        time.sleep(0.1)  # call 0 (a) holds the worker; b and c queue for call 1
        threads["b"].start()
        threads["c"].start()
        for thread in threads.values():
            thread.join(10)
        assert backend.calls == 2, "the two queued requests did not share one batch"
        assert outcomes["a"].actions.shape == (3, 7)
        assert (outcomes["b"], outcomes["c"]) == ("internal", "internal")
        for arm in arms.values():
            assert arm.infer("s", images, state, STAMPS).actions.shape == (3, 7)


# ------------------------------------------------------------------------------------------ replay


class RecordingProxy:
    """A loopback TCP proxy in front of a server that keeps every byte each client sent, and can send more bytes
    into a connection's upstream side: an eavesdropper and injector on the wire."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = ("127.0.0.1", upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"tcp://127.0.0.1:{self._listener.getsockname()[1]}"
        self.sent: list[bytearray] = []  # per connection, client -> server
        self.closed: list[threading.Event] = []
        self._servers: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self._listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                downstream, _ = self._listener.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(self._upstream)
            self.sent.append(bytearray())
            self.closed.append(threading.Event())
            self._servers.append(upstream)
            threading.Thread(target=self._pump, args=(len(self.sent) - 1, downstream, upstream), daemon=True).start()

    def _pump(self, index: int, downstream: socket.socket, upstream: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select([downstream, upstream], [], [], 0.1)
                for sock in readable:
                    data = sock.recv(1 << 16)
                    if not data:
                        return
                    if sock is downstream:
                        self.sent[index] += data
                        upstream.sendall(data)
                    else:
                        downstream.sendall(data)
        except OSError:
            return
        finally:
            self.closed[index].set()
            downstream.close()
            upstream.close()

    def inject(self, index: int, data: bytes) -> None:
        self._servers[index].sendall(data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()


@pytest.fixture
def counting_server() -> Iterator[tuple[Any, RecordingProxy]]:
    """A keyed server whose chunk is filled with the number of frames in the session's history, behind a proxy."""

    class Counting(EchoBackend):
        def new_session(self, instruction: str, seed: int | None) -> list[int]:
            return []

        def discard_step(self, state: list[int]) -> None:
            state.pop()

        def infer_batch(self, states: list[Any], obs: list[WireObservation]) -> tuple[list[np.ndarray], dict]:
            for history in states:
                history.append(1)
            return [np.full((3, 7), len(h), np.float32) * [1, 1, 1, 0, 0, 0, 0] for h in states], {}

    with serving(Counting(echo_contract()), key=KEY) as server:
        proxy = RecordingProxy(int(server.endpoint.rsplit(":", 1)[1]))
        try:
            yield server, proxy
        finally:
            proxy.close()


def history_length(arm: PolicyClient, images: dict, state: np.ndarray) -> int:
    return int(arm.infer("s", images, state, STAMPS).actions[0, 0])


def test_a_captured_stream_replayed_into_a_new_connection_is_refused(counting_server):
    """The attacker has every byte of the victim's hello, reset and first infer and sends them to the server on a
    connection of their own. With CURVE the handshake fails (its cookie belonged to the victim's connection):
    nothing reaches the sessions, and the victim's episode goes on untouched."""
    server, proxy = counting_server
    (images, state), = observations(1, seed=5)
    with client(proxy.endpoint, KEY) as victim:
        victim.reset("s", "e", "pick")
        assert history_length(victim, images, state) == 1
        captured = bytes(proxy.sent[0])  # hello, reset, infer: a fresh session with one frame
        assert history_length(victim, images, state) == 2
        assert history_length(victim, images, state) == 3
        requests = victim.stats().counters["requests"]
        with socket.create_connection(("127.0.0.1", int(server.endpoint.rsplit(":", 1)[1]))) as attacker:
            attacker.sendall(captured)
            attacker.settimeout(1.0)
            try:
                while attacker.recv(1 << 16):  # the server's side of the handshake, then its close
                    pass
            except (TimeoutError, ConnectionResetError):
                pass
        assert victim.stats().counters["requests"] == requests + 1  # this stats request, nothing replayed
        assert history_length(victim, images, state) == 4  # had the replayed reset landed, it would be 2


def test_a_captured_message_replayed_into_the_same_connection_is_refused(counting_server):
    """The attacker re-sends the bytes of the victim's last infer inside the victim's own connection. CURVE's
    nonces must increase: libzmq drops that connection, the replayed infer never reaches the session, and the
    victim (after the re-hello every new connection needs) finds its history as it left it."""
    server, proxy = counting_server
    (images, state), = observations(1, seed=6)
    with client(proxy.endpoint, KEY) as victim:
        victim.reset("s", "e", "pick")
        assert history_length(victim, images, state) == 1
        start = len(proxy.sent[0])
        assert history_length(victim, images, state) == 2
        proxy.inject(0, bytes(proxy.sent[0][start:]))
        assert proxy.closed[0].wait(5.0), "the server kept a connection that replayed a message"
        with pytest.raises(SessionLost):  # a new connection (the DEALER reconnected): not_hello, re-hello
            victim.infer("s", images, state, STAMPS)
        assert history_length(victim, images, state) == 3  # the replay added nothing


# ------------------------------------------------------------------------------------------ key file


def test_key_file_whitespace_is_not_part_of_the_key(tmp_path):
    """dv-serve strips the key file's surrounding whitespace; a robot holding the stripped bytes gets in, one
    holding the file's raw bytes (with its newline) does not."""
    key_file = tmp_path / "key"
    key_file.write_bytes(b"  " + KEY + b"\n\n")
    assert read_key_file(key_file) == KEY
    (images, state), = observations(1, seed=7)
    with spawned(tmp_path / "serve.log", "--echo", "--warmup-steps", "0", "--bind", "tcp://127.0.0.1:*",
                 "--auth-key-file", str(key_file)) as (_, endpoint):
        with client(endpoint, read_key_file(key_file)) as arm:
            arm.reset("s", "e", "pick")
            assert arm.infer("s", images, state, STAMPS).actions.shape == (3, 7)
        with client(endpoint, key_file.read_bytes()) as unstripped, pytest.raises(ServerError) as refused:
            unstripped.hello()
        assert refused.value.code == "auth_failed"


# ------------------------------------------------------------------------------------------ its cost


def _median_round_trip_ms(frames: list[bytes], curve: bool, n: int = 300) -> float:
    """Median loopback round trip of `frames` to a bare ROUTER that answers 200 bytes, plain or CURVE."""
    import zmq

    from dreamvla_client.security import secure_client, secure_server

    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    if curve:
        secure_server(router, KEY)
        secure_client(dealer, KEY)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer.connect(f"tcp://127.0.0.1:{port}")

    def answer() -> None:
        for _ in range(n + 50):
            identity, *_ = router.recv_multipart(copy=False)
            router.send_multipart([identity, bytes(200)])

    thread = threading.Thread(target=answer)
    thread.start()
    times = []
    for _ in range(n + 50):
        start = time.perf_counter()
        dealer.send_multipart(frames, copy=False)
        dealer.recv_multipart(copy=False)
        times.append((time.perf_counter() - start) * 1e3)
    thread.join(10)
    router.close(0)
    dealer.close(0)
    ctx.term()
    return float(np.median(times[50:]))


def test_curve_costs_about_what_the_hmac_did():
    """docs/protocol.md §1.1's numbers: CURVE's extra round-trip time for a 300 KB infer, next to the two
    HMAC-SHA256 passes (sender and receiver) the former framing made over the same bytes."""
    import hashlib
    import hmac

    (images, state), = observations(1, seed=8)
    big = {n: np.zeros((224, 224, 3), np.uint8) for n in images}
    frames = [bytes(220), *(memoryview(a).cast("B") for a in big.values()), state.tobytes()]

    def hmac_pass() -> float:
        start = time.perf_counter()
        mac = hmac.new(KEY, digestmod=hashlib.sha256)
        for f in frames:
            mac.update(memoryview(f).nbytes.to_bytes(8, "little"))
            mac.update(f)
        mac.digest()
        return (time.perf_counter() - start) * 1e3

    hmac_ms = float(np.median([hmac_pass() for _ in range(300)]))
    plain_ms, curve_ms = _median_round_trip_ms(frames, curve=False), _median_round_trip_ms(frames, curve=True)
    print(f"300 KB infer round trip: plain {plain_ms:.3f} ms, CURVE {curve_ms:.3f} ms "
          f"(+{curve_ms - plain_ms:.3f} ms); HMAC-SHA256 {hmac_ms:.3f} ms per pass, {2 * hmac_ms:.3f} ms for two")
    assert curve_ms - plain_ms < 4 * (2 * hmac_ms) + 0.5, "CURVE costs far more than the HMAC framing did"


# ------------------------------------------------------------------------------------- check order


def test_a_reply_type_is_unknown_type_even_during_shutdown():
    """docs/protocol.md §3 and §6 agree: a reply type sent to the server is unknown_type in every state, here
    while the server drains an in-flight infer after stop(), when hello gets shutting_down."""
    import zmq

    from dreamvla_client import protocol as P

    (images, state), = observations(1, seed=9)
    with serving(EchoBackend(echo_contract(), delay_s=1.0)) as server:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(server.endpoint)
        try:
            def ask(message: P.Message) -> P.Message:
                sock.send_multipart(P.encode(message))
                assert sock.poll(5000), "no reply"
                return P.decode(sock.recv_multipart(), accept=P.REPLIES)

            hello = P.Hello(client_id="arm", contract=robot_contract())
            assert isinstance(ask(hello), P.HelloAck)
            assert isinstance(ask(P.Reset(session="s", episode_id="e", instruction="pick")), P.ResetAck)
            sock.send_multipart(P.encode(P.Infer(session="s", seq=1, capture_ts_ns=STAMPS,
                                                 observation=WireObservation(images=images, state=state))))
            time.sleep(0.2)  # the infer is in the worker's 1 s "inference"
            server.stop()
            pong = P.Pong(client_ts_ns=1, server_ts_ns=2, health="ok", load={})
            assert (ask(pong).code, ask(hello).code) == ("unknown_type", "shutting_down")
            assert isinstance(P.decode(sock.recv_multipart()) if sock.poll(5000) else None, P.Chunk)
        finally:
            sock.close()
