"""The software e-stop: heartbeat dead-man, latching, RESUME into a non-moving state, the console process.

Real ZeroMQ sockets on loopback throughout. The latching rules are driven with crafted heartbeats on a synthetic
clock (`check(now_ns)`), so the timing assertions are exact; the console is driven as a real process, without a
TTY (stdin command words) and in tmux (real key presses). Each test names its fault-matrix row (docs/safety.md).
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from robot.estop import EStopListener, EStopMode, RobotState, RobotStatus, StatusPublisher, StopReason
from robot.estop.controls import Action, Controls
from robot.estop.heartbeat import HeartbeatSender
from robot.estop.status import StatusSubscriber
from robot.estop.wire import Command, Heartbeat, WireError, decode_heartbeat, encode_heartbeat

REPO = Path(__file__).resolve().parents[2]
MS = 1_000_000
T0 = 10**12  # synthetic clock origin (ns)
LOOPBACK = "tcp://127.0.0.1:*"


class ConsoleStub:
    """A console that sends exactly the heartbeats a test crafts (counter, time, command, counters)."""

    def __init__(self, endpoint: str, nonce: bytes | None = None) -> None:
        self.nonce = nonce or os.urandom(8)
        self.sock = zmq.Context.instance().socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.counter = 0
        self.joined = False

    def send(self, listener: EStopListener, sent_ns: int, command: Command = Command.RUN, stops: int = 0,
             resumes: int = 0, counter: int | None = None) -> Heartbeat:
        """Send one heartbeat and wait until it is queued at the listener (not yet applied). A new PUB's first
        messages are dropped until its subscription arrives (slow joiner), so the first one is resent (with a
        fresh counter) until one gets through."""
        for _ in range(1 if self.joined else 100):
            if counter is None or not self.joined:
                counter, self.counter = self.counter, self.counter + 1
            hb = Heartbeat(nonce=self.nonce, counter=counter, command=command, stops=stops, resumes=resumes,
                           sent_ns=sent_ns)
            self.sock.send(encode_heartbeat(hb))
            if listener.poll(2.0 if self.joined else 0.02):
                self.joined = True
                return hb
        raise AssertionError("heartbeat not delivered")

    def join(self, listener: EStopListener, sent_ns: int) -> None:
        self.send(listener, sent_ns)
        listener.check(sent_ns + MS)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener():
    with EStopListener(LOOPBACK) as lst:
        yield lst


@pytest.fixture
def stub(listener):
    s = ConsoleStub(listener.endpoint)
    s.join(listener, T0)
    yield s
    s.close()


def running(listener: EStopListener, now_ns: int) -> None:
    state = listener.begin_motion(now_ns)
    assert state.mode is EStopMode.RUN and state.may_move


# ------------------------------------------------------------------------------------------ E2: heartbeat loss


def test_heartbeat_loss_latches_after_200ms_plus_one_tick(listener, stub):
    """E2: no valid heartbeat for 200 ms → latched stop, detected at the first tick after the deadline."""
    assert listener.state.mode is EStopMode.ARMED  # a console alone never starts motion
    running(listener, T0 + MS)
    tick = 10 * MS
    last = T0 + 40 * MS
    stub.send(listener, sent_ns=last)
    now = last + MS  # arrives 1 ms after it was sent
    state = listener.check(now)
    while state.may_move:
        now += tick
        state = listener.check(now)
    assert state.reason is StopReason.HEARTBEAT_TIMEOUT
    silence = state.detected_ns - state.last_heartbeat_ns
    assert 200 * MS < silence <= 200 * MS + tick
    assert state.cause_ns == state.last_heartbeat_ns + 200 * MS
    assert listener.check(now + 10_000 * MS).latched  # stays latched


def test_stalled_listener_does_not_take_a_queued_heartbeat_for_fresh(listener, stub):
    """E2: the listener dates heartbeats by their send time, so a heartbeat that waited 250 ms in the queue
    while the control loop stalled is 250 ms old, not fresh."""
    running(listener, T0 + MS)
    stub.send(listener, sent_ns=T0 + 50 * MS)
    listener.check(T0 + 51 * MS)  # 1 ms transport: the clock offset
    stub.send(listener, sent_ns=T0 + 100 * MS)  # the console's last heartbeat ...
    state = listener.check(T0 + 350 * MS)  # ... drained by a loop that stalled for 300 ms
    assert state.latched and state.reason is StopReason.HEARTBEAT_TIMEOUT
    assert state.last_heartbeat_ns == T0 + 101 * MS


def test_a_stalled_loop_with_a_live_console_does_not_trip(listener, stub):
    """E2 (no false trip): a 300 ms loop stall while fresh heartbeats keep arriving is not silence."""
    running(listener, T0 + MS)
    stub.send(listener, sent_ns=T0 + 50 * MS)
    listener.check(T0 + 51 * MS)
    stub.send(listener, sent_ns=T0 + 340 * MS)
    assert listener.check(T0 + 351 * MS).may_move


def test_garbage_does_not_count_as_a_heartbeat(listener, stub):
    """E2/P9/P10: malformed messages are ignored and counted, an oversized one disconnects its sender; none
    refreshes the dead-man timer."""
    running(listener, T0 + MS)
    for junk in (b"", b"\xc1", msgpack.packb({"v": 1, "nonce": stub.nonce, "counter": 99}),
                 msgpack.packb({"v": 2, "x": "y"})):
        stub.sock.send(junk)
        assert listener.poll(2.0)
        assert listener.check(T0 + 100 * MS).may_move
    assert listener.bad_messages == 4
    stub.sock.send(os.urandom(300))  # over ZMQ_MAXMSGSIZE: never reaches the listener
    assert not listener.poll(0.1)
    assert listener.check(T0 + 202 * MS).reason is StopReason.HEARTBEAT_TIMEOUT


def test_real_sender_loss_latches(listener):
    """E2 with the real heartbeat thread and the real clock, polled by a 10 ms supervisor loop."""
    sender = HeartbeatSender(listener.endpoint)
    deadline = time.monotonic() + 2.0
    while listener.wait(0.01).mode is not EStopMode.ARMED:
        assert time.monotonic() < deadline
    running(listener, None)
    for _ in range(30):  # 300 ms of 50 ms heartbeats keep it running
        assert listener.wait(0.01).may_move
    sender.close()
    while (state := listener.wait(0.01)).may_move:
        assert time.monotonic() < deadline + 2.0
    assert state.reason is StopReason.HEARTBEAT_TIMEOUT
    assert 200 * MS < state.detected_ns - state.last_heartbeat_ns < 200 * MS + 30 * MS  # + one 10 ms tick (+ slack)


# -------------------------------------------------------------------------------------- E3: replay, restarts


def test_replayed_or_frozen_counter_latches(listener, stub):
    """E3: a counter that does not increase within a console session latches a stop and never keeps the robot
    enabled."""
    running(listener, T0 + MS)
    hb = stub.send(listener, sent_ns=T0 + 50 * MS)
    listener.check(T0 + 51 * MS)
    stub.send(listener, sent_ns=T0 + 100 * MS, counter=hb.counter)  # the same packet again (frozen sender)
    state = listener.check(T0 + 101 * MS)
    assert state.latched and state.reason is StopReason.COUNTER_REPLAY


def test_heartbeat_from_a_replaced_console_latches(listener, stub):
    """E3: a new console session replaces the old one (a stop the operator resumes from the new console);
    after that a heartbeat of the old session — a replay — latches."""
    old_nonce = stub.nonce
    newer = ConsoleStub(listener.endpoint)
    newer.send(listener, sent_ns=T0 + 50 * MS)
    assert listener.check(T0 + 51 * MS).reason is StopReason.CONSOLE_CHANGED
    newer.send(listener, sent_ns=T0 + 100 * MS, resumes=1)
    assert listener.check(T0 + 101 * MS).mode is EStopMode.ARMED
    replay = ConsoleStub(listener.endpoint, nonce=old_nonce)
    replay.send(listener, sent_ns=T0 + 120 * MS, counter=10**6)
    assert listener.check(T0 + 121 * MS).reason is StopReason.OLD_CONSOLE
    newer.close()
    replay.close()


def test_console_restart_needs_a_fresh_resume(listener, stub):
    """E2/E3: the console dies (timeout latch); a restarted console (new nonce) is adopted but its heartbeats
    do not release the latch — only its own confirmed RESUME does, and then only into ARMED."""
    running(listener, T0 + MS)
    assert listener.check(T0 + 300 * MS).reason is StopReason.HEARTBEAT_TIMEOUT
    restarted = ConsoleStub(listener.endpoint)
    restarted.send(listener, sent_ns=T0 + 400 * MS, resumes=3)  # whatever it did before does not count
    state = listener.check(T0 + 401 * MS)
    assert state.latched and state.console == restarted.nonce.hex()
    restarted.send(listener, sent_ns=T0 + 450 * MS, resumes=3)
    assert listener.check(T0 + 451 * MS).latched
    restarted.send(listener, sent_ns=T0 + 500 * MS, resumes=4)
    state = listener.check(T0 + 501 * MS)
    assert state.mode is EStopMode.ARMED and not state.may_move
    restarted.close()


def test_second_console_while_moving_latches(listener, stub):
    """E3: another console appearing while the robot moves is not trusted silently: stop, operator resumes."""
    running(listener, T0 + MS)
    other = ConsoleStub(listener.endpoint)
    other.send(listener, sent_ns=T0 + 20 * MS)
    assert listener.check(T0 + 21 * MS).reason is StopReason.CONSOLE_CHANGED
    other.close()


# ------------------------------------------------------------------------------------------ E1: STOP / RESUME


def test_stop_latches_and_resume_arms_without_motion(listener, stub):
    """E1: STOP latches; RUN heartbeats alone do not release it; a confirmed RESUME releases it into ARMED
    (no motion); only the runner's new start (`begin_motion`) allows motion again."""
    running(listener, T0 + MS)
    stub.send(listener, sent_ns=T0 + 50 * MS, command=Command.STOP, stops=1)
    state = listener.check(T0 + 51 * MS)
    assert state.latched and state.reason is StopReason.STOP_COMMAND
    assert state.detected_ns == T0 + 51 * MS and state.cause_ns == T0 + 50 * MS
    stub.send(listener, sent_ns=T0 + 100 * MS, stops=1)  # back to RUN without a resume: still latched
    assert listener.check(T0 + 101 * MS).latched
    stub.send(listener, sent_ns=T0 + 150 * MS, stops=1, resumes=1)
    state = listener.check(T0 + 151 * MS)
    assert state.mode is EStopMode.ARMED and not state.may_move
    for t in range(200, 600, 50):  # heartbeats alone never restart motion
        stub.send(listener, sent_ns=T0 + t * MS, stops=1, resumes=1)
        assert listener.check(T0 + (t + 1) * MS).mode is EStopMode.ARMED
    running(listener, T0 + 551 * MS)
    assert listener.state.stop_count == 1


