"""The workcell: one typed facade over everything a run touches, for the real rig and the sim alike.

    plan = plan_workcell("pick_bottle", sim=True)                 # or launch=Path("launch/real_fr3.yaml")
    with contextlib.ExitStack() as stack:
        cell = open_workcell(plan, stack)                         # cameras, arm, gripper, scene, e-stop
        ...                                                       # other pre-flights (the policy server)
        cell.await_estop_console()                                # last: a required console is heard
        summary = cell.runner(policy, "scripted").run(plan.episodes)

A `WorkcellPlan` is what a command line and a launch file ask for, validated before anything opens. `open_workcell`
opens it in a fixed order (cameras, arm, gripper, e-stop), each device closed with the caller's stack, and each
failure a one-line `DeviceUnavailable`; nothing moves until the runner's first reset. `dv-robot`, `dv-teleop`
(record and replay) and `dv-bench robot` open their devices here, so the rig is assembled one way. The shape
follows lerobot's robot-from-config factory and diffusion_policy's `RealEnv`; the control loop itself stays the
`Runner` (`robot.runner`).
"""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from robot.devices import await_console, connect_cameras, open_arm, open_estop
from robot.errors import UsageError
from robot.execution import Mode
from robot.runner import OperatorScene, Runner, RunnerConfig, Scene, SimScene, StepSink
from robot.safety import SafetyConfig
from robot.tasks import HOME_Q, TASKS, instruction_for

if TYPE_CHECKING:
    from robot.arm import Arm, ArmConfig, Gripper
    from robot.cameras import Camera, CameraConfig
    from robot.estop import EStopListener, StatusPublisher
    from robot.launch import LaunchConfig
    from robot.policy import Policy
    from robot.sim.workcell import SimWorkcell


@dataclass(frozen=True)
class WorkcellPlan:
    """One rig for one task, validated: the launch file (None: the sim's defaults), the cameras to open, the safety
    limits and the loop's settings (the launch file's, with the command line's overrides)."""

    task: str
    sim: bool
    launch: LaunchConfig | None
    launch_file: Path | None
    cameras: tuple[CameraConfig, ...]
    safety: SafetyConfig
    runner: RunnerConfig
    episodes: int
    seed: int = 0  # sim: the layout seed of the first episode (then +1 each)
    overrides: tuple[str, ...] = ()  # the safety overrides in force (robot.launch.config.override_notes)
    # sim only: callables (scene, worldbody) that add to the MJCF before it compiles, e.g. dv-calib's board plate
    scene_extras: tuple[Callable[[ET.Element, ET.Element], None], ...] = ()


def sim_safety() -> SafetyConfig:
    """The safety limits of the sim without a launch file: those of the shipped launch/sim.yaml, the one place the
    sim's values live (its cameras render at 15 fps on the CPU, so frames may be older than a D415's before they
    count as stale)."""
    from robot.launch import load_launch_config
    from robot.launch.config import DEFAULT_LAUNCH_FILE

    return load_launch_config(DEFAULT_LAUNCH_FILE).safety


def _default_sim_cameras() -> tuple[CameraConfig, ...]:
    """The real rig's two D415s, colour only: the policy takes no depth, so the sim skips rendering it."""
    from robot.sim.workcell import default_cameras

    return tuple(c.model_copy(update={"depth": False}) for c in default_cameras())


def plan_workcell(task: str, *, sim: bool = False, launch: Path | None = None, seed: int = 0,
                  episodes: int | None = None, mode: Mode | None = None, max_episode_s: float | None = None,
                  rate_hz: float | None = None) -> WorkcellPlan:
    """The plan for `task` on the rig `launch` describes, or on the sim (`sim`, implied by a sim launch file). The
    loop settings `mode`, `max_episode_s` and `rate_hz` override the launch file's where given. Raises `UsageError`
    (the message says why) and the launch file's `LaunchConfigError`."""
    from robot.launch import load_launch_config
    from robot.launch.config import override_notes

    config = load_launch_config(launch) if launch else None
    if config is not None and config.robot.kind == "real" and sim:
        raise UsageError(f"{launch} describes a real robot; drop --sim or use a sim launch file")
    sim = sim or (config is not None and config.robot.kind == "sim")
    if sim and task not in TASKS:
        raise UsageError(f"unknown sim task {task!r}; known: {', '.join(sorted(TASKS))}")
    if not sim and config is None:
        raise UsageError("a real robot needs --launch FILE (robot address, camera serials, limits); or pass --sim")
    changes = {k: v for k, v in (("mode", mode), ("max_episode_s", max_episode_s), ("rate_hz", rate_hz))
               if v is not None}
    runner = RunnerConfig.model_validate({**(config.runner if config else RunnerConfig()).model_dump(), **changes})
    return WorkcellPlan(
        task=task, sim=sim, launch=config, launch_file=launch,
        cameras=tuple(config.cameras) if config else _default_sim_cameras(),
        safety=config.safety if config else sim_safety(), runner=runner,
        episodes=episodes or (config.episodes if config else 1), seed=seed,
        overrides=tuple(override_notes(config is not None and config.without_estop, None)))


