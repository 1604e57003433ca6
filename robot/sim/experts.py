"""Scripted experts for the six workcell tasks.

An expert is two parts, so the same plans serve the runner (`dv-robot --policy scripted`) and the demo recorder
(`dv-teleop record --device scripted`, and the sim's scripted hand for hand-guiding):
- a *plan*: top-down waypoints (T_base_ee target + gripper open/closed) computed once from the object poses the
  sim reports at the start of the episode (`plan_task`);
- a *stepper* (`ScriptedExpert.act`) that turns the plan into one Cartesian target per control tick, moving the
  target at most 0.2 m/s and 0.6 rad/s (per 15 Hz tick 13 mm and 0.04 rad: inside the action scale of
  docs/conventions.md, 0.02 m and 0.05 rad per unit, and under the safety envelope's 0.25 m/s default), and waiting
  at waypoints the measured pose must reach before the gripper acts.

An expert episode runs one way only: `scripted_policy` makes the stepper a loop `Policy`, and the `Runner` drives
it through the safety envelope, the gripper hysteresis and the e-stop like any other policy. The success rate per
task: `dv-robot run TASK --sim --policy scripted --episodes 20`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from robot.geometry import make_T
from robot.policy import ScriptedPolicy
from robot.runner.config import RunnerConfig
from robot.safety import SafetyConfig
from robot.sim import scene
from robot.sim.tasks import SceneState
from robot.sim.workcell import SimWorkcell
from robot.tasks import TaskSpec

APPROACH_HEIGHT = 0.12  # above the grasp point, before descending
LIFT_HEIGHT = 0.15
# franky-sim moves each finger at up to 50 mm/s (≤ 0.4 s to close from 80 mm); the rest of the dwell lets the grip
# force build and covers franky-sim's 0.1 s settle check before the gripper reports done.
GRIPPER_DWELL_S = 1.0


@dataclass(frozen=True)
class Waypoint:
    """A target for `ee` in `base`. `settle`: the measured pose must reach it before moving on (grasp points)."""

    T: np.ndarray
    gripper_open: bool
    settle: bool = False
    dwell_s: float = 0.0


def top_down(position: np.ndarray, finger_axis: np.ndarray) -> np.ndarray:
    """`ee` pose pointing straight down with the fingers closing along the horizontal `finger_axis`.

    Of the two equivalent yaws (the hand is symmetric), the one nearer the home yaw (ee y = -base y) keeps
    joint 7 far from its limits.
    """
    y = np.array([finger_axis[0], finger_axis[1], 0.0])
    y = np.array([0.0, -1.0, 0.0]) if np.linalg.norm(y) < 1e-6 else y / np.linalg.norm(y)
    if y[1] > 0 or (y[1] == 0 and y[0] < 0):
        y = -y
    z = np.array([0.0, 0.0, -1.0])
    return make_T(np.column_stack([np.cross(y, z), y, z]), position)


def _offset(T: np.ndarray, dz: float = 0.0, along: np.ndarray | None = None, dist: float = 0.0) -> np.ndarray:
    out = T.copy()
    out[2, 3] += dz
    if along is not None:
        out[:3, 3] += dist * along
    return out


def _yaw_to(T: np.ndarray, yaw: float) -> np.ndarray:
    out = T.copy()
    out[:3, :3] = Rotation.from_euler("z", yaw).as_matrix() @ T[:3, :3]
    return out


def plan_pick(T_obj: np.ndarray, graspable: scene.Graspable) -> list[Waypoint]:
    """Approach from above, descend, close, lift."""
    p = (T_obj @ np.array([*graspable.grasp_point, 1.0]))[:3]
    axis = T_obj[:3, :3] @ np.asarray(graspable.close_axis) if graspable.close_axis is not None else np.zeros(3)
    grasp = top_down(p, axis)
    return [
        Waypoint(_offset(grasp, APPROACH_HEIGHT), gripper_open=True),
        Waypoint(grasp, gripper_open=True, settle=True),
        Waypoint(grasp, gripper_open=False, dwell_s=GRIPPER_DWELL_S),
        Waypoint(_offset(grasp, LIFT_HEIGHT), gripper_open=False, dwell_s=0.5),
    ]


def plan_place(T_obj: np.ndarray, graspable: scene.Graspable, T_basket: np.ndarray) -> list[Waypoint]:
    """Pick, carry above the basket with the object's long axis along a basket diagonal, lower, release."""
    pick = plan_pick(T_obj, graspable)
    grasp = pick[1].T
    # The object's long axis (its x) is the hand's x; the basket diagonal (0.28 m) fits a 0.2 m banana.
    hand_yaw = math.atan2(grasp[1, 0], grasp[0, 0])
    basket_yaw = math.atan2(T_basket[1, 0], T_basket[0, 0])
    diagonal = basket_yaw + math.pi / 4
    turn = (diagonal - hand_yaw + math.pi / 4) % (math.pi / 2) - math.pi / 4  # nearest of the 4 diagonal yaws
    hold_height = grasp[2, 3] - T_obj[2, 3]  # TCP above the object frame, unchanged while held
    release = _yaw_to(grasp, turn)
    release[:3, 3] = T_basket[:3, 3] + [0.0, 0.0, scene.BASKET_FLOOR_TOP + graspable.rest_z + hold_height + 0.03]
    above = _offset(release, scene.BASKET_WALL_TOP + 0.1)
    return [
        *pick,
        Waypoint(above, gripper_open=False),
        Waypoint(release, gripper_open=False, settle=True),
        Waypoint(release, gripper_open=True, dwell_s=0.8),
        Waypoint(_offset(release, 0.15), gripper_open=True),
    ]


