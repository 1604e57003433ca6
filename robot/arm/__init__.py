"""The Franka arm and hand over franky: the same code drives franky-sim and a real Panda/FR3."""

from robot.arm.arm import Arm, ArmConfig, ArmError, ArmState, check_rigid_transform, pose_from_matrix
from robot.arm.gripper import Gripper, GripperConfig, GripperState

__all__ = [
    "Arm",
    "ArmConfig",
    "ArmError",
    "ArmState",
    "Gripper",
    "GripperConfig",
    "GripperState",
    "check_rigid_transform",
    "pose_from_matrix",
]
