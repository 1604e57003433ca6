"""Policy-side faults of the control loop, over real sockets: added network latency (P3), a sustained delay past
the reply deadline (P5) and error replies (P8). Rows of the fault matrix in docs/safety.md.

The real `Runner` drives the franky-sim arm (the module's `cell`/`devices` fixtures); the policy is the real
`RemotePolicy` client talking ZeroMQ to the real `PolicyServer` of `dv-serve`. The server's backend is scripted
(`ScriptedBackend`: a gentle fixed chunk, a model exception on chosen calls), and latency comes from a loopback
`DelayProxy` between client and server, so the client's own deadline, Lazy Pirate reconnect and error mapping all
run as on a rig. The cameras are synthetic and always fresh (camera faults are the O rows, and the sim's renderer
falls behind on a loaded machine), so every HOLD here comes from the policy path. Numbers the tests measure are
printed with `-s`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import zmq
from arm_probes import SMALL_CAMERA, Sampler
from delay_proxy import DelayProxy
from serve_process import serving
from test_runner import LaggingCamera, make_runner, run_in_thread

from dreamvla_client.protocol import WireObservation
from policy_server.serving.echo import EchoBackend, echo_contract
from policy_server.serving.server import PolicyServer
from robot.policy import Observation, PolicyChunk, PolicyFailure, RemotePolicy, robot_contract

pytest.importorskip("franky_sim")

RATE_HZ, CHUNK = 15.0, 3
DEADLINE_S = CHUNK / RATE_HZ  # the loop's default reply deadline: one chunk horizon, 200 ms
SLACK_S = 0.05  # thread scheduling on a loaded 2-core machine, on top of the times the loop's design allows
SIZES = {name: (SMALL_CAMERA["height"], SMALL_CAMERA["width"]) for name in ("static", "wrist")}
# 1 mm along the target's x per step (15 mm/s), gripper open: well inside every limit, so the envelope never
# intervenes and any hold or abort comes from the fault under test.
GENTLE = np.array([[0.001, 0, 0, 0, 0, 0, 1.0]] * CHUNK, dtype=np.float32)


class ScriptedBackend(EchoBackend):
    """The echo server's contract with a fixed gentle chunk instead of the echo, and a model exception on the calls
    numbered in `fail_calls` (0-based): the server answers those with an `internal` error reply."""

    def __init__(self, fail_calls: Iterable[int] = ()) -> None:
        super().__init__(echo_contract())
        self.fail_calls, self.calls = frozenset(fail_calls), 0

    def infer_batch(self, states: list[Any], observations: list[WireObservation]
                    ) -> tuple[list[np.ndarray], dict[str, float]]:
        call, self.calls = self.calls, self.calls + 1
        if call in self.fail_calls:
            raise RuntimeError(f"scripted backend failure on call {call}")
        return [GENTLE.copy() for _ in observations], {}


class Recorded:
    """Wraps a policy and records every `infer` as (sent_ns, returned_ns, reply), on the runner's worker thread."""

    def __init__(self, policy: RemotePolicy) -> None:
        self.policy = policy
        self.calls: list[tuple[int, int, PolicyChunk | PolicyFailure]] = []

    def reset(self, instruction: str) -> PolicyFailure | None:
        return self.policy.reset(instruction)

    def infer(self, observation: Observation) -> PolicyChunk | PolicyFailure:
        sent = time.monotonic_ns()
        reply = self.policy.infer(observation)
        self.calls.append((sent, time.monotonic_ns(), reply))
        return reply

    def close(self) -> None:
        self.policy.close()

    def failures(self) -> list[tuple[int, int, PolicyFailure]]:
        return [(s, r, reply) for s, r, reply in self.calls if isinstance(reply, PolicyFailure)]


class LatchSpy:
    """The real gripper, with every `latch_fault` (a SAFE-HOLD latches it) recorded as (time, reason)."""

    def __init__(self, gripper: Any) -> None:
        self.gripper = gripper
        self.latched: list[tuple[int, str]] = []

    def latch_fault(self, reason: str) -> None:
        self.latched.append((time.monotonic_ns(), reason))
        self.gripper.latch_fault(reason)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.gripper, name)


def fresh_cameras() -> dict[str, LaggingCamera]:
    """Cameras whose newest frame is always brand new, at the resolution the robot declares."""
    return {name: LaggingCamera(0.0) for name in SIZES}


def _port(server: PolicyServer) -> int:
    return int(server.endpoint.rsplit(":", 1)[1])


@contextmanager
def remote_policy(backend: ScriptedBackend, **delays: float) -> Iterator[tuple[Recorded, DelayProxy]]:
    """A `PolicyServer` on the scripted backend, a delay proxy in front of it (keyword delays of `DelayProxy`),
    and a recorded `RemotePolicy` connected through the proxy with the loop's 200 ms deadline."""
    with serving(backend) as server, DelayProxy(_port(server), lifetime_s=60.0, **delays) as proxy:
        yield Recorded(RemotePolicy(proxy.endpoint, robot_contract(SIZES, RATE_HZ, CHUNK), deadline_s=DEADLINE_S)), \
            proxy


