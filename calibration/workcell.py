"""The rig `dv-calib` opens, planned and opened through the typed workcell facade (`robot.workcell`), so a
calibration assembles the arm, the cameras and the e-stop the way `dv-robot`, `dv-teleop` and `dv-bench` do,
with the same one-line `DeviceUnavailable` for a device that cannot be opened.

Two calibration-specific choices live here:
- the plan holds only the cameras being calibrated (`dataclasses.replace(plan, cameras=...)`): a second D415
  that is unplugged must not stop the calibration of the first;
- a launch file whose `robot.arm.relative_dynamics_factor` exceeds `safety.relative_dynamics_factor` is clamped
  to the safety ceiling, as `dv-calib` always did (`open_workcell` refuses such a file for a run; a calibration
  moves slowly about the operator's start pose and only ever needs the lower of the two).

Intrinsics need no arm: on a real rig `open_cameras` connects only the plan's cameras, with the workcell's own
camera opener (`robot.devices.connect_cameras`); the sim's cameras render from a sim workcell, so there the
whole (simulated) workcell opens.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from robot.errors import UsageError
from robot.workcell import WorkcellPlan, open_workcell, plan_workcell

if TYPE_CHECKING:
    from robot.cameras import Camera

SIM_TASK = "drawer_open"  # the sim scene a calibration opens (the board is projected, or rendered on its own scene)
REAL_TASK = "calibration"  # a real rig's plan only names its task; a calibration runs no episode


def calibration_plan(launch: Path | None, cameras: Sequence[str], *, sim: bool = False,
                     seed: int = 0) -> WorkcellPlan:
    """The workcell plan of the rig `launch` describes (None: the sim's defaults) with only the `cameras` roles,
    in that order, and the arm's dynamics ceiling clamped to the safety one. A launch file that does not load,
    or names no such camera, is a `UsageError` naming it."""
    from robot.launch.config import LaunchConfigError

    try:
        plan = plan_workcell(SIM_TASK, sim=sim, launch=launch, seed=seed)
    except LaunchConfigError as e:
        raise UsageError(str(e)) from None
    if not plan.sim:
        plan = dataclasses.replace(plan, task=REAL_TASK)
    by_name = {c.name: c for c in plan.cameras}
    missing = [role for role in cameras if role not in by_name]
    if missing:
        raise UsageError(f"{launch or 'the sim'}: no camera named {missing[0]!r} in cameras "
                         f"(has: {', '.join(by_name) or 'none'})")
    plan = dataclasses.replace(plan, cameras=tuple(by_name[role] for role in cameras))
    config = plan.launch
    if config is not None and config.robot.arm.relative_dynamics_factor > plan.safety.relative_dynamics_factor:
        arm = config.robot.arm.model_copy(update={"relative_dynamics_factor": plan.safety.relative_dynamics_factor})
        config = config.model_copy(update={"robot": config.robot.model_copy(update={"arm": arm})})
        plan = dataclasses.replace(plan, launch=config)
    return plan


def open_cameras(plan: WorkcellPlan, stack: contextlib.ExitStack) -> dict[str, Camera]:
    """The plan's cameras, connected (closed with `stack`): a real rig's alone, without its arm (intrinsics need
    none); the sim's through its opened workcell, whose scene they render."""
    if plan.sim:
        return open_workcell(plan, stack).cameras
    from robot.cameras import make_camera
    from robot.devices import connect_cameras

    cameras = {c.name: make_camera(c) for c in plan.cameras}
    connect_cameras(cameras, stack)
    return cameras
