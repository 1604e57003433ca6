"""Instruments for tests that drive the real `Arm` against franky-sim: what was commanded, and how the
measured TCP moved afterwards."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bench.robot import TcpSampler

# Real renders, small enough for a loaded 2-core machine.
SMALL_CAMERA = {"width": 64, "height": 48, "depth": False}


class SpyArm:
    """The real `Arm`, with every target sent (time, pose), every joint move (time, q) and every stop issued (time)
    recorded."""

    def __init__(self, arm: Any) -> None:
        self.arm = arm
        self.moves: list[tuple[int, np.ndarray]] = []
        self.joint_moves: list[tuple[int, np.ndarray]] = []
        self.stops: list[int] = []

    def move_to(self, T: np.ndarray, asynchronous: bool = True, dynamics_factor: float = 1.0) -> bool:
        self.moves.append((time.monotonic_ns(), T.copy()))
        return self.arm.move_to(T, asynchronous, dynamics_factor)

    def move_joints(self, q: Any, asynchronous: bool = True, dynamics_factor: float = 1.0) -> bool:
        self.joint_moves.append((time.monotonic_ns(), np.array(q, dtype=float)))
        return self.arm.move_joints(q, asynchronous, dynamics_factor)

    def stop(self) -> bool:
        self.stops.append(time.monotonic_ns())
        return self.arm.stop()

    @property
    def move_times(self) -> list[int]:
        return [t for t, _ in self.moves]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.arm, name)


class Sampler(TcpSampler):
    """The benchmark's TCP sampler, with what the tests ask of the samples. It also keeps the measured joint
    positions, by which rest is judged: franky-sim reports the commanded O_T_EE once a motion ends while the joints
    still converge, and after a Cartesian motion its joint 7 chatters (reported dq about ±0.08 rad/s at ~1e-4 rad
    amplitude), so the joint speed is measured from the joint positions over `SPEED_WINDOW_NS`."""

    SPEED_WINDOW_NS = 50_000_000

    def __init__(self, arm: Any) -> None:
        super().__init__(arm)
        self.joints: list[tuple[int, np.ndarray]] = []

    def _run(self) -> None:
        while not self._done.wait(0.005):
            s = self.arm.read_state()
            self.samples.append((s.capture_ns, s.position.copy()))
            self.joints.append((s.capture_ns, s.joint_positions.copy()))

    def joint_speeds(self, t_ns: int) -> list[tuple[int, float]]:
        """(time, largest joint speed in rad/s) from `t_ns` on: each sample against the first one at least
        `SPEED_WINDOW_NS` later."""
        samples = [(t, q) for t, q in list(self.joints) if t >= t_ns]
        times = np.array([t for t, _ in samples])
        out = []
        for t, q in samples:
            j = int(np.searchsorted(times, t + self.SPEED_WINDOW_NS))
            if j >= len(samples):
                break
            out.append((t, float(np.max(np.abs(samples[j][1] - q))) / ((times[j] - t) / 1e9)))
        return out

    def joint_rest(self, t_ns: int, tol_rad_s: float = 0.01, hold_ns: int = 100_000_000) -> float | None:
        """Seconds from `t_ns` until every joint's speed stays below `tol_rad_s` for the rest of the samples, which
        must cover at least `hold_ns` after that; None if the arm never came to rest."""
        speeds = self.joint_speeds(t_ns)
        moving = [i for i, (_, v) in enumerate(speeds) if v >= tol_rad_s]
        still = moving[-1] + 1 if moving else 0
        if still >= len(speeds) or speeds[-1][0] - speeds[still][0] < hold_ns:
            return None
        return (speeds[still][0] - t_ns) / 1e9

    def max_joint_speed(self, t0_ns: int, t1_ns: int) -> float:
        """The largest joint speed (rad/s) measured in [t0_ns, t1_ns]."""
        return max((v for t, v in self.joint_speeds(t0_ns) if t <= t1_ns), default=0.0)

    def after(self, t_ns: int) -> tuple[np.ndarray, np.ndarray]:
        samples = list(self.samples)  # a snapshot: the sampling thread keeps appending
        times = np.array([t for t, _ in samples])
        pos = np.array([p for _, p in samples])
        keep = times >= t_ns
        return times[keep], pos[keep]

    def rest_time(self, t_ns: int, tol_m: float = 0.001) -> float:
        """Seconds from `t_ns` until the TCP stays within `tol_m` of where it ends (the last sample)."""
        times, pos = self.after(t_ns)
        moving = np.flatnonzero(np.linalg.norm(pos - pos[-1], axis=1) > tol_m)
        return 0.0 if moving.size == 0 else (times[moving[-1] + 1] - t_ns) / 1e9

    def at_rest(self, t_ns: int, tol_m: float = 0.001, hold_ns: int = 100_000_000) -> float | None:
        """Seconds from `t_ns` to the first sample from which the TCP stays within `tol_m` for `hold_ns`."""
        times, pos = self.after(t_ns)
        for i in range(len(times)):
            if times[-1] < times[i] + hold_ns:
                return None
            window = (times >= times[i]) & (times <= times[i] + hold_ns)
            if np.all(np.linalg.norm(pos[window] - pos[i], axis=1) <= tol_m):
                return (times[i] - t_ns) / 1e9
        return None

    def speed(self, t_ns: int, window_ns: int = 100_000_000) -> float:
        """Mean TCP speed (m/s) over the `window_ns` before `t_ns`."""
        times, pos = self.after(t_ns - window_ns)
        times, pos = times[times <= t_ns], pos[times <= t_ns]
        return float(np.linalg.norm(pos[-1] - pos[0]) / ((times[-1] - times[0]) / 1e9))

    def travel(self, t_ns: int) -> float:
        """Largest distance (m) from the position at `t_ns` reached afterwards."""
        _, pos = self.after(t_ns)
        return float(np.max(np.linalg.norm(pos - pos[0], axis=1)))