# ------------------------------------------------------------------------------------------------ P3


def test_50ms_added_latency_is_normal_operation(devices, cell):
    """P3: 50 ± 20 ms added to every round trip (25 ± 10 ms each way through the proxy) in the default chunk mode:
    every reply arrives before the 200 ms deadline (≥ 99 % on time), no miss, no abort, and every chunk moves the
    arm; the added latency shows in the measured round trips and in the run's latency histogram. No HOLD either,
    unless the loop itself stalled (counted as `overrun`: the machine is loaded), which is S2's business."""
    with remote_policy(ScriptedBackend(), up_s=0.025, down_s=0.025, jitter_s=0.010) as (policy, proxy):
        runner, spy = make_runner(devices, cell, policy, cameras=fresh_cameras(), max_episode_s=4.0)
        record = runner.run(1).episodes[0]
        runner.close()
    rtt_ms = np.array([(returned - sent) / 1e6 for sent, returned, _ in policy.calls])
    on_time = sum(isinstance(reply, PolicyChunk) and (returned - sent) / 1e9 <= DEADLINE_S
                  for sent, returned, reply in policy.calls)
    infer = record.latency_ms["infer"]
    print(f"\nP3: {len(policy.calls)} requests, {on_time} on time; round trip p50 {np.median(rtt_ms):.0f} ms "
          f"max {rtt_ms.max():.0f} ms; loop's infer histogram p50 {infer['p50']:.0f} p99 {infer['p99']:.0f} ms; "
          f"{record.steps} steps in {record.ticks} ticks; interventions {record.interventions}")
    assert proxy.stats.accepted >= 1 and proxy.stats.down_bytes > 0, "the client did not go through the proxy"
    assert np.median(rtt_ms) >= 50, "the proxy added less than 50 ms per round trip"
    assert len(policy.calls) >= 15 and on_time / len(policy.calls) >= 0.99
    assert not record.aborted, record.outcome
    for rule in ("policy_timeout", "policy_error", "policy_late", "late_reply", "stale"):
        assert rule not in record.interventions, f"{rule}: {record.interventions[rule]}"
    assert record.interventions.get("hold", 0) <= record.interventions.get("overrun", 0), record.events
    assert record.steps >= len(policy.calls) and len(spy.moves) == record.steps  # every chunk moved the arm


# ------------------------------------------------------------------------------------------------ P5


def test_sustained_300ms_delay_aborts_after_three_misses(devices, cell):
    """P5: after a normal start, every byte is held 300 ms each way. The first request after the onset misses the
    200 ms deadline: HOLD (stop issued, no command after it); the two following horizons are misses too (the
    client is still waiting or re-helloing), so the third aborts the episode as policy_timeout: SAFE-HOLD with the
    gripper latched, within 3 × 200 ms of the onset plus two ticks (the first request goes out on the tick after
    the onset, the re-request on the tick after the HOLD). The arm is at rest within 500 ms of the HOLD, and no
    exception leaves `run`."""
    gripper = LatchSpy(devices[1])
    with remote_policy(ScriptedBackend()) as (policy, proxy):
        runner, spy = make_runner((devices[0], gripper), cell, policy, cameras=fresh_cameras(), mode="receding",
                                  max_episode_s=8.0)
        with Sampler(devices[0]) as sampler:
            thread, out = run_in_thread(runner)
            deadline = time.monotonic() + 10
            while len(spy.moves) < 10 and time.monotonic() < deadline:
                time.sleep(0.01)
            onset = time.monotonic_ns()
            proxy.set_delay(0.3, 0.3)
            thread.join(10)
            time.sleep(0.2)
        proxy.set_delay(0.0, 0.0)  # let the worker's re-hello finish, so that close() is prompt
        runner.close()
    assert not thread.is_alive() and out, "the run did not return"
    record = out[0].episodes[0]
    hold = min(t for t in spy.stops if t > onset)
    abort = min(t for t, _ in gripper.latched if t > onset)
    rest_s = sampler.rest_time(hold)
    print(f"\nP5: HOLD {(hold - onset) / 1e6:.0f} ms after the onset, SAFE-HOLD {(abort - onset) / 1e6:.0f} ms after "
          f"it; at rest {rest_s * 1e3:.0f} ms after the HOLD; {record.interventions.get('policy_timeout')} timeouts")
    assert record.outcome == "aborted:policy_timeout"
    assert record.interventions["policy_timeout"] == 3
    assert (hold - onset) / 1e9 <= 1 / RATE_HZ + DEADLINE_S + SLACK_S
    assert (abort - onset) / 1e9 <= 2 / RATE_HZ + 3 * DEADLINE_S + SLACK_S
    assert (abort - hold) / 1e9 >= 2 * DEADLINE_S - 0.01  # three misses, one per horizon, not one burst
    assert all(t < hold for t, _ in spy.moves), "a command was sent after the first miss"
    assert rest_s <= 0.5
    assert gripper.state.fault is not None
    gripper.clear_fault()


# ------------------------------------------------------------------------------------------------ P8


