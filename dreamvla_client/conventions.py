"""The state and action vectors both sides agree on: their entries' names, order, units and sizes.

The one declaration of docs/conventions.md's state vector and action: the robot builds and executes them, the
recorder names the dataset's columns after them, the server checks observations and the model reads them by
these names. A consumer that needs another layout (an importer of someone else's checkpoint or dataset)
converts at its own boundary. Torch-free and dependency-free: the robot PC and the GPU box both import it.
"""

from __future__ import annotations

# The pose of `ee` in `base`: position in metres, then Euler angles extrinsic xyz in radians
# (scipy's `Rotation.from_euler("xyz", ...)`).
POSE_NAMES: tuple[str, ...] = ("x", "y", "z", "roll", "pitch", "yaw")

# The model's proprioception, one float32 7-vector per observation: the measured pose, then the gripper as the
# loop last commanded it (1.0 open, 0.0 closed). `RobotContract.state_layout` / `ModelContract.state_layout`
# carry it, so a model trained on another layout is refused at `hello`.
STATE_LAYOUT: tuple[str, ...] = (*POSE_NAMES, "gripper_open")

# One action: a relative pose in the frame of the previous commanded target (metres, radians, Euler extrinsic
# xyz), then the gripper command (1 open, 0 closed). A reply holds `chunk_length` of them.
ACTION_NAMES: tuple[str, ...] = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper_open")

STATE_DIM = len(STATE_LAYOUT)
ACTION_DIM = len(ACTION_NAMES)

# The unit of each state entry, as error messages and tables print it ('' for the dimensionless gripper).
STATE_UNITS: dict[str, str] = {**dict.fromkeys(POSE_NAMES[:3], "m"), **dict.fromkeys(POSE_NAMES[3:], "rad"),
                               "gripper_open": ""}

# The contract strings that name the conventions above (units are the contracts' `m_rad` literal); a robot and a
# model that differ in one are refused at `hello`.
GRIPPER_CONVENTION = "1_open_0_closed"
ACTION_CONVENTION = "delta_previous_target_euler_xyz"
