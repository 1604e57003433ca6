"""The tasks a workcell runs and the arm's home pose: facts the real rig and the sim share.

A real launch file's `tasks` are validated against `TASKS` (`robot.launch.config`), a real episode starts from
`HOME_Q` (`robot.workcell`, `OperatorScene`), and the sim builds each task's scene objects and success predicate
from the same `TaskSpec` (`robot.sim.tasks`). Keeping them here means the real robot never imports the simulator.
The six tasks are those of the DreamVLA paper's real-robot evaluation (§4.3, Table 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# A standard FR3 "ready" pose: TCP ~0.31 m in front of the base, 0.49 m above the table, pointing down.
HOME_Q: tuple[float, ...] = (0.0, -math.pi / 4, 0.0, -3 * math.pi / 4, 0.0, math.pi / 2, math.pi / 4)


@dataclass(frozen=True)
class TaskSpec:
    """A task: its scene objects, the instruction given to the policy, and which object it is about."""

    name: str
    instruction: str
    objects: tuple[str, ...]
    target: str


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("pick_bottle", "pick up the bottle", ("bottle",), "bottle"),
        TaskSpec("pick_doll", "pick up the doll", ("doll",), "doll"),
        TaskSpec("place_banana", "put the banana in the basket", ("banana", "basket"), "banana"),
        TaskSpec("place_chili", "put the chili in the basket", ("chili", "basket"), "chili"),
        TaskSpec("drawer_open", "open the drawer", ("cabinet",), "drawer"),
        TaskSpec("drawer_close", "close the drawer", ("cabinet",), "drawer"),
    )
}


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name]


def instruction_for(task: str) -> str:
    """The instruction of a known task; for any other name (a real rig's own task) the name in words."""
    return TASKS[task].instruction if task in TASKS else task.replace("_", " ")