def _moves_after(spy: Any, t_ns: int) -> list[int]:
    return [t for t, _ in spy.moves if t > t_ns]


def test_one_error_reply_is_a_hold_and_the_next_chunk_resumes(devices, cell, caplog):
    """P8: the model raises on one request; the server answers `internal`, the client returns a typed failure,
    and the loop counts a miss (policy_error, logged as a warning with the server's message): HOLD — the stop is
    issued in the tick the error arrives and nothing moves until the next valid chunk, which resumes the episode.
    The gripper is left alone (a HOLD is not a SAFE-HOLD) and nothing escapes `run`."""
    caplog.set_level(logging.WARNING, logger="robot.safety")
    with remote_policy(ScriptedBackend(fail_calls=[6])) as (policy, _):
        runner, spy = make_runner(devices, cell, policy, cameras=fresh_cameras(), max_episode_s=2.5)
        record = runner.run(1).episodes[0]
        runner.close()
    [(_, error_ns, failure)] = policy.failures()
    resumed_ns = min(returned for sent, returned, reply in policy.calls if sent > error_ns)
    hold = min(t for t in spy.stops if t > error_ns)
    print(f"\nP8: error reply {failure}; HOLD {(hold - error_ns) / 1e6:.1f} ms after it; resumed "
          f"{(resumed_ns - error_ns) / 1e6:.0f} ms after it; interventions {record.interventions}")
    assert failure.kind == "server_error" and "scripted backend failure" in failure.message
    assert not record.aborted, record.outcome
    assert record.interventions["policy_error"] == 1
    assert 1 <= record.interventions["hold"] <= 1 + record.interventions.get("overrun", 0)  # a stall may add one
    assert (hold - error_ns) / 1e9 <= 1 / RATE_HZ + 0.01
    assert all(t > resumed_ns for t in _moves_after(spy, error_ns)), "a command was sent during the HOLD"
    assert _moves_after(spy, resumed_ns), "the episode did not resume after the HOLD"
    assert devices[1].state.fault is None
    assert any("policy_error" in r.getMessage() and "scripted backend failure" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)


def test_three_error_replies_in_a_row_abort_and_the_next_episode_runs(devices, cell):
    """P8: three error replies in a row are three misses: the episode ends as aborted:policy_error (SAFE-HOLD:
    stop issued, gripper latched, no command after the first error). No exception leaves `run`, the run is not
    stopped for the operator, and the next episode, with the server answering again, runs normally."""
    gripper = LatchSpy(devices[1])
    with remote_policy(ScriptedBackend(fail_calls=[4, 5, 6])) as (policy, _):
        runner, spy = make_runner((devices[0], gripper), cell, policy, cameras=fresh_cameras(), max_episode_s=2.0)
        summary = runner.run(2)
        runner.close()
    first_error = min(returned for _, returned, _ in policy.failures())
    second_start = min(sent for sent, _, reply in policy.calls if sent > first_error and isinstance(reply, PolicyChunk))
    print(f"\nP8: outcomes {[e.outcome for e in summary.episodes]}; interventions "
          f"{[e.interventions for e in summary.episodes]}")
    assert len(policy.failures()) == 3
    assert [e.outcome for e in summary.episodes][0] == "aborted:policy_error"
    assert summary.episodes[0].interventions["policy_error"] == 3
    assert gripper.latched and "policy_error" in gripper.latched[0][1]
    assert all(t > second_start for t in _moves_after(spy, first_error)), "a command was sent after the first error"
    assert summary.stopped == "" and len(summary.episodes) == 2 and not summary.episodes[1].aborted
    assert summary.episodes[1].steps > 10
    gripper.clear_fault()


def test_a_text_traceback_instead_of_a_reply_ends_the_episode_before_anything_moves(devices, cell):
    """P8, openpi's failure shape: a server that answers with the text of a Python traceback instead of a protocol
    message. The client's type check refuses it (a typed failure, never an exception), so the episode's policy
    reset fails and the episode ends as aborted:policy_unavailable with no motion commanded."""
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    answered: list[int] = []

    def answer_with_text() -> None:
        deadline = time.monotonic() + 10  # bounded: the thread never outlives the test by long
        while time.monotonic() < deadline and not answered:
            if router.poll(50):
                identity, *_ = router.recv_multipart()
                router.send_multipart([identity, b"Traceback (most recent call last):\n  ...\nRuntimeError: boom"])
                answered.append(time.monotonic_ns())

    thread = threading.Thread(target=answer_with_text, daemon=True)
    thread.start()
    try:
        policy = RemotePolicy(f"tcp://127.0.0.1:{port}", robot_contract(SIZES, RATE_HZ, CHUNK), deadline_s=DEADLINE_S)
        runner, spy = make_runner(devices, cell, policy, cameras=fresh_cameras())
        summary = runner.run(1)
        runner.close()
    finally:
        thread.join(12)
        router.close(linger=0)
    assert answered, "the fake server never answered"
    assert [e.outcome for e in summary.episodes] == ["aborted:policy_unavailable"]
    assert spy.moves == []
