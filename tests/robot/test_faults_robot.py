"""Robot-side rows of the fault matrix (docs/safety.md) that need the arm's link, the robot's state or the loop's
own failures: R4 (the FCI link lost: franky-sim's server process killed mid-episode), R5 (a user stop), R9 (a
gripper command that never returns), O5 (a robot state that stops updating), S1 (what used to escape the loop: a
state read on a dead link, the recorder's begin/end raising, `Arm.stop` reading franky outside its guard), S3 (the
wall clock jumping mid-episode), and the exact matching of `auto_recover_errors`.

franky-sim where it can produce the fault (R4); the fake arm of test_runner.py for what it cannot (a user stop, a
frozen state, named reflex flags), and a fake franky gripper for a grasp that hangs.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from arm_probes import SpyArm
from test_runner import FakeArm, FakeGripper, FnPolicy, constant, fake_runner, run_in_thread

import robot.arm.gripper as gripper_module
from robot.arm import Arm, ArmConfig, ArmState, Gripper, GripperConfig
from robot.estop import EStopListener, EStopMode
from robot.estop.heartbeat import HeartbeatSender
from robot.runner import Runner, RunnerConfig, RunSummary
from robot.safety import SafetyConfig

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = "tcp://127.0.0.1:*"


class StillScene:
    """A scene that commands nothing: the arm starts each episode where it is."""

    def __init__(self) -> None:
        self.resets = 0

    def reset(self, episode: int) -> str:
        self.resets += 1
        return "move along x"

    def check_success(self) -> bool:
        return False

    def verdict(self) -> bool:
        return False


# ------------------------------------------------------------------------------------------------ R4


@pytest.fixture
def sim_server() -> Iterator[tuple[subprocess.Popen, str]]:
    """franky-sim's own server (`franky-sim`, MuJoCo) in a process of its own, and the address it serves."""
    pytest.importorskip("franky_sim")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "franky-sim"), "-s", "mujoco"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        host = None
        for line in proc.stdout:
            if (m := re.search(r"using '([\d.]+)'", line)) is not None:
                host = m.group(1)
                break
        assert host is not None, "franky-sim did not start"
        yield proc, host
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stdout.close()


def test_lost_fci_link_is_safe_hold_and_no_thread_hangs(sim_server):
    """R4 (+ O5, S1): the franky-sim server process is SIGKILLed while the loop streams targets. franky keeps serving
    its last buffered state, whose robot clock no longer moves: the loop holds (O5: no target after the next tick);
    after libfranka's 1 s UDP timeout the motion's NetworkException (or a state read that now blocks and raises)
    ends the episode aborted, with the reason, and the run waits for the operator instead of crashing. The process
    survives, the run returns within a few seconds of the kill, and closing the runner does not hang."""
    proc, host = sim_server
    with Arm(ArmConfig(host=host, realtime="ignore", relative_dynamics_factor=0.1)) as arm:
        spy = SpyArm(arm)
        runner = Runner(RunnerConfig(max_episode_s=20.0), SafetyConfig(), arm=spy, gripper=FakeGripper(), cameras={},
                        policy=FnPolicy(constant([0.002, 0, 0, 0, 0, 0, 1])), scene=StillScene(), task="pick_bottle")
        thread, out = run_in_thread(runner, episodes=2)
        deadline = time.monotonic() + 20
        while len(spy.moves) < 5:
            assert thread.is_alive() and time.monotonic() < deadline, f"the arm never moved: {out}"
            time.sleep(0.01)
        kill_ns = time.monotonic_ns()
        os.kill(proc.pid, signal.SIGKILL)
        thread.join(10)
        returned_s = (time.monotonic_ns() - kill_ns) / 1e9
        t = time.monotonic()
        runner.close()
        close_s = time.monotonic() - t
    assert not thread.is_alive() and out, "the run did not return"
    summary: RunSummary = out[0]
    print(f"\nR4: run returned {returned_s:.1f} s after the kill: {[e.outcome for e in summary.episodes]}; "
          f"{summary.stopped}")
    assert summary.episodes[0].outcome in ("aborted:arm_error", "aborted:loop_stall")
    assert summary.stopped.startswith(("needs operator", "stop latched")), summary.stopped
    assert returned_s < 6.0 and close_s < 2.0
    assert all(t < kill_ns + 300_000_000 for t, _ in spy.moves), "targets kept going out after the link died"


