"""How each device of a workcell is opened, and what a person should check when it cannot be.

Every opener turns the device's own failure into a `DeviceUnavailable` that names the device and the check
(`robot.errors.opening`), and registers the close with the caller's `ExitStack`, so a half-opened workcell is
closed in reverse order. Connecting moves nothing. `robot.workcell.open_workcell` is the one caller that opens a
whole rig (`dv-calib` opens its rig there too, through `calibration.workcell`, and names the arm or camera with
these check texts when one fails mid-calibration).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from robot.errors import DeviceUnavailable, opening

if TYPE_CHECKING:
    from robot.arm import Arm, ArmConfig, Gripper
    from robot.cameras import Camera, CameraConfig
    from robot.estop import EStopListener, StatusPublisher
    from robot.launch import LaunchConfig

ARM_CHECK = ("that the arm is powered on and reachable from this PC, FCI is activated in Desk, and robot.arm.host "
             "and robot.arm.realtime in the launch file")
SIM_ARM_CHECK = "that franky-sim started (the sim workcell's log)"
GRIPPER_CHECK = "that the Franka Hand is attached and was initialised in Desk"


def camera_check(config: CameraConfig) -> str:
    """What to check when the camera `config` describes cannot be opened."""
    if config.type == "sim":
        return "that MuJoCo can render offscreen here (MUJOCO_GL=egl)"
    if config.type == "realsense":
        return ("that the D415 is plugged in (USB 3) and `rs-enumerate-devices` lists the serial the launch file "
                f"gives camera {config.name!r}")
    return f"camera {config.name!r} in the launch file"


def connect_cameras(cameras: Mapping[str, Camera], stack: contextlib.ExitStack) -> None:
    """Connect every camera (each disconnected when `stack` closes); a failure names the camera."""
    from robot.cameras import CameraError

    for camera in cameras.values():
        with opening(f"camera {camera.name!r}", camera_check(camera.config), CameraError):
            camera.connect()
        stack.callback(camera.disconnect)


def open_arm(arm_cfg: ArmConfig, stack: contextlib.ExitStack, sim: bool) -> tuple[Arm, Gripper]:
    """The connected arm and gripper (closed with `stack`); connecting moves nothing, a failure names the device."""
    import franky

    from robot.arm import Arm, Gripper, GripperConfig

    with opening(f"arm (FCI at {arm_cfg.host})", SIM_ARM_CHECK if sim else ARM_CHECK, franky.Exception):
        arm = stack.enter_context(Arm(arm_cfg))
    with opening(f"gripper (at {arm_cfg.host})", SIM_ARM_CHECK if sim else GRIPPER_CHECK, franky.Exception):
        gripper = stack.enter_context(Gripper(GripperConfig(host=arm_cfg.host)))
    return arm, gripper


def open_estop(launch: LaunchConfig | None,
               stack: contextlib.ExitStack) -> tuple[EStopListener | None, StatusPublisher | None]:
    """The e-stop listener and status publisher a launch file asks for, bound (none without a launch file, or when
    it neither requires an e-stop nor starts a console). Waiting for the console is `await_console`."""
    if launch is None or not (launch.estop_required or launch.estop.console):
        return None, None
    import zmq

    from robot.estop import EStopListener, StatusPublisher

    e = launch.estop
    bound = "that no other dv-robot, dv-teleop or dv-calib uses it (estop.endpoint, estop.status_endpoint)"
    with opening(f"e-stop listener on {e.endpoint}", bound, zmq.ZMQError):
        listener = stack.enter_context(EStopListener(e.endpoint, required=launch.estop_required, timeout_s=e.timeout_s))
    with opening(f"e-stop status publisher on {e.status_endpoint}", bound, zmq.ZMQError):
        status = stack.enter_context(StatusPublisher(e.status_endpoint))
    return listener, status


def await_console(listener: EStopListener, endpoint: str, wait_s: float) -> None:
    """Pre-flight for a required e-stop: a console must be heard within `wait_s` before anything moves. Only the
    waiting is done here; arming (ARMED -> RUN) stays the runner's start."""
    from robot.estop.listener import EStopMode

    deadline = time.monotonic() + wait_s
    while listener.check().mode is EStopMode.WAITING:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeviceUnavailable("e-stop console", f"no heartbeat on {endpoint} within {wait_s:g} s",
                                    f"that dv-estop runs with --endpoint {endpoint} (dv-launch starts it with "
                                    "estop.console: true)")
        listener.poll(min(left, 0.05))
