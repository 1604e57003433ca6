"""dv-serve and its client over real ZeroMQ sockets on loopback.

Quick tests run the server in a thread (the echo backend, or the tiny DreamVLA); process-level tests
run `python -m policy_server.cli.serve` and kill, stop, continue or terminate it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import zmq
from serve_process import serving, spawned

from dreamvla_client.client import ContractMismatch, PolicyClient, PolicyTimeout, ServerError, SessionLost
from dreamvla_client.conventions import STATE_LAYOUT
from dreamvla_client.latency import LatencyStats
from dreamvla_client.protocol import (
    CameraContract,
    Chunk,
    Error,
    Hello,
    HelloAck,
    Infer,
    Message,
    Ping,
    Pong,
    Reset,
    RobotContract,
    Stats,
    StatsRequest,
    WireObservation,
    decode,
    encode,
)
from dreamvla_client.security import curve_keys, is_loopback, secure_client
from policy_server.serving.echo import EchoBackend, echo_contract
from policy_server.serving.server import STAGES, PolicyServer, wire_stages
from robot.policy import RemotePolicy

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 0.2  # one chunk horizon: 3 steps at 15 Hz
DETECTION_MARGIN_S = 0.1


def robot_contract(height: int = 48, width: int = 64, **changes) -> RobotContract:
    fields = dict(cameras=[CameraContract(name=n, height=height, width=width) for n in ("static", "wrist")],
                  state_layout=list(STATE_LAYOUT), control_rate_hz=15.0, chunk_length=3)
    return RobotContract(**(fields | changes))


# A random state within the physical ranges the server holds states to (docs/protocol.md §8.2).
STATE_LOW = np.array([-0.8, -0.8, 0.0, -3.1, -1.5, -3.1, 0.0])
STATE_HIGH = np.array([0.8, 0.8, 0.8, 3.1, 1.5, 3.1, 1.0])
STAMPS = {"state": 0, "static": 0, "wrist": 0}  # capture_ts_ns: "state" and each camera


def observation(contract: RobotContract, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray]:
    images = {c.name: rng.integers(0, 256, (c.height, c.width, 3), dtype=np.uint8) for c in contract.cameras}
    return images, rng.uniform(STATE_LOW, STATE_HIGH).astype(np.float32)


def echo_of(state: np.ndarray) -> np.ndarray:
    return np.arange(1, 4, dtype=np.float32)[:, None] * state[None, :]


def raw_exchange(endpoint: str, *requests: Message, replies: int | None = None, timeout_s: float = 10.0,
                 key: bytes | None = None) -> list[Message]:
    """Send requests back to back on a fresh DEALER (no client logic) and collect the replies."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if key is not None:
        secure_client(sock, key)
    sock.connect(endpoint)
    try:
        for r in requests:
            sock.send_multipart(encode(r))
        out = []
        for _ in range(len(requests) if replies is None else replies):
            assert sock.poll(int(timeout_s * 1e3)), "no reply"
            out.append(decode(sock.recv_multipart()))
        return out
    finally:
        sock.close()


@pytest.fixture(scope="module")
def echo_server() -> Iterator[PolicyServer]:
    with serving(EchoBackend(echo_contract())) as server:
        yield server


# ------------------------------------------------------------------------- contract, sessions


MISMATCHES = {
    "camera name": dict(cameras=[CameraContract(name=n, height=48, width=64) for n in ("static", "gripper")]),
    "camera missing": dict(cameras=[CameraContract(name="static", height=48, width=64)]),
    "camera duplicate": dict(cameras=[CameraContract(name=n, height=48, width=64) for n in ("static", "static")]),
    "color order": dict(cameras=[CameraContract(name="static", height=48, width=64, color_order="bgr"),
                                 CameraContract(name="wrist", height=48, width=64)]),
    "state layout": dict(state_layout=["x", "y", "z", "qx", "qy", "qz", "qw"]),
    "chunk length": dict(chunk_length=4),
    "gripper": dict(gripper="0_open_1_closed"),
    "action convention": dict(action_convention="absolute_base_quaternion"),
}
REASON_WORDS = {"camera name": "cameras", "camera missing": "cameras", "camera duplicate": "duplicate",
                "color order": "rgb", "state layout": "state_layout", "chunk length": "chunk_length",
                "gripper": "gripper", "action convention": "action_convention"}