# ------------------------------------------------------------------------------------------------ R5


class UserStoppedArm(FakeArm):
    """The external activation device pressed before the state read of tick `at`: libfranka reports robot mode
    UserStopped (no error flag); released (Idle) a tick later."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def read_state(self) -> ArmState:
        if self.episode == 1 and self.episode_polls == self.at:  # tick n reads after n polls
            self.mode = "UserStopped"
        elif self.mode == "UserStopped":
            self.mode = "Idle"  # released: nothing may restart by itself
        return super().read_state()


def test_user_stop_is_safe_hold_and_never_resumes():
    """R5: the user stop (the FR3's external activation device) shows as robot mode UserStopped with no libfranka
    flag: SAFE-HOLD (aborted:arm_error, the gripper latched), never recovered automatically, even with an allow-list,
    and after its release no motion and no episode follows without the operator."""
    arm = UserStoppedArm(at=5)
    safety = SafetyConfig(auto_recover_errors=("communication_constraints_violation",), max_auto_recoveries=3)
    runner, gripper, scene = fake_runner(arm, safety=safety)
    summary = runner.run(3)
    runner.close()
    moves_at_stop = len(arm.moves)
    time.sleep(0.2)  # released meanwhile
    assert [e.outcome for e in summary.episodes] == ["aborted:arm_error"]
    assert summary.stopped.startswith("needs operator: robot mode UserStopped")
    assert arm.recovers == 0 and scene.resets == 1 and gripper.fault is not None
    assert len(arm.moves) == moves_at_stop == 4  # ticks 1-4 moved; tick 5 read the user stop


# ------------------------------------------------------------------------------------------------ R9


class HangingFuture:
    """A franky gripper future that never completes."""

    def wait(self, timeout_s: float) -> bool:
        time.sleep(timeout_s)
        return False

    def get(self) -> bool:
        raise AssertionError("a hung command has no result")


class DoneFuture:
    def wait(self, timeout_s: float) -> bool:
        return True

    def get(self) -> bool:
        return True


class HangingFrankyGripper:
    """`franky.Gripper` whose grasp never returns (R9); `stop()` answers at once and is time-stamped."""

    instances: list[HangingFrankyGripper] = []

    def __init__(self, host: str) -> None:
        self.grasps: list[int] = []
        self.stops: list[int] = []
        HangingFrankyGripper.instances.append(self)

    @property
    def state(self) -> SimpleNamespace:
        return SimpleNamespace(width=0.08, is_grasped=False)

    def open_async(self, speed: float) -> DoneFuture:
        return DoneFuture()

    def grasp_async(self, *args: float) -> HangingFuture:
        self.grasps.append(time.monotonic_ns())
        return HangingFuture()

    def stop(self) -> bool:
        self.stops.append(time.monotonic_ns())
        return True


def test_hung_grasp_is_stopped_at_its_timeout_and_the_arm_goes_on(monkeypatch):
    """R9: the grasp never returns. At the command timeout (0.3 s here) the gripper latches a fault, calls franky's
    stop and stops following the command: stop called ≤ timeout + 100 ms after the grasp was sent, the gripper free
    again by then; the arm is unaffected (the loop keeps commanding it to the end of the episode, no abort)."""
    monkeypatch.setattr(gripper_module.franky, "Gripper", HangingFrankyGripper)
    timeout_s = 0.3
    arm = FakeArm()
    with Gripper(GripperConfig(host="fake", command_timeout_s=timeout_s)) as gripper:
        fake = HangingFrankyGripper.instances[-1]
        idle: list[int] = []
        watching = threading.Event()

        def watch() -> None:  # when the gripper is free again after the grasp was sent
            while not watching.wait(0.002):
                if fake.grasps and not gripper.state.busy and not idle:
                    idle.append(time.monotonic_ns())

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        runner = Runner(RunnerConfig(max_episode_s=1.5), SafetyConfig(), arm=arm, gripper=gripper, cameras={},
                        policy=FnPolicy(constant([0.002, 0, 0, 0, 0, 0, 0])), scene=StillScene(), task="pick_bottle")
        summary = runner.run(1)
        runner.close()
        watching.set()
        watcher.join(1)
        fault = gripper.state.fault
    record = summary.episodes[0]
    sent = fake.grasps[0]
    print(f"\nR9: stop {(fake.stops[0] - sent) / 1e6:.0f} ms and the gripper free {(idle[0] - sent) / 1e6:.0f} ms "
          f"after the grasp was sent (timeout {timeout_s * 1e3:.0f} ms)")
    assert len(fake.grasps) == 1 and fake.stops
    assert (fake.stops[0] - sent) / 1e9 <= timeout_s + 0.1
    assert (idle[0] - sent) / 1e9 <= timeout_s + 0.1
    assert fault is not None and "still running" in fault
    assert not record.outcome.startswith("aborted:") and record.steps > 15  # the arm moved on to the time limit
    assert arm.stops == 1  # only the episode's end stopped it


# ------------------------------------------------------------------------------------------------ O5


class FrozenStateArm(FakeArm):
    """For the state reads of ticks `first`..`last` of episode 1 the robot's clock stops (every read repeats the
    previous tick's time: a state that is no longer updated); targets sent while it is frozen are recorded."""

    def __init__(self, first: int, last: int) -> None:
        super().__init__()
        self.first, self.last, self.last_ms = first, last, 0
        self.frozen = False
        self.sent_while_frozen = 0

    def read_state(self) -> ArmState:
        state = super().read_state()
        self.frozen = self.episode == 1 and self.first <= self.episode_polls <= self.last  # tick n: n polls so far
        if self.frozen:
            return dataclasses.replace(state, robot_time_ms=self.last_ms)
        self.last_ms = state.robot_time_ms
        return state

    def move_to(self, T: Any, asynchronous: bool = True, dynamics_factor: float = 1.0) -> bool:
        self.sent_while_frozen += self.frozen
        return super().move_to(T, asynchronous, dynamics_factor)


def test_stale_robot_state_holds_and_resumes_when_fresh():
    """O5: the robot's clock stops advancing for three ticks (a state that is no longer updated): on each of them
    nothing is sent and the stop is issued (HOLD); once the state is fresh again the next chunk resumes and the
    episode runs to its time limit. (A link that stays dead ends in libfranka's NetworkException: R4.)"""
    arm = FrozenStateArm(first=5, last=7)
    runner, _, _ = fake_runner(arm)
    summary = runner.run(1)
    runner.close()
    record = summary.episodes[0]
    assert arm.sent_while_frozen == 0 and arm.stops >= 2  # the hold's stop, then the episode's end
    assert record.interventions["state_stale"] == 3 and record.interventions["hold"] == 1
    assert any("resume after hold (state_stale)" in e for e in record.events), record.events
    assert record.outcome == "failure" and record.steps > 4 + 3  # ticks 1-4, then it moved on after the freeze


# ------------------------------------------------------------------------------------------------ S1


class DeadLinkArm(FakeArm):
    """libfranka's NetworkException on the state read from read `fail_at` on (franky raises RuntimeError)."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at = fail_at

    def read_state(self) -> ArmState:
        if self.reads + 1 >= self.fail_at:
            self.reads += 1
            raise RuntimeError("Net Exception")
        return super().read_state()


@pytest.mark.parametrize("fail_at", [1, 6], ids=["before_the_episode", "mid_episode"])
def test_state_read_on_a_dead_link_is_safe_hold(fail_at):
    """S1/R4: `read_state` raising (a lost link) before the episode's loop or inside a tick ends as SAFE-HOLD: the
    episode aborted:arm_error with the reason, the stop issued, the run over for the operator; nothing escapes."""
    arm = DeadLinkArm(fail_at)
    runner, gripper, _ = fake_runner(arm)
    summary = runner.run(2)
    runner.close()
    assert [e.outcome for e in summary.episodes] == ["aborted:arm_error"]
    assert summary.stopped == "needs operator: arm state unreadable: RuntimeError: Net Exception"
    assert len(arm.moves) == max(0, fail_at - 2)
    if fail_at > 1:
        assert arm.stops >= 1 and gripper.fault is not None


class FailingRecorder:
    """A step sink whose `begin` or `end` raises the OSError a dataset commit or abort can raise (disk full)."""

    def __init__(self, fail: str) -> None:
        self.fail, self.ended = fail, []

    def begin(self, episode: int, instruction: str) -> None:
        if self.fail == "begin":
            raise OSError(28, "No space left on device")

    def record(self, tick: Any) -> None:
        return None

    def end(self, record: Any) -> None:
        self.ended.append(record.outcome)
        if self.fail == "end":
            raise OSError(28, "No space left on device")


@pytest.mark.parametrize("fail", ["begin", "end"])
def test_recorder_raising_is_safe_hold(fail):
    """S1: the recorder's begin (before any motion) or end (the arm at rest) raising an OSError: the episode is
    recorded aborted:recorder with the reason, the run stops for the operator, no exception escapes `run`."""
    arm = FakeArm()
    gripper, scene = FakeGripper(), StillScene()
    sink = FailingRecorder(fail)
    runner = Runner(RunnerConfig(max_episode_s=0.5), SafetyConfig(), arm=arm, gripper=gripper, cameras={},
                    policy=FnPolicy(constant([0.002, 0, 0, 0, 0, 0, 1])), scene=scene, task="pick_bottle", steps=sink)
    summary = runner.run(2)
    runner.close()
    assert [e.outcome for e in summary.episodes] == ["aborted:recorder"]
    assert summary.stopped == f"needs operator: recorder {fail}: OSError: [Errno 28] No space left on device"
    assert scene.resets == 1
    if fail == "begin":
        assert arm.moves == [] and arm.stops >= 1
    else:
        assert len(arm.moves) > 3


class RaisingRobot:
    """A franky robot whose link died: reading the running motion's control signal type raises."""

    @property
    def current_control_signal_type(self) -> Any:
        raise RuntimeError("Net Exception")

    def poll_motion(self) -> bool:
        return True


def test_arm_stop_never_raises_when_franky_does():
    """S1: `Arm.stop` reads the running motion's control signal type from franky; when that raises, the failure is
    queued for `poll_error` like any other, and `stop` returns False instead of raising into the e-stop path."""
    arm = Arm(ArmConfig(host="127.0.0.1", realtime="ignore"))
    arm._robot = RaisingRobot()  # the driver's own franky handle, replaced by a dead one
    assert arm.stop() is False
    error = arm.poll_error()
    assert error is not None and error.during == "stop" and "Net Exception" in error.message


# ------------------------------------------------------------------------------------------------ S3


def test_wall_clock_jumps_change_nothing(monkeypatch):
    """S3: the wall clock jumps an hour forward, then two hours back, mid-episode (as `date -s` would), with a live
    e-stop console heartbeating. Every timer of the loop, the policy worker, the watchdog and the listener runs on
    the monotonic clock, so nothing notices: no spurious timeout, hold or stop, and the episode ends at its time limit
    on schedule, as the same episode without the jumps does. Nothing on the robot side reads the wall clock."""
    real_time, real_time_ns = time.time, time.time_ns
    offset = [0.0]
    monkeypatch.setattr(time, "time", lambda: real_time() + offset[0])
    monkeypatch.setattr(time, "time_ns", lambda: real_time_ns() + int(offset[0] * 1e9))

    def episode(jumps: bool) -> tuple[Any, Any]:
        with EStopListener(LOOPBACK, required=True) as listener:
            sender = HeartbeatSender(listener.endpoint)
            try:
                deadline = time.monotonic() + 5
                while listener.wait(0.002).mode is not EStopMode.ARMED:
                    assert time.monotonic() < deadline
                arm = FakeArm()
                runner = Runner(RunnerConfig(max_episode_s=1.2), SafetyConfig(), arm=arm, gripper=FakeGripper(),
                                cameras={}, policy=FnPolicy(constant([0.002, 0, 0, 0, 0, 0, 1])), scene=StillScene(),
                                task="pick_bottle", estop=listener)
                thread, out = run_in_thread(runner)
                if jumps:
                    time.sleep(0.4)
                    offset[0] = 3600.0
                    time.sleep(0.4)
                    offset[0] = -3600.0
                thread.join(10)
                runner.close()
            finally:
                sender.close()
        return out[0], listener.state

    jumped, state = episode(jumps=True)
    offset[0] = 0.0
    plain, _ = episode(jumps=False)
    record, reference = jumped.episodes[0], plain.episodes[0]
    assert record.outcome == reference.outcome == "failure" and jumped.stopped == ""
    assert state.mode is EStopMode.RUN  # the listener never saw silence
    assert not {"policy_timeout", "hold", "policy_late", "overrun", "state_stale"} & set(record.interventions)
    assert abs(record.duration_s - reference.duration_s) < 0.2 and abs(record.ticks - reference.ticks) <= 2
    sources = [p for d in ("runner", "estop", "arm", "safety") for p in (REPO / "robot" / d).rglob("*.py")]
    sources += [REPO / "robot" / f for f in ("execution.py", "policy.py", "kinematics.py")]
    offenders = [f"{p.relative_to(REPO)}" for p in sources
                 if re.search(r"\btime\.time(_ns)?\(|datetime\.now\(|datetime\.utcnow\(", p.read_text())]
    assert offenders == [], f"the wall clock is read in {offenders}"


# ------------------------------------------------------------------------------------------------ R2: exact match


@pytest.mark.parametrize(("flags", "allowed"), [
    ('["communication_constraints_violation"]', True),
    ('["communication_constraints_violation", "cartesian_reflex"]', False),  # a reflex among them: operator
    ('["cartesian_motion_generator_joint_position_limits_violation"]', False),  # contains an allowed name
    ("", False),  # no flag named (a lost link): operator
], ids=["allowed", "with_a_reflex", "longer_name", "no_flag"])
def test_auto_recover_matches_error_names_exactly(flags, allowed):
    """R2: an error is recovered automatically only if every libfranka flag it names is on the allow-list, by exact
    name: an allowed flag together with a reflex, a longer flag name that merely contains an allowed one, or an
    error that names no flag at all all need the operator."""
    arm = FakeArm(errors_at=((1, 4),))
    safety = SafetyConfig(auto_recover_errors=("communication_constraints_violation",
                                               "joint_position_limits_violation"), max_auto_recoveries=1)
    original = arm.poll_error

    def poll_error() -> Any:
        error = original()
        if error is None:
            return None
        arm.mode = "Idle"
        return type(error)("ControlException", f"libfranka: Move command aborted: motion aborted by reflex! {flags}",
                           "motion", error.capture_ns)

    arm.poll_error = poll_error  # type: ignore[method-assign]
    runner, _, scene = fake_runner(arm, safety=safety, max_episode_s=0.5)
    summary = runner.run(2)
    runner.close()
    assert summary.episodes[0].outcome == "aborted:arm_error"
    assert (arm.recovers, scene.resets, len(summary.episodes)) == ((1, 2, 2) if allowed else (0, 1, 1))


def test_a_numpy_verdict_still_writes_the_summary(tmp_path):
    """S1, after the loop: the sim's success predicate can answer with numpy's bool; the episode's success is kept as
    a plain bool, so the JSON summary is written (it raised `Object of type int64 is not JSON serializable` after a
    successful sim episode that ended at its time limit)."""
    import json

    import numpy as np

    class NumpyVerdict(StillScene):
        def verdict(self) -> Any:
            return np.bool_(True)

    runner = Runner(RunnerConfig(max_episode_s=0.3), SafetyConfig(), arm=FakeArm(), gripper=FakeGripper(), cameras={},
                    policy=FnPolicy(constant([0.002, 0, 0, 0, 0, 0, 1])), scene=NumpyVerdict(), task="pick_bottle")
    summary = runner.run(1)
    runner.close()
    summary.write_json(tmp_path / "summary.json")
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["episodes"][0]["outcome"] == "success" and data["totals"]["successes"] == 1
