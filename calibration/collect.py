"""Hand-eye data collection, one code path for the real rig and the sim workcell.

`collect` drives an arm (`robot.arm.Arm` on a real FR3 or on franky-sim, or a test double) through a list of
target poses and records one `HandEyeSample` per pose where the board was seen. For each pose, in order:

1. the pose is checked against the launch file's `SafetyConfig` (workspace box, orientation cone); a pose
   outside is refused, counted, and never sent to the arm;
2. the e-stop, if any, must allow motion: for the whole collection an e-stop watchdog (`robot.estop.watchdog`)
   owns the listener on its own thread and, on a STOP or a silent console, latches the arm's interlock and stops
   the arm within milliseconds, mid-move included; the collector checks the latch before every move and every
   50 ms while it waits, and aborts;
3. the move runs at a low relative dynamics factor, never above `safety.relative_dynamics_factor`;
4. the collector waits until the joints stop changing: franky-sim reports the commanded O_T_EE as soon as a
   motion ends while the joints are still converging (15 mm / 3.5 deg off at first); the settled state is the
   one recorded, and a pose that settled far from its target counts as unreachable;
5. any arm error (a reflex, a refused motion) stops the arm and aborts with the error named: no automatic
   recovery during calibration;
6. a frame captured after the arm settled is read from the camera and the ChArUco board detected in it; a frame
   without the board is counted and skipped.

Fewer than `MIN_POSES` usable poses raises `TooFewPosesError` with the counts.

Poses for a real rig come from `poses_around`: small rotations and offsets about the arm's current pose (the
operator puts the board in view and jogs the arm to a start pose looking at it, as DROID does), pivoting about
a point in front of the camera (or the board's position when it is known) so the board stays in view.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from scipy.spatial.transform import Rotation

from calibration.charuco import BoardSpec, board_pose, detect
from calibration.handeye import (
    MIN_POSES,
    BoardNotVisibleError,
    CalibrationError,
    HandEyeSample,
    Mode,
    TooFewPosesError,
)
from robot.estop.watchdog import Watchdog, halt
from robot.geometry import inv_T, make_T, pose_error
from robot.safety import SafetyConfig

CALIBRATION_DYNAMICS = 0.1  # the bring-up ceiling: calibration never needs to be fast
Observe = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]  # (settled T_base_ee, settled_ns) -> corners


class ArmLike(Protocol):
    """What the collector needs of `robot.arm.Arm` (`read_state()` returns an `ArmState`)."""

    def read_state(self) -> Any: ...

    def move_to(self, T_base_target: np.ndarray, asynchronous: bool = True, dynamics_factor: float = 1.0) -> bool: ...

    def wait(self, timeout_s: float) -> bool: ...

    def stop(self) -> bool: ...

    def poll_error(self) -> Any: ...

    def latch_stop(self, reason: str) -> None: ...


class FrameSource(Protocol):
    """A connected `robot.cameras.Camera`: `read()` blocks for a frame not returned before."""

    def read(self, timeout_s: float = ...) -> Any: ...


class StopSignal(Protocol):
    """`robot.estop.EStopListener`: `check()` drains heartbeats and returns an `EStopState` (`may_move`). The
    collector's e-stop watchdog owns it while a collection or a guarded move runs."""

    def check(self, now_ns: int | None = None) -> Any: ...


class CollectionAborted(CalibrationError):
    """The collection stopped before its last pose (arm error, e-stop, timeout): the arm was told to stop."""


@dataclass
class Collection:
    observations: list[HandEyeSample]
    K: np.ndarray
    dist: np.ndarray
    mode: Mode
    planned: int
    refused: list[str] = field(default_factory=list)  # why each pose outside the envelope was not sent
    unreachable: int = 0
    not_visible: int = 0

    @property
    def reached(self) -> int:
        return self.planned - len(self.refused) - self.unreachable

    def summary(self) -> str:
        return (f"{len(self.observations)} usable of {self.planned} poses ({len(self.refused)} refused by the "
                f"safety envelope, {self.unreachable} unreachable, {self.not_visible} without the board in view)")


