"""Offscreen colour + depth rendering of one MuJoCo camera, off the physics thread.

Why it is built this way:
- franky-sim steps MuJoCo in its own thread at 1 kHz with no lock, so a renderer must never read the live
  `MjData`. `StateSource.copy_state` copies qpos/qvel/mocap at a step boundary (in the physics thread, a few
  microseconds), and the renderer recomputes kinematics on its private `MjData`; the physics thread is never
  blocked by a render.
- An OpenGL context belongs to the thread that made it current, so a `CameraRenderer` must be created, used
  and closed by one thread (the camera's capture thread).
- Cheap enough for two cameras at the control rate on 2 CPU cores with llvmpipe (EGL, no GPU). Measured per
  640x480 colour + depth frame of the workcell (static / wrist camera): 225 / 179 ms with franky-sim's
  defaults (shadows, 8x MSAA); 24 / 19 ms with both off; 9.4 / 9.1 ms when the robot is drawn with its
  collision meshes (2.5k triangles) instead of its visual ones (240k) — the default here, `detailed_robot`
  restores the visual meshes; 4 ms at 320x240. The scene has no skybox, which alone cost ~15 ms a frame.
  Colour and depth come from one render pass.
"""

from __future__ import annotations

import importlib
import math
import os
from typing import Any, Protocol

import mujoco
import numpy as np

from robot.cameras.base import Intrinsics
from robot.geometry import make_T


def _gl_context_class() -> Any:
    """The GL backend named by MUJOCO_GL, defaulting to headless EGL.

    Chosen here rather than through `mujoco.GLContext`, which is fixed when mujoco is first imported —
    often by franky-sim, before anyone had a chance to set MUJOCO_GL.
    """
    backend = os.environ.get("MUJOCO_GL", "egl").strip().lower()
    module = {"osmesa": "mujoco.osmesa", "glfw": "mujoco.glfw"}.get(backend, "mujoco.egl")
    return importlib.import_module(module).GLContext


class SimulationStopped(RuntimeError):
    """The simulation a renderer reads from has shut down; there will be no more states."""


class StateSource(Protocol):
    """Something that owns a running simulation and can hand out consistent snapshots of it."""

    @property
    def model(self) -> mujoco.MjModel: ...

    def copy_state(self, dst: mujoco.MjData, timeout_s: float = 1.0) -> None:
        """Copy the state at the next step boundary into `dst` (positions only; no derived quantities).

        Raises `SimulationStopped` when the simulation has shut down.
        """
        ...


def intrinsics_for(fovy_deg: float, width: int, height: int) -> Intrinsics:
    """MuJoCo's projection: square pixels, principal point at the image centre, vertical FOV `fovy`."""
    f = 0.5 * height / math.tan(math.radians(fovy_deg) / 2)
    return Intrinsics(width, height, f, f, (width - 1) / 2, (height - 1) / 2)


# MuJoCo cameras look along -z with y up; the optical frame (docs/conventions.md#frames) has y down and z forward.
_MJCAM_T_OPTICAL = np.diag([1.0, -1.0, -1.0, 1.0])


def pose_matrix(quat_wxyz: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """A MuJoCo (w, x, y, z) quaternion and position as a 4x4 transform."""
    mat = np.zeros(9)
    mujoco.mju_quat2Mat(mat, quat_wxyz)
    return make_T(mat.reshape(3, 3), pos)


def camera_pose_in_body(model: mujoco.MjModel, cam_id: int) -> np.ndarray:
    """T_body_optical of camera `cam_id` relative to the body it is attached to (a model constant)."""
    return pose_matrix(model.cam_quat[cam_id], model.cam_pos[cam_id]) @ _MJCAM_T_OPTICAL


def depth_buffer_to_mm(zbuf: np.ndarray, near: float, far: float) -> np.ndarray:
    """Reversed depth-buffer values (1 near, 0 far) to metric z along the optical axis, uint16 millimetres.

    Background (no return) and any non-finite value (a context's buffer before its first frame was seen to hold
    NaN) become 0 = no data, as a D415 reports it, instead of an undefined cast."""
    zbuf = zbuf.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = far * near / (zbuf * (far - near) + near)
    valid = (zbuf > 0.0) & np.isfinite(z)
    mm = np.where(valid, np.round(np.where(valid, z, 0.0) * 1000.0), 0.0)
    return np.clip(mm, 0, np.iinfo(np.uint16).max).astype(np.uint16)


class CameraRenderer:
    """Renders one named model camera to RGB uint8 and depth uint16 millimetres (0 = nothing within range)."""

    def __init__(
        self, source: StateSource, camera: str, width: int, height: int, detailed_robot: bool = False
    ) -> None:
        model = source.model
        self._source = source
        self._model = model
        self._cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if self._cam_id < 0:
            raise ValueError(f"camera {camera!r} not in the model")
        if width > model.vis.global_.offwidth or height > model.vis.global_.offheight:
            raise ValueError(f"{width}x{height} exceeds the offscreen buffer of the model")
        self._data = mujoco.MjData(model)
        self._gl = _gl_context_class()(width, height)
        self._gl.make_current()
        self._ctx = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_100)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._ctx)
        # 1 at the near plane, 0 at the far one: float depth keeps its precision where distances are large.
        self._ctx.readDepthMap = mujoco.mjtDepthMap.mjDEPTH_ZEROFAR
        self._scene = mujoco.MjvScene(model, maxgeom=2000)
        self._scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        self._scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self._option = mujoco.MjvOption()
        self._option.geomgroup[2] = detailed_robot  # group 2: the FR3's visual meshes
        self._option.geomgroup[3] = not detailed_robot  # group 3: its collision meshes
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._camera.fixedcamid = self._cam_id
        self._rect = mujoco.MjrRect(0, 0, width, height)
        self._rgb = np.empty((height, width, 3), np.uint8)
        self._zbuf = np.empty((height, width), np.float32)
        extent = model.stat.extent
        self._near = float(model.vis.map.znear * extent)
        self._far = float(model.vis.map.zfar * extent)

    def render(self, depth: bool = True) -> tuple[np.ndarray, np.ndarray | None, float]:
        """Snapshot the simulation and render it: (rgb, depth in mm or None, sim time in s)."""
        self._source.copy_state(self._data)
        mujoco.mj_kinematics(self._model, self._data)
        mujoco.mj_camlight(self._model, self._data)
        mujoco.mjv_updateScene(self._model, self._data, self._option, None, self._camera,
                               mujoco.mjtCatBit.mjCAT_ALL, self._scene)
        mujoco.mjr_render(self._rect, self._scene, self._ctx)
        mujoco.mjr_readPixels(self._rgb, self._zbuf if depth else None, self._rect, self._ctx)
        rgb = np.flipud(self._rgb).copy()  # OpenGL rows run bottom-up
        depth_mm = self._depth_mm(np.flipud(self._zbuf)) if depth else None
        return rgb, depth_mm, float(self._data.time)

    def _depth_mm(self, zbuf: np.ndarray) -> np.ndarray:
        return depth_buffer_to_mm(zbuf, self._near, self._far)

    def close(self) -> None:
        """Free the GL resources; call from the thread that created the renderer."""
        self._ctx.free()
        self._gl.free()
