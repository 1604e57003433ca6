"""Hand-guiding: the operator moves the arm by hand (the FR3's guiding buttons) while a passive loop samples it.

Nothing commands the arm here, so the `Runner` (which exists to command it) is not used; this loop only reads.
Each tick it reads the proprioception, then the cameras, like the runner. The action of tick t is only known
at tick t+1: it is the delta from the measured pose at t to the measured pose at t+1, i.e. what a policy would
have had to command at t to follow the operator (docs/conventions.md), so tick t reaches the recorder one tick late
and an episode's last tick has no row. The gripper follows the operator's keys (space toggles, enter ends).

The safety envelope cannot stop a person, but it judges the demonstration: every guided step goes through
`SafetyEnvelope.filter_target` as if it were commanded, and each rule it trips (too fast a step, outside the
workspace, ...) is counted in the episode's interventions, so a demo that could not be replayed within the
limits is visible before it is kept.

The e-stop: for the whole run (the scene's move home included, which on a real rig is a commanded joint move) an
e-stop watchdog (`robot.estop.watchdog`) owns the listener on its own thread; a STOP or a silent console latches the
arm's interlock, stops the arm and the gripper at once, and ends the episode as aborted:estop at its next tick.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol

import numpy as np

from robot.arm import ArmState
from robot.cameras import Frame
from robot.estop.listener import start_motion
from robot.estop.watchdog import Watchdog, halt
from robot.execution import delta_between, state_vector
from robot.runner import CameraLike, EpisodeRecord, GripperLike, Scene, StepSink, StopSignal, TickRecord
from robot.safety import SafetyConfig, SafetyEnvelope
from teleop.devices.command import CommandSource


class EStopRefused(RuntimeError):
    """The e-stop did not allow the run to start."""


class ArmReader(Protocol):
    """What guiding needs of the arm: reading it (the `Arm` driver, or a fake in tests)."""

    def read_state(self) -> ArmState: ...


class GuidedRecording:
    """Episodes of a hand-guided arm into `sink` (the `Recorder`)."""

    def __init__(self, arm: ArmReader, gripper: GripperLike, cameras: Mapping[str, CameraLike],
                 source: CommandSource, sink: StepSink, safety: SafetyConfig, rate_hz: float = 15.0,
                 estop: StopSignal | None = None, judge: Callable[[], bool] | None = None,
                 clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.arm, self.gripper, self.cameras, self.source, self.sink = arm, gripper, dict(cameras), source, sink
        self.envelope = SafetyEnvelope(safety, 1.0 / rate_hz, 1)
        self._dt_ns, self._estop, self._judge, self._clock = round(1e9 / rate_hz), estop, judge, clock
        self._stop = threading.Event()
        self._stop_code = ""

    @property
    def stop_reason(self) -> str | None:
        return self._stop_code if self._stop.is_set() else None

    def request_stop(self, reason: str, code: str = "interrupted") -> None:
        """From a signal handler or another thread (the recorder on a write failure): the episode ends at its next
        tick as aborted:<code>, and no further episode starts."""
        self._stop_code = self._stop_code or code
        self._stop.set()

    def run(self, episodes: int, scene: Scene, max_s: float, estop_wait_s: float = 10.0) -> list[EpisodeRecord]:
        """Episodes 1..episodes, each from the scene's reset (home), until one is interrupted. With an e-stop, the
        run starts only once its console allows motion (the reset moves the arm home), and the e-stop watchdog
        supervises it from then on."""
        if self._estop is not None and not (state := start_motion(self._estop, estop_wait_s, self._clock)).may_move:
            raise EStopRefused(f"e-stop {state.describe()}: start the dv-estop console and release any stop")
        records: list[EpisodeRecord] = []
        watchdog = contextlib.nullcontext() if self._estop is None else Watchdog(self._trip, self._estop)
        with watchdog:
            for index in range(1, episodes + 1):
                if self._stop.is_set() or (records and records[-1].outcome.startswith("aborted:")):
                    break  # interrupted, or a latched e-stop: an operator decides what happens next
                try:
                    instruction = scene.reset(index)
                except Exception:
                    if self._stop.is_set():
                        break  # the stop ended the move home: no episode starts
                    raise
                records.append(self.run_episode(index, instruction, max_s))
        return records

    def _trip(self, reason: str, code: str) -> None:
        """The e-stop watchdog's trip: the arm (when it can be commanded) and the gripper are halted from the
        watchdog's thread, and the episode ends at its next tick."""
        halt(self.arm, self.gripper, reason)
        self.request_stop(reason, code)

    def run_episode(self, index: int, instruction: str, max_s: float) -> EpisodeRecord:
        start = self._clock()
        self.source.start()
        self.gripper.open()
        gripper_open, outcome = True, ""
        self.sink.begin(index, instruction)
        held: TickRecord | None = None  # the last tick, awaiting its action
        ticks, next_tick = 0, start
        while not outcome:
            time.sleep(max(0.0, (next_tick - self._clock()) / 1e9))
            tick_ns = self._clock()
            next_tick += self._dt_ns * max(1, (tick_ns - next_tick) // self._dt_ns + 1)
            if self._stop.is_set():  # interrupted, or the e-stop watchdog tripped (aborted:estop, as the runner)
                outcome = f"aborted:{self._stop_code}"
                break
            arm = self.arm.read_state()
            frames = self._frames()
            if held is not None:
                self._emit(held, arm.T_base_ee, gripper_open)
            command = self.source.command()
            if command.gripper_open != gripper_open:
                (self.gripper.open if command.gripper_open else self.gripper.close)()
            held = TickRecord(ticks, tick_ns, state_vector(arm.T_base_ee, gripper_open), arm, self.gripper.state,
                              frames, np.zeros(7), arm.T_base_ee)
            gripper_open = command.gripper_open
            ticks += 1
            if command.end_episode:
                outcome = "done"
            elif tick_ns - start > max_s * 1e9:
                outcome = "time_limit"
        success = outcome == "done" and self._judge is not None and bool(self._judge())
        if outcome == "done" and self._judge is not None:
            outcome = "success" if success else "failure"
        record = EpisodeRecord(index, "guiding", instruction, outcome, success, max(0, ticks - 1), ticks,
                               (self._clock() - start) / 1e9, self.envelope.interventions.take(), {})
        self.sink.end(record)
        return record

    def _frames(self) -> dict[str, Frame] | None:
        frames = {name: camera.read_latest() for name, camera in self.cameras.items()}
        return None if any(f is None for f in frames.values()) else frames

    def _emit(self, held: TickRecord, T_next: np.ndarray, gripper_open: bool) -> None:
        """Tick t with its action, now that tick t+1's pose is known; the envelope judges the guided step."""
        T = held.arm.T_base_ee
        # counts the rules (speed, workspace, joint limits, singularity) a commanded step like this would trip
        self.envelope.filter_target(T, T_next, T, held.arm.joint_positions)
        action = np.array([*delta_between(T, T_next), 1.0 if gripper_open else 0.0])
        self.sink.record(dataclasses.replace(held, action=action, target=T_next.copy()))
