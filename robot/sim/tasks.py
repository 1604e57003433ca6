"""The sim side of the six tasks (`robot.tasks`): how their objects are placed on the table, and success.

Success criteria follow the paper: a pick succeeds when the object is grasped (touching both fingers) and lifted
(its frame more than 5 cm above where it rested); a place succeeds when the object lies inside the basket; a
drawer task succeeds when the drawer moved more than 10 cm (open) or is within 1 cm of closed (close).

Layouts are drawn from a seeded generator so that an episode is reproducible from (task, seed) alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from robot.geometry import inv_T, make_T
from robot.sim.scene import BASKET_INNER_HALF, BASKET_WALL_TOP, GRASPABLES
from robot.tasks import TaskSpec

LIFT_SUCCESS_M = 0.05
DRAWER_OPEN_SUCCESS_M = 0.10
DRAWER_CLOSED_TOL_M = 0.01


@dataclass(frozen=True)
class Placement:
    """Planar pose of an object frame on the table: x, y in the base frame, yaw about z, frame height z."""

    x: float
    y: float
    yaw: float
    z: float = 0.0

    def matrix(self) -> np.ndarray:
        return make_T(Rotation.from_euler("z", self.yaw).as_matrix(), (self.x, self.y, self.z))


@dataclass(frozen=True)
class Layout:
    """Everything `reset` puts in place: object placements and the drawer's initial opening (metres)."""

    placements: dict[str, Placement]
    drawer_opening: float = 0.0


@dataclass(frozen=True)
class SceneState:
    """A consistent snapshot of what the predicates need, taken at one physics step.

    poses: T_base_<body> (4x4) for every task body, plus `drawer_handle` for drawer tasks.
    in_hand: objects touching both fingers. rest_z: the z each object's frame had when placed.
    """

    time_s: float
    poses: dict[str, np.ndarray]
    drawer_opening: float | None
    in_hand: frozenset[str]
    rest_z: dict[str, float] = field(default_factory=dict)


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def sample_layout(task: TaskSpec, rng: np.random.Generator) -> Layout:
    """Random placements in the FR3's comfortable top-down workspace (x 0.38–0.62 m, |y| ≤ 0.22 m)."""
    if task.target == "drawer":
        x, y = _uniform(rng, 0.50, 0.58), _uniform(rng, -0.12, 0.12)
        # The front faces the robot, give or take 0.25 rad.
        yaw = math.atan2(y, x) + _uniform(rng, -0.25, 0.25)
        opening = 0.0 if task.name == "drawer_open" else _uniform(rng, 0.12, 0.18)
        return Layout({"cabinet": Placement(x, y, yaw)}, drawer_opening=opening)

    g = GRASPABLES[task.target]
    obj = Placement(_uniform(rng, 0.40, 0.60), _uniform(rng, -0.2, 0.2), _uniform(rng, -math.pi, math.pi), g.rest_z)
    if "basket" not in task.objects:
        return Layout({task.target: obj})
    # Basket on one side, object on the other, never overlapping.
    side = 1.0 if rng.random() < 0.5 else -1.0
    basket = Placement(_uniform(rng, 0.42, 0.56), side * _uniform(rng, 0.12, 0.22), _uniform(rng, -0.3, 0.3))
    while True:
        obj = Placement(_uniform(rng, 0.40, 0.60), -side * _uniform(rng, 0.0, 0.2), _uniform(rng, -math.pi, math.pi),
                        g.rest_z)
        if math.hypot(obj.x - basket.x, obj.y - basket.y) > BASKET_INNER_HALF * 1.45 + g.footprint_radius:
            return Layout({task.target: obj, "basket": basket})


def in_basket(T_base_obj: np.ndarray, T_base_basket: np.ndarray) -> bool:
    """The object's frame is inside the basket's inner volume (below the rim, with 2 cm of slack above it)."""
    p = inv_T(T_base_basket) @ T_base_obj[:, 3]
    return bool(abs(p[0]) < BASKET_INNER_HALF and abs(p[1]) < BASKET_INNER_HALF and 0.0 < p[2] < BASKET_WALL_TOP + 0.02)


def is_success(task: TaskSpec, state: SceneState, initial_drawer_opening: float) -> bool:
    """The paper's success criterion for `task`, evaluated on one snapshot."""
    if task.name == "drawer_open":
        assert state.drawer_opening is not None
        return state.drawer_opening - initial_drawer_opening > DRAWER_OPEN_SUCCESS_M
    if task.name == "drawer_close":
        assert state.drawer_opening is not None
        return state.drawer_opening < DRAWER_CLOSED_TOL_M
    T = state.poses[task.target]
    if "basket" in task.objects:
        return in_basket(T, state.poses["basket"])
    return task.target in state.in_hand and T[2, 3] - state.rest_z[task.target] > LIFT_SUCCESS_M
