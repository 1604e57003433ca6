"""`Interventions`: every time a safety rule changes or refuses what the policy asked for, by rule name.

One counter shared by the envelope, the chunk timeline and the loop, so the console, the per-episode record and
the summary table all read the same numbers. Each intervention is also logged (WARNING for rejections that
stop motion, INFO for clamps, which a random policy produces every tick).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from dataclasses import dataclass

log = logging.getLogger("robot.safety")


@dataclass(frozen=True)
class Intervention:
    t_ns: int
    rule: str
    detail: str


class Interventions:
    """Counts per rule, plus the most recent events (bounded, so a long run cannot grow memory)."""

    def __init__(self, keep_events: int = 256) -> None:
        self.counts: Counter[str] = Counter()
        self.events: deque[Intervention] = deque(maxlen=keep_events)

    def record(self, rule: str, detail: str = "", *, severe: bool = False, n: int = 1) -> None:
        """Count `n` interventions of `rule`; `severe` ones (rejections, holds) are logged as warnings."""
        self.counts[rule] += n
        self.events.append(Intervention(time.monotonic_ns(), rule, detail))
        log.log(logging.WARNING if severe else logging.INFO, "safety %s: %s", rule, detail)

    def take(self) -> dict[str, int]:
        """The counts so far (sorted by rule), and start counting afresh (one episode's worth)."""
        counts = dict(sorted(self.counts.items()))
        self.counts.clear()
        self.events.clear()
        return counts
