"""The e-stop outside the loop's ticks, and a loop that stops ticking, on franky-sim's FR3 through the real franky
client: a STOP between two episodes, a STOP during the move home (a real joint move, as `OperatorScene` drives a
real rig home), a loop thread stalled for 2 s while a long motion is in flight (S2), and the gripper mid-grasp on
an e-stop (E4). The console is a real `EStopListener` fed by a `HeartbeatSender` (the `dv-estop` console's
sending thread) on loopback.

Rest is judged by the joints (every joint below 0.01 rad/s, measured from the joint positions): franky-sim
reports the commanded O_T_EE once a motion ends, so the TCP pose would show rest that has not happened.

The E4 test runs last in this module: franky-sim (1.0.4) never answers a gripper command that a stop pre-empted,
and franky then holds later commands, so this module's gripper takes no command after it (see
`robot.arm.gripper`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from arm_probes import Sampler, SpyArm
from test_runner import (
    FnPolicy,
    console_stop_ns,
    constant,
    make_runner,
    run_in_thread,
    run_until,
    stop_and_join,
    wait_mode,
)

from robot.estop import EStopListener, EStopMode
from robot.estop.heartbeat import HeartbeatSender
from robot.runner import OperatorScene, Runner, RunnerConfig, RunSummary, SimScene
from robot.safety import SafetyConfig

pytest.importorskip("franky_sim")
from robot.tasks import HOME_Q  # noqa: E402 - after the skip

LOOPBACK = "tcp://127.0.0.1:*"
REST_S = 0.5  # E1/S2: the arm at rest within 500 ms
CLOSED_M = 0.0016  # where an empty grasp ends in franky-sim


@pytest.fixture
def console() -> Iterator[tuple[EStopListener, HeartbeatSender]]:
    """A required e-stop listener with a live console, ARMED (the run's start turns it to RUN)."""
    with EStopListener(LOOPBACK, required=True) as listener:
        sender = HeartbeatSender(listener.endpoint)
        try:
            wait_mode(listener, EStopMode.ARMED)
            yield listener, sender
        finally:
            sender.close()


def operator_runner(devices: Any, cell: Any, listener: EStopListener, steps: Any = None,
                    **config: Any) -> tuple[Runner, SpyArm, FnPolicy]:
    """A runner on the real rig's scene (`OperatorScene`: a blocking joint move home at its default dynamics, half
    the arm's bring-up ceiling), the operator's answer 'n'."""
    arm, gripper = devices
    spy = SpyArm(arm)
    policy = FnPolicy(constant([0.002, 0, 0, 0, 0, 0, 1]))
    scene = OperatorScene(spy, gripper, HOME_Q, "pick up the bottle", ask=lambda prompt: "n")
    runner = Runner(RunnerConfig(**{"max_episode_s": 1.0, **config}), SafetyConfig(), arm=spy, gripper=gripper,
                    cameras=cell.cameras, policy=policy, scene=scene, task="pick_bottle", estop=listener,
                    steps=steps)
    return runner, spy, policy


class StopAtEnd:
    """A step sink whose `end` (between two episodes, after the arm came to rest) has the console press STOP and
    waits until the runner has latched it."""

    def __init__(self, sender: HeartbeatSender) -> None:
        self.sender, self.runner, self.pressed_ns = sender, None, 0

    def begin(self, episode: int, instruction: str) -> None:
        return None

    def record(self, tick: Any) -> None:
        return None

    def end(self, record: Any) -> None:
        self.pressed_ns = time.monotonic_ns()
        self.sender.stop()
        deadline = time.monotonic() + 2.0
        while self.runner.stop_reason is None and time.monotonic() < deadline:
            time.sleep(0.002)


def test_stop_between_episodes_starts_no_move_home(devices, cell, console):
    """Between episodes (the first one over, the arm at rest, the operator's verdict given) the console sends STOP:
    the run latches it at once, although no episode runs, so the next episode's move home is never commanded and
    the arm stays at rest; the run ends 'stop latched' after one episode. (Before the watchdog, nothing read the
    listener between episodes, and episode 2's reset drove the arm home with the STOP latched.)"""
    listener, sender = console
    sink = StopAtEnd(sender)
    runner, spy, _ = operator_runner(devices, cell, listener, steps=sink)
    sink.runner = runner
    with Sampler(devices[0]) as sampler:
        summary: RunSummary = runner.run(2)
        runner.close()
        time.sleep(REST_S + 0.2)
    assert len(summary.episodes) == 1 and summary.episodes[0].outcome == "failure"
    assert summary.stopped.startswith("stop latched: e-stop STOPPED (stop_command)")
    assert len(spy.joint_moves) == 1, "a move home was commanded after the STOP"
    assert all(t < sink.pressed_ns for t, _ in spy.moves)
    rest = sampler.joint_rest(sink.pressed_ns)  # the end of episode 1's motion only: nothing new was commanded
    assert rest is not None and rest <= REST_S
    assert devices[0].stop_latched is not None  # the interlock refuses any motion until the operator's next run
    assert not devices[0].move_joints(HOME_Q) and devices[0].poll_error().kind == "StopLatched"
    devices[1].clear_fault()


def test_stop_during_the_move_home_stops_the_arm_and_starts_no_episode(devices, cell, console):
    """E1 during the reset: the arm is 0.6 rad away from home on joint 1, the run's reset drives it home (a blocking
    joint move on the loop's thread, as `OperatorScene` does on the rig), and the console sends STOP while it moves.
    The watchdog stops the arm from its own thread ≤ 10 ms after the STOP was sent, the arm is at rest ≤ 500 ms
    after it, the episode is recorded aborted:estop without a tick, the policy is never reset or asked, and no
    further episode starts."""
    listener, sender = console
    arm = devices[0]
    arm.clear_stop()
    away = np.array(HOME_Q) + [0.6, 0, 0, 0, 0, 0, 0]
    assert arm.move_joints(away), arm.poll_error()
    while not arm.wait(0.02):
        listener.check()  # drained meanwhile: a queue past its high-water mark would hold only old heartbeats
    assert arm.poll_error() is None
    runner, spy, policy = operator_runner(devices, cell, listener)
    with Sampler(arm) as sampler:
        moving = lambda: bool(spy.joint_moves) and sampler.max_joint_speed(  # noqa: E731
            time.monotonic_ns() - 150_000_000, time.monotonic_ns()) > 0.08  # near its 0.13 rad/s cruise
        thread, out = run_until(runner, moving, "the move home never started")
        stop_and_join(runner, thread, sender.stop)
        sent = console_stop_ns(listener)
        time.sleep(REST_S + 0.2)
    issued = min(t for t in spy.stops if t >= sent)
    rest = sampler.joint_rest(sent)
    print(f"\nSTOP during the move home: stop issued {(issued - sent) / 1e6:.2f} ms after the console sent it; "
          f"at rest {rest * 1e3 if rest is not None else float('nan'):.0f} ms after it")
    summary: RunSummary = out[0]
    assert [(e.outcome, e.ticks) for e in summary.episodes] == [("aborted:estop", 0)]
    assert summary.stopped.startswith("stop latched: e-stop STOPPED (stop_command)")
    assert (issued - sent) / 1e6 <= 10
    assert rest is not None and rest <= REST_S
    assert spy.moves == [] and policy.calls == []
    devices[1].clear_fault()


class StallingSink:
    """A step sink whose `record` (on the loop's thread, inside a tick) at tick `at` sends a long joint move (a
    buggy blocking call, say) and then blocks the loop's thread for `stall_s`."""

    def __init__(self, arm: Any, at: int = 5, stall_s: float = 2.0) -> None:
        self.arm, self.at, self.stall_s, self.ticks = arm, at, stall_s, 0
        self.stall_ns = 0
        self.sent = False

    def begin(self, episode: int, instruction: str) -> None:
        return None

    def record(self, tick: Any) -> None:
        self.ticks += 1
        if self.ticks == self.at:
            self.arm.wait(0.1)  # the last 0.5 mm Cartesian step ends; then joint control is allowed
            far = np.array(HOME_Q) + [0.9, 0, 0, 0, 0, 0, 0]
            self.sent = self.arm.move_joints(far, asynchronous=True, dynamics_factor=1.0)
            self.stall_ns = time.monotonic_ns()
            time.sleep(self.stall_s)

    def end(self, record: Any) -> None:
        return None


def test_a_stalled_loop_is_stopped_by_the_watchdog(devices, cell):
    """S2: mid-episode, the loop's thread sends a long joint move (0.9 rad on joint 1, seconds at the bring-up
    dynamics) and then stalls for 2 s. Nothing on that thread can stop the arm; the watchdog sees no tick for
    150 ms, latches the stop and halts the arm from its own thread: the arm is at rest ≤ 500 ms after the stall
    began (it would otherwise run its full move), and the episode ends aborted:loop_stall once the loop resumes."""
    cell.reset(0)
    sink = StallingSink(devices[0])
    runner, spy = make_runner(devices, cell, FnPolicy(constant([0.0005, 0, 0, 0, 0, 0, 1])), max_episode_s=5.0,
                              steps=sink)
    with Sampler(devices[0]) as sampler:
        thread, out = run_in_thread(runner)
        thread.join(15)
        runner.close()
        time.sleep(0.2)
    assert sink.sent, f"the long move was refused: {devices[0].poll_error()}"
    summary: RunSummary = out[0]
    rest = sampler.joint_rest(sink.stall_ns)
    tripped = min(t for t in spy.stops if t >= sink.stall_ns)
    print(f"\nS2 stall: watchdog stop {(tripped - sink.stall_ns) / 1e6:.0f} ms after the stall began; at rest "
          f"{rest * 1e3 if rest is not None else float('nan'):.0f} ms after it")
    assert summary.episodes[0].outcome == "aborted:loop_stall"
    assert runner.stop_reason.startswith("control loop stalled: no tick for")
    assert rest is not None and rest <= REST_S
    devices[1].clear_fault()


class GripperSpy:
    """The real gripper, with every `stop` time-stamped."""

    def __init__(self, gripper: Any) -> None:
        self.gripper, self.stops, self.acknowledged = gripper, [], []

    def stop(self, reason: str) -> bool:
        self.stops.append(time.monotonic_ns())
        acknowledged = self.gripper.stop(reason)
        self.acknowledged.append(acknowledged)
        return acknowledged

    def __getattr__(self, name: str) -> Any:
        return getattr(self.gripper, name)


def test_estop_mid_grasp_stops_the_fingers(devices, cell, console):
    """E4: the policy closes the gripper (an empty grasp at 0.1 m/s: about 0.7 s end to end) and the console sends
    STOP while the fingers move. The watchdog's halt calls the gripper's stop ≤ 10 ms after the STOP was sent
    (before, an e-stop only latched a fault and the grasp ran to its end), franky's stop pre-empts the grasp, and
    the fingers stop well short of closing. How long franky's stop itself takes varies: libfranka sends it on the
    TCP connection whose lock the grasp's own reply loop keeps taking, so it is acknowledged in a few ms in most runs
    and after a few hundred in some, when franky-sim may let the grasp run to its end (it moves the fingers at its
    own speed, whatever the command says). So the fingers are judged only when franky acknowledged the stop within
    `Gripper.stop`'s 200 ms (E4's bound); the measured numbers are printed either way."""
    listener, sender = console
    arm, gripper = devices
    spy_gripper = GripperSpy(gripper)
    spy = SpyArm(arm)
    policy = FnPolicy(constant([0, 0, 0, 0, 0, 0, 0]))  # hold still, close the hand
    runner = Runner(RunnerConfig(max_episode_s=5.0), SafetyConfig(), arm=spy, gripper=spy_gripper,
                    cameras=cell.cameras, policy=policy, scene=SimScene(cell, spy, spy_gripper), task="pick_bottle",
                    estop=listener)
    widths: list[tuple[int, float]] = []
    done = threading.Event()

    def sample() -> None:  # the fingers' width, as the gripper's worker reads it (every 20 ms)
        while not done.wait(0.005):
            state = gripper.state
            if not widths or state.capture_ns != widths[-1][0]:
                widths.append((state.capture_ns, state.width_m))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    closing = lambda: gripper.state.busy and gripper.state.target_open is False and bool(widths) and \
        widths[-1][1] < 0.07  # noqa: E731
    thread, out = run_until(runner, closing, "the grasp never started", episodes=1)
    stop_and_join(runner, thread, sender.stop)
    time.sleep(1.0)  # past the end the grasp would have had
    done.set()
    sampler.join(2)
    sent = console_stop_ns(listener)
    stopped = min(t for t in spy_gripper.stops if t >= sent)
    at_stop = [w for t, w in widths if t <= sent][-1]
    later = [w for t, w in widths if t >= sent + 200_000_000]
    still = next(t for t, w in widths if t >= sent and all(abs(v - w) < 0.0005 for u, v in widths if u >= t))
    print(f"\nE4: gripper stop {(stopped - sent) / 1e6:.2f} ms after the STOP; width {at_stop * 1e3:.1f} mm at the "
          f"STOP, {later[0] * 1e3:.1f} mm 200 ms later, {later[-1] * 1e3:.1f} mm at the end; fingers still "
          f"{(still - sent) / 1e6:.0f} ms after the STOP")
    acknowledged = spy_gripper.acknowledged[spy_gripper.stops.index(stopped)]
    print(f"E4: franky acknowledged the stop within 200 ms: {acknowledged}")
    assert out[0].episodes[0].outcome == "aborted:estop"
    assert (stopped - sent) / 1e6 <= 10
    if acknowledged:
        assert later[-1] > CLOSED_M + 0.002, "the grasp ran to its end although franky acknowledged the stop"
    assert gripper.state.fault is not None and not gripper.state.busy