def test_stop_and_resume_between_two_ticks_still_stops(listener, stub):
    """E1: if the STOP heartbeat itself is lost (e.g. at a high-water mark) and the next one already carries the
    RESUME, the cumulative counters still show the STOP: the robot stops (ARMED, not RUN)."""
    running(listener, T0 + MS)
    stub.send(listener, sent_ns=T0 + 50 * MS, stops=1, resumes=1)
    state = listener.check(T0 + 51 * MS)
    assert state.mode is EStopMode.ARMED and state.stop_count == 1


def test_optional_estop_runs_without_console_until_one_connects():
    """Sim default: no console needed; once one is heard, its silence latches like a required one (E2)."""
    with EStopListener(LOOPBACK, required=False) as lst:
        assert lst.check(T0).may_move and lst.check(T0 + 10_000 * MS).may_move
        stub = ConsoleStub(lst.endpoint)
        stub.join(lst, T0 + 10_000 * MS)
        assert lst.state.may_move  # the first console takes charge of a running robot without stopping it
        assert lst.check(T0 + 10_300 * MS).reason is StopReason.HEARTBEAT_TIMEOUT
        stub.close()


def test_required_estop_never_moves_without_console(listener):
    """E2 at start-up: a required e-stop with no console is WAITING and refuses a start."""
    assert listener.begin_motion(T0).mode is EStopMode.WAITING
    assert not listener.check(T0 + 10_000 * MS).may_move


