"""`SimCamera`: a D415 of the sim workcell, rendered offscreen from the running MuJoCo simulation.

Each camera owns a capture thread that holds its OpenGL context (contexts are per-thread), snapshots the
physics state at `fps`, renders colour and depth in one pass and publishes the `Frame` into the shared slot, so
`read`/`read_latest` behave exactly as for a RealSense. The physics thread only ever spends a state copy on a
camera (see `robot.sim.render`), so rendering cannot stall franky-sim's 1 kHz loop.

Ground truth for calibration work: `intrinsics` (fx, fy, cx, cy; OpenCV convention) and `T_mount_cam`, the pose
of the colour optical frame (x right, y down, z forward) in its mount frame: `base` for the static camera
(T_base_cam_static), `ee` for the wrist camera (T_ee_cam_wrist, `ee` = franky's end_effector_pose).
"""

from __future__ import annotations

import threading
import time
from typing import Literal

import mujoco
import numpy as np
from pydantic import Field

from robot.cameras.base import Camera, CameraConfig, CameraError, Frame, register_camera
from robot.geometry import inv_T, make_T
from robot.sim import scene
from robot.sim.render import (
    CameraRenderer,
    Intrinsics,
    SimulationStopped,
    StateSource,
    camera_pose_in_body,
    intrinsics_for,
    pose_matrix,
)


class SimCameraConfig(CameraConfig):
    """A camera of the running `SimWorkcell`; `name` selects the model camera ('static' or 'wrist')."""

    type: Literal["sim"] = "sim"
    fps: int = 15  # the control rate; two 640x480 cameras render faster than this on 2 CPU cores (llvmpipe)
    detailed_robot: bool = Field(
        False, description="Draw the FR3's 240k-triangle visual meshes instead of its collision meshes (~4x slower)."
    )


def mount_pose(model: mujoco.MjModel, cam_id: int, hand_body: str) -> tuple[Literal["base", "ee"], np.ndarray]:
    """Where the camera is fixed and its optical frame there: ('base', T_base_cam) or ('ee', T_ee_cam)."""
    T = camera_pose_in_body(model, cam_id)
    body = int(model.cam_bodyid[cam_id])
    hand = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, hand_body)
    while body not in (0, hand):
        T = pose_matrix(model.body_quat[body], model.body_pos[body]) @ T
        body = int(model.body_parentid[body])
    if body == 0:
        return "base", T  # the robot sits at the world origin, so world = base
    return "ee", inv_T(make_T(np.eye(3), scene.TCP_IN_HAND)) @ T  # T_ee_hand · T_hand_cam


@register_camera(SimCameraConfig)
class SimCamera(Camera):
    """Renders `config.name` from `source` (the `SimWorkcell` that builds it) at `config.fps`. The source is always
    passed in: nothing in the process knows "the" running workcell, so two workcells never mix cameras."""

    config: SimCameraConfig

    def __init__(self, config: CameraConfig, source: StateSource | None = None) -> None:
        if not isinstance(config, SimCameraConfig):
            config = SimCameraConfig.model_validate(config.model_dump())
        super().__init__(config)
        if source is None:
            raise CameraError(f"sim camera {config.name!r} needs the workcell it renders: build it with "
                              "SimCamera(config, source=cell), or list it in SimWorkcell(cameras=...)")
        self._source = source
        model = source.model
        self._cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, config.name)
        if self._cam_id < 0:
            raise CameraError(f"sim camera {config.name!r} is not in the workcell model")
        self.intrinsics: Intrinsics = intrinsics_for(float(model.cam_fovy[self._cam_id]), config.width, config.height)
        mount, T = mount_pose(model, self._cam_id, hand_body=scene.HAND_BODY)
        self.mount: Literal["base", "ee"] = mount
        self.T_mount_cam: np.ndarray = T
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def is_connected(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def connect(self) -> None:
        if self.is_connected:
            return
        self._stop.clear()
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(ready, failure), name=f"sim-camera-{self.name}", daemon=True
        )
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise CameraError(f"sim camera {self.name!r} could not start rendering: {failure[0]}") from failure[0]

    def disconnect(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        self._thread = None

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        cfg = self.config
        try:
            renderer = CameraRenderer(self._source, cfg.name, cfg.width, cfg.height, cfg.detailed_robot)
        except BaseException as e:  # noqa: BLE001 - handed to connect(), which raises CameraError
            failure.append(e)
            ready.set()
            return
        ready.set()
        period = 1.0 / cfg.fps
        next_t = time.monotonic()
        frame_number = 0
        try:
            while not self._stop.is_set():
                try:
                    rgb, depth, sim_time = renderer.render(depth=cfg.depth)
                except TimeoutError:
                    continue  # physics stalled; the reader sees a read timeout
                except SimulationStopped:
                    break  # the workcell closed: no more frames, `is_connected` turns False
                frame_number += 1
                self._slot.publish(Frame(rgb, depth, time.monotonic_ns(), sim_time * 1e3, frame_number))
                next_t += period
                delay = next_t - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    next_t = time.monotonic()  # running late: no burst to catch up
        finally:
            renderer.close()
