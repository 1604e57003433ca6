"""The operator's command and the policy that turns it into actions, shared by every hand-held device.

A device (SpaceMouse, keyboard) only reports the operator's newest *velocity* command in `base` (what a person
pushing a 3-D mouse towards the robot means) plus the gripper and end-of-episode buttons. `TeleopPolicy` turns
it into a chunk in the action convention (deltas on the commanded target, docs/conventions.md#actions), so the
operator's commands run through the same loop, timeline and safety envelope as a trained policy. The loop
runs it in receding mode: a fresh command every tick, the rest of the chunk only covers a late tick.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from scipy.spatial.transform import Rotation

from robot.execution import delta_between
from robot.policy import Observation, PolicyChunk, PolicyFailure


@dataclass(frozen=True)
class TeleopCommand:
    """linear (m/s) and angular (rad/s) velocity of `ee` expressed in `base`; the gripper; end the episode."""

    linear: np.ndarray = field(default_factory=lambda: np.zeros(3))
    angular: np.ndarray = field(default_factory=lambda: np.zeros(3))
    gripper_open: bool = True
    end_episode: bool = False


class CommandSource(Protocol):
    """A device's newest command. `start` is called at each episode start (gripper open, nothing pressed)."""

    def start(self) -> None: ...

    def command(self) -> TeleopCommand:
        """The newest command; never blocks."""
        ...

    def close(self) -> None: ...


def advance(T: np.ndarray, command: TeleopCommand, dt: float) -> np.ndarray:
    """The target `dt` seconds on at the command's velocity (translation and rotation both about `base` axes, the
    rotation about the target's own position)."""
    T_next = T.copy()
    T_next[:3, 3] = T[:3, 3] + command.linear * dt
    T_next[:3, :3] = Rotation.from_rotvec(command.angular * dt).as_matrix() @ T[:3, :3]
    return T_next


class TeleopPolicy:
    """A `robot.policy.Policy` whose chunks integrate the operator's newest command from the commanded target."""

    def __init__(self, source: CommandSource, rate_hz: float, chunk_length: int = 3) -> None:
        self.source, self._dt, self._chunk_length = source, 1.0 / rate_hz, chunk_length

    def reset(self, instruction: str) -> PolicyFailure | None:
        self.source.start()
        return None

    def infer(self, observation: Observation) -> PolicyChunk | PolicyFailure:
        command = self.source.command()
        if command.end_episode:
            return PolicyChunk(np.zeros((0, 7)), done=True)
        actions, T = [], observation.T_commanded
        for _ in range(self._chunk_length):
            T_next = advance(T, command, self._dt)
            actions.append([*delta_between(T, T_next), 1.0 if command.gripper_open else 0.0])
            T = T_next
        return PolicyChunk(np.array(actions))

    def close(self) -> None:
        self.source.close()