# ------------------------------------------------------------------------------------------------ safety


def check_pose(T: np.ndarray, safety: SafetyConfig) -> str | None:
    """Why the TCP pose `T` is outside the envelope's workspace box or orientation cone, or None if inside."""
    p = np.asarray(T, float)[:3, 3]
    lo, hi = np.array(safety.workspace.lo), np.array(safety.workspace.hi)
    if not np.all(np.isfinite(T)):
        return "not a finite pose"
    if np.any(p < lo) or np.any(p > hi):
        return (f"position {np.round(p, 3).tolist()} outside the workspace box lo={list(safety.workspace.lo)} "
                f"hi={list(safety.workspace.hi)}")
    nominal = np.asarray(safety.tool_axis_nominal, float)
    cos = float(T[:3, 2] @ nominal / np.linalg.norm(nominal))
    angle = float(np.arccos(np.clip(cos, -1.0, 1.0)))
    if angle > safety.cone_half_angle_rad:
        return (f"tool axis {np.degrees(angle):.1f} deg from nominal, outside the orientation cone of "
                f"{np.degrees(safety.cone_half_angle_rad):.1f} deg")
    return None


def motion_factor(arm: ArmLike, dynamics: float, safety: SafetyConfig) -> float:
    """The per-motion factor that keeps the effective one (arm ceiling × motion) at most
    min(`dynamics`, `safety.relative_dynamics_factor`); an arm of unknown ceiling counts as 1."""
    ceiling = float(getattr(getattr(arm, "config", None), "relative_dynamics_factor", 1.0))
    return min(1.0, min(dynamics, safety.relative_dynamics_factor) / ceiling)


# ------------------------------------------------------------------------------------------------ motion


def _describe(error: Any) -> str:
    kind, message = getattr(error, "kind", None), getattr(error, "message", None)
    return f"{kind}: {message}" if kind and message is not None else str(error)


@contextmanager
def supervised(arm: ArmLike, estop: StopSignal | None) -> Iterator[Watchdog | None]:
    """The e-stop watchdog for the motions inside the block: it owns `estop` (checked once before anything moves,
    then at 100 Hz on its thread) and halts the arm on a trip, whatever this thread is doing. None without an
    e-stop."""
    if estop is None:
        yield None
        return
    with Watchdog(lambda reason, code: halt(arm, None, reason), estop) as watchdog:
        yield watchdog


class _Guard:
    """Between every step: an e-stop latch (the watchdog has already stopped the arm) or an arm error aborts."""

    def __init__(self, arm: ArmLike, watchdog: Watchdog | None) -> None:
        self.arm, self.watchdog, self.where = arm, watchdog, ""

    def abort(self, why: str, stopped: bool = False) -> CollectionAborted:
        if not stopped:
            self.arm.stop()
        return CollectionAborted(f"{self.where}: {why}; the arm was stopped and nothing was calibrated")

    def __call__(self) -> None:
        if self.watchdog is not None and self.watchdog.tripped is not None:
            raise self.abort(f"{self.watchdog.tripped} (motion not allowed)", stopped=True)
        error = self.arm.poll_error()
        if error is not None:
            raise self.abort(f"arm error {_describe(error)} (recover the arm, then re-run)")


def wait_settled(arm: ArmLike, check: Callable[[], None] = lambda: None, tol_rad: float = 2e-5,
                 period_s: float = 0.05, timeout_s: float = 3.0) -> Any:
    """The arm's state once its joints stop changing (two reads `period_s` apart within `tol_rad`), or after
    `timeout_s`. Only `q` is measured on franky-sim, so the wait watches `q`; `check` runs between reads."""
    previous, deadline = arm.read_state().joint_positions, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(period_s)
        check()
        q = arm.read_state().joint_positions
        if np.max(np.abs(np.asarray(q) - np.asarray(previous))) < tol_rad:
            break
        previous = q
    return arm.read_state()


