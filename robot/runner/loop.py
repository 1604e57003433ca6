"""`Runner`: the control loop that turns observations into safe Cartesian targets, one tick at a time.

The e-stop is not the loop's job: for the whole run (between episodes, during the move home, during every tick) an
e-stop watchdog on its own thread (`robot.estop.watchdog`) services the listener at 100 Hz and watches this loop's
tick. On a STOP, a silent console or a stalled loop it calls `request_stop` from its thread: the arm's interlock
latches (no motion is accepted from then on, whoever sends it), the arm and the gripper are stopped at once (E1:
≤ 10 ms after the console's STOP), and the loop, woken, ends the episode as aborted:<code>. A latched stop never
clears itself; only the operator's next run (a new `Runner.run` that the e-stop allows) releases the arm.

Each tick (15 Hz by default), in this order:
1. a latched stop ends the episode; the loop beats the watchdog here and in every wait (at least every 10 ms);
2. proprioception (O5: a state whose robot clock did not advance since the last tick is stale: HOLD, nothing else
   this tick), then Franka errors (polled every tick: franky re-raises an asynchronous motion's error only when
   asked, franky #63), then the measured-state reactions (force, torque, joint limits);
3. the images (never blocking: the newest frame of each camera, refused when too old);
4. the policy: a request goes to the inference worker when the mode asks for one, and the loop waits for the
   reply at most `reply_wait` of a tick; a reply is validated as a whole and placed on the timeline;
5. liveness: no reply within the deadline (one chunk horizon), an error reply or a rejected chunk is a miss;
   a miss or one horizon without an action to run is a HOLD (stop issued, plan forgotten, gripper untouched);
   the next valid chunk resumes; `max_consecutive_misses` in a row abort the episode;
6. the action for this tick, composed on the last commanded target and filtered by the envelope, goes to the
   arm (asynchronous, pre-empting); the gripper follows the hysteresis.

SAFE-HOLD (docs/safety.md) is an aborted episode: stop issued, no new motion, the gripper latched where it is, the
reason logged and recorded as `aborted:<reason>`, and no exception leaves the loop (S1): a failed reset, a state
read on a lost link (R4), a recorder that raises at the episode's begin or end all end that way.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from dreamvla_client.latency import LatencyStats
from robot.arm import ArmError, ArmState
from robot.cameras import Frame
from robot.estop.listener import start_motion
from robot.estop.watchdog import Watchdog, halt
from robot.estop.wire import Latency, RobotState, RobotStatus
from robot.execution import Timeline, compose, delta_between, predicted_positions, state_vector
from robot.policy import Observation, Policy, PolicyChunk, PolicyFailure
from robot.runner.config import RunnerConfig
from robot.runner.devices import ArmLike, CameraLike, GripperLike, StatusSink, StopSignal
from robot.runner.report import EpisodeRecord, RunSummary
from robot.runner.scenes import Scene
from robot.runner.steps import StepSink, TickRecord
from robot.runner.worker import Done, PolicyWorker
from robot.safety import Rejection, SafetyConfig, SafetyEnvelope

log = logging.getLogger("robot.runner")

# Policy failures that end the episode at once: the server lost the episode's history, or refuses this robot.
_FATAL_FAILURES = {"session_lost": "session_lost", "contract": "contract_mismatch"}
_MISS_REASONS = {"timeout": "policy_timeout", "server_error": "policy_error", "internal": "policy_error"}
_STATUS_STAGES = ("obs_to_action", "infer", "state_read", "tick_period")
# Every wait of the loop (for the next tick, for a reply) is cut into slices this long: the loop beats the e-stop
# watchdog and looks at the stop latch between them.
_WAIT_SLICE_S = 0.01
# O5: the robot state comes at 1 kHz; a robot clock that has not moved while ours moved this much is a stale copy.
_STATE_STALE_NS = 5_000_000
# libfranka's error flags inside an exception message: ... ["cartesian_reflex", "joint_reflex"]
_FLAG_LIST = re.compile(r"\[([^\[\]]*)\]")
_FLAG_NAME = re.compile(r'"(\w+)"')


def _ms(ns: int) -> float:
    return ns / 1e6


@dataclass
class _Episode:
    """The loop's state for one episode."""

    index: int
    instruction: str
    timeline: Timeline
    state: ArmState
    T_cmd: np.ndarray  # the last commanded target: deltas compose on it
    t_start_ns: int
    gripper_open: bool = True
    last_action_ns: int = 0
    last_frames_ns: int = 0
    last_obs_acted_ns: int = 0
    next_success_ns: int = 0
    next_status_ns: int = 0
    wait_deadline_ns: int = 0  # a reply is due by then (while a request is pending or the worker is busy)
    pending: int | None = None  # the worker job whose reply the loop is waiting for
    pending_obs: Observation | None = None
    frames: dict[str, Frame] | None = None  # the frames read this tick (None: a camera had no usable frame)
    misses: int = 0
    holding: str | None = None  # the reason of the current HOLD
    reseed: bool = False  # a HOLD on a stale state: the next fresh state is where deltas compose from
    steps: int = 0
    ticks: int = 0
    outcome: str | None = None  # None while running; 'success', 'done', 'time_limit' or 'aborted:<reason>'
    latency: LatencyStats = field(default_factory=LatencyStats)
    events: list[str] = field(default_factory=list)

    def note(self, now_ns: int, text: str) -> None:
        self.events.append(f"{(now_ns - self.t_start_ns) / 1e9:6.2f}s {text}")


