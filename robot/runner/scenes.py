"""Where episodes happen: reset to home, the instruction, and who says whether an episode succeeded.

`SimScene` resets the sim workcell (arm to home, a fresh object layout from a seed) and reads the task's success
predicate; `OperatorScene` drives a real arm home slowly and asks the operator y/n. The runner only sees the
`Scene` protocol, so it never imports MuJoCo.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from robot.runner.devices import ArmLike, GripperLike

if TYPE_CHECKING:
    from robot.sim.workcell import SimWorkcell


class Scene(Protocol):
    def reset(self, episode: int) -> str:
        """Put the arm at home, at rest, gripper open, the task set up; return the instruction."""
        ...

    def check_success(self) -> bool:
        """Cheap check during the episode: True ends it early as a success (a real rig returns False)."""
        ...

    def verdict(self) -> bool:
        """The final judgement of an episode that was not aborted."""
        ...


def _wait_gripper_idle(gripper: GripperLike, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while gripper.state.busy and time.monotonic() < deadline:
        time.sleep(0.02)


class SimScene:
    """Episodes of one sim workcell task; episode i uses layout seed `seeds[i - 1]` (or first_seed + i - 1)."""

    def __init__(self, cell: SimWorkcell, arm: ArmLike, gripper: GripperLike, first_seed: int = 0,
                 seeds: Sequence[int] | None = None) -> None:
        self.cell, self.arm, self.gripper = cell, arm, gripper
        self._first_seed, self._seeds = first_seed, seeds

    def seed(self, episode: int) -> int:
        return self._seeds[episode - 1] if self._seeds is not None else self._first_seed + episode - 1

    def reset(self, episode: int) -> str:
        self.arm.stop()
        if not self.arm.wait(5.0):
            raise TimeoutError("the arm did not come to rest within 5 s; cannot reset the workcell")
        _wait_gripper_idle(self.gripper, 3.0)
        self.cell.reset(self.seed(episode))  # teleports the arm home and opens the hand
        self.gripper.clear_fault()
        self.gripper.open()
        return self.cell.instruction

    def check_success(self) -> bool:
        return self.cell.success()

    def verdict(self) -> bool:
        return self.cell.success()


class OperatorScene:
    """A real rig: slow joint move home, and the operator's y/n (asked through `ask`) decides success."""

    def __init__(self, arm: ArmLike, gripper: GripperLike, home_q: Sequence[float], instruction: str,
                 ask: Callable[[str], str] = input, home_dynamics: float = 0.5) -> None:
        self.arm, self.gripper, self.home_q = arm, gripper, list(home_q)
        self.instruction, self._ask, self._home_dynamics = instruction, ask, home_dynamics

    def reset(self, episode: int) -> str:
        self.arm.stop()
        self.arm.wait(5.0)
        if not self.arm.move_joints(self.home_q, asynchronous=False, dynamics_factor=self._home_dynamics):
            raise RuntimeError("the move home was refused; see the arm error")
        self.gripper.clear_fault()
        self.gripper.open()
        return self.instruction

    def check_success(self) -> bool:
        return False

    def verdict(self) -> bool:
        while True:
            answer = self._ask("episode succeeded? [y/n] ").strip().lower()
            if answer in ("y", "n"):
                return answer == "y"