def _move(arm: ArmLike, T: np.ndarray, factor: float, guard: _Guard, timeout_s: float) -> None:
    """Send the move, wait for its end with the guard running every 50 ms."""
    guard()
    if not arm.move_to(T, asynchronous=True, dynamics_factor=factor):
        error = arm.poll_error()
        raise guard.abort(f"the arm refused the move ({_describe(error) if error is not None else 'no reason given'})")
    deadline = time.monotonic() + timeout_s
    while not arm.wait(0.05):
        guard()
        if time.monotonic() > deadline:
            raise guard.abort(f"the move did not end within {timeout_s:g} s")
    guard()


def go_to(arm: ArmLike, T: np.ndarray, safety: SafetyConfig, *, dynamics: float = CALIBRATION_DYNAMICS,
          estop: StopSignal | None = None, move_timeout_s: float = 30.0, what: str = "the pose") -> Any:
    """One guarded move (e.g. back to the start pose): refused outside the envelope, the settled state returned."""
    why = check_pose(T, safety)
    if why is not None:
        raise CalibrationError(f"{what} is outside the safety envelope: {why}")
    with supervised(arm, estop) as watchdog:
        guard = _Guard(arm, watchdog)
        guard.where = what
        _move(arm, T, motion_factor(arm, dynamics, safety), guard, move_timeout_s)
        return wait_settled(arm, guard)


# ------------------------------------------------------------------------------------------------ observing


