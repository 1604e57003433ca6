"""`SimWorkcell`: franky-sim's MuJoCo FR3 on a table with one task's objects and two D415s, in-process.

    with SimWorkcell(task="pick_bottle", seed=3) as cell:
        robot = franky.Robot(cell.hostname, realtime_config=franky.RealtimeConfig.Ignore)
        ...
        cell.success(); cell.reset(seed=4)

The real `franky.Robot`/`franky.Gripper` clients talk to franky-sim's libfranka-protocol server on a loopback
address, so robot code is exercised exactly as against a real arm.

Physics runs in one thread that calls franky-sim's `SimulationServer.run_once` (commands in, one 1 ms MuJoCo
step, state out) on an absolute 1 kHz schedule. franky-sim's own `run_async` sleeps "1 ms minus this tick"
without catching up, which loses ~8% to sleep overshoot on an idle machine and more under load; a tick costs
~0.3 ms here, so the absolute schedule keeps simulated time on the wall clock.

The physics thread holds no lock around `MjData`; this class therefore touches the live state only from inside
that thread, through step callbacks:
- reads (`state`, `success`, cameras) ask the physics thread to copy qpos/qvel/mocap into a private `MjData`
  at the next step boundary (microseconds), then compute kinematics and contacts on the copy;
- `reset` hands the new layout to the physics thread, which applies it between two steps and re-seeds the
  robot server's hold position (otherwise its joint PD would drag the arm back to where it was).
"""

from __future__ import annotations

import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

import mujoco
import numpy as np
from franky_sim import LocalHostnames, SimulationServer
from franky_sim.franka_server import FrankaServer
from franky_sim.mujoco_simulator import FrankaMujocoRobot, MujocoSimulator

from robot.cameras.sim import SimCamera, SimCameraConfig
from robot.geometry import make_T
from robot.sim import scene
from robot.sim.render import SimulationStopped
from robot.sim.tasks import Layout, SceneState, is_success, sample_layout
from robot.tasks import HOME_Q, TaskSpec, get_task


def default_cameras() -> list[SimCameraConfig]:
    """The real rig: a static third-person D415 and a wrist D415."""
    return [SimCameraConfig(name="static"), SimCameraConfig(name="wrist")]