@pytest.mark.parametrize("field_name", list(MISMATCHES))
def test_contract_mismatch_refused_before_anything_moves(echo_server, field_name):
    with PolicyClient(echo_server.endpoint, robot_contract(**MISMATCHES[field_name]), client_id="bad") as client:
        with pytest.raises(ContractMismatch) as refused:
            client.hello()
        assert REASON_WORDS[field_name] in refused.value.message
        with pytest.raises(ContractMismatch):  # no session without an accepted hello: it is retried and refused
            client.reset("s", "e", "pick")


@pytest.mark.parametrize("batching", [True, False])
def test_round_trip_echo(batching):
    contract, rng = robot_contract(), np.random.default_rng(0)
    with serving(EchoBackend(echo_contract()), batching=batching) as server, \
            PolicyClient(server.endpoint, contract, client_id="arm") as client:
        ack = client.hello()
        assert ack.model_id == "echo" and ack.contract.chunk_length == 3
        client.reset("s", "ep", "pick up the bottle")
        for step in range(5):
            images, state = observation(contract, rng)
            chunk = client.infer("s", images, state, {"state": step, "static": step + 1, "wrist": step + 2})
            assert chunk.seq == step and chunk.session == "s"
            assert chunk.capture_ts_ns == {"state": step, "static": step + 1, "wrist": step + 2}
            assert chunk.actions.dtype == np.float32
            np.testing.assert_array_equal(chunk.actions, echo_of(state))
            assert set(STAGES) <= set(chunk.timing_ms) and all(v >= 0 for v in chunk.timing_ms.values())
            assert chunk.timing_ms["send"] > 0 and chunk.timing_ms["decode"] > 0  # measured, not placeholders
        offset, rtt = client.ping()
        assert 0 < rtt < 1e9 and abs(offset) < rtt  # one machine, one monotonic clock
        stats = client.stats()
        assert stats.stages_ms["decode"]["count"] == 5 and stats.stages_ms["queue"]["p99"] >= 0
        assert stats.counters["requests"] >= 8 and stats.counters.get("errors", 0) == 0
        assert client.counters["discarded"] == 0



def test_ipc_endpoint_serves_a_keyless_client_and_the_sent_send_stage_is_the_recorded_one(tmp_path):
    """A robot on the server's host may use ipc:// (a Unix socket, local like loopback: no key needed). The
    chunk is encoded once: the `send` stage it carries is the very number the server's statistics hold."""
    contract = robot_contract()
    endpoint = f"ipc://{tmp_path}/dv-serve.ipc"
    with serving(EchoBackend(echo_contract()), endpoint) as server, \
            PolicyClient(server.endpoint, contract, client_id="arm") as client:
        assert server.endpoint == endpoint
        client.reset("s", "ep", "pick up the bottle")
        images, state = observation(contract, np.random.default_rng(3))
        chunk = client.infer("s", images, state, {"state": 1, "static": 2, "wrist": 3})
        np.testing.assert_array_equal(chunk.actions, echo_of(state))
        send = client.stats().stages_ms["send"]
        assert send["count"] == 1 and send["p50"] == chunk.timing_ms["send"] > 0


