"""What the runner needs from its devices, as protocols: `robot.arm.Arm`/`Gripper` and `robot.cameras.Camera`
satisfy them, and so do the e-stop listener and status publisher. Tests substitute a fake arm only for what
franky-sim cannot produce (reflex errors)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from robot.arm import ArmError, ArmState, GripperState
from robot.cameras import Frame
from robot.estop.listener import EStopState
from robot.estop.wire import RobotStatus


class ArmLike(Protocol):
    def read_state(self) -> ArmState: ...

    def move_to(self, T_base_target: np.ndarray, asynchronous: bool = True, dynamics_factor: float = 1.0) -> bool: ...

    def move_joints(self, q: Sequence[float], asynchronous: bool = True, dynamics_factor: float = 1.0) -> bool: ...

    def stop(self) -> bool: ...

    def wait(self, timeout_s: float) -> bool: ...

    def poll_error(self) -> ArmError | None: ...

    def recover(self) -> bool: ...

    def latch_stop(self, reason: str) -> None:
        """The e-stop interlock: refuse every motion (and recovery) until `clear_stop`."""
        ...

    def clear_stop(self) -> None:
        """The operator's new start: motions are accepted again."""
        ...


class GripperLike(Protocol):
    def open(self) -> bool: ...

    def close(self) -> bool: ...

    @property
    def state(self) -> GripperState: ...

    def latch_fault(self, reason: str) -> None: ...

    def clear_fault(self) -> None: ...

    def stop(self, reason: str) -> bool:
        """Latch `reason` and halt the fingers mid-command (the e-stop, E4)."""
        ...


class CameraLike(Protocol):
    def read_latest(self) -> Frame | None: ...


class StopSignal(Protocol):
    """The e-stop listener (`robot.estop.EStopListener`): `begin_motion` once at the operator's start of a run
    (ARMED -> RUN, on the caller's thread), then the run's e-stop watchdog owns it and `check`s it at 100 Hz (motion
    only while `may_move`).

    Optionally also `wait(timeout_s) -> EStopState` (block until a message arrives, then check): when present the
    watchdog sleeps on it and applies a STOP the moment it arrives (≤ 10 ms)."""

    def check(self, now_ns: int | None = None) -> EStopState: ...

    def begin_motion(self, now_ns: int | None = None) -> EStopState: ...


class StatusSink(Protocol):
    """Receives the runner's status for the e-stop console (a few times a second and on every state change)."""

    def publish(self, status: RobotStatus) -> None: ...