class SimWorkcell:
    """The simulated rig for one task. Enter it to start physics and the libfranka server; exit to stop both."""

    def __init__(
        self, task: str, seed: int = 0, cameras: Sequence[SimCameraConfig] | None = None,
        scene_extras: Sequence[Callable[[ET.Element, ET.Element], None]] = (),
    ) -> None:
        """`cameras`: the sim cameras to create (not connected); default both D415s, [] for none.
        `scene_extras`: callables `(scene, worldbody)` that add to the MJCF before it compiles (e.g. a
        calibration board); they run after the task's objects."""
        self.task: TaskSpec = get_task(task)
        self._scene_extras = list(scene_extras)
        self._seed = seed
        self._camera_configs = list(default_cameras() if cameras is None else cameras)
        self._physics_thread: threading.Thread | None = None
        self._running = threading.Event()
        self._sim: MujocoSimulator | None = None
        self._server: SimulationServer | None = None
        self._robot: FrankaMujocoRobot | None = None
        self.cameras: dict[str, SimCamera] = {}
        self.layout: Layout | None = None
        # Requests served by the physics thread between two steps.
        self._lock = threading.Lock()
        self._copy_requests: list[tuple[mujoco.MjData, threading.Event]] = []
        self._pending_reset: tuple[Layout, threading.Event] | None = None
        self._query_lock = threading.Lock()
        self._query_data: mujoco.MjData | None = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Self:
        sim = MujocoSimulator()
        sim.init()
        self._sim = sim
        try:
            self._robot = sim.add_robot(initial_q=HOME_Q, initial_hand_width=scene.HAND_OPEN_WIDTH)
            self._build_scene(sim)
            self._server = SimulationServer(sim, hostname_candidates=LocalHostnames())
            self._server.init()  # binds the first free 127.x.y.z and compiles the model
            self._index_model()
            sim.register_pre_step_callback(self._apply_pending_reset)
            sim.register_post_step_callback(self._serve_copies)
            self._running.set()
            self._physics_thread = threading.Thread(target=self._physics_loop, name="sim-physics", daemon=True)
            self._physics_thread.start()
            self._query_data = mujoco.MjData(self.model)
            self.cameras = {cfg.name: SimCamera(cfg, source=self) for cfg in self._camera_configs}
            self.reset(self._seed)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop cameras, physics and the server; safe to call twice."""
        for camera in self.cameras.values():
            camera.disconnect()
        self._running.clear()
        if self._physics_thread is not None:
            self._physics_thread.join()
            self._physics_thread = None
        if self._server is not None:
            self._server.cleanup()
            close_connections(self._server)
            self._server = None
        if self._sim is not None and self._sim.is_initialized and not self._sim.is_cleaned_up:
            self._sim.cleanup()
        self._sim = None

    def _build_scene(self, sim: MujocoSimulator) -> None:
        width = max([c.width for c in self._camera_configs], default=640)
        height = max([c.height for c in self._camera_configs], default=480)
        scene.configure_visual(sim.scene, width, height)
        scene.configure_physics(sim.scene)
        scene.add_table(sim.worldbody)
        scene.add_static_camera(sim.worldbody)
        scene.add_wrist_camera(sim.worldbody, scene.HAND_BODY)
        scene.paint_robot_collision_geometry(sim.worldbody)
        for name in self.task.objects:
            scene.OBJECT_BUILDERS[name](sim.worldbody)
        for extra in self._scene_extras:
            extra(sim.scene, sim.worldbody)

    def _index_model(self) -> None:
        m = self.model

        def body(name: str) -> int:
            return mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, name)

        def qadr(joint: str) -> int:
            return int(m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, joint)])

        self._arm_qadr = [qadr(f"{scene.ROBOT_PREFIX}fr3_joint{i}") for i in range(1, 8)]
        self._finger_qadr = [qadr(f"{scene.ROBOT_PREFIX}finger_joint{i}") for i in (1, 2)]
        self._finger_bodies = (body(f"{scene.ROBOT_PREFIX}left_finger"), body(f"{scene.ROBOT_PREFIX}right_finger"))
        self._bodies = {name: body(name) for name in self.task.objects}
        self._free_qadr = {n: qadr(f"{n}_joint") for n in self.task.objects if n in scene.GRASPABLES}
        self._mocap = {n: int(m.body_mocapid[b]) for n, b in self._bodies.items() if m.body_mocapid[b] >= 0}
        self._drawer_qadr = qadr("drawer_joint") if "cabinet" in self.task.objects else None
        if self._drawer_qadr is not None:
            self._bodies["drawer"] = body("drawer")
            self._handle_site = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "drawer_handle_site")

    # ------------------------------------------------------------------ properties

    @property
    def model(self) -> mujoco.MjModel:
        """The compiled MuJoCo model (read-only by convention: physics runs on it)."""
        if self._sim is None or self._sim.model is None:
            raise RuntimeError("the workcell is not running")
        return self._sim.model

    @property
    def hostname(self) -> str:
        """The loopback address to give `franky.Robot` / `franky.Gripper`."""
        if self._robot is None or self._robot.hostname is None:
            raise RuntimeError("the workcell is not running")
        return str(self._robot.hostname)

    @property
    def instruction(self) -> str:
        return self.task.instruction

    @property
    def sim_time(self) -> float:
        """Simulated seconds since start (advances 1 ms per physics step)."""
        if self._sim is None or self._sim.data is None:
            raise RuntimeError("the workcell is not running")
        return float(self._sim.data.time)

    # ------------------------------------------------------------------ physics thread

    def _physics_loop(self, max_lag_s: float = 0.05) -> None:
        """One franky-sim tick per millisecond of wall time; after a stall > `max_lag_s`, drop the debt
        instead of bursting through it (a burst would replay stale commands faster than the client runs)."""
        assert self._server is not None
        server = self._server
        next_t = time.perf_counter()
        while self._running.is_set():
            server.run_once(realtime=False)
            next_t += 0.001
            delay = next_t - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            elif delay < -max_lag_s:
                next_t = time.perf_counter()

    def _serve_copies(self, sim: MujocoSimulator) -> None:
        if not self._copy_requests:
            return
        with self._lock:
            requests, self._copy_requests = self._copy_requests, []
        src = sim.data
        for dst, done in requests:
            dst.qpos[:] = src.qpos
            dst.qvel[:] = src.qvel
            dst.mocap_pos[:] = src.mocap_pos
            dst.mocap_quat[:] = src.mocap_quat
            dst.time = src.time
            done.set()

    def _apply_pending_reset(self, sim: MujocoSimulator) -> None:
        if self._pending_reset is None:
            return
        with self._lock:
            assert self._pending_reset is not None
            layout, done = self._pending_reset
            self._pending_reset = None
        d = sim.data
        d.qvel[:] = 0.0
        d.qacc_warmstart[:] = 0.0
        d.qpos[self._arm_qadr] = HOME_Q
        d.qpos[self._finger_qadr] = scene.HAND_OPEN_WIDTH / 2
        for name, placement in layout.placements.items():
            T = placement.matrix()
            quat = np.empty(4)
            mujoco.mju_mat2Quat(quat, T[:3, :3].ravel())
            if name in self._free_qadr:
                a = self._free_qadr[name]
                d.qpos[a : a + 3] = T[:3, 3]
                d.qpos[a + 3 : a + 7] = quat
            else:
                d.mocap_pos[self._mocap[name]] = T[:3, 3]
                d.mocap_quat[self._mocap[name]] = quat
        if self._drawer_qadr is not None:
            d.qpos[self._drawer_qadr] = layout.drawer_opening
        assert self._robot is not None and self._robot.server is not None
        self._robot.set_hand_goal(scene.HAND_OPEN_WIDTH, 0.05, 70.0)
        # Protected API: re-seeds the server's idle hold position from the new joint state (franky-sim has no
        # public teleport). Only valid while no motion runs, which `reset` checks.
        self._robot.server._reset_state()
        done.set()

    # ------------------------------------------------------------------ public API

    def copy_state(self, dst: mujoco.MjData, timeout_s: float = 1.0) -> None:
        """Copy qpos, qvel, mocap and time of the next physics step into `dst` (no derived quantities).

        Raises `SimulationStopped` once the workcell is closed, `TimeoutError` if physics does not step.
        """
        if not self._running.is_set():
            raise SimulationStopped("the workcell is closed")
        done = threading.Event()
        with self._lock:
            self._copy_requests.append((dst, done))
        if not done.wait(timeout_s):
            with self._lock:
                if (dst, done) in self._copy_requests:
                    self._copy_requests.remove((dst, done))
            raise TimeoutError(f"the physics thread did not step within {timeout_s:.1f} s")

    def reset(self, seed: int | None = None, settle_s: float = 0.3) -> None:
        """Arm to HOME_Q with the gripper open, objects to a fresh layout from `seed`, then let it settle.

        The arm must be idle (no franky motion running): a reset teleports the joints, which a running
        motion generator would fight. The gripper is left commanded open.
        """
        assert self._robot is not None and self._robot.server is not None
        deadline = time.monotonic() + 2.0
        while self._robot.server.current_motion_id != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("cannot reset while a franky motion is running; stop or join it first")
            time.sleep(0.01)
        if seed is not None:
            self._seed = seed
        layout = sample_layout(self.task, np.random.default_rng(self._seed))
        done = threading.Event()
        with self._lock:
            self._pending_reset = (layout, done)
        if not done.wait(2.0):
            raise TimeoutError("the physics thread did not apply the reset within 2 s")
        self.layout = layout
        time.sleep(settle_s)

    def state(self) -> SceneState:
        """A consistent snapshot of object poses, drawer opening and what is held between the fingers."""
        assert self._query_data is not None and self.layout is not None
        with self._query_lock:
            d = self._query_data
            self.copy_state(d)
            mujoco.mj_forward(self.model, d)
            poses = {name: make_T(d.xmat[b].reshape(3, 3), d.xpos[b]) for name, b in self._bodies.items()}
            opening = None
            if self._drawer_qadr is not None:
                opening = float(d.qpos[self._drawer_qadr])
                site = self._handle_site
                poses["drawer_handle"] = make_T(d.site_xmat[site].reshape(3, 3), d.site_xpos[site])
            in_hand = self._held_objects(d)
            return SceneState(
                time_s=float(d.time),
                poses=poses,
                drawer_opening=opening,
                in_hand=in_hand,
                rest_z={n: p.z for n, p in self.layout.placements.items()},
            )

    def _held_objects(self, d: mujoco.MjData) -> frozenset[str]:
        touching: dict[int, set[int]] = {}
        geom_body = self.model.geom_bodyid
        fingers = set(self._finger_bodies)
        bodies1 = geom_body[d.contact.geom1[: d.ncon]]
        bodies2 = geom_body[d.contact.geom2[: d.ncon]]
        for b1, b2 in zip(bodies1.tolist(), bodies2.tolist(), strict=True):
            for finger, other in ((b1, b2), (b2, b1)):
                if finger in fingers:
                    touching.setdefault(other, set()).add(finger)
        return frozenset(n for n, b in self._bodies.items() if touching.get(b) == fingers)

    def object_poses(self) -> dict[str, np.ndarray]:
        """T_base_<object> (4x4) for each task body (and `drawer_handle` for the drawer tasks)."""
        return self.state().poses

    def success(self) -> bool:
        """The task's success predicate on the current state (the DreamVLA paper's §4.3 criteria)."""
        assert self.layout is not None
        return is_success(self.task, self.state(), self.layout.drawer_opening)


def close_connections(server: SimulationServer) -> None:
    """franky-sim's cleanup closes only its listening sockets: the accepted TCP connections and the UDP sockets of
    the arm and the hand stay open (CLOSE-WAIT) for as long as anything references the server. Left so, a sim
    started later on the same loopback ports (in this process or a child) saw state jumps in its first episode;
    close them with the servers."""
    for robot_server in server.robot_servers:
        for part in (robot_server, *(v for v in vars(robot_server).values() if isinstance(v, FrankaServer))):
            part.reset_state()