def test_stats_reply_counts_every_chunk_in_bounded_memory():
    """`stats_reply.stages_ms` is the protocol's {p50, p95, p99, count} per stage (floats) from the one latency
    type the robot uses too: the count stays exact past the sample it keeps, and the reply passes the schema."""
    latency = LatencyStats(reservoir_size=64)
    for i in range(1000):
        latency.add_timing({"decode": float(i), "queue": 2.0 * i})
    stages = wire_stages(latency)
    assert latency.kept() == 2 * 64
    assert {k: sorted(v) for k, v in stages.items()} == {s: ["count", "p50", "p95", "p99"] for s in ("decode", "queue")}
    assert stages["decode"]["count"] == 1000.0 and all(type(x) is float for v in stages.values() for x in v.values())
    assert 0 <= stages["decode"]["p50"] <= stages["decode"]["p95"] <= stages["decode"]["p99"] <= 999
    assert decode(encode(Stats(stages_ms=stages, counters={}))).stages_ms == stages

def test_observation_held_to_declared_contract(echo_server):
    contract, rng = robot_contract(), np.random.default_rng(1)
    with PolicyClient(echo_server.endpoint, contract, client_id="arm") as client:
        client.reset("s", "ep", "pick")
        images, state = observation(contract, rng)
        bad_inputs = {
            "invalid_field": [({**images, "static": images["static"][:, :32]}, state),  # not the declared size
                              ({"static": images["static"]}, state),  # a camera missing
                              (images, state[:6])],
            "non_finite": [(images, np.where(np.arange(7) == 2, np.nan, state).astype(np.float32)),
                           (images, np.full(7, np.inf, np.float32))],
        }
        for code, cases in bad_inputs.items():
            for bad_images, bad_state in cases:
                with pytest.raises(ServerError) as refused:
                    client.infer("s", bad_images, bad_state, STAMPS)
                assert refused.value.code == code
        np.testing.assert_array_equal(client.infer("s", images, state, STAMPS).actions, echo_of(state))


def test_hello_first_and_unknown_session(echo_server):
    contract = robot_contract()
    images, state = observation(contract, np.random.default_rng(2))
    obs = WireObservation(images=images, state=state)
    (reply,) = raw_exchange(echo_server.endpoint, Infer(session="s", seq=7, capture_ts_ns={}, observation=obs))
    assert isinstance(reply, Error) and reply.code == "not_hello" and reply.seq == 7
    (ack, reply) = raw_exchange(echo_server.endpoint, Hello(client_id="raw", contract=contract),
                                Infer(session="never-reset", seq=8, capture_ts_ns={}, observation=obs))
    assert isinstance(ack, HelloAck)
    assert isinstance(reply, Error) and reply.code == "unknown_session" and "reset" in reply.message
    with PolicyClient(echo_server.endpoint, contract, client_id="arm2") as client:
        with pytest.raises(SessionLost) as lost:
            client.infer("never-reset", images, state, STAMPS)
        assert lost.value.code == "unknown_session"


def test_pipelined_requests_of_one_session_answered_in_order(echo_server):
    contract = robot_contract()
    rng = np.random.default_rng(3)
    states = [observation(contract, rng) for _ in range(6)]
    requests = [Infer(session="s", seq=i, capture_ts_ns=STAMPS, observation=WireObservation(images=im, state=st))
                for i, (im, st) in enumerate(states)]
    replies = raw_exchange(echo_server.endpoint, Hello(client_id="pipe", contract=contract),
                           Reset(session="s", episode_id="e", instruction="x"), *requests)
    chunks = replies[2:]
    assert [c.seq for c in chunks] == list(range(6))
    for c, (_, st) in zip(chunks, states, strict=True):
        np.testing.assert_array_equal(c.actions, echo_of(st))


