"""Hand-eye data from the sim workcell: the franky-sim arm moves through `calibration.collect.collect`, the
real rig's collector (envelope check, e-stop, settle, arm errors), and a ChArUco board is observed.

Two ways to observe the board, both at the settled arm pose franky-sim reached (`ArmState.T_base_ee`):
- projected (`collect_sim`, on a sim workcell opened through `robot.workcell`, as every dv-* command opens
  one): the board's corners go through the sim camera's true intrinsics and true pose, plus pixel noise. Fast,
  and the noise is known.
- rendered (`collect_sim_rendered`): the board is a textured plate in the MuJoCo scene; the sim camera renders
  it and `calibration.charuco.detect` finds the corners, the same path as a real D415 image. A workcell plan
  cannot add an object to the scene, so this path builds its own `SimWorkcell` with the plate and its own arm.
For the wrist camera the board lies fixed on the table (`T_BASE_BOARD`); for the static camera it is a plate
on the hand (`T_EE_BOARD`). Both poses put the printed face (board -z, OpenCV's board frame) toward the camera.
"""

from __future__ import annotations

import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from calibration.charuco import BoardSpec, camera_matrix, synthetic_observation
from calibration.collect import CALIBRATION_DYNAMICS, Collection, check_pose, collect
from calibration.handeye import MIN_POSES, HandEyeSample, Mode
from calibration.poses import generate_poses
from robot.geometry import inv_T, make_T
from robot.safety import SafetyConfig

if TYPE_CHECKING:
    from robot.arm import Arm
    from robot.cameras.sim import SimCamera
    from robot.workcell import Workcell, WorkcellPlan

# wrist: a 1 mm board flat on the table in front of the robot, print up (board x = base x, y = -base y)
RENDER_TASK = "pick_bottle"  # the scene the rendered board is added to (its objects are moved off the board)
T_BASE_BOARD = make_T(Rotation.from_euler("x", 180, degrees=True).as_matrix(), [0.45, 0.10, 0.001])
# static: a plate on the hand in front of the fingers (ee y = 0.11), print facing ee +y (towards the static
# camera at the home pose); board x = ee x, board y = ee z
T_EE_BOARD = make_T(Rotation.from_euler("x", 90, degrees=True).as_matrix(), [-0.14, 0.11, -0.02])


@dataclass(frozen=True)
class CameraSetup:
    mode: Mode
    target: np.ndarray  # where the aimed axis points
    axis_in_ee: np.ndarray  # the rough view axis (wrist) / board normal (static), from the mount's CAD
    lo: np.ndarray
    hi: np.ndarray


SETUPS = {
    "wrist": CameraSetup("eye_in_hand", np.array([0.57, 0.0, 0.0]), np.array([0.34, 0.0, 0.94]),
                         np.array([0.30, -0.20, 0.30]), np.array([0.55, 0.20, 0.50])),
    # the static D415 sits front-right, high (roughly (0.85, -0.8, 0.75) in base: a tape-measure guess)
    "static": CameraSetup("eye_to_base", np.array([0.85, -0.8, 0.75]), -T_EE_BOARD[:3, 2],
                          np.array([0.35, -0.20, 0.25]), np.array([0.60, 0.15, 0.50])),
}


@dataclass
class SimCollection:
    """What `collect` gathered in the sim, with the ground truth it must recover."""

    collection: Collection
    image_size: tuple[int, int]
    T_true: np.ndarray  # ground truth: T_ee_cam (wrist) or T_base_cam (static)

    @property
    def observations(self) -> list[HandEyeSample]:
        return self.collection.observations

    @property
    def K(self) -> np.ndarray:  # noqa: N802 - the camera matrix's usual name
        return self.collection.K

    @property
    def mode(self) -> Mode:
        return self.collection.mode