def _drawer_grasp(state: SceneState) -> tuple[np.ndarray, np.ndarray]:
    """The `ee` pose that straddles the vertical handle bar (fingers closing along the cabinet's y, the hand
    housing clear above the bar's top), and the cabinet's x axis (into the cabinet) in base."""
    T = state.poses["drawer_handle"]
    bar, x_cab, y_cab = T[:3, 3], T[:3, 0], T[:3, 1]
    grasp = top_down(bar + [0.0, 0.0, scene.HANDLE_GRASP_IN_DRAWER[2] - scene.HANDLE_IN_DRAWER[2]], y_cab)
    return grasp, x_cab


def _move_bar(grasp: np.ndarray, end: np.ndarray) -> list[Waypoint]:
    """Down onto the drawer's bar, close on it, carry it to `end`, let go, leave straight up."""
    return [
        Waypoint(_offset(grasp, 0.1), gripper_open=True),
        Waypoint(grasp, gripper_open=True, settle=True),
        Waypoint(grasp, gripper_open=False, dwell_s=GRIPPER_DWELL_S),
        Waypoint(end, gripper_open=False, settle=True),
        Waypoint(end, gripper_open=True, dwell_s=0.8),
        Waypoint(_offset(end, 0.1), gripper_open=True),
    ]


def plan_drawer_open(state: SceneState) -> list[Waypoint]:
    """Straddle the vertical bar with the open fingers, close on it, pull 16 cm, let go, back off."""
    grasp, x_cab = _drawer_grasp(state)
    return _move_bar(grasp, _offset(grasp, along=-x_cab, dist=0.16))


def plan_drawer_close(state: SceneState) -> list[Waypoint]:
    """Grasp the bar as for opening, push it home, let go, leave straight up.

    Pushing with the closed fingers instead fails: franky-sim's fingers are position-controlled with a weak
    gain near closed (1000 N/m), so the bar spreads them, gets caught between them and is dragged back open
    when the hand leaves (seen on seed 3).
    """
    assert state.drawer_opening is not None
    grasp, x_cab = _drawer_grasp(state)
    return _move_bar(grasp, _offset(grasp, along=x_cab, dist=state.drawer_opening))


