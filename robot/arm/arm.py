"""`Arm`: the Franka (Panda/FR3) over franky, identical against franky-sim and a real robot.

Why it looks the way it does (docs/safety.md, the arm and franky):
- Motions are sent with `move(..., asynchronous=True)`: the call returns in ~0.1 ms and a new motion takes over
  the running one (franky re-plans with Ruckig), so a control loop can stream targets without ever blocking.
- An asynchronous motion's exception is stored by franky and re-raised on the *next* `move()`,
  `join_motion()` or `poll_motion()`. This class catches every one of them and queues it as an `ArmError`
  for `poll_error()`, which the loop calls each tick — no franky exception escapes `move_to`, `move_joints`,
  `stop`, `wait`, `is_moving`, `poll_error` or `recover`. `connect` and `read_state` do raise (a lost link:
  libfranka's 1 s UDP timeout); the runner turns a failed read into SAFE-HOLD (docs/safety.md S1, R4).
- The robot-level relative dynamics factor is the ceiling for every motion (franky multiplies the robot,
  motion and move factors), so the bring-up default of 0.1 cannot be exceeded by a per-motion factor.
- `recover()` checks `robot_mode` as well as `current_errors`, because a Reflex can stay latched after the
  errors clear (franka_ros #32).
- The e-stop interlock lives here, so no caller can forget it: once `latch_stop()` is called (the e-stop watchdog
  does, from its own thread), `move_to`, `move_joints` and `recover` refuse (False, and a `StopLatched` error queued)
  until `clear_stop()`, the operator's new start. The latch is checked under the same lock that sends a motion, so a
  motion is either sent before the latch (and the stop that follows it pre-empts it) or refused. A blocking move is
  an asynchronous one followed here in short waits, so a stop from another thread ends it and it returns False.

Not validated here: workspace, speed and step limits — those belong to the safety envelope, which runs before
any target reaches this class. This class only refuses targets that are not rigid transforms (NaN passes
franky's position waypoints unchecked).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import franky
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from scipy.spatial.transform import Rotation

from robot.connection import Connectable

_FAULT_MODES = frozenset({"Reflex", "UserStopped", "AutomaticErrorRecovery"})
_FOLLOW_S = 0.01  # a blocking move checks for a stop this often
_ERROR_FLAGS = tuple(n for n in dir(franky.Errors) if isinstance(getattr(franky.Errors, n), property))
_T = TypeVar("_T")
# franky cannot switch control mode mid-motion, so a stop must use the running motion's signal type.
_STOP_MOTIONS: dict[franky.ControlSignalType, Callable[[], object]] = {
    franky.ControlSignalType.CartesianPose: franky.CartesianStopMotion,
    franky.ControlSignalType.JointPositions: franky.JointStopMotion,
    franky.ControlSignalType.CartesianVelocities: franky.CartesianVelocityStopMotion,
    franky.ControlSignalType.JointVelocities: franky.JointVelocityStopMotion,
    franky.ControlSignalType.Torques: franky.TorqueStopMotion,
}


class _Failed:
    """Marks a franky call that raised (franky's `move` returns None, so None cannot mean failure)."""


_FAILED = _Failed()


class ArmConfig(BaseModel):
    """How to reach and configure the arm. `realtime="ignore"` is for franky-sim (no RT kernel needed)."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(description="FCI hostname/IP of the robot, or the address franky-sim printed.")
    relative_dynamics_factor: float = Field(
        0.1, gt=0.0, le=1.0, description="Robot-level ceiling on velocity/acceleration/jerk (0.1 for bring-up)."
    )
    torque_thresholds_nm: float | list[float] = Field(
        20.0, description="Collision (reflex) thresholds per joint; a scalar applies to all 7 (franky's default)."
    )
    force_thresholds_n: float | list[float] = Field(
        30.0, description="Cartesian collision thresholds [x, y, z, rx, ry, rz]; a scalar applies to all 6."
    )
    realtime: Literal["enforce", "ignore"] = Field(
        "enforce", description="libfranka RealtimeConfig: 'enforce' on a real robot (PREEMPT_RT), 'ignore' in sim."
    )

    @field_validator("torque_thresholds_nm", "force_thresholds_n")
    @classmethod
    def _positive_and_sized(cls, v: float | list[float], info: ValidationInfo) -> float | list[float]:
        values = [v] if isinstance(v, float) else v
        size = 7 if info.field_name == "torque_thresholds_nm" else 6
        if not isinstance(v, float) and len(values) != size:
            raise ValueError(f"expected a scalar or {size} values, got {len(values)}")
        if any(x <= 0 for x in values):
            raise ValueError("thresholds must be positive")
        return v


@dataclass(frozen=True)
class ArmState:
    """One proprioceptive snapshot, all fields from the same franky `RobotState` read.

    Frames and units per docs/conventions.md: `ee` in `base`, metres, radians, quaternion (x, y, z, w),
    Euler extrinsic xyz. `ee_twist` is measured (J(q)·dq), [vx, vy, vz, wx, wy, wz] in `base`.
    `wrench_ext` is libfranka's O_F_ext_hat_K (estimated external wrench on the EE, base frame, N / Nm).
    `capture_ns` is `time.monotonic_ns()` right after the read; `robot_time_ms` is the robot's own clock,
    which stops advancing if the link dies.
    """

    T_base_ee: np.ndarray
    position: np.ndarray
    quat_xyzw: np.ndarray
    euler_xyz: np.ndarray
    joint_positions: np.ndarray
    joint_velocities: np.ndarray
    ee_twist: np.ndarray
    wrench_ext: np.ndarray
    robot_mode: str
    errors: tuple[str, ...]
    robot_time_ms: int
    capture_ns: int

    @property
    def is_faulted(self) -> bool:
        """The robot refuses motion: libfranka error flags set, or a latched Reflex/UserStopped mode."""
        return bool(self.errors) or self.robot_mode in _FAULT_MODES


@dataclass(frozen=True)
class ArmError:
    """A franky/libfranka failure, reported by `poll_error()` instead of raised.

    kind: the exception class (e.g. 'ControlException'; a Ruckig planning failure arrives as 'RuntimeError');
    during: which call met it ('motion' for an asynchronous motion, else the method name).
    """

    kind: str
    message: str
    during: str
    capture_ns: int


def _error_names(errors: franky.Errors) -> tuple[str, ...]:
    """Names of the libfranka error flags that are set (franky's `Errors` is truthy even when empty)."""
    if not any(errors.__getstate__()):
        return ()
    return tuple(n for n in _ERROR_FLAGS if getattr(errors, n))


def pose_from_matrix(T: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(position, quat_xyzw, euler_xyz) of a 4x4 rigid transform."""
    rot = Rotation.from_matrix(T[:3, :3])
    return T[:3, 3].copy(), rot.as_quat(), rot.as_euler("xyz")


def check_rigid_transform(T: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """Return `T` as float64 (4, 4) or raise ValueError if it is not a finite rigid transform."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4):
        raise ValueError(f"expected a 4x4 transform, got shape {T.shape}")
    if not np.all(np.isfinite(T)):
        raise ValueError("transform contains NaN or Inf")
    R = T[:3, :3]
    if not np.allclose(T[3], [0.0, 0.0, 0.0, 1.0]) or not np.allclose(R.T @ R, np.eye(3), atol=tol):
        raise ValueError("transform is not rigid (rotation not orthonormal or bad last row)")
    if np.linalg.det(R) <= 0:
        raise ValueError("rotation has a negative determinant (a reflection)")
    return T


class Arm(Connectable):
    """A Franka arm: read state, stream Cartesian targets asynchronously, stop, surface errors, recover.

    Methods are safe to call from the control loop and one other thread (the e-stop watchdog calling
    `latch_stop()` and `stop()`): franky serialises access to the robot and the error queue is a deque.
    """

    def __init__(self, config: ArmConfig) -> None:
        self.config = config
        self._robot: franky.Robot | None = None
        self._errors: collections.deque[ArmError] = collections.deque()
        self._motion_lock = threading.Lock()  # orders the stop latch against every motion sent
        self._latched: str | None = None
        self._stops = 0  # stops issued: a blocking move that saw one return False
        self._stopping = False  # the running motion is a stop motion we sent

    # -- lifecycle -------------------------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self._robot is not None

    @property
    def robot(self) -> franky.Robot:
        """The underlying franky robot, for what this class does not wrap (limits, load, guiding)."""
        if self._robot is None:
            raise RuntimeError("arm is not connected")
        return self._robot

    def connect(self) -> None:
        """Connect (raises franky.NetworkException etc. if the robot is unreachable) and set collision limits."""
        cfg = self.config
        realtime = franky.RealtimeConfig.Enforce if cfg.realtime == "enforce" else franky.RealtimeConfig.Ignore
        robot = franky.Robot(cfg.host, relative_dynamics_factor=cfg.relative_dynamics_factor, realtime_config=realtime)
        robot.set_collision_behavior(cfg.torque_thresholds_nm, cfg.force_thresholds_n)
        self._robot = robot

    def disconnect(self) -> None:
        """Stop any motion and drop the connection once it has ended (bounded wait); safe to call twice."""
        if self._robot is None:
            return
        self.stop()
        if self.wait(2.0):
            # franky's destructor joins a running motion while holding the GIL (a deadlock against an in-process
            # franky-sim), so the connection is only released once the motion has ended.
            self._robot = None

    # -- state -----------------------------------------------------------------------------------------------

    def read_state(self) -> ArmState:
        """One consistent snapshot (~1 ms when idle, µs while a motion runs: franky buffers the 1 kHz state)."""
        robot = self.robot
        s = robot.state
        capture_ns = time.monotonic_ns()
        T = np.array(s.O_T_EE.matrix, dtype=np.float64)
        position, quat, euler = pose_from_matrix(T)
        dq = np.array(s.dq, dtype=np.float64)
        twist = robot.model.zero_jacobian(franky.Frame.EndEffector, s) @ dq
        return ArmState(
            T_base_ee=T,
            position=position,
            quat_xyzw=quat,
            euler_xyz=euler,
            joint_positions=np.array(s.q, dtype=np.float64),
            joint_velocities=dq,
            ee_twist=np.asarray(twist, dtype=np.float64),
            wrench_ext=np.array(s.O_F_ext_hat_K, dtype=np.float64),
            robot_mode=s.robot_mode.name,
            errors=_error_names(s.current_errors),
            robot_time_ms=int(s.time.to_msec()),
            capture_ns=capture_ns,
        )

    # -- motion ----------------------------------------------------------------------------------------------

    def move_to(self, T_base_target: np.ndarray, asynchronous: bool = True, dynamics_factor: float = 1.0) -> bool:
        """Send the EE to `T_base_target` (4x4, base frame); a running motion is pre-empted and re-planned.

        `dynamics_factor` scales this motion below the robot-level ceiling. Returns False if franky refused or a
        stop is latched (the reason is queued for `poll_error`), or, when blocking, if a stop ended the motion.
        Raises ValueError for a non-rigid or non-finite transform.
        """
        target = franky.Affine(check_rigid_transform(T_base_target))
        return self._move("move_to", franky.CartesianMotion(target, franky.ReferenceType.Absolute, dynamics_factor),
                          asynchronous)

    def move_joints(self, q: Sequence[float], asynchronous: bool = True, dynamics_factor: float = 1.0) -> bool:
        """Joint-space move, e.g. to the home configuration. Needs the arm at rest if it was in Cartesian mode
        (franky cannot switch control mode mid-motion); refusals and interruptions as for `move_to`."""
        q_arr = np.asarray(q, dtype=np.float64)
        if q_arr.shape != (7,) or not np.all(np.isfinite(q_arr)):
            raise ValueError(f"expected 7 finite joint positions, got {q_arr!r}")
        motion = franky.JointMotion(franky.JointState(q_arr), franky.ReferenceType.Absolute, dynamics_factor)
        return self._move("move_joints", motion, asynchronous)

    def stop(self) -> bool:
        """Decelerate to rest with franky's stop motion for the active control mode (returns at once).

        franky's CartesianStopMotion targets the pose at the moment of the call: the arm brakes within the
        dynamics ceiling, overshoots a little and settles back there. Returns False if franky refused. Never waits
        for another thread (it takes no lock), so the e-stop path cannot be held up by a caller mid-command.
        """
        self._stops += 1
        return self._guard("stop", self._send_stop) is not _FAILED

    # -- the e-stop interlock ----------------------------------------------------------------------------------

    def latch_stop(self, reason: str) -> None:
        """Refuse every motion (and `recover`) from now on, until `clear_stop()`; the first reason is kept. Does not
        brake by itself: the e-stop path calls `stop()` right after (see `robot.estop.watchdog.halt`)."""
        with self._motion_lock:
            self._latched = self._latched or reason

    def clear_stop(self) -> None:
        """The operator's new start (a run the e-stop allows): motions are accepted again."""
        with self._motion_lock:
            self._latched = None

    @property
    def stop_latched(self) -> str | None:
        """Why motion is refused, or None."""
        return self._latched

    def wait(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the current motion to end; True if it ended (errors go to `poll_error`)."""
        return self._guard("motion", lambda: self.robot.join_motion(timeout_s)) is not False

    def is_moving(self) -> bool:
        """Whether a motion is still running (non-blocking; a finished motion's error is queued)."""
        # franky's poll_motion returns join_motion(0): True when the motion has *finished*, whatever its docstring says.
        return self._guard("motion", self.robot.poll_motion) is False

    def poll_error(self) -> ArmError | None:
        """Call every tick: the oldest unreported error, or None. Never raises for franky/libfranka failures."""
        if self._robot is not None:
            self._guard("motion", self._robot.poll_motion)
        return self._errors.popleft() if self._errors else None

    def recover(self) -> bool:
        """libfranka automatic error recovery, then check the robot is really usable (not latched in Reflex).

        Blocking — seconds on a real robot (franka_ros #317) — so never call it inside a deadline-critical path.
        """
        if self._refused("recover"):
            return False
        if self._guard("recover", self.robot.recover_from_errors) is not True:
            return False
        state = self._guard("recover", self.read_state)
        return isinstance(state, ArmState) and not state.is_faulted

    # -- internals -------------------------------------------------------------------------------------------

    def _move(self, during: str, motion: franky.Motion, asynchronous: bool) -> bool:
        """Send `motion` unless a stop is latched (checked under the lock `latch_stop` takes); a blocking move is
        sent asynchronously and followed in `_FOLLOW_S` waits, so another thread's stop ends it (then False)."""
        with self._motion_lock:
            if self._refused(during):
                return False
            stops = self._stops
            if self._guard(during, lambda: self.robot.move(motion, asynchronous=True)) is _FAILED:
                return False
            self._stopping = False
        if asynchronous:
            return True
        while (ended := self._guard("motion", lambda: self.robot.join_motion(_FOLLOW_S))) is False:
            pass
        return ended is True and self._stops == stops and self._latched is None

    def _refused(self, during: str) -> bool:
        """True (and a StopLatched error queued) while a stop is latched."""
        if self._latched is None:
            return False
        self._errors.append(ArmError("StopLatched", f"refused: a stop is latched ({self._latched}); the operator "
                                     "must start again", during, time.monotonic_ns()))
        return True

    def _send_stop(self) -> None:
        """The stop motion for the running motion's signal type; nothing when no motion runs, or when the running
        motion is already our stop (a second stop motion would brake towards the pose at its own call, further
        along, and lengthen the stop). Reading the signal type talks to franky too, so it runs inside `_guard` with
        the stop itself (S1)."""
        robot = self.robot
        signal = robot.current_control_signal_type
        if signal is None:
            self._stopping = False
        elif not self._stopping:
            robot.move(_STOP_MOTIONS[signal](), asynchronous=True)
            self._stopping = True


    def _guard(self, during: str, call: Callable[[], _T]) -> _T | _Failed:
        """Run a franky call; on any exception queue an `ArmError` and return `_FAILED`.

        Broad on purpose: franky raises its own exception types, but a Ruckig planning failure surfaces as a
        plain RuntimeError, and any of them escaping would kill the control loop.
        """
        try:
            return call()
        except Exception as e:  # noqa: BLE001 - see docstring
            self._errors.append(ArmError(type(e).__name__, str(e), during, time.monotonic_ns()))
            return _FAILED