def test_non_loopback_endpoint_is_refused():
    """The channel is unauthenticated: binding beyond loopback needs an explicit opt-in."""
    with pytest.raises(ValueError, match="not loopback"):
        EStopListener("tcp://0.0.0.0:5560")
    with pytest.raises(ValueError, match="not loopback"):
        StatusPublisher("tcp://*:5561")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_decoding_random_bytes_only_raises_wire_error(raw):
    """P9/P12 for the heartbeat decoder: any input is a heartbeat or a WireError, nothing else."""
    try:
        decode_heartbeat(raw)
    except WireError:
        pass


# ------------------------------------------------------------------------------------------------ the console


def test_resume_needs_r_then_y_in_time():
    """E1 ('reset needs explicit operator action'): Y alone, R then another key, or R then a late Y never
    resume; STOP is a single key."""
    with EStopListener(LOOPBACK) as lst:
        sender = HeartbeatSender(lst.endpoint)
        now = [0.0]
        controls = Controls(sender, confirm_timeout_s=5.0, clock=lambda: now[0])
        assert controls.press(" ") is Action.STOP and sender.state.command is Command.STOP
        assert controls.press("y") is Action.NONE
        assert controls.press("r") is Action.ASK and controls.press("x") is Action.CANCEL
        assert controls.press("r") is Action.ASK
        now[0] = 6.0
        assert controls.press("y") is Action.NONE and sender.state.resumes == 0
        assert controls.press("R") is Action.ASK and controls.press("Y") is Action.RESUME
        assert sender.state.command is Command.RUN and sender.state.resumes == 1
        assert controls.press("q") is Action.QUIT
        sender.close()