def fresh_frame(camera: FrameSource, after_ns: int, timeout_s: float = 2.0) -> Any:
    """The first frame the host received at or after `after_ns` (frames queued during the motion are dropped)."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise CalibrationError(f"no camera frame captured after the arm settled within {timeout_s:g} s")
        frame = camera.read(left)
        if frame.capture_ns >= after_ns:
            return frame


def camera_observer(camera: FrameSource, spec: BoardSpec, frame_delay_s: float = 0.1,
                    timeout_s: float = 2.0) -> Observe:
    """Detect the board in a frame captured `frame_delay_s` after the arm settled (exposure and transfer of a
    frame that began during the motion, or a render of the state before it settled)."""

    def observe(_T: np.ndarray, settled_ns: int) -> tuple[np.ndarray, np.ndarray]:
        frame = fresh_frame(camera, settled_ns + int(frame_delay_s * 1e9), timeout_s)
        return detect(frame.color, spec)

    return observe


def collect(
    arm: ArmLike,
    camera: FrameSource | None,
    K: np.ndarray,
    spec: BoardSpec,
    poses: Sequence[np.ndarray],
    mode: Mode,
    safety: SafetyConfig,
    *,
    dist: np.ndarray | None = None,
    dynamics: float = CALIBRATION_DYNAMICS,
    estop: StopSignal | None = None,
    observe: Observe | None = None,
    move_timeout_s: float = 30.0,
    reach_tol: tuple[float, float] = (0.01, 2.0),
    min_poses: int = MIN_POSES,
    settle: bool = True,
    progress: Callable[[str], None] | None = None,
) -> Collection:
    """Visit `poses` (T_base_ee targets) and observe the board at each (see the module docstring).

    `observe` replaces the camera (the sim's projected corners); otherwise the board is detected in a fresh
    frame of `camera`. `reach_tol` (metres, degrees): a settled pose further than this from its target is
    counted unreachable. `settle=False` only for observations computed from the recorded pose itself (the sim's
    projected corners, consistent with it by construction): an image needs the settled arm.
    Raises CollectionAborted (arm error, e-stop, timeout) or TooFewPosesError.
    """
    if observe is None:
        if camera is None:
            raise ValueError("collect needs a camera or an observe function")
        observe = camera_observer(camera, spec)
    dist = np.zeros(5) if dist is None else np.asarray(dist, float)
    col = Collection([], np.asarray(K, float), dist, mode, len(poses))
    with supervised(arm, estop) as watchdog:
        _visit(arm, poses, col, safety, motion_factor(arm, dynamics, safety), _Guard(arm, watchdog), observe,
               move_timeout_s, reach_tol, settle, progress)
    if len(col.observations) < min_poses:
        raise TooFewPosesError(f"{len(col.observations)} usable poses, need at least {min_poses}: "
                               f"{col.summary()}")
    return col


def _visit(arm: ArmLike, poses: Sequence[np.ndarray], col: Collection, safety: SafetyConfig, factor: float,
           guard: _Guard, observe: Observe, move_timeout_s: float, reach_tol: tuple[float, float], settle: bool,
           progress: Callable[[str], None] | None) -> None:
    """Each pose in turn (see the module docstring), the observations added to `col`."""
    for i, T_goal in enumerate(poses):
        guard.where = f"pose {i + 1}/{len(poses)}"
        why = check_pose(T_goal, safety)
        if why is not None:
            col.refused.append(f"{guard.where}: {why}")
            continue
        _move(arm, T_goal, factor, guard, move_timeout_s)
        state = wait_settled(arm, guard) if settle else arm.read_state()
        settled_ns = time.monotonic_ns()
        T = np.array(state.T_base_ee, float)
        dt, dr = pose_error(T, T_goal)
        if dt > reach_tol[0] or dr > reach_tol[1]:
            col.unreachable += 1
            continue
        try:
            obj, img = observe(T, settled_ns)
        except BoardNotVisibleError:
            col.not_visible += 1
            continue
        col.observations.append(HandEyeSample(T, obj, img, board_pose(obj, img, col.K, col.dist)))
        if progress is not None:
            progress(f"{guard.where}: board seen ({len(obj)} corners)")


# ------------------------------------------------------------------------------------------------ poses


def poses_around(
    T_start: np.ndarray,
    n: int,
    safety: SafetyConfig,
    pivot_base: np.ndarray,
    max_angle_deg: float = 20.0,
    max_offset_m: float = 0.05,
    seed: int = 0,
    margin_m: float = 0.02,
    tries: int = 50,
) -> list[np.ndarray]:
    """`n` poses near `T_start`, each rotated about `pivot_base` (a point the camera looks at, or the board on
    the hand: it stays in view) by up to `max_angle_deg` about well-spread axes, plus an offset of up to
    `max_offset_m`. Only poses inside the envelope (box shrunk by `margin_m`, orientation cone) are kept; fewer
    than `n` come back when the start pose leaves too little room."""
    rng = np.random.default_rng(seed)
    pivot = np.asarray(pivot_base, float)
    box = safety.workspace
    inner = safety.model_copy(update={"workspace": type(box)(lo=tuple(np.add(box.lo, margin_m)),
                                                             hi=tuple(np.subtract(box.hi, margin_m)))})
    poses: list[np.ndarray] = []
    for k in range(n * tries):
        if len(poses) == n:
            break
        # axes on a golden-angle spiral of the sphere: consecutive relative rotations have well-spread axes
        z = 1 - 2 * ((k * 0.618034 + 0.5) % 1.0)
        phi = k * 2.399963
        axis = np.array([np.sqrt(1 - z * z) * np.cos(phi), np.sqrt(1 - z * z) * np.sin(phi), z])
        angle = np.radians(max_angle_deg) * rng.uniform(0.4, 1.0)
        R = Rotation.from_rotvec(axis * angle).as_matrix()
        T_pivot = make_T(np.eye(3), pivot)
        T = T_pivot @ make_T(R, np.zeros(3)) @ inv_T(T_pivot) @ T_start
        T[:3, 3] += rng.uniform(-max_offset_m, max_offset_m, 3)
        if check_pose(T, inner) is None:
            poses.append(T)
    return poses


def pivot_point(T_start: np.ndarray, mode: Mode, axis_in_ee: np.ndarray, board_in_base: np.ndarray | None = None,
                distance_m: float = 0.35) -> np.ndarray:
    """Where the generated poses pivot: for the wrist camera, the board's position when given, else a point
    `distance_m` along the camera's rough view axis; for the static camera (board on the hand), the TCP."""
    if mode == "eye_to_base":
        return np.asarray(T_start, float)[:3, 3].copy()
    if board_in_base is not None:
        return np.asarray(board_in_base, float)
    a = np.asarray(axis_in_ee, float)
    return (T_start @ np.append(a / np.linalg.norm(a) * distance_m, 1.0))[:3]
