"""The sim workcell against the real franky client: layouts, success predicates, experts, cameras.

Each expert test runs one seeded episode per task through the `Runner` (the 20-seed success rates come from
`dv-robot run TASK --sim --policy scripted --episodes 20`, not from CI). Camera tests check the ground truth the
calibration work relies on: a known 3D point, projected with `intrinsics` and the camera pose, lands on a pixel
whose depth and colour are those of the point.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

import franky
import numpy as np
import pytest

from robot.cameras.base import CameraError, make_camera
from robot.cameras.sim import SimCamera, SimCameraConfig
from robot.sim import experts, scene
from robot.sim.tasks import SceneState, sample_layout
from robot.sim.workcell import SimWorkcell
from robot.tasks import TASKS, get_task
from robot.workcell import open_workcell, plan_workcell

EXPERT_SEEDS = {
    "pick_bottle": 0,
    "pick_doll": 1,
    "place_banana": 2,
    "place_chili": 3,
    "drawer_open": 4,
    "drawer_close": 5,
}


def _ee_pose(robot: franky.Robot) -> np.ndarray:
    return np.asarray(robot.current_cartesian_state.pose.end_effector_pose.matrix)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_layouts_are_reproducible_and_separated(task: str) -> None:
    spec = get_task(task)
    a = sample_layout(spec, np.random.default_rng(7))
    b = sample_layout(spec, np.random.default_rng(7))
    c = sample_layout(spec, np.random.default_rng(8))
    assert a == b
    assert a != c
    for seed in range(50):
        layout = sample_layout(spec, np.random.default_rng(seed))
        for p in layout.placements.values():
            assert 0.38 <= p.x <= 0.62 and abs(p.y) <= 0.25
        if "basket" in spec.objects:
            obj, basket = layout.placements[spec.target], layout.placements["basket"]
            assert np.hypot(obj.x - basket.x, obj.y - basket.y) > 0.2


def test_expert_targets_stay_within_the_action_scale() -> None:
    """Per-tick target changes fit CONVENTIONS' scale (0.02 m, 0.05 rad) and the 0.25 m/s envelope default."""
    layout = sample_layout(get_task("place_banana"), np.random.default_rng(0))
    state = SceneState(0.0, {n: p.matrix() for n, p in layout.placements.items()}, None, frozenset())
    start = experts.top_down(np.array([0.307, 0.0, 0.487]), np.array([0.0, -1.0, 0.0]))
    expert = experts.ScriptedExpert(experts.plan_task(get_task("place_banana"), state), start, rate_hz=15.0)
    previous, steps = start, 0
    while not expert.done:
        target, _ = expert.act(previous)  # perfect tracking
        assert np.linalg.norm(target[:3, 3] - previous[:3, 3]) <= 0.25 / 15 + 1e-9
        angle = np.arccos(np.clip((np.trace(previous[:3, :3].T @ target[:3, :3]) - 1) / 2, -1, 1))
        assert angle <= 0.05 + 1e-9
        previous, steps = target, steps + 1
        assert steps < 1000


@pytest.mark.parametrize("task", sorted(TASKS))
def test_expert_solves_task_through_the_runner(task: str) -> None:
    """The one way an expert episode runs: the scripted policy through the `Runner` (envelope, gripper, real franky
    client) on the workcell `dv-robot run TASK --sim --policy scripted` opens, here without cameras."""
    seed = EXPERT_SEEDS[task]
    plan = dataclasses.replace(plan_workcell(task, sim=True, seed=seed), cameras=())
    with contextlib.ExitStack() as stack:
        cell = open_workcell(plan, stack)
        sim = cell.sim
        assert sim is not None and sim.layout is not None
        home = cell.arm.read_state().T_base_ee
        poses = sim.object_poses()
        for name, placement in sim.layout.placements.items():
            np.testing.assert_allclose(poses[name][:3, 3], (placement.x, placement.y, placement.z), atol=0.005)
        assert not sim.success(), "nothing may count as success before the robot acts"

        runner = cell.runner(experts.scripted_policy(sim, plan.runner, plan.safety), "scripted")
        stack.callback(runner.close)
        t0, sim0 = time.monotonic(), sim.sim_time
        record = runner.run(1).episodes[0]
        wall_s, sim_s = time.monotonic() - t0, sim.sim_time - sim0
        assert record.success, f"{task} seed {seed} failed ({record.outcome}) after {sim_s:.1f} s"
        assert sim_s == pytest.approx(wall_s, rel=0.25), "physics fell behind the wall clock"

        sim.reset(seed)
        assert not sim.success()
        np.testing.assert_allclose(cell.arm.read_state().T_base_ee, home, atol=2e-3)


