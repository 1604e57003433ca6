"""What the loop hands a recorder each tick: `TickRecord`, and the `StepSink` protocol that receives it.

The recorder sees exactly what the loop saw and did (the proprioception read first, the frames read next, and
the target it commanded after the envelope), so a demonstration recorded through the loop is by construction
in the same action convention the loop executes at run time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from robot.arm import ArmState, GripperState
from robot.cameras import Frame
from robot.runner.report import EpisodeRecord


@dataclass(frozen=True)
class TickRecord:
    """One tick of one episode.

    state: the model's state input at this tick ([x, y, z, roll, pitch, yaw, gripper_open] with the gripper as
    commanded before the tick: what a policy would have been sent). frames: the newest frame of every camera, or
    None when a camera had no usable frame (the tick cannot be a dataset row). action: [dx, dy, dz, droll,
    dpitch, dyaw, gripper] that takes the target commanded before the tick to `target` (zeros when the tick moved
    nothing; docs/conventions.md), gripper 1 = open. target: the 4x4 commanded target after the tick, in `base`.
    """

    tick: int
    tick_ns: int
    state: np.ndarray
    arm: ArmState
    gripper: GripperState
    frames: Mapping[str, Frame] | None
    action: np.ndarray
    target: np.ndarray


class StepSink(Protocol):
    """Receives an episode's ticks on the loop's thread. `begin` and `record` run inside the episode and must
    return at once (no I/O); `end` runs after the arm is at rest and may block (the operator's keep/discard)."""

    def begin(self, episode: int, instruction: str) -> None: ...

    def record(self, tick: TickRecord) -> None: ...

    def end(self, record: EpisodeRecord) -> None: ...