def test_session_cap_evicts_least_recently_used_and_ttl_expires():
    contract = robot_contract()
    images, state = observation(contract, np.random.default_rng(4))
    with serving(EchoBackend(echo_contract()), max_sessions=2, session_ttl_s=1.5) as server, \
            PolicyClient(server.endpoint, contract, client_id="arm") as client:
        for name in ("a", "b"):
            client.reset(name, name, "pick")
        client.infer("a", images, state, STAMPS)  # b is now the least recently used
        client.reset("c", "c", "pick")
        client.infer("a", images, state, STAMPS)
        client.infer("c", images, state, STAMPS)
        with pytest.raises(SessionLost):
            client.infer("b", images, state, STAMPS)
        time.sleep(2.0)  # idle beyond the TTL
        with pytest.raises(SessionLost):
            client.infer("a", images, state, STAMPS)
        client.reset("a", "a2", "pick")
        client.infer("a", images, state, STAMPS)
        counters = client.stats().counters
        assert counters["sessions_evicted"] == 1


def test_bind_and_key_policy():
    assert is_loopback("tcp://127.0.0.1:5555") and is_loopback("tcp://[::1]:5555") and is_loopback("ipc:///tmp/x")
    assert not is_loopback("tcp://0.0.0.0:5555") and not is_loopback("tcp://*:5555")
    assert not is_loopback("tcp://10.0.0.2:5555") and not is_loopback("tcp://eth0:5555")
    with pytest.raises(ValueError, match="without a shared key"):
        PolicyServer(EchoBackend(echo_contract()), "tcp://0.0.0.0:*")
    with pytest.raises(ValueError, match="at least 16"):
        PolicyServer(EchoBackend(echo_contract()), key=b"short")


def test_client_refuses_a_remote_endpoint_without_a_key_unless_told_by_name():
    """The robot side of the bind rule: no plain-text connection beyond this machine by accident. Nothing is
    sent (the server is not even there): the refusal is at construction, naming the override."""
    remote = "tcp://10.0.0.2:5555"
    for make in (lambda **kw: PolicyClient(remote, robot_contract(), client_id="arm", **kw),
                 lambda **kw: RemotePolicy(remote, robot_contract(), deadline_s=DEADLINE_S, **kw)):
        with pytest.raises(ValueError, match="allow_unauthenticated_remote=True") as refused:
            make()
        assert remote in str(refused.value) and "server.auth_key_file" in str(refused.value)
        with pytest.raises(ValueError, match="at least 16"):
            make(key=b"short")
        make(allow_unauthenticated_remote=True).close()
        make(key=b"k" * 32).close()
    PolicyClient("tcp://127.0.0.1:5555", robot_contract(), client_id="arm").close()  # loopback needs no key


def test_shared_key_authenticates_both_ways():
    key = b"k" * 32
    contract = robot_contract()
    images, state = observation(contract, np.random.default_rng(5))
    with serving(EchoBackend(echo_contract()), key=key) as server:
        with PolicyClient(server.endpoint, contract, client_id="arm", key=key) as client:
            client.reset("s", "e", "pick")
            np.testing.assert_array_equal(client.infer("s", images, state, STAMPS).actions, echo_of(state))
        with PolicyClient(server.endpoint, contract, client_id="intruder", key=b"x" * 32) as client:
            with pytest.raises(ServerError) as refused:
                client.hello()
            assert refused.value.code == "auth_failed"  # the CURVE handshake fails: reported, not waited out
        with serving(EchoBackend(echo_contract())) as plain, \
                PolicyClient(plain.endpoint, contract, client_id="arm", key=key) as client:
            with pytest.raises(ServerError) as refused:
                client.hello()
            assert refused.value.code == "auth_failed"  # a keyed client never talks in plain text