def plan_task(task: TaskSpec, state: SceneState) -> list[Waypoint]:
    """The expert's waypoints for `task` from the sim's object poses at the start of the episode."""
    if task.name == "drawer_open":
        return plan_drawer_open(state)
    if task.name == "drawer_close":
        return plan_drawer_close(state)
    g = scene.GRASPABLES[task.target]
    if "basket" in task.objects:
        return plan_place(state.poses[task.target], g, state.poses["basket"])
    return plan_pick(state.poses[task.target], g)


def _step_toward(T: np.ndarray, goal: np.ndarray, max_m: float, max_rad: float) -> np.ndarray:
    out = goal.copy()
    delta = goal[:3, 3] - T[:3, 3]
    dist = float(np.linalg.norm(delta))
    if dist > max_m:
        out[:3, 3] = T[:3, 3] + delta * (max_m / dist)
    rotvec = Rotation.from_matrix(T[:3, :3].T @ goal[:3, :3]).as_rotvec()
    angle = float(np.linalg.norm(rotvec))
    if angle > max_rad:
        out[:3, :3] = T[:3, :3] @ Rotation.from_rotvec(rotvec * (max_rad / angle)).as_matrix()
    return out


def _pose_error(T: np.ndarray, goal: np.ndarray) -> tuple[float, float]:
    angle = float(np.linalg.norm(Rotation.from_matrix(T[:3, :3].T @ goal[:3, :3]).as_rotvec()))
    return float(np.linalg.norm(goal[:3, 3] - T[:3, 3])), angle


class ScriptedExpert:
    """Turns waypoints into one (T_base_ee target, gripper_open) per control tick."""

    def __init__(
        self,
        waypoints: list[Waypoint],
        T_start: np.ndarray,
        rate_hz: float = 15.0,
        max_speed: float = 0.2,
        max_angular_speed: float = 0.6,
        settle_tol_m: float = 0.004,
        settle_tol_rad: float = 0.03,
    ) -> None:
        self._waypoints = waypoints
        self._dt = 1.0 / rate_hz
        self._max_m, self._max_rad = max_speed * self._dt, max_angular_speed * self._dt
        self._tol = (settle_tol_m, settle_tol_rad)
        self._T_cmd = T_start.copy()
        self._index = 0
        self._dwelled = 0.0

    @property
    def done(self) -> bool:
        return self._index >= len(self._waypoints)

    def act(self, T_measured: np.ndarray) -> tuple[np.ndarray, bool]:
        """The next commanded target and gripper state, given the measured `ee` pose."""
        w = self._waypoints[min(self._index, len(self._waypoints) - 1)]
        if self.done:
            return self._T_cmd.copy(), w.gripper_open
        self._T_cmd = _step_toward(self._T_cmd, w.T, self._max_m, self._max_rad)
        if np.allclose(self._T_cmd, w.T):
            err_m, err_rad = _pose_error(T_measured, w.T)
            if not w.settle or (err_m < self._tol[0] and err_rad < self._tol[1]):
                self._dwelled += self._dt
                if self._dwelled >= w.dwell_s - 1e-9:
                    self._index += 1
                    self._dwelled = 0.0
        return self._T_cmd.copy(), w.gripper_open


def scripted_policy(cell: SimWorkcell, runner: RunnerConfig, safety: SafetyConfig,
                    max_speed: float = 0.15) -> ScriptedPolicy:
    """The task's expert as a loop policy (`dv-robot --policy scripted`, `dv-teleop --device scripted`), planned
    from the sim's object poses at each episode's first observation, moving well inside the envelope's limits."""
    speed = min(max_speed, 0.6 * safety.max_speed_mps)
    turn = min(0.6, 0.9 * safety.max_angular_speed_rps)
    return ScriptedPolicy(lambda T0: ScriptedExpert(plan_task(cell.task, cell.state()), T0, rate_hz=runner.rate_hz,
                                                    max_speed=speed, max_angular_speed=turn),
                          runner.rate_hz, runner.chunk_length)