def test_status_roundtrip():
    """The runner's status reaches a console; the newest one wins."""
    with StatusPublisher(LOOPBACK) as pub:
        sub = StatusSubscriber(pub.endpoint)
        status = RobotStatus(state=RobotState.HOLD, task="pick_bottle", episode=2, episodes=5,
                             latency_ms={"obs_to_action": {"p50_ms": 41.0, "p95_ms": 60.5}},
                             interventions={"workspace_box": 3}, last_error="policy timeout",
                             estop="RUN")
        deadline = time.monotonic() + 2.0
        while sub.poll() is None or sub.latest.status != status:
            pub.publish(status)
            time.sleep(0.01)
            assert time.monotonic() < deadline
        assert sub.latest.status.latency_ms["obs_to_action"].p95_ms == 60.5
        with pytest.raises(ValueError, match="exceeds"):
            pub.publish(status.model_copy(update={"last_error": "x" * 70_000}))
        sub.close()


class ConsoleProcess:
    """`dv-estop --no-keys` as a child process: command words in, event lines out (read without blocking)."""

    def __init__(self, heartbeat: str, status: str, log_file: Path) -> None:
        cmd = [sys.executable, "-m", "robot.estop.console", "--no-keys", "--endpoint", heartbeat,
               "--status-endpoint", status, "--log-file", str(log_file)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO,
                                     env={**os.environ, "PYTHONPATH": str(REPO)})
        self._buffer = b""
        assert self.wait_line("READY ", 10.0)

    def say(self, word: str) -> None:
        self.proc.stdin.write(word.encode() + b"\n")
        self.proc.stdin.flush()

    def wait_line(self, prefix: str, timeout_s: float, between=lambda: None) -> str:
        """The first output line starting with `prefix`; calls `between()` while waiting."""
        deadline = time.monotonic() + timeout_s
        fd = self.proc.stdout.fileno()
        while time.monotonic() < deadline:
            *lines, self._buffer = self._buffer.split(b"\n")
            for i, line in enumerate(lines):
                if line.decode().startswith(prefix):
                    self._buffer = b"\n".join([*lines[i + 1:], self._buffer])
                    return line.decode()
            between()
            if select.select([fd], [], [], 0.05)[0]:
                chunk = os.read(fd, 4096)
                assert chunk, "console exited"
                self._buffer += chunk
        raise AssertionError(f"no line starting with {prefix!r}; have {self._buffer!r}")


def _until(listener: EStopListener, cond, timeout_s: float = 5.0):
    deadline = time.monotonic() + timeout_s
    while not cond(state := listener.wait(0.002)):
        assert time.monotonic() < deadline, f"timed out in {state}"
    return state