def _project(cam: SimCamera, T_base_cam: np.ndarray, point: np.ndarray) -> tuple[int, int, float]:
    p = np.linalg.inv(T_base_cam) @ np.append(point, 1.0)
    k = cam.intrinsics
    return round(k.fx * p[0] / p[2] + k.cx), round(k.fy * p[1] / p[2] + k.cy), float(p[2])


def test_cameras_deliver_aligned_colour_and_depth_with_ground_truth_poses() -> None:
    with SimWorkcell(task="pick_bottle", seed=0) as cell:
        robot = franky.Robot(cell.hostname, realtime_config=franky.RealtimeConfig.Ignore)
        static, wrist = cell.cameras["static"], cell.cameras["wrist"]
        assert (static.mount, wrist.mount) == ("base", "ee")
        with static, wrist:
            t = time.monotonic()
            static.read_latest()
            assert time.monotonic() - t < 0.05, "read_latest must never block"
            t0, sim0 = time.monotonic(), cell.sim_time
            frames = {name: [cam.read(timeout_s=1.0) for _ in range(8)] for name, cam in cell.cameras.items()}
            elapsed = time.monotonic() - t0
            assert (cell.sim_time - sim0) / elapsed > 0.8, "rendering stalled the physics thread"
            T_base_ee = _ee_pose(robot)
        for name, fs in frames.items():
            f = fs[-1]
            assert f.color.shape == (480, 640, 3) and f.color.dtype == np.uint8
            assert f.depth is not None and f.depth.shape == (480, 640) and f.depth.dtype == np.uint16
            numbers = [x.frame_number for x in fs]
            assert numbers == sorted(set(numbers)), f"{name}: frames must be new and in order"
            assert fs[-1].device_ts_ms > fs[0].device_ts_ms

        # The bottle's white cap, seen by both cameras, where intrinsics + ground-truth pose say it is.
        bottle = cell.object_poses()["bottle"]
        cap_top = (bottle @ np.array([0.0, 0.0, 0.206, 1.0]))[:3]
        for cam, T_base_cam in ((static, static.T_mount_cam), (wrist, T_base_ee @ wrist.T_mount_cam)):
            u, v, z = _project(cam, T_base_cam, cap_top)
            f = frames[cam.name][-1]
            assert 0 <= u < 640 and 0 <= v < 480, f"{cam.name}: cap projects outside the image"
            assert f.depth is not None
            assert abs(int(f.depth[v, u]) - z * 1000) < 10, f"{cam.name}: depth {f.depth[v, u]} mm vs {z * 1000:.0f}"
            assert f.color[v, u].min() > 150, f"{cam.name}: expected the white cap at ({u}, {v})"
        del robot


def test_a_sim_camera_renders_the_workcell_it_is_given() -> None:
    """No process-global workcell: a sim camera is built with its source; without one `make_camera` says how."""
    with SimWorkcell(task="drawer_open", seed=0, cameras=[]) as cell:
        with pytest.raises(CameraError, match=r"sim camera 'wrist' needs the workcell it renders"):
            make_camera(SimCameraConfig(name="wrist"))
        cam = SimCamera(SimCameraConfig(name="wrist", width=320, height=240), source=cell)
        assert isinstance(cam, SimCamera)
        with cam:
            frame = cam.read(timeout_s=1.0)
        assert frame.color.shape == (240, 320, 3)
        assert cam.intrinsics.fy == pytest.approx(0.5 * 240 / np.tan(np.radians(scene.D415_FOVY_DEG) / 2))
        assert cell.state().drawer_opening == pytest.approx(0.0, abs=1e-3)
