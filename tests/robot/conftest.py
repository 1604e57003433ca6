"""Fixtures shared by the loop-level tests: one sim workcell and its connected arm per test module."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from arm_probes import SMALL_CAMERA


@pytest.fixture(scope="module")
def cell() -> Iterator[Any]:
    pytest.importorskip("franky_sim")
    from robot.cameras.sim import SimCameraConfig
    from robot.sim.workcell import SimWorkcell

    cameras = [SimCameraConfig(name=n, **SMALL_CAMERA) for n in ("static", "wrist")]
    with SimWorkcell(task="pick_bottle", seed=0, cameras=cameras) as c:
        for camera in c.cameras.values():
            camera.connect()
        yield c


@pytest.fixture(scope="module")
def devices(cell: Any) -> Iterator[tuple[Any, Any]]:
    from robot.arm import Arm, ArmConfig, Gripper, GripperConfig

    with Arm(ArmConfig(host=cell.hostname, realtime="ignore", relative_dynamics_factor=0.1)) as arm, \
            Gripper(GripperConfig(host=cell.hostname)) as gripper:
        yield arm, gripper