def _screen_shows(session: str, text: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout
        if text in screen:
            return True
        if time.monotonic() > deadline:
            print(screen)
            return False
        time.sleep(0.05)


def test_console_process_without_tty(tmp_path):
    """E1 + E2 with the real `dv-estop` process: `stop` latches the robot within milliseconds, `resume` +
    `yes` arms it without motion, the robot's status is shown, `quit` latches, and a SIGKILLed console
    latches by heartbeat timeout."""
    with EStopListener(LOOPBACK) as lst, StatusPublisher(LOOPBACK) as pub:
        console = ConsoleProcess(lst.endpoint, pub.endpoint, tmp_path / "estop.log")
        _until(lst, lambda s: s.mode is EStopMode.ARMED)
        lst.begin_motion()
        latencies = []
        for i in range(10):  # press → robot detection, console process and transport included
            t_press = time.monotonic_ns()
            console.say("stop")
            state = _until(lst, lambda s: s.latched)
            assert state.reason is StopReason.STOP_COMMAND and state.stop_count == i + 1
            latencies.append((state.detected_ns - t_press) / MS)
            console.say("resume")
            console.say("yes")
            _until(lst, lambda s: s.mode is EStopMode.ARMED)
            assert lst.check().mode is EStopMode.ARMED  # resumed, not moving
            lst.begin_motion()
        print(f"console 'stop' -> listener latched: p50 {np.median(latencies):.2f} ms, max {max(latencies):.2f} ms")
        assert np.median(latencies) < 10.0

        status = RobotStatus(state=RobotState.STOP, task="pick_bottle", episode=1, episodes=3,
                             estop=lst.state.describe())
        line = console.wait_line("ROBOT STOP", 5.0, between=lambda: pub.publish(status))
        assert "task=pick_bottle episode=1/3" in line
        console.say("quit")
        assert console.proc.wait(5) == 0
        assert _until(lst, lambda s: s.latched).reason is StopReason.STOP_COMMAND  # quitting stops the robot
        assert "STOP sent" in (tmp_path / "estop.log").read_text()

    with EStopListener(LOOPBACK) as lst:
        console = ConsoleProcess(lst.endpoint, "tcp://127.0.0.1:9", tmp_path / "estop2.log")
        _until(lst, lambda s: s.mode is EStopMode.ARMED)
        lst.begin_motion()
        console.proc.send_signal(signal.SIGKILL)
        console.proc.wait(5)
        state = _until(lst, lambda s: s.latched, timeout_s=2.0)
        assert state.reason is StopReason.HEARTBEAT_TIMEOUT


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux for a real terminal")
def test_console_in_a_terminal_space_bar_stops(tmp_path):
    """E1 through the real key path: the panel runs in a tmux terminal; SPACE latches, R Y arms, Q quits."""
    session = f"estop-test-{os.getpid()}"
    with EStopListener(LOOPBACK) as lst:
        cmd = (f"cd {REPO} && PYTHONPATH={REPO} {sys.executable} -m robot.estop.console --endpoint {lst.endpoint} "
               f"--status-endpoint tcp://127.0.0.1:9 --log-file {tmp_path / 'estop.log'}; sleep 5")
        subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "30", cmd], check=True)
        try:
            _until(lst, lambda s: s.mode is EStopMode.ARMED, timeout_s=10.0)
            lst.begin_motion()
            subprocess.run(["tmux", "send-keys", "-t", session, "Space"], check=True)
            assert _until(lst, lambda s: s.latched).reason is StopReason.STOP_COMMAND
            # the listener latches as soon as the STOP arrives; the panel redraws on its next tick after sending
            assert _screen_shows(session, "STOP SENT", timeout_s=2.0)
            subprocess.run(["tmux", "send-keys", "-t", session, "y"], check=True)  # Y without R: nothing
            time.sleep(0.2)
            assert lst.check().latched
            subprocess.run(["tmux", "send-keys", "-t", session, "r", "y"], check=True)
            assert not _until(lst, lambda s: s.mode is EStopMode.ARMED).may_move
            subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
            assert _until(lst, lambda s: s.latched).reason is StopReason.STOP_COMMAND
        finally:
            subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