def error_flags(error: ArmError | None, state: ArmState | None) -> frozenset[str]:
    """The libfranka error flags an arm error names: those listed in its message (libfranka writes them as
    ["cartesian_reflex", ...]) and those set in the robot state. Empty when none is named (a lost link, a user
    stop): such an error is never recovered automatically."""
    names = set(state.errors) if state is not None else set()
    if error is not None:
        for group in _FLAG_LIST.findall(error.message):
            names.update(_FLAG_NAME.findall(group))
    return frozenset(names)


class Runner:
    """Runs episodes of one task: reset, loop, record. Devices come in connected; `close()` stops the worker."""

    def __init__(self, config: RunnerConfig, safety: SafetyConfig, *, arm: ArmLike, gripper: GripperLike,
                 cameras: Mapping[str, CameraLike], policy: Policy, scene: Scene, task: str, policy_name: str = "",
                 estop: StopSignal | None = None, status: StatusSink | None = None, steps: StepSink | None = None,
                 clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.config, self.safety = config, safety
        self.arm, self.gripper, self.cameras, self.scene = arm, gripper, dict(cameras), scene
        self.task, self.policy_name = task, policy_name
        self._estop, self._status, self._steps, self._clock = estop, status, steps, clock
        # Owns the listener while a run is under way (see `run`); trips `request_stop` from its own thread.
        self._watchdog = Watchdog(self.request_stop, estop, tick_timeout_s=config.watchdog_timeout_s,
                                  kill_after_s=config.backstop_kill_after_s, clock=clock)
        self._wake = threading.Event()  # set by a latched stop: ends the loop's waits at once
        self._dt_ns = round(1e9 / config.rate_hz)
        self._deadline_ns = round(safety.deadline_s(config.chunk_length, config.rate_hz) * 1e9)
        self.envelope = SafetyEnvelope(safety, 1.0 / config.rate_hz, config.chunk_length)
        self.interventions = self.envelope.interventions
        self._worker = PolicyWorker(policy)
        self._lock = threading.Lock()  # orders the loop's stops against its motion commands
        self._stop_lock = threading.Lock()  # the stop latch's first writer (never held across a device call)
        self._stop_reason: str | None = None
        self._stop_code = ""
        self._fault: str | None = None  # needs an operator: no further episode starts
        self._recover: str | None = None  # an allow-listed error to recover from before the next episode
        self._recoveries = 0
        self._run_state = RobotState.PAUSE
        self._episode_index, self._episodes_planned = 0, 0
        self._last_error = ""
        self._estop_text = ""  # the e-stop at the run's start; the watchdog's newest state once it runs
        self._latency = LatencyStats()  # every episode's samples, for the run's summary

    # ------------------------------------------------------------------ e-stop hook

    def request_stop(self, reason: str, code: str = "estop") -> None:
        """Stop now and latch, from any thread: the e-stop watchdog calls this on a trip, a signal handler on Ctrl-C.
        The first call halts the devices (the arm's interlock latches, the arm stops, the gripper stops: E4) without
        the runner's motion lock (a loop thread stuck in a call cannot delay it); a later one only stops the arm.
        The running episode ends as aborted:<code> (the loop is woken); no later episode of this runner starts: a
        latched stop never clears itself."""
        with self._stop_lock:
            first = self._stop_reason is None
            if first:
                self._stop_reason, self._stop_code = reason, code
        if first:
            halt(self.arm, self.gripper, reason)
            self._run_state = RobotState.STOP
            log.warning("STOP latched: %s", reason)
        else:
            self.arm.stop()
        self._wake.set()

    @property
    def stop_reason(self) -> str | None:
        return self._stop_reason

    # ------------------------------------------------------------------ episodes

    def run(self, episodes: int) -> RunSummary:
        """Up to `episodes` episodes; the run ends early on a latched stop or an error that needs an operator."""
        self._episodes_planned = episodes
        self._fault = self._recover = None  # a new run is the operator's decision; a latched stop stays latched
        self._recoveries = 0
        records: list[EpisodeRecord] = []
        stopped = ""
        if self._estop is not None:
            self._start_estop()
        if self._stop_reason is None:
            self.arm.clear_stop()  # the operator's start, allowed by the e-stop: an earlier run's latch is released
        with self._watchdog:  # from here to the end of the run the watchdog owns the listener
            for index in range(1, episodes + 1):
                if self._stop_reason is None and self._recover is not None:
                    self._recover_arm()
                if self._stop_reason is not None or self._fault is not None:
                    stopped = (f"stop latched: {self._stop_reason}" if self._stop_reason
                               else f"needs operator: {self._fault}")
                    break
                records.append(self._run_episode(index))
        if stopped:
            log.warning("run ended early (%s)", stopped)
        self._publish(None, force=True)
        return RunSummary(self.task, self.config.mode, self.policy_name, records, self._latency.summary(), stopped)

    def close(self) -> None:
        self._watchdog.close()
        self._worker.close()

    def _start_estop(self) -> None:
        """The run is the operator's start: wait for a console if one is required, then ARMED -> RUN (on the
        caller's thread: the watchdog takes the listener over only after this)."""
        assert self._estop is not None
        state = start_motion(self._estop, self.config.estop_wait_s, self._clock)
        self._estop_text = state.describe()
        if not state.may_move:
            self.request_stop(f"e-stop {state.describe()} at the start of the run")

    def _recover_arm(self) -> None:
        """Allow-listed errors only, between episodes (seconds on a real robot), then the mode check in `recover`.
        Errors queued before the recovery (e.g. the refused stop) are stale once it succeeded."""
        reason, self._recover = self._recover, None
        log.warning("recovering automatically from: %s", reason)
        if not self.arm.recover():
            self._fault = f"automatic recovery failed after: {reason}"
            return
        self._recoveries += 1
        while (stale := self.arm.poll_error()) is not None:
            log.info("cleared by the recovery: %s", self._describe(stale, None))

    def _run_episode(self, index: int) -> EpisodeRecord:
        self._episode_index = index
        self._run_state = RobotState.PAUSE
        self._publish(None, force=True)
        start = self._clock()
        ep = self._prepare(index, start)
        if isinstance(ep, EpisodeRecord):
            return ep
        log.info("episode %d: %s", index, ep.instruction)
        self._run_state = RobotState.RUN
        self._drive(ep)
        return self._end_steps(self._finish(ep))

    def _prepare(self, index: int, start: int) -> _Episode | EpisodeRecord:
        """Reset the scene (the move home: the watchdog can stop it), check the arm, reset the policy: the episode
        to run, or the record of one that ended before its loop (then `_fault` says whether the run goes on)."""
        try:
            instruction = self.scene.reset(index)
        except Exception as exc:  # noqa: BLE001 - a failed reset needs the operator, it must not crash the run
            if self._stop_reason is not None:  # the stop ended the move home: not a reset failure
                log.warning("episode %d: the reset was stopped (%s): %s", index, self._stop_reason, exc)
                return self._early_record(index, "", f"aborted:{self._stop_code}", start)
            log.exception("reset for episode %d failed", index)
            self._fault = f"reset failed: {exc}"
            return self._early_record(index, "", "aborted:reset_failed", start)
        if self._stop_reason is not None:  # latched while the reset ran: the episode must not start
            return self._early_record(index, instruction, f"aborted:{self._stop_code}", start)
        try:
            state, error = self.arm.read_state(), self.arm.poll_error()
        except Exception as exc:  # noqa: BLE001 - R4: a lost FCI link raises here (libfranka's 1 s UDP timeout)
            self._fault = self._last_error = f"arm state unreadable: {type(exc).__name__}: {exc}"
            log.error("episode %d: %s", index, self._fault)
            return self._early_record(index, instruction, "aborted:arm_error", start)
        if error is not None or state.is_faulted:
            self._fault = self._describe(error, state)
            return self._early_record(index, instruction, "aborted:arm_error", start)
        failure = self._worker.call(lambda p: p.reset(instruction), self.config.policy_reset_timeout_s)
        if isinstance(failure, PolicyFailure):
            log.warning("policy reset failed: %s", failure.message)
            self._last_error = failure.message
            return self._early_record(index, instruction, "aborted:policy_unavailable", start)
        now = self._clock()
        timeline = Timeline(self.config.mode, now, self._dt_ns, round(self.safety.max_obs_age_s * 1e9),
                            self.interventions, self.config.ensemble_k)
        return _Episode(index, instruction, timeline, state, state.T_base_ee.copy(), now, last_action_ns=now,
                        last_frames_ns=now, next_success_ns=now + round(self.config.success_check_period_s * 1e9))

    def _drive(self, ep: _Episode) -> None:
        """The recorder's begin and the loop, under the S1 handler and the watchdog's eye on the tick."""
        try:
            if self._steps is not None:
                try:
                    self._steps.begin(ep.index, ep.instruction)
                except Exception as exc:  # noqa: BLE001 - e.g. an OSError from the dataset: SAFE-HOLD
                    return self._recorder_failed(ep, "begin", exc)
            self._watchdog.watch(True)
            self._loop(ep)
        except Exception as exc:  # noqa: BLE001 - S1: a bug in the loop becomes SAFE-HOLD, never an escape
            log.exception("control loop failed")
            self._fault = f"{type(exc).__name__}: {exc}"
            self._abort(ep, f"exception:{type(exc).__name__}")
        finally:
            self._watchdog.watch(False)
        return None

    def _recorder_failed(self, ep: _Episode, stage: str, exc: Exception) -> None:
        log.exception("the recorder failed at the episode's %s", stage)
        self._fault = f"recorder {stage}: {type(exc).__name__}: {exc}"
        self._abort(ep, "recorder")

    def _end_steps(self, record: EpisodeRecord) -> EpisodeRecord:
        """Hand the finished episode to the recorder (the arm is at rest); if that raises (an OSError on commit or
        abort), the episode is recorded as aborted:recorder and the run waits for the operator."""
        if self._steps is None:
            return record
        try:
            self._steps.end(record)
        except Exception as exc:  # noqa: BLE001 - S1: the recorder's failure must not escape the run
            log.exception("the recorder failed at the episode's end")
            self._fault = f"recorder end: {type(exc).__name__}: {exc}"
            return dataclasses.replace(record, outcome="aborted:recorder", success=False)
        return record

    def _early_record(self, index: int, instruction: str, outcome: str, start: int) -> EpisodeRecord:
        return EpisodeRecord(index, self.task, instruction, outcome, False, 0, 0, (self._clock() - start) / 1e9,
                             self.interventions.take(), {})

    def _finish(self, ep: _Episode) -> EpisodeRecord:
        """Bring the arm to rest, judge the episode, and record it."""
        with self._lock:
            self.arm.stop()
        self.arm.wait(self.config.settle_timeout_s)
        assert ep.outcome is not None
        if ep.outcome.startswith("aborted:"):
            outcome, success = ep.outcome, False
        else:
            ep.note(self._clock(), f"ended: {ep.outcome}")
            success = ep.outcome == "success" or self._verdict()
            outcome = "success" if success else "failure"
        log.info("episode %d: %s after %d steps", ep.index, outcome, ep.steps)
        self._latency.merge(ep.latency)
        return EpisodeRecord(ep.index, self.task, ep.instruction, outcome, success, ep.steps, ep.ticks,
                             (self._clock() - ep.t_start_ns) / 1e9, self.interventions.take(), ep.latency.summary(),
                             ep.events)

    def _verdict(self) -> bool:
        """The scene's judgement as a plain bool (a sim predicate may return numpy's bool, which the JSON summary
        cannot write)."""
        try:
            return bool(self.scene.verdict())
        except Exception:  # noqa: BLE001 - an unreadable verdict is a failure, not a crash
            log.exception("could not judge the episode")
            return False

    # ------------------------------------------------------------------ the loop

    def _loop(self, ep: _Episode) -> None:
        dt, next_tick, last_start = self._dt_ns, ep.t_start_ns, None
        while ep.outcome is None:
            self._idle_until(ep, next_tick)
            if ep.outcome is not None:
                break
            now = self._clock()
            if last_start is not None:
                ep.latency.add("tick_period", _ms(now - last_start))
            ep.latency.add("tick_late", _ms(now - next_tick))
            last_start = now
            self._tick(ep, now)
            ep.ticks += 1
            ep.latency.add("tick_work", _ms(self._clock() - now))
            next_tick += dt
            behind = self._clock() - next_tick
            if behind > 0:  # S2: a stall skips ticks; the bounded lead already limits where the arm can go
                skipped = behind // dt + 1
                next_tick += skipped * dt
                self.interventions.record("overrun", f"tick took {_ms(behind + dt):.0f} ms; {skipped} ticks skipped",
                                          n=int(skipped))

    def _idle_until(self, ep: _Episode, t_ns: int) -> None:
        """Wait for the next tick; a reply deadline that falls before it is acted on at the deadline itself, not a
        tick later (a reply arriving meanwhile is collected, so it is never mistaken for a miss)."""
        while ep.outcome is None and (ep.pending is not None or self._worker.busy) and ep.wait_deadline_ns < t_ns:
            now = self._clock()
            if now >= ep.wait_deadline_ns:
                self._no_reply(ep, now)
            else:
                self._collect(ep, ep.timeline.slot(now), (ep.wait_deadline_ns - now) / 1e9)
        self._pause(ep, t_ns)

    def _pause(self, ep: _Episode, t_ns: int) -> None:
        """Wait until `t_ns` in slices (the watchdog hears the loop beat); a latched stop wakes the wait and ends
        the episode at once (the stop itself was already issued by whoever latched it)."""
        while ep.outcome is None and (left := t_ns - self._clock()) > 0:
            self._watchdog.beat()
            if self._wake.wait(min(left / 1e9, _WAIT_SLICE_S)):
                self._check_stop(ep)

    def _check_stop(self, ep: _Episode) -> bool:
        """A latched stop ends the episode (aborted:<code>); True if the episode has ended."""
        if self._stop_reason is not None and ep.outcome is None:
            self._abort(ep, self._stop_code)
        return ep.outcome is not None

    def _check_estop(self) -> None:
        """Beside the watchdog's own trip, every tick: the listener's newest state (as the watchdog last saw it)
        must allow motion, and the watchdog itself must be running."""
        state = self._watchdog.state
        if state is not None and not state.may_move:
            self.request_stop(f"e-stop {state.describe()}")
        if not self._watchdog.alive:
            self.request_stop("the e-stop watchdog is not running", "watchdog")

    def _await_reply(self, ep: _Episode, timeout_s: float) -> Done | None:
        """The worker's result, waiting up to `timeout_s` in slices of `_WAIT_SLICE_S`, between which the loop
        beats the watchdog and a latched stop ends the wait."""
        until = self._clock() + round(max(timeout_s, 0.0) * 1e9)
        while True:
            self._watchdog.beat()
            left = (until - self._clock()) / 1e9
            done = self._worker.result(min(max(left, 0.0), _WAIT_SLICE_S))
            if done is not None:
                return done
            if self._check_stop(ep) or left <= _WAIT_SLICE_S:
                return None

    def _tick(self, ep: _Episode, tick_ns: int) -> None:
        slot, T_before, open_before = ep.timeline.slot(tick_ns), ep.T_cmd, ep.gripper_open
        self._watchdog.beat()
        self._check_estop()
        if self._check_stop(ep):
            return None

        t, previous = self._clock(), ep.state
        try:
            ep.state = state = self.arm.read_state()  # proprioception first, then the images
        except Exception as exc:  # noqa: BLE001 - R4: a lost FCI link raises here, after libfranka's 1 s timeout
            return self._arm_failed(ep, f"arm state unreadable: {type(exc).__name__}: {exc}", recoverable=False)
        ep.latency.add("state_read", _ms(self._clock() - t))
        error = self.arm.poll_error()
        if error is not None or state.is_faulted:
            return self._arm_fault(ep, error, state)
        if state.robot_time_ms <= previous.robot_time_ms and state.capture_ns - previous.capture_ns > _STATE_STALE_NS:
            return self._stale_state(ep, state)
        if ep.reseed:
            ep.T_cmd, ep.reseed = state.T_base_ee.copy(), False
        unsafe = self.envelope.check_state(state.wrench_ext, state.joint_positions, state.ee_twist)
        if unsafe is not None:
            return self._abort(ep, unsafe.rule)

        t = self._clock()
        ep.frames = frames = self._read_cameras(ep)
        now = self._clock()
        ep.latency.add("image_read", _ms(now - t))
        if frames is not None:
            ep.last_frames_ns = now
        elif now - ep.last_frames_ns > self.safety.camera_timeout_s * 1e9:
            return self._abort(ep, "camera_stale")

        self._collect(ep, slot, 0.0)
        if (ep.outcome is None and frames is not None and ep.pending is None
                and (ep.holding is not None or ep.timeline.needs_request(slot, now))):
            self._request(ep, frames)
        if ep.pending is not None:
            wait_until = min(tick_ns + self.config.reply_wait * self._dt_ns, ep.wait_deadline_ns)
            self._collect(ep, slot, (wait_until - self._clock()) / 1e9)
        now = self._clock()
        if ep.outcome is None and (ep.pending is not None or self._worker.busy) and now > ep.wait_deadline_ns:
            self._no_reply(ep, now)
        if ep.outcome is None and ep.holding is None and now - ep.last_action_ns > self._deadline_ns:
            self._hold(ep, "policy_silence")
        if ep.outcome is None and ep.holding is None:
            self._execute(ep, slot)
        if ep.outcome is None:
            self._check_end(ep)
        if self._steps is not None and not (ep.outcome or "").startswith("aborted:"):
            self._record_tick(ep, tick_ns, T_before, open_before)
        self._publish(ep)

    def _record_tick(self, ep: _Episode, tick_ns: int, T_before: np.ndarray, open_before: bool) -> None:
        """Hand the recorder this tick: the action is the delta between the targets commanded before and after
        it (zero if nothing moved), so the recorded actions replay to the recorded targets."""
        assert self._steps is not None
        action = np.array([*delta_between(T_before, ep.T_cmd), 1.0 if ep.gripper_open else 0.0])
        state = state_vector(ep.state.T_base_ee, open_before)
        self._steps.record(TickRecord(ep.ticks, tick_ns, state, ep.state, self.gripper.state, ep.frames, action,
                                      ep.T_cmd.copy()))

    def _read_cameras(self, ep: _Episode) -> dict[str, Frame] | None:
        """The newest frame of every camera, or None (counted) if any is missing or older than allowed."""
        frames = {}
        for name, camera in self.cameras.items():
            frame = camera.read_latest()
            age_ns = None if frame is None else self._clock() - frame.capture_ns
            if age_ns is not None:
                ep.latency.add(f"frame_age_{name}", _ms(age_ns))
            if frame is None or age_ns > self.safety.max_frame_age_s * 1e9:
                self.interventions.record("frame_stale", f"camera {name}: " + (
                    "no frame yet" if age_ns is None else f"newest frame {_ms(age_ns):.0f} ms old"))
                return None
            frames[name] = frame
        skew_limit = self.safety.max_camera_skew_s
        if skew_limit is not None and len(frames) > 1:
            stamps = [f.capture_ns for f in frames.values()]
            skew_ns = max(stamps) - min(stamps)
            if skew_ns > skew_limit * 1e9:
                self.interventions.record("camera_skew", f"frames {_ms(skew_ns):.0f} ms apart "
                                                         f"(limit {skew_limit * 1e3:.0f} ms)")
                return None
        return frames

    def _request(self, ep: _Episode, frames: dict[str, Frame]) -> None:
        state = ep.state
        obs = Observation(state=state_vector(state.T_base_ee, ep.gripper_open),
                          images={name: f.color for name, f in frames.items()},
                          capture_ns={"state": state.capture_ns, **{name: f.capture_ns for name, f in frames.items()}},
                          T_measured=state.T_base_ee,
                          T_commanded=ep.T_cmd.copy())
        job = self._worker.try_submit(lambda policy: policy.infer(obs))
        if job is None:
            return  # an abandoned request is still running; its deadline keeps counting (see _no_reply)
        now = self._clock()
        ep.pending, ep.pending_obs, ep.wait_deadline_ns = job, obs, now + self._deadline_ns
        ep.latency.add("obs_age_at_send", _ms(now - obs.oldest_ns))

    def _collect(self, ep: _Episode, slot: int, timeout_s: float) -> None:
        done = self._await_reply(ep, timeout_s)
        if done is None or ep.outcome is not None:
            return
        if done.job != ep.pending:  # an abandoned request: its deadline already counted as a miss
            if isinstance(done.value, PolicyChunk):
                self.interventions.record("late_reply", "a reply after its deadline was discarded")
            return
        obs, ep.pending, ep.pending_obs = ep.pending_obs, None, None
        assert obs is not None
        self._on_reply(ep, done, obs, slot)

    def _on_reply(self, ep: _Episode, done: Done, obs: Observation, slot: int) -> None:
        ep.latency.add("infer", _ms(done.finished_ns - done.started_ns))
        reply = done.value
        if isinstance(reply, PolicyFailure):
            self._last_error = f"{reply.kind}: {reply.message}"
            if reply.kind in _FATAL_FAILURES:
                self.interventions.record(_FATAL_FAILURES[reply.kind], reply.message, severe=True)
                return self._abort(ep, _FATAL_FAILURES[reply.kind])
            self.interventions.record(_MISS_REASONS[reply.kind], reply.message, severe=True)
            return self._miss(ep, _MISS_REASONS[reply.kind], reply.message)
        if reply.done:
            ep.outcome = "done"
            return None
        for stage, ms in reply.timing_ms.items():
            ep.latency.add(f"server_{stage}", ms)
        actions = self.envelope.check_chunk(reply.actions)
        if isinstance(actions, Rejection):
            return self._miss(ep, "invalid_action", actions.detail)
        rejection = self.envelope.check_path(predicted_positions(ep.T_cmd, actions))
        if rejection is not None:
            return self._miss(ep, "invalid_action", rejection.detail)
        if ep.timeline.add(actions, obs.t_ns, obs.oldest_ns, slot) == 0:
            self.interventions.record("policy_late", "every action of the reply was past due", severe=True)
            return self._miss(ep, "policy_late", "every action of the reply was past due")
        ep.misses = 0
        if ep.holding is not None:
            now = self._clock()
            ep.note(now, f"resume after hold ({ep.holding})")
            ep.holding, ep.last_action_ns = None, now
            self._run_state = RobotState.RUN
        return None

    def _no_reply(self, ep: _Episode, now: int) -> None:
        """The deadline passed with no reply: a miss. The request is abandoned (its late reply is discarded);
        while the worker stays busy each further horizon is another miss, so a hung server aborts in K horizons."""
        detail = f"no reply within {_ms(self._deadline_ns):.0f} ms"
        self._last_error = f"timeout: {detail}"
        ep.pending, ep.pending_obs, ep.wait_deadline_ns = None, None, now + self._deadline_ns
        self.interventions.record("policy_timeout", detail, severe=True)
        self._miss(ep, "policy_timeout", detail)

    def _execute(self, ep: _Episode, slot: int) -> None:
        step = ep.timeline.take(slot, self._clock())
        if step is None:
            return
        target = self.envelope.filter_target(ep.T_cmd, compose(ep.T_cmd, step.action), ep.state.T_base_ee,
                                             ep.state.joint_positions)
        if isinstance(target, Rejection):
            return self._miss(ep, target.rule, target.detail)
        with self._lock:
            if self._stop_reason is not None:
                return None
            self.arm.move_to(target)  # a refusal is queued in the arm and surfaces in next tick's poll_error
        now = self._clock()
        ep.T_cmd, ep.last_action_ns = target, now
        ep.steps += 1
        if step.t_obs_ns != ep.last_obs_acted_ns:  # the first action taken from this observation
            ep.last_obs_acted_ns = step.t_obs_ns
            ep.latency.add("obs_to_action", _ms(now - step.t_obs_ns))
        want_open = self.envelope.gripper_open(float(step.action[6]), ep.gripper_open)
        if want_open != ep.gripper_open:
            (self.gripper.open if want_open else self.gripper.close)()
            ep.gripper_open = want_open
        return None

    def _check_end(self, ep: _Episode) -> None:
        now = self._clock()
        if now - ep.t_start_ns > self.config.max_episode_s * 1e9:
            ep.outcome = "time_limit"
        elif now >= ep.next_success_ns:
            ep.next_success_ns = now + round(self.config.success_check_period_s * 1e9)
            if self.scene.check_success():
                ep.outcome = "success"

    # ------------------------------------------------------------------ holds and aborts

    def _miss(self, ep: _Episode, reason: str, detail: str) -> None:
        ep.misses += 1
        ep.note(self._clock(), f"miss {ep.misses}/{self.safety.max_consecutive_misses}: {reason}: {detail}")
        if ep.misses >= self.safety.max_consecutive_misses:
            self._abort(ep, reason)
        else:
            self._hold(ep, reason)

    def _hold(self, ep: _Episode, reason: str) -> None:
        """No new motion: stop issued, the plan forgotten, the gripper left as it is. The stop motion settles where
        it was issued, so that (the measured pose now) is where later deltas compose from."""
        if ep.holding is not None:
            return
        ep.holding = reason
        ep.timeline.clear()
        with self._lock:
            self.arm.stop()
        ep.T_cmd = ep.state.T_base_ee.copy()
        self.interventions.record("hold", reason, severe=True)
        ep.note(self._clock(), f"hold: {reason}")
        self._run_state = RobotState.HOLD

    def _abort(self, ep: _Episode, reason: str) -> None:
        """SAFE-HOLD: stop, gripper latched, the episode ends as aborted:<reason>."""
        ep.timeline.clear()
        with self._lock:
            self.arm.stop()
        self.gripper.latch_fault(f"episode aborted: {reason}")
        ep.outcome = f"aborted:{reason}"
        ep.note(self._clock(), f"SAFE-HOLD: {reason}")
        log.warning("episode %d aborted: %s", ep.index, reason)
        if self._stop_reason is not None:
            self._run_state = RobotState.STOP
        elif self._fault is not None:
            self._run_state = RobotState.FAULT
        else:
            self._run_state = RobotState.HOLD

    def _arm_fault(self, ep: _Episode, error: ArmError | None, state: ArmState) -> None:
        """R1/R2/R5: a Franka error (or a Reflex/UserStopped mode) is SAFE-HOLD. It is recovered automatically,
        between episodes, only if every libfranka error flag it names is on the allow-list, matched exactly: an
        error that names no flag (a user stop, a lost link) or any flag not listed (a reflex) needs the operator."""
        names = error_flags(error, state)
        allowed = bool(names) and names <= set(self.safety.auto_recover_errors)
        self._arm_failed(ep, self._describe(error, state), recoverable=allowed)

    def _arm_failed(self, ep: _Episode, description: str, recoverable: bool) -> None:
        self._last_error = description
        self.interventions.record("arm_error", description, severe=True)
        if recoverable and self._recoveries < self.safety.max_auto_recoveries:
            self._recover = description
        else:
            self._fault = description
        self._abort(ep, "arm_error")

    def _stale_state(self, ep: _Episode, state: ArmState) -> None:
        """O5: the robot's own clock (1 kHz) did not advance since the last read, more than 5 ms ago: a stale copy
        (franky serves its last buffered state while a dying link times out; a starved simulator stops too). Nothing
        is decided on it: HOLD (stop issued, plan forgotten) and the rest of the tick is skipped; a fresh state and
        the next valid chunk resume. A link that stays dead raises libfranka's NetworkException within 1 s, which
        ends the episode (R4)."""
        detail = f"robot state not updated since the last tick (robot time {state.robot_time_ms} ms)"
        self.interventions.record("state_stale", detail, severe=True)
        self._hold(ep, "state_stale")
        ep.reseed = True  # the hold took the stale pose as the commanded one: the next fresh one replaces it

    @staticmethod
    def _describe(error: ArmError | None, state: ArmState | None) -> str:
        if error is not None:
            return f"{error.kind} during {error.during}: {error.message}"
        assert state is not None
        return f"robot mode {state.robot_mode}, errors {list(state.errors)}"

    # ------------------------------------------------------------------ status

    def _publish(self, ep: _Episode | None, force: bool = False) -> None:
        if self._status is None:
            return
        now = self._clock()
        if ep is not None:
            if not force and now < ep.next_status_ns:
                return
            ep.next_status_ns = now + round(self.config.status_period_s * 1e9)
        latency = ep.latency.summary() if ep is not None else {}
        status = RobotStatus(
            state=self._run_state, task=self.task, episode=self._episode_index, episodes=self._episodes_planned,
            latency_ms={s: Latency(p50_ms=latency[s]["p50"], p95_ms=latency[s]["p95"])
                        for s in _STATUS_STAGES if s in latency},
            interventions=dict(self.interventions.counts), last_error=self._last_error,
            estop=self._watchdog.state.describe() if self._watchdog.state is not None else self._estop_text)
        try:
            self._status.publish(status)
        except Exception:  # noqa: BLE001 - the console is a viewer; its failure must not stop the loop
            log.exception("status publish failed")
