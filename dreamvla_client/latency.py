"""Per-stage latency statistics in bounded memory: the robot loop's run report and `dv-serve`'s `stats` reply.

Both sides time stages (the robot: tick period, obs→action, infer; the server: receive, decode, queue, backbone,
...) over runs of hours. Percentiles need the values, so each stage keeps a seeded uniform sample of at most
`RESERVOIR_SIZE` of them (Vitter's algorithm R) beside the exact count and maximum: an 8-hour run costs what a
one-minute one does, and below the bound every value is kept and the percentiles are exact. Torch-free and
numpy-only: the robot PC imports it.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping

import numpy as np

RESERVOIR_SIZE = 8192  # values kept per stage (at most 64 KB): a quantile's rank is off by ~0.1 % at one sigma
PERCENTILES = (50, 95, 99)


class _Reservoir:
    """A uniform random sample of at most `size` values of one stage (Vitter's algorithm R), with the exact count
    and maximum of everything added: memory stays the same however long the run. Values live in a compact
    `array('d')` that grows with what is kept (8 bytes each), so a short episode costs what it holds."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size, self.rng = size, rng
        self._kept = array("d")
        self.n = 0
        self.max = -math.inf

    @property
    def values(self) -> np.ndarray:
        return np.frombuffer(self._kept, dtype=np.float64) if self._kept else np.empty(0)

    def add(self, value: float) -> None:
        self.n += 1
        self.max = max(self.max, value)
        if len(self._kept) < self.size:
            self._kept.append(value)
        elif (j := int(self.rng.integers(self.n))) < self.size:
            self._kept[j] = value

    def merge(self, other: _Reservoir) -> None:
        """Become a uniform sample of both streams: how many values come from each is hypergeometric in the two
        counts, and a uniform subset of a uniform sample is a uniform sample of its stream."""
        if len(self._kept) + len(other._kept) <= self.size:
            self._kept.extend(other._kept)
        else:
            mine = int(self.rng.hypergeometric(self.n, other.n, self.size))
            merged = np.concatenate([self.rng.choice(self.values, mine, replace=False),
                                     self.rng.choice(other.values, self.size - mine, replace=False)])
            self._kept = array("d", merged.tobytes())
        self.n += other.n
        self.max = max(self.max, other.max)


class LatencyStats:
    """Per-stage latencies in milliseconds, percentiles on demand, in bounded memory: up to `reservoir_size` values
    per stage are exact; beyond, a seeded uniform reservoir sample stands for them (the count and maximum stay
    exact), so the same run gives the same summary. Not thread-safe: one thread adds and summarises."""

    def __init__(self, reservoir_size: int = RESERVOIR_SIZE, seed: int = 0) -> None:
        self.reservoir_size = reservoir_size
        self._rng = np.random.default_rng(seed)
        self._stages: dict[str, _Reservoir] = {}

    def _stage(self, stage: str) -> _Reservoir:
        if stage not in self._stages:
            self._stages[stage] = _Reservoir(self.reservoir_size, self._rng)
        return self._stages[stage]

    def add(self, stage: str, ms: float) -> None:
        self._stage(stage).add(ms)

    def add_timing(self, timing_ms: Mapping[str, float]) -> None:
        """One value per stage of a reply's breakdown (a chunk's `timing_ms`)."""
        for stage, ms in timing_ms.items():
            self._stage(stage).add(ms)

    def merge(self, other: LatencyStats) -> None:
        for stage, reservoir in other._stages.items():
            self._stage(stage).merge(reservoir)

    def kept(self) -> int:
        """Values held over every stage (at most `reservoir_size` each)."""
        return sum(len(r.values) for r in self._stages.values())

    def summary(self) -> dict[str, dict[str, float]]:
        """{stage: {p50, p95, p99, max, n}} in milliseconds, stages sorted by name; n counts every value added."""
        out = {}
        for stage in sorted(self._stages):
            r = self._stages[stage]
            p50, p95, p99 = np.percentile(r.values, PERCENTILES)
            out[stage] = {"p50": float(p50), "p95": float(p95), "p99": float(p99), "max": float(r.max), "n": r.n}
        return out