@dataclass
class Workcell:
    """The opened rig: connected arm, gripper and cameras, the scene that resets episodes and judges them (the sim's
    predicate, or the operator), the sim itself (None on a real rig), and the e-stop listener and status publisher
    the launch file asks for (None without one)."""

    plan: WorkcellPlan
    arm: Arm
    gripper: Gripper
    cameras: dict[str, Camera]
    scene: Scene
    sim: SimWorkcell | None = None
    estop: EStopListener | None = None
    status: StatusPublisher | None = None

    def camera_sizes(self) -> dict[str, tuple[int, int]]:
        """Camera name -> (height, width): what the robot declares to a policy server."""
        return {name: (cam.config.height, cam.config.width) for name, cam in self.cameras.items()}

    def await_estop_console(self) -> None:
        """Pre-flight for a required e-stop: its console heard within `runner.estop_wait_s`, else a one-line
        `DeviceUnavailable`. Call it last, after the other pre-flights, just before the run."""
        launch = self.plan.launch
        if self.estop is not None and launch is not None and launch.estop_required:
            await_console(self.estop, launch.estop.endpoint, self.plan.runner.estop_wait_s)

    def runner(self, policy: Policy, policy_name: str, *, config: RunnerConfig | None = None,
               steps: StepSink | None = None) -> Runner:
        """The control loop on this rig (its e-stop and status included); closing it also closes the policy."""
        return Runner(config or self.plan.runner, self.plan.safety, arm=self.arm, gripper=self.gripper,
                      cameras=self.cameras, policy=policy, scene=self.scene, task=self.plan.task,
                      policy_name=policy_name, estop=self.estop, status=self.status, steps=steps)


def _open_sim(plan: WorkcellPlan, stack: contextlib.ExitStack) -> tuple[SimWorkcell, ArmConfig]:
    """The sim workcell (franky-sim + MuJoCo) with the plan's cameras, rendering from it, and its arm's address."""
    from robot.arm import ArmConfig
    from robot.sim.workcell import SimWorkcell

    cell = stack.enter_context(SimWorkcell(task=plan.task, seed=plan.seed, cameras=list(plan.cameras),
                                           scene_extras=plan.scene_extras))
    return cell, ArmConfig(host=cell.hostname, realtime="ignore",
                           relative_dynamics_factor=plan.safety.relative_dynamics_factor)


def open_workcell(plan: WorkcellPlan, stack: contextlib.ExitStack) -> Workcell:
    """Open every device of `plan` (each closed with `stack`, in reverse): cameras first, then the arm and the
    gripper, then the e-stop listener and status publisher (bound; `await_estop_console` waits for the console).
    Nothing moves here. A device that cannot be opened raises `DeviceUnavailable` naming it."""
    from robot.cameras import make_camera

    if plan.sim:
        cell, arm_cfg = _open_sim(plan, stack)
        cameras: dict[str, Camera] = dict(cell.cameras)
    else:
        assert plan.launch is not None  # plan_workcell refuses a real rig without a launch file
        cell, arm_cfg = None, plan.launch.robot.arm
        if arm_cfg.relative_dynamics_factor > plan.safety.relative_dynamics_factor:
            raise UsageError(f"robot.arm.relative_dynamics_factor {arm_cfg.relative_dynamics_factor} exceeds "
                             f"safety.relative_dynamics_factor {plan.safety.relative_dynamics_factor}")
        cameras = {c.name: make_camera(c) for c in plan.cameras}
    connect_cameras(cameras, stack)
    arm, gripper = open_arm(arm_cfg, stack, plan.sim)
    scene: Scene = (SimScene(cell, arm, gripper, first_seed=plan.seed) if cell is not None
                    else OperatorScene(arm, gripper, HOME_Q, instruction_for(plan.task)))
    estop, status = open_estop(plan.launch, stack)
    return Workcell(plan, arm, gripper, cameras, scene, cell, estop, status)
