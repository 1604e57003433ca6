"""The bad-input corpus of test_protocol.py, sent over real sockets to a running `dv-serve --echo`.

Each bad input gets exactly one `error` reply with its code (echoing the seq and session it could read), and
the same connection is served normally right after (ping, then hello/reset/infer with the echo checked). Then
the checks only the server makes (hello first, seq order, sessions, the declared contract, capture stamps,
NaN/Inf, physical state ranges), what docs/protocol.md says about a second hello and a reconnected socket, a
fuzz of random frames, a message beyond ZMQ_MAXMSGSIZE (its peer is disconnected, the server serves others),
and docs/protocol.md's minimal client run as written.

One server process per module (`python -m policy_server.cli.serve --echo`), on a free loopback port.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_protocol import BAD_INPUTS, CANARY, REGRESSIONS, Bad, echoed_ids, infer_head, ping, pk
from zmq.utils.monitor import recv_monitor_message

from dreamvla_client import protocol as P
from dreamvla_client.conventions import STATE_LAYOUT
from dreamvla_client.security import curve_keys, secure_client
from policy_server.serving.echo import echo_contract

REPO = Path(__file__).resolve().parents[2]
H, W = 48, 64  # what this test's robot declares; the server holds observations to it
REPLY_TIMEOUT_MS = 5000  # generous: 2 shared cores; a healthy loopback reply takes about a millisecond


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("serve") / "server.log"
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with log.open("w") as err:  # a file, not a pipe: the server logs every error and must never block on it
        proc = subprocess.Popen(
            [sys.executable, "-m", "policy_server.cli.serve", "--echo", "--bind", "tcp://127.0.0.1:*",
             "--warmup-steps", "0", "--log-level", "WARNING"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else ""
        assert line.startswith("READY tcp://127.0.0.1:"), f"no READY line ({line!r}):\n{log.read_text()}"
        yield line.split()[1]
        assert proc.poll() is None, f"the server died:\n{log.read_text()}"
        assert not CANARY.exists(), "something unpickled a payload: the canary file exists"
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()


class Conn:
    """A bare DEALER (no client library logic): one request, one reply. With a key, a CURVE client."""

    def __init__(self, endpoint: str, key: bytes | None = None) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if key is not None:
            secure_client(self.sock, key)
        self.sock.connect(endpoint)

    def send(self, frames: list) -> None:
        self.sock.send_multipart(frames, copy=False)

    def recv(self, timeout_ms: int = REPLY_TIMEOUT_MS) -> P.Message:
        assert self.sock.poll(timeout_ms), "no reply"
        return P.decode(self.sock.recv_multipart(), accept=P.REPLIES)

    def ask(self, frames: list, timeout_ms: int = REPLY_TIMEOUT_MS) -> P.Message:
        self.send(frames)
        reply = self.recv(timeout_ms)
        assert not self.sock.poll(0), "more than one reply"
        return reply

    def close(self) -> None:
        self.sock.close(linger=0)


@contextmanager
def connect(endpoint: str, key: bytes | None = None) -> Iterator[Conn]:
    conn = Conn(endpoint, key)
    try:
        yield conn
    finally:
        conn.close()


def contract(**changes) -> P.RobotContract:
    fields = dict(cameras=[P.CameraContract(name=n, height=H, width=W) for n in ("static", "wrist")],
                  state_layout=list(STATE_LAYOUT), control_rate_hz=15.0, chunk_length=3)
    return P.RobotContract(**(fields | changes))


def hello(client_id: str = "bad-input-test", **changes) -> list:
    return P.encode(P.Hello(client_id=client_id, contract=contract(**changes)))


def reset(session: str = "s") -> list:
    return P.encode(P.Reset(session=session, episode_id="e", instruction="pick up the bottle", seed=1))


def good_state(seq: int) -> np.ndarray:
    """A state within every physical range, different for each seq."""
    return np.array([0.4, -0.1, 0.3, 3.0, 0.2, -1.0, 1.0], np.float32) * np.float32(1 / (1 + seq % 7))


def stamps(seq: int) -> dict[str, int]:
    return {"state": seq, "static": seq, "wrist": seq}


def infer(seq: int, session: str = "s", images: dict | None = None, state: np.ndarray | None = None,
          capture_ts_ns: dict[str, int] | None = None) -> list:
    if images is None:
        images = {n: np.full((H, W, 3), seq % 256, np.uint8) for n in ("static", "wrist")}
    return P.encode(P.Infer(session=session, seq=seq, capture_ts_ns=stamps(seq) if capture_ts_ns is None
                            else capture_ts_ns, observation=P.WireObservation(images=images, state=good_state(seq)
                                                                          if state is None else state)))


def assert_serving(conn: Conn, seq: int = 1) -> None:
    """A valid ping, then hello/reset/infer, each answered correctly on this very connection."""
    t = time.monotonic_ns()
    pong = conn.ask(P.encode(P.Ping(client_ts_ns=t)))
    assert isinstance(pong, P.Pong) and pong.client_ts_ns == t and pong.health == "ok"
    assert isinstance(conn.ask(hello()), P.HelloAck)
    assert isinstance(conn.ask(reset()), P.ResetAck)
    chunk = conn.ask(infer(seq))
    assert isinstance(chunk, P.Chunk) and chunk.seq == seq and chunk.session == "s"
    assert chunk.capture_ts_ns == stamps(seq)
    np.testing.assert_array_equal(chunk.actions, np.arange(1, 4, dtype=np.float32)[:, None] * good_state(seq))


def assert_error(reply: P.Message, code: str) -> None:
    assert isinstance(reply, P.Error), reply
    assert reply.code == code, f"{reply.code}: {reply.message}"
    assert reply.message


# ---------------------------------------------------------------------------- the codec corpus


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=lambda b: b.name)
def test_codec_corpus_over_the_socket(endpoint, bad: Bad):
    with connect(endpoint) as conn:
        reply = conn.ask(bad.build())
        assert_error(reply, bad.code)
        assert reply.model_dump(include={"seq", "session"}, exclude_none=True) == echoed_ids(bad)
        assert_serving(conn)


@pytest.mark.parametrize(("frames", "code"), REGRESSIONS)
def test_codec_regressions_over_the_socket(endpoint, frames, code):
    with connect(endpoint) as conn:
        assert_error(conn.ask(frames), code)
        assert_serving(conn)


# ------------------------------------------------------------------------ the server's own checks

NAN_STATE = np.array([0, 0, np.nan, 0, 0, 0, 1], np.float32)
GOOD_IMAGES = {n: np.zeros((H, W, 3), np.uint8) for n in ("static", "wrist")}

# (name, requests sent before, the bad request, expected code): everything here passes the codec.
SERVER_CHECKS = [
    ("reset_before_hello", [], reset(), "not_hello"),
    ("infer_before_hello", [], infer(3), "not_hello"),
    ("infer_unknown_session", [hello()], infer(3, session="never-reset"), "unknown_session"),
    ("infer_nan_state", [hello(), reset()], infer(3, state=NAN_STATE), "non_finite"),
    ("infer_inf_state", [hello(), reset()], infer(3, state=np.full(7, np.inf, np.float32)), "non_finite"),
    ("infer_neg_inf_state_float64", [hello(), reset()], infer(3, state=-np.full(7, np.inf)), "non_finite"),
    # finite as sent, but not a pose: 1e39 overflows float32 to Inf, 3e38 overflows the model
    ("infer_state_float64_1e39", [hello(), reset()], infer(3, state=np.array([1e39, 0, 0.3, 0, 0, 0, 1])),
     "out_of_range"),
    ("infer_state_float32_3e38", [hello(), reset()],
     infer(3, state=np.array([0.4, 0, 3e38, 0, 0, 0, 1], np.float32)), "out_of_range"),
    ("infer_state_x_3m", [hello(), reset()], infer(3, state=np.array([3.0, 0, 0.3, 0, 0, 0, 1], np.float32)),
     "out_of_range"),
    ("infer_state_pitch_2rad", [hello(), reset()],
     infer(3, state=np.array([0.4, 0, 0.3, 0, 2.0, 0, 1], np.float32)), "out_of_range"),
    ("infer_state_gripper_1_5", [hello(), reset()],
     infer(3, state=np.array([0.4, 0, 0.3, 0, 0, 0, 1.5], np.float32)), "out_of_range"),
    ("infer_capture_ts_empty", [hello(), reset()], infer(3, capture_ts_ns={}), "invalid_field"),
    ("infer_capture_ts_missing_camera", [hello(), reset()], infer(3, capture_ts_ns={"state": 3, "static": 3}),
     "invalid_field"),
    ("infer_capture_ts_extra_stream", [hello(), reset()], infer(3, capture_ts_ns={**stamps(3), "depth": 3}),
     "invalid_field"),
    ("infer_seq_reused", [hello(), reset(), infer(3)], infer(3), "stale_seq"),
    ("infer_seq_lower", [hello(), reset(), infer(3)], infer(2), "stale_seq"),
    ("infer_wrong_image_shape", [hello(), reset()],
     infer(3, images={**GOOD_IMAGES, "wrist": np.zeros((H, W + 1, 3), np.uint8)}), "invalid_field"),
    ("infer_image_rgba", [hello(), reset()],
     infer(3, images={**GOOD_IMAGES, "wrist": np.zeros((H, W, 4), np.uint8)}), "invalid_field"),
    ("infer_image_float32", [hello(), reset()],
     infer(3, images={**GOOD_IMAGES, "wrist": np.zeros((H, W, 3), np.float32)}), "invalid_field"),
    ("infer_image_uint16", [hello(), reset()],
     infer(3, images={**GOOD_IMAGES, "wrist": np.zeros((H, W, 3), np.uint16)}), "invalid_field"),
    ("infer_missing_camera", [hello(), reset()], infer(3, images={"static": GOOD_IMAGES["static"]}), "invalid_field"),
    ("infer_extra_camera", [hello(), reset()], infer(3, images={**GOOD_IMAGES, "depth": GOOD_IMAGES["wrist"]}),
     "invalid_field"),
    ("infer_state_too_short", [hello(), reset()], infer(3, state=np.zeros(6, np.float32)), "invalid_field"),
    ("infer_state_2d", [hello(), reset()], infer(3, state=np.zeros((1, 7), np.float32)), "invalid_field"),
    ("infer_state_uint8", [hello(), reset()], infer(3, state=np.zeros(7, np.uint8)), "invalid_field"),
    ("hello_camera_names", [], hello(cameras=[P.CameraContract(name=n, height=H, width=W)
                                              for n in ("static", "gripper")]), "contract_mismatch"),
    ("hello_one_camera", [], hello(cameras=[P.CameraContract(name="static", height=H, width=W)]),
     "contract_mismatch"),
    ("hello_bgr", [], hello(cameras=[P.CameraContract(name="static", height=H, width=W, color_order="bgr"),
                                     P.CameraContract(name="wrist", height=H, width=W)]), "contract_mismatch"),
    ("hello_chunk_length", [], hello(chunk_length=4), "contract_mismatch"),
    ("hello_state_layout_order", [], hello(state_layout=list(STATE_LAYOUT[::-1])), "contract_mismatch"),
    ("hello_gripper", [], hello(gripper="0_open_1_closed"), "contract_mismatch"),
    ("hello_action_convention", [], hello(action_convention="absolute_base_quaternion"), "contract_mismatch"),
    ("reply_type_pong", [], P.encode(P.Pong(client_ts_ns=1, server_ts_ns=2, health="ok", load={})),
     "unknown_type"),
    ("reply_type_chunk", [hello()], P.encode(P.Chunk(session="s", seq=1, capture_ts_ns={},
                                                     actions=np.zeros((3, 7), np.float32), timing_ms={})),
     "unknown_type"),
    ("reply_type_error", [], P.encode(P.Error(code="internal", message="x")), "unknown_type"),
]


@pytest.mark.parametrize(("before", "request_", "code"), [c[1:] for c in SERVER_CHECKS],
                         ids=[c[0] for c in SERVER_CHECKS])
def test_server_checks(endpoint, before, request_, code):
    with connect(endpoint) as conn:
        for frames in before:
            assert not isinstance(conn.ask(frames), P.Error)
        reply = conn.ask(request_)
        assert_error(reply, code)
        sent = P.decode([bytes(f) for f in request_])
        if isinstance(sent, P.Infer | P.Reset):  # the error names the request it answers
            assert (reply.seq, reply.session) == (getattr(sent, "seq", None), sent.session)
        assert_serving(conn, seq=4)


def test_unknown_session_after_reset_elsewhere_is_per_client(endpoint):
    """Sessions belong to a client id: another client's reset does not open this client's session."""
    with connect(endpoint) as a, connect(endpoint) as b:
        assert isinstance(a.ask(hello("client-a")), P.HelloAck)
        assert isinstance(b.ask(hello("client-b")), P.HelloAck)
        assert isinstance(a.ask(reset("shared-name")), P.ResetAck)
        assert_error(b.ask(infer(1, session="shared-name")), "unknown_session")
        assert isinstance(a.ask(infer(1, session="shared-name")), P.Chunk)


def test_keyed_server_gives_an_authenticated_client_the_same_codes():
    """Behind a key (CURVE), a client holding it meets exactly the checks a loopback client meets."""
    from policy_server.serving.echo import EchoBackend
    from policy_server.serving.server import PolicyServer

    key = b"k" * 32
    server = PolicyServer(EchoBackend(echo_contract()), "tcp://127.0.0.1:*", key=key)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with connect(server.endpoint, key) as conn:
            for bad in BAD_INPUTS:
                assert_error(conn.ask(bad.build()), bad.code)
            assert_serving(conn)
    finally:
        server.stop()
        thread.join(10)


def test_contract_mismatch_carries_the_model_contract_and_the_fields(endpoint):
    """A refused hello teaches the client the model's contract (machine-readable, as hello_ack carries it)
    and names each robot contract field that differs."""
    bgr = [P.CameraContract(name="static", height=H, width=W, color_order="bgr"),
           P.CameraContract(name="wrist", height=H, width=W)]
    cases = [(["chunk_length"], hello(chunk_length=4)),
             (["cameras.color_order", "state_layout"], hello(cameras=bgr, state_layout=list(STATE_LAYOUT[::-1]))),
             (["action_convention", "cameras", "gripper"],
              hello(cameras=[P.CameraContract(name="static", height=H, width=W)], gripper="0_open_1_closed",
                    action_convention="absolute"))]
    with connect(endpoint) as conn:
        for fields, request in cases:
            reply = conn.ask(request)
            assert_error(reply, "contract_mismatch")
            assert reply.fields == fields and reply.contract == echo_contract()
        assert_serving(conn)


def test_second_hello_replaces_the_first_and_a_refused_one_leaves_none(endpoint):
    """docs/protocol.md §4.1: a second hello on a socket replaces the first (client id and contract; the seq
    order carries over); a refused one leaves the socket without a hello."""
    with connect(endpoint) as conn:
        assert_serving(conn, seq=5)  # hello as "bad-input-test", session "s", seq 5 sent
        assert isinstance(conn.ask(hello("another-robot")), P.HelloAck)
        assert_error(conn.ask(infer(6)), "unknown_session")  # "s" belongs to the first client id
        assert_error(conn.ask(infer(6)), "stale_seq")  # 6 was sent: a second hello does not reset the order
        assert isinstance(conn.ask(hello()), P.HelloAck)
        assert isinstance(conn.ask(infer(7)), P.Chunk)  # the first client's session again
        assert_error(conn.ask(hello(chunk_length=4)), "contract_mismatch")
        assert_error(conn.ask(reset()), "not_hello")
        assert_error(conn.ask(infer(8)), "not_hello")
        assert_serving(conn, seq=9)


def _wait_for_events(monitor: zmq.Socket, wanted: list[int], timeout_s: float = 10.0) -> None:
    """Read monitor events until `wanted` has been seen in this order."""
    deadline = time.monotonic() + timeout_s
    while wanted:
        assert time.monotonic() < deadline, f"monitor events {wanted} not seen"
        if monitor.poll(100) and recv_monitor_message(monitor)["event"] == wanted[0]:
            wanted.pop(0)


def test_a_reconnected_dealer_must_hello_again(endpoint):
    """docs/protocol.md §4.3: after a disconnect the DEALER reconnects by itself, and the server sees a new
    socket: reset/infer get not_hello until it sends hello again; its session is still there."""
    with connect(endpoint) as conn:
        monitor = conn.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        try:
            assert_serving(conn, seq=1)
            # a frame beyond ZMQ_MAXMSGSIZE: the server's libzmq drops this connection (§1)
            conn.send([pk(ping()), bytes(P.DEFAULT_LIMITS.max_message_bytes + 1)])
            _wait_for_events(monitor, [zmq.EVENT_DISCONNECTED, zmq.EVENT_HANDSHAKE_SUCCEEDED])
            assert_error(conn.ask(infer(2)), "not_hello")
            assert isinstance(conn.ask(hello()), P.HelloAck)
            assert isinstance(conn.ask(infer(3)), P.Chunk)  # the session survived the reconnect
        finally:
            conn.sock.disable_monitor()
            monitor.close(linger=0)


# ------------------------------------------------------------------------------------------ fuzz

_frames = st.lists(st.binary(max_size=96), min_size=1, max_size=11)
_headers = st.dictionaries(st.sampled_from(["v", "type", "session", "seq", "observation", "client_ts_ns", "x"]),
                           st.one_of(st.integers(-2, 3), st.sampled_from(sorted(P.MESSAGES)), st.binary(max_size=8),
                                     st.just({"$nd": 0, "dtype": "uint8", "shape": [2]})), max_size=5)


@pytest.fixture(scope="module")
def fuzz_conn(endpoint) -> Iterator[Conn]:
    with connect(endpoint) as conn:
        yield conn


def _one_reply_then_pong(conn: Conn, frames: list[bytes]) -> None:
    reply = conn.ask(frames)
    if isinstance(reply, P.Error):
        assert reply.code in P.ERROR_CODES
    pong = conn.ask(P.encode(P.Ping(client_ts_ns=7)))
    assert isinstance(pong, P.Pong) and pong.client_ts_ns == 7


FUZZ = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@FUZZ
@given(frames=_frames)
def test_fuzz_random_frames_over_the_socket(fuzz_conn, frames):
    _one_reply_then_pong(fuzz_conn, frames)


@FUZZ
@given(head=_headers, arrays=st.lists(st.binary(max_size=16), max_size=3))
def test_fuzz_msgpack_maps_over_the_socket(fuzz_conn, head, arrays):
    _one_reply_then_pong(fuzz_conn, [pk(head), *arrays])


# ------------------------------------------------------------------- beyond ZMQ_MAXMSGSIZE


def test_frame_beyond_maxmsgsize_disconnects_only_that_peer(endpoint):
    """libzmq drops a peer whose frame exceeds ZMQ_MAXMSGSIZE (= Limits.max_message_bytes) while reading
    it: no reply, a disconnect, and the server keeps serving everyone else."""
    ctx = zmq.Context.instance()
    with connect(endpoint) as bystander:
        assert_serving(bystander)
        big = ctx.socket(zmq.DEALER)
        big.setsockopt(zmq.LINGER, 0)
        monitor = big.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        try:
            big.connect(endpoint)
            big.send_multipart([pk(ping()), bytes(P.DEFAULT_LIMITS.max_message_bytes + 1)], copy=False)
            events = []
            deadline = time.monotonic() + 10
            while zmq.EVENT_DISCONNECTED not in events and time.monotonic() < deadline:
                if monitor.poll(200):
                    events.append(recv_monitor_message(monitor)["event"])
            assert zmq.EVENT_DISCONNECTED in events, events
            assert not big.poll(100), "an oversized frame got a reply"
        finally:
            big.disable_monitor()
            monitor.close(linger=0)
            big.close(linger=0)
        assert_serving(bystander, seq=9)  # the same server, another peer: unaffected
    with connect(endpoint) as newcomer:
        assert_serving(newcomer)


def test_oversized_message_in_small_frames_gets_too_large(endpoint):
    """ZMQ_MAXMSGSIZE bounds each frame; a message whose frames are each under it but together over
    max_message_bytes is read, then refused by the codec with an error reply."""
    each = P.DEFAULT_LIMITS.max_message_bytes // 3 + 1
    with connect(endpoint) as conn:
        assert_error(conn.ask([pk(ping())] + [bytes(each)] * 3), "too_large")
        assert_serving(conn)


# ---------------------------------------------------------------------- the document's client


def _doc_client_source() -> str:
    doc = (REPO / "docs" / "protocol.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    minimal = [b for b in blocks if "import zmq" in b and "ENDPOINT" in b]
    assert len(minimal) == 1, "docs/protocol.md must hold exactly one runnable minimal client"
    return minimal[0]


def test_minimal_client_in_the_document_runs_against_the_echo_server(endpoint, capsys):
    source = _doc_client_source()
    assert "policy_server" not in source, "the minimal client must use only pyzmq, msgpack and numpy"
    assert sum(1 for line in source.splitlines() if line.strip()) <= 35, "keep it minimal"
    source = re.sub(r'^ENDPOINT = .*$', f'ENDPOINT = "{endpoint}"', source, count=1, flags=re.M)
    namespace: dict = {"__name__": "__doc_client__"}
    exec(compile(source, "docs/protocol.md", "exec"), namespace)  # noqa: S102 - our own document
    actions = namespace["actions"]
    assert actions.shape == (3, 7) and actions.dtype == np.float32
    state = namespace["state"]
    np.testing.assert_array_equal(actions, np.arange(1, 4, dtype=np.float32)[:, None] * state)  # echo policy
    assert "echo" in capsys.readouterr().out


def test_worked_example_bytes_in_the_document_are_what_encode_produces():
    doc = (REPO / "docs" / "protocol.md").read_text()
    examples = dict(re.findall(r"<!-- hex:(\w+) -->\n```text\n(.*?)```", doc, flags=re.S))
    assert {"ping", "infer_header", "infer_state"} <= set(examples)
    unhex = {k: bytes.fromhex(re.sub(r"\s+", "", v)) for k, v in examples.items()}
    assert unhex["ping"] == bytes(P.encode(P.Ping(client_ts_ns=1_000_000_000))[0])
    assert msgpack.unpackb(unhex["ping"]) == {"v": 1, "type": "ping", "client_ts_ns": 1_000_000_000}
    frames = [unhex["infer_header"], bytes(224 * 224 * 3), bytes(224 * 224 * 3), unhex["infer_state"]]
    decoded = P.decode(frames)
    assert isinstance(decoded, P.Infer) and decoded.seq == 7
    np.testing.assert_array_equal(decoded.observation.state,
                                  np.array([0.5, 0.0, 0.3, 3.14159, 0.0, 0.0, 1.0], np.float32))
    assert P.encode(decoded)[0] == unhex["infer_header"]


def test_curve_key_example_in_the_document():
    """§1.1's key derivation example is what both ends derive from the key `example-key-0123`."""
    doc = (REPO / "docs" / "protocol.md").read_text()
    block = re.search(r"<!-- curve:example-key-0123 -->\n```text\n(.*?)```", doc, flags=re.S)
    assert block, "docs/protocol.md lost its CURVE key example"
    shown = {f"{role}_{kind}": value.encode() for role, kind, value in
             (line.split() for line in block.group(1).strip().splitlines())}
    keys = curve_keys(b"example-key-0123")
    assert shown == {name: getattr(keys, name) for name in
                     ("server_secret", "server_public", "client_secret", "client_public")}


def test_infer_head_helper_still_matches_the_schema():
    """Guard for the shared corpus: its base infer header (before mutation) must itself be valid."""
    assert isinstance(P.decode([pk(infer_head()), bytes(12), bytes(28)]), P.Infer)
