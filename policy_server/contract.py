"""Robot contract checks: what a client declared at `hello` against the model, and each observation
against what its client declared. Torch-free: the server's socket thread runs these."""

from __future__ import annotations

import numpy as np

from policy_server.protocol import ModelContract, Observation, ProtocolError, RobotContract


def contract_mismatches(robot: RobotContract, model: ModelContract) -> list[str]:
    """Every reason the robot's contract cannot drive this model (empty: compatible)."""
    reasons = []
    names = [c.name for c in robot.cameras]
    if len(set(names)) != len(names):
        reasons.append(f"duplicate camera names {names}")
    if set(names) != set(model.cameras):
        reasons.append(f"cameras {sorted(names)} != model cameras {sorted(model.cameras)}")
    for cam in robot.cameras:
        if cam.color_order != "rgb":
            reasons.append(f"camera {cam.name!r} sends {cam.color_order}; the model takes rgb (convert on the robot)")
    if robot.state_layout != model.state_layout:
        reasons.append(f"state_layout {robot.state_layout} != model {model.state_layout}")
    if robot.chunk_length != model.chunk_length:
        reasons.append(f"chunk_length {robot.chunk_length} != model {model.chunk_length}")
    if robot.gripper != model.gripper:
        reasons.append(f"gripper {robot.gripper!r} != model {model.gripper!r}")
    if robot.action_convention != model.action_convention:
        reasons.append(f"action_convention {robot.action_convention!r} != model {model.action_convention!r}")
    return reasons


def validate_observation(obs: Observation, contract: RobotContract) -> None:
    """Hold an observation to what its client declared at `hello`; raise the ProtocolError to reply."""
    declared = {c.name: c for c in contract.cameras}
    if set(obs.images) != set(declared):
        raise ProtocolError("invalid_field", f"observation.images has cameras {sorted(obs.images)}; "
                                             f"hello declared {sorted(declared)}")
    for name, cam in declared.items():
        image = obs.images[name]
        if image.dtype != np.uint8 or image.shape != (cam.height, cam.width, 3):
            raise ProtocolError("invalid_field", f"observation.images.{name}: {image.dtype} {image.shape}; "
                                                 f"hello declared uint8 {(cam.height, cam.width, 3)}")
    state, width = obs.state, len(contract.state_layout)
    if state.dtype not in (np.float32, np.float64) or state.shape != (width,):
        raise ProtocolError("invalid_field", f"observation.state: {state.dtype} {state.shape}; "
                                             f"expected float32/float64 ({width},)")
    if not np.isfinite(state).all():
        raise ProtocolError("non_finite", f"observation.state holds NaN or Inf: {state.tolist()}")
