"""How one loop tick becomes one dataset row: feature names, the dataset config, and the row itself.

A row holds what the policy saw and what the loop did at that tick (`robot.runner.TickRecord`):
- `observation.state`: the model's state input [x, y, z, roll, pitch, yaw, gripper_open] (metres, radians, Euler
  extrinsic xyz, `ee` in `base`; the gripper as commanded before the tick), exactly what `dv-robot` sends;
- `action`: the delta [dx, dy, dz, droll, dpitch, dyaw, gripper_open] composed on the previous commanded target
  (docs/conventions.md#actions), i.e. what `dv-robot` executes, so a recorded episode replays through the same loop;
- `action.target`: the absolute target after the tick; `observation.joints`, `observation.gripper` (width in
  metres, grasped flag);
- `observation.capture_s`: the monotonic capture time of every stream (tick start, proprioception, gripper,
  each camera) in seconds since the episode's first tick, and `observation.camera_frame_number` (a repeat is a
  duplicate frame). The row's LeRobot `timestamp` stays frame_index / fps, which is what video decoding keys on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dreamvla_client.conventions import ACTION_NAMES, STATE_LAYOUT
from robot.execution import state_vector
from robot.runner import TickRecord
from teleop.dataset import CameraSpec, DatasetConfig

JOINT_NAMES = [f"q{i}" for i in range(1, 8)]


def dataset_config(cameras: Mapping[str, tuple[int, int, bool]], fps: int, robot_config: dict[str, Any],
                   video_codec: str = "h264") -> DatasetConfig:
    """cameras: name -> (height, width, has depth). Everything here must match for a later resume. h264 (PyAV) by
    default: lerobot's dataset tools (delete_episodes, re-encoding) refuse OpenCV's mp4v."""
    names = list(cameras)
    return DatasetConfig(
        fps=fps, robot_type="franka", state_names=list(STATE_LAYOUT), action_names=list(ACTION_NAMES),
        cameras={n: CameraSpec(height=h, width=w, depth=d) for n, (h, w, d) in cameras.items()},
        extra_features={
            "action.target": list(STATE_LAYOUT),
            "observation.joints": JOINT_NAMES,
            "observation.gripper": ["width_m", "grasped"],
            "observation.capture_s": ["tick", "state", "gripper", *names],
            "observation.camera_frame_number": names,
        },
        robot_config=robot_config, video_codec=video_codec)


def tick_row(tick: TickRecord, t0_ns: int, cameras: Sequence[str]) -> dict[str, Any]:
    """The keyword arguments of `EpisodeWriter.add_frame` for one tick that has frames."""
    assert tick.frames is not None
    frames = [tick.frames[name] for name in cameras]
    gripper_open = tick.action[6] > 0.5
    return {
        "state": tick.state,
        "action": tick.action,
        "images": {name: f.color for name, f in zip(cameras, frames, strict=True)},
        "depth": {name: f.depth for name, f in zip(cameras, frames, strict=True) if f.depth is not None},
        "extras": {
            "action.target": state_vector(tick.target, gripper_open),
            "observation.joints": tick.arm.joint_positions,
            "observation.gripper": [tick.gripper.width_m, float(tick.gripper.is_grasped)],
            "observation.capture_s": (np.array(
                [tick.tick_ns, tick.arm.capture_ns, tick.gripper.capture_ns, *(f.capture_ns for f in frames)],
                dtype=np.int64) - t0_ns) / 1e9,
            "observation.camera_frame_number": [f.frame_number for f in frames],
        },
    }
