"""Instruments for tests that drive the real `Arm` against franky-sim: what was commanded, and how the
measured TCP moved afterwards."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from robot.bench import TcpSampler

# Real renders, small enough for a loaded 2-core machine.
SMALL_CAMERA = {"width": 64, "height": 48, "depth": False}


class SpyArm:
    """The real `Arm`, with every target sent (time, pose) and every stop issued (time) recorded."""

    def __init__(self, arm: Any) -> None:
        self.arm = arm
        self.moves: list[tuple[int, np.ndarray]] = []
        self.stops: list[int] = []

    def move_to(self, T: np.ndarray, asynchronous: bool = True, dynamics_factor: float = 1.0) -> bool:
        self.moves.append((time.monotonic_ns(), T.copy()))
        return self.arm.move_to(T, asynchronous, dynamics_factor)

    def stop(self) -> bool:
        self.stops.append(time.monotonic_ns())
        return self.arm.stop()

    @property
    def move_times(self) -> list[int]:
        return [t for t, _ in self.moves]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.arm, name)


class Sampler(TcpSampler):
    """The benchmark's TCP sampler, with what the tests ask of the samples."""

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