def test_a_client_without_the_key_gets_no_reply():
    """Nothing of the server's answers a socket that does not hold the key: not a plain socket, and not a
    CURVE socket that knows the server's public key but has a key pair of its own (ZAP refuses it)."""
    key = b"k" * 32
    with serving(EchoBackend(echo_contract()), key=key) as server:
        plain = zmq.Context.instance().socket(zmq.DEALER)
        stranger = zmq.Context.instance().socket(zmq.DEALER)
        stranger.curve_serverkey = curve_keys(key).server_public
        stranger.curve_publickey, stranger.curve_secretkey = zmq.curve_keypair()
        try:
            for sock in (plain, stranger):
                sock.setsockopt(zmq.LINGER, 0)
                # a refused handshake drops the socket's only pipe, and a DEALER with no pipe blocks on send: a
                # send that cannot even be queued is refused too, so it may time out instead of hanging the suite
                sock.setsockopt(zmq.SNDTIMEO, 1000)
                sock.connect(server.endpoint)
                with contextlib.suppress(zmq.Again):
                    sock.send_multipart(encode(Ping(client_ts_ns=1)))
            assert not plain.poll(500) and not stranger.poll(100)
        finally:
            plain.close()
            stranger.close()
        (stats,) = raw_exchange(server.endpoint, StatsRequest(), key=key)
        assert stats.counters["requests"] == 1  # only this stats request ever reached the server


# ----------------------------------------------------------------------- many robots, one model


@dataclass
class RobotRun:
    """One simulated robot: its contract, seed and instruction, and what it sent and got back."""

    index: int
    contract: RobotContract
    seed: int
    steps: int
    instruction: str = ""
    sent: list[tuple[dict[str, np.ndarray], np.ndarray]] = field(default_factory=list)
    got: list[Chunk] = field(default_factory=list)
    error: BaseException | None = None

    def drive(self, endpoint: str) -> None:
        rng = np.random.default_rng(self.seed)
        try:
            with PolicyClient(endpoint, self.contract, client_id=f"robot-{self.index}", deadline_s=30.0) as client:
                # Every robot calls its session "arm": sessions are per client, so this must not cross-talk.
                client.reset("arm", f"episode-{self.index}", self.instruction, seed=self.seed)
                for step in range(self.steps):
                    images, state = observation(self.contract, rng)
                    self.sent.append((images, state))
                    stamp = self.index * 10_000 + step
                    self.got.append(client.infer("arm", images, state, dict.fromkeys(STAMPS, stamp)))
                assert client.counters["discarded"] == 0
        except BaseException as exc:  # reported by the test thread
            self.error = exc