def clip_to_workspace(lo, hi, safety: SafetyConfig | None = None,
                      margin: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    box = (safety or SafetyConfig()).workspace
    blo, bhi = np.asarray(box.lo) + margin, np.asarray(box.hi) - margin
    return np.clip(lo, blo, bhi), np.clip(hi, blo, bhi)


def board_plate(camera: str, spec: BoardSpec, texture_png: str) -> Callable[[ET.Element, ET.Element], None]:
    """A `SimWorkcell` scene extra that puts the printed board where `camera`'s setup expects it."""
    from robot.sim import scene

    def add(root: ET.Element, worldbody: ET.Element) -> None:
        size = (spec.squares_x * spec.square_m, spec.squares_y * spec.square_m)
        if SETUPS[camera].mode == "eye_in_hand":
            scene.add_textured_plate(root, worldbody, "charuco_board", texture_png, size, T_BASE_BOARD)
            return
        hand = next(b for b in worldbody.iter("body") if b.get("name") == scene.HAND_BODY)
        T_hand_ee = make_T(np.eye(3), scene.TCP_IN_HAND)
        scene.add_textured_plate(root, hand, "charuco_board", texture_png, size, T_hand_ee @ T_EE_BOARD)

    return add


def _clear_board(cell, margin: float = 0.08, tries: int = 20) -> None:
    """Re-seed the task layout until no object stands on the table board (it would hide corners)."""
    lo, hi = T_BASE_BOARD[:2, 3] - [0, 0.2], T_BASE_BOARD[:2, 3] + [0.28, 0]
    for k in range(tries):
        xy = [np.array([pl.x, pl.y]) for pl in cell.layout.placements.values()]
        if all(np.any(p < lo - margin) or np.any(p > hi + margin) for p in xy):
            return
        cell.reset(seed=1000 + k)
    raise RuntimeError("no layout of the task leaves the calibration board free")


def collect_sim(
    cell: Workcell,
    camera: str,
    n_poses: int = 12,
    noise_px: float = 0.2,
    seed: int = 0,
    spec: BoardSpec | None = None,
    poses: list[np.ndarray] | None = None,
    dynamics: float = CALIBRATION_DYNAMICS,
    min_poses: int = MIN_POSES,
) -> SimCollection:
    """Drive the opened sim workcell's arm through `n_poses` poses (or the given `poses`) with `collect`, the real
    rig's collector, and project the board from each settled pose (`noise_px` of noise) through `camera`'s true
    model (a ground-truth camera, never rendered). The plan's safety bounds the poses and the dynamics."""
    from robot.cameras.sim import SimCamera, SimCameraConfig

    if cell.sim is None:
        raise ValueError("collect_sim needs a sim workcell (robot.workcell.plan_workcell(..., sim=True))")
    _setup(camera)
    cam = SimCamera(SimCameraConfig(name=camera), source=cell.sim)  # ground truth only, never connected
    return _collect_board(cell.arm, cam, camera, n_poses, noise_px, seed, spec, poses, dynamics, cell.plan.safety,
                          min_poses, render=False)


@contextmanager
def rendered_board_workcell(plan: WorkcellPlan, camera: str, spec: BoardSpec | None = None) -> Iterator[Workcell]:
    """The sim workcell of `plan` (through `open_workcell`) with the board as a textured plate in its scene and
    `camera` as its only camera, rendering (colour only); closed on exit."""
    from robot.cameras.sim import SimCameraConfig
    from robot.workcell import open_workcell

    _setup(camera)
    spec = spec or BoardSpec()
    with ExitStack() as stack:
        png = str(Path(stack.enter_context(tempfile.TemporaryDirectory())) / "charuco.png")
        cv2.imwrite(png, spec.image(100))
        plan = replace(plan, task=RENDER_TASK, cameras=(SimCameraConfig(name=camera, depth=False),),
                       scene_extras=(*plan.scene_extras, board_plate(camera, spec, png)))
        cell = open_workcell(plan, stack)
        _clear_board(cell.sim)
        yield cell


def collect_sim_rendered(
    cell: Workcell,
    camera: str,
    n_poses: int = 12,
    seed: int = 0,
    spec: BoardSpec | None = None,
    poses: list[np.ndarray] | None = None,
    dynamics: float = CALIBRATION_DYNAMICS,
    min_poses: int = MIN_POSES,
) -> SimCollection:
    """`collect_sim` with the board rendered in the scene and detected, on a `rendered_board_workcell` (the plate
    must be in its scene); the arm's ceiling is the plan's safety limits'."""
    return _collect_board(cell.arm, cell.cameras[camera], camera, n_poses, 0.0, seed, spec, poses, dynamics,
                          cell.plan.safety, min_poses, render=True)


def _setup(camera: str) -> CameraSetup:
    if camera not in SETUPS:
        raise ValueError(f"camera must be 'wrist' or 'static', got {camera!r}")
    return SETUPS[camera]


def _collect_board(arm: Arm, cam: SimCamera, camera: str, n_poses: int, noise_px: float, seed: int,
                   spec: BoardSpec | None, poses: list[np.ndarray] | None, dynamics: float, safety: SafetyConfig,
                   min_poses: int, render: bool) -> SimCollection:
    """Poses toward the board (unless given), then `collect` at each: the rendered frame detected (`render`) or
    the board projected through `cam`'s true model. The ground truth is `cam`'s true mount."""
    setup, spec, rng = _setup(camera), spec or BoardSpec(), np.random.default_rng(seed)
    intr = cam.intrinsics
    K = camera_matrix(intr.fx, intr.fy, intr.cx, intr.cy)
    size = (intr.width, intr.height)
    if poses is None:
        lo, hi = clip_to_workspace(setup.lo, setup.hi, safety)
        poses = generate_poses(n_poses, setup.target, setup.axis_in_ee, lo, hi, seed=seed,
                               toward_target=True, accept=lambda T: check_pose(T, safety) is None)

    def project(T: np.ndarray, _settled_ns: int) -> tuple[np.ndarray, np.ndarray]:
        if setup.mode == "eye_in_hand":
            T_cam_board = inv_T(T @ cam.T_mount_cam) @ T_BASE_BOARD
        else:
            T_cam_board = inv_T(cam.T_mount_cam) @ T @ T_EE_BOARD
        return synthetic_observation(T_cam_board, spec, K, size, noise_px, rng)

    col = collect(arm, cam if render else None, K, spec, poses, setup.mode, safety, dynamics=dynamics,
                  observe=None if render else project, min_poses=min_poses, settle=render)
    return SimCollection(col, size, cam.T_mount_cam.copy())