def test_four_concurrent_clients_each_get_their_own_model_output(ckpt):
    import torch

    from policy_server.serving.backend import EngineBackend
    from policy_server.serving.engine import PolicyEngine

    steps = 100
    sizes = [(64, 64), (64, 64), (48, 80), (48, 80)]  # two resolutions: two engine batches per server batch
    runs = [RobotRun(i, robot_contract(*sizes[i]), seed=1000 + i, steps=steps, instruction=f"pick up object {i}")
            for i in range(4)]
    with serving(EngineBackend(PolicyEngine.from_checkpoint(ckpt)), max_batch=8, max_wait_ms=2.0) as server:
        threads = [threading.Thread(target=run.drive, args=(server.endpoint,)) for run in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        (stats,) = raw_exchange(server.endpoint, StatsRequest())
    for run in runs:
        assert run.error is None, f"robot {run.index}: {run.error!r}"
        assert [c.seq for c in run.got] == list(range(steps))
        assert [c.capture_ts_ns["state"] for c in run.got] == [run.index * 10_000 + s for s in range(steps)]
    assert stats.counters["batches"] < 4 * steps + 4, "no two requests ever shared a batch"

    reference = PolicyEngine.from_checkpoint(ckpt)
    scale = np.asarray(reference.meta.normalization.action_scale, dtype=np.float32)
    for run in runs:
        history = reference.start_episode(run.instruction)
        generator = torch.Generator().manual_seed(run.seed)
        for (images, state), chunk in zip(run.sent, run.got, strict=True):
            noise = torch.randn((1, 3, 7), generator=generator)  # the backend's draw: one per step, per session
            expected = reference.step(history, WireObservation(images=images, state=state), noise=noise) * scale
            np.testing.assert_allclose(chunk.actions, expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------- process faults


def test_echo_path_imports_no_torch():
    code = ("import sys; import policy_server.cli.serve, dreamvla_client.client, policy_server.serving.server; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True,
                   env=os.environ | {"PYTHONPATH": str(REPO)})


def test_reply_with_another_seq_is_discarded():
    """A late reply to an earlier request (here forged by a bare ROUTER) is never the answer."""
    contract = robot_contract()
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")

    def fake_server() -> None:
        for _ in range(2):  # hello, then infer
            assert router.poll(10_000)
            identity, *frames = router.recv_multipart()
            request = decode(frames)
            if isinstance(request, Hello):
                reply = HelloAck(model_id="fake", checkpoint_hash="", normalization_hash="",
                                 contract=echo_contract())
                router.send_multipart([identity, *encode(reply)])
                continue
            for seq, value in ((request.seq - 1, 666.0), (request.seq, 1.0)):  # stale first
                stale = Chunk(session=request.session, seq=seq, capture_ts_ns={},
                              actions=np.full((3, 7), value, np.float32), timing_ms={})
                router.send_multipart([identity, *encode(stale)])

    thread = threading.Thread(target=fake_server)
    thread.start()
    try:
        with PolicyClient(f"tcp://127.0.0.1:{port}", contract, client_id="arm", deadline_s=5.0) as client:
            images, state = observation(contract, np.random.default_rng(6))
            chunk = client.infer("s", images, state, STAMPS)  # seq 0: the fake answers seq -1, then seq 0
            assert chunk.seq == 0 and np.all(chunk.actions == 1.0)
            assert client.counters["discarded"] == 1
    finally:
        thread.join(10)
        router.close()


def _stream(client: PolicyClient, contract: RobotContract, steps: int, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        images, state = observation(contract, rng)
        np.testing.assert_array_equal(client.infer("arm", images, state, STAMPS).actions, echo_of(state))


def test_kill9_detected_within_deadline_and_restart_recovers(tmp_path, ckpt):
    """P1 + P7: the server dies with a request in flight; the client times out within its deadline;
    a server restarted on the same port (the real model this time) is reached again after SessionLost."""
    contract = robot_contract()
    images, state = observation(contract, np.random.default_rng(8))
    log = tmp_path / "server.log"
    with spawned(log, "--echo", "--echo-delay-ms", "50", "--warmup-steps", "0", "--bind", "tcp://127.0.0.1:*") \
            as (proc, endpoint):
        client = PolicyClient(endpoint, contract, client_id="arm", deadline_s=DEADLINE_S)
        client.reset("arm", "episode-1", "pick up the bottle")
        _stream(client, contract, steps=5)
        killer = threading.Timer(0.02, proc.kill)  # lands while the request sits in the 50 ms "inference"
        killer.start()
        start = time.monotonic()
        with pytest.raises(PolicyTimeout):
            client.infer("arm", images, state, STAMPS)
        detected_s = time.monotonic() - start
        killer.join()
        assert proc.wait(5) == -signal.SIGKILL
    print(f"kill -9 detected after {detected_s * 1e3:.0f} ms (deadline {DEADLINE_S * 1e3:.0f} ms)")
    assert DEADLINE_S <= detected_s <= DEADLINE_S + DETECTION_MARGIN_S

    with spawned(log, "--ckpt", str(ckpt), "--bind", endpoint), client:
        with pytest.raises(SessionLost):  # re-hellos lazily, then learns the episode is gone
            client.infer("arm", images, state, STAMPS)
        assert client.server is not None and client.server.model_id == "dreamvla-tiny"
        client.reset("arm", "episode-2", "pick up the bottle")
        assert client.infer("arm", images, state, STAMPS).actions.shape == (3, 7)
        assert client.counters["reconnects"] == 1


def test_restart_between_requests_reports_session_lost():
    """The DEALER reconnects on its own to a restarted server, which answers not_hello: re-hello + SessionLost."""
    contract = robot_contract()
    with serving(EchoBackend(echo_contract())) as first:
        endpoint = first.endpoint
        client = PolicyClient(endpoint, contract, client_id="arm", deadline_s=5.0)
        client.reset("arm", "episode-1", "pick")
        _stream(client, contract, steps=2)
    with serving(EchoBackend(echo_contract()), bind=endpoint), client:
        images, state = observation(contract, np.random.default_rng(9))
        with pytest.raises(SessionLost) as lost:
            client.infer("arm", images, state, STAMPS)
        assert lost.value.code == "not_hello" and client.server is not None
        client.reset("arm", "episode-2", "pick")
        _stream(client, contract, steps=2)
        assert client.counters["reconnects"] == 0


def test_stop_cont_late_reply_is_discarded(tmp_path):
    """P2: a hung server's reply to the timed-out request never answers a later one."""
    contract = robot_contract()
    rng = np.random.default_rng(10)
    with spawned(tmp_path / "server.log", "--echo", "--warmup-steps", "0", "--bind", "tcp://127.0.0.1:*") \
            as (proc, endpoint), PolicyClient(endpoint, contract, client_id="arm", deadline_s=DEADLINE_S) as client:
        client.reset("arm", "episode", "pick")
        _stream(client, contract, steps=3)
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            images, stale_state = observation(contract, rng)
            with pytest.raises(PolicyTimeout):
                client.infer("arm", images, stale_state, STAMPS)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        for _ in range(3):  # the server now answers the stale request too; it must never come back here
            images, state = observation(contract, rng)
            chunk = client.infer("arm", images, state, STAMPS)
            np.testing.assert_array_equal(chunk.actions, echo_of(state))
        time.sleep(0.2)
        images, state = observation(contract, rng)
        np.testing.assert_array_equal(client.infer("arm", images, state, STAMPS).actions, echo_of(state))
        assert client.counters["timeouts"] == 1


def _pong(endpoint: str) -> Pong:
    (pong,) = raw_exchange(endpoint, Ping(client_ts_ns=time.monotonic_ns()))
    assert isinstance(pong, Pong)
    return pong


def _wait_for(predicate, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_sigterm_answers_in_flight_then_refuses_then_exits_zero(tmp_path):
    contract = robot_contract()
    images, state = observation(contract, np.random.default_rng(11))
    log = tmp_path / "server.log"
    with spawned(log, "--echo", "--echo-delay-ms", "1000", "--warmup-steps", "0",
                 "--bind", "tcp://127.0.0.1:*") as (proc, endpoint):
        with PolicyClient(endpoint, contract, client_id="a", deadline_s=30.0) as a, \
                PolicyClient(endpoint, contract, client_id="b", deadline_s=30.0) as b:
            a.reset("arm", "episode", "pick")
            b.hello()
            answer: list[Chunk] = []
            in_flight = threading.Thread(target=lambda: answer.append(a.infer("arm", images, state, STAMPS)))
            in_flight.start()
            _wait_for(lambda: _pong(endpoint).load["queue_depth"] == 1)
            proc.send_signal(signal.SIGTERM)
            _wait_for(lambda: _pong(endpoint).health == "shutting_down")
            with pytest.raises(ServerError) as refused:
                b.reset("arm", "episode", "pick")
            assert refused.value.code == "shutting_down"
            in_flight.join(30)
            assert answer and np.array_equal(answer[0].actions, echo_of(state))
        assert proc.wait(30) == 0, log.read_text()


def test_cli_refuses_public_bind_without_key_and_short_keys(tmp_path):
    from policy_server.cli.serve import main as dv_serve

    assert dv_serve(["--echo", "--bind", "tcp://0.0.0.0:*"]) == 2
    key_file = tmp_path / "key"
    key_file.write_bytes(b"too short\n")
    assert dv_serve(["--echo", "--bind", "tcp://127.0.0.1:*", "--auth-key-file", str(key_file)]) == 2
    with pytest.raises(SystemExit) as usage:
        dv_serve([])  # neither --ckpt nor --echo
    assert usage.value.code == 2
