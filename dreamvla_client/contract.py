"""Robot contract checks: what a client declared at `hello` against the model, each observation against
what its client declared and the model's physical state ranges, and each model output against the
model's action range. Torch-free: the server's threads run these."""

from __future__ import annotations

import numpy as np

from dreamvla_client.conventions import STATE_UNITS
from dreamvla_client.protocol import Infer, ModelContract, ProtocolError, RobotContract

# Physical range of each state entry the protocol knows (docs/conventions.md: metres and radians in the
# robot base frame, Euler xyz as scipy's `as_euler("xyz")` returns them, gripper 1 = open / 0 = closed).
# Positions: farther than any arm this stack drives reaches from its base (a Franka reaches 0.855 m).
# Angles: the Euler ranges themselves, rounded up at the 4th decimal so that float32(pi) fits.
POSITION_LIMIT_M = 2.0
STATE_RANGES: dict[str, tuple[float, float]] = {
    "x": (-POSITION_LIMIT_M, POSITION_LIMIT_M),
    "y": (-POSITION_LIMIT_M, POSITION_LIMIT_M),
    "z": (-POSITION_LIMIT_M, POSITION_LIMIT_M),
    "roll": (-3.1416, 3.1416),
    "pitch": (-1.5708, 1.5708),
    "yaw": (-3.1416, 3.1416),
    "gripper_open": (0.0, 1.0),
}


def physical_state_range(layout: list[str]) -> list[list[float]]:
    """The contract's `state_range` for a state layout; ValueError for an entry with no known range."""
    unknown = [name for name in layout if name not in STATE_RANGES]
    if unknown:
        raise ValueError(f"state entries {unknown} have no physical range (known: {sorted(STATE_RANGES)})")
    return [list(STATE_RANGES[name]) for name in layout]


def contract_mismatches(robot: RobotContract, model: ModelContract) -> dict[str, str]:
    """Every robot contract field that cannot drive this model, with the reason (empty: compatible)."""
    reasons: dict[str, list[str]] = {}
    names = [c.name for c in robot.cameras]
    if len(set(names)) != len(names):
        reasons.setdefault("cameras", []).append(f"duplicate camera names {names}")
    if set(names) != set(model.cameras):
        reasons.setdefault("cameras", []).append(f"cameras {sorted(names)} != model cameras {sorted(model.cameras)}")
    for cam in robot.cameras:
        if cam.color_order != "rgb":
            reasons.setdefault("cameras.color_order", []).append(
                f"camera {cam.name!r} sends {cam.color_order}; the model takes rgb (convert on the robot)")
    for name in ("state_layout", "chunk_length", "gripper", "action_convention"):
        ours, theirs = getattr(robot, name), getattr(model, name)
        if ours != theirs:
            reasons.setdefault(name, []).append(f"{name} {ours!r} != model {theirs!r}")
    return {name: "; ".join(why) for name, why in reasons.items()}


def _ranges(ranges: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) as float32, the dtype the checked values are compared in."""
    bounds = np.asarray(ranges, dtype=np.float32)
    return bounds[:, 0], bounds[:, 1]


class ObservationCheck:
    """Holds each `infer` to what its client declared at `hello` and to the model's state ranges. Built once
    per `hello`, so the per-request work is a few comparisons on 7 floats."""

    def __init__(self, robot: RobotContract, model: ModelContract) -> None:
        self.robot, self.model = robot, model
        self._low, self._high = _ranges(model.state_range)
        self._streams = frozenset(["state", *(c.name for c in robot.cameras)])

    def __call__(self, request: Infer) -> None:
        """Raise the ProtocolError to reply with; on success the observation's state is the float32 array
        the model will see (a float64 state is cast here, once)."""
        self._check_stamps(request.capture_ts_ns)
        obs = request.observation
        declared = {c.name: c for c in self.robot.cameras}
        if obs.images.keys() != declared.keys():
            raise ProtocolError("invalid_field", f"observation.images has cameras {sorted(obs.images)}; "
                                                 f"hello declared {sorted(declared)}")
        for name, cam in declared.items():
            image = obs.images[name]
            if image.dtype != np.uint8 or image.shape != (cam.height, cam.width, 3):
                raise ProtocolError("invalid_field", f"observation.images.{name}: {image.dtype} {image.shape}; "
                                                     f"hello declared uint8 {(cam.height, cam.width, 3)}")
        obs.state = self._state(obs.state)

    def _check_stamps(self, stamps: dict[str, int]) -> None:
        if stamps.keys() != self._streams:
            raise ProtocolError("invalid_field", f"capture_ts_ns has keys {sorted(stamps)}; expected 'state' and "
                                                 f"each declared camera: {sorted(self._streams)}")

    def _state(self, state: np.ndarray) -> np.ndarray:
        """Shape and dtype, finiteness as sent, then the physical range after the cast to float32: a finite
        float64 (1e39) or float32 (3e38) beyond the range would overflow the model into NaN."""
        width = len(self.robot.state_layout)
        if state.dtype not in (np.float32, np.float64) or state.shape != (width,):
            raise ProtocolError("invalid_field", f"observation.state: {state.dtype} {state.shape}; "
                                                 f"expected float32/float64 ({width},)")
        with np.errstate(over="ignore"):
            cast = state.astype(np.float32, copy=False)
        inside = (cast >= self._low) & (cast <= self._high)  # False for NaN too: one test on the happy path
        if inside.all():
            return cast
        if not np.isfinite(state).all():
            raise ProtocolError("non_finite", f"observation.state holds NaN or Inf: {state.tolist()}")
        outside = np.flatnonzero(~inside)
        raise ProtocolError("out_of_range", "; ".join(self._describe(int(i), float(state[i])) for i in outside))

    def _describe(self, index: int, value: float) -> str:
        name = self.model.state_layout[index]
        low, high = self.model.state_range[index]
        unit = STATE_UNITS.get(name, "")
        return f"observation.state.{name} = {value:g}{unit and ' ' + unit} is outside [{low:g}, {high:g}]"


class OutputCheck:
    """Holds each chunk a backend returns to the model contract before it is sent: shape, finite after the
    cast to float32, and within `action_range`. Runs on the worker thread, once per chunk."""

    def __init__(self, model: ModelContract) -> None:
        self._shape = (model.chunk_length, model.action_dim)
        self._low, self._high = _ranges(model.action_range)
        self._ranges = model.action_range

    def __call__(self, chunk: object) -> np.ndarray:
        """The chunk as a (chunk_length, action_dim) float32 array, or the ProtocolError to reply with:
        `internal` for a malformed chunk (a backend bug), `bad_output` for a non-finite or out-of-range one."""
        try:
            with np.errstate(over="ignore"):
                actions = np.asarray(chunk, dtype=np.float32)
        except (TypeError, ValueError) as exc:  # ragged, or not numbers at all
            raise ProtocolError("internal", f"the backend returned a malformed chunk: {exc}") from None
        if actions.shape != self._shape:
            raise ProtocolError("internal", f"the backend returned a chunk of shape {actions.shape}; the contract "
                                            f"says {self._shape}")
        inside = (actions >= self._low) & (actions <= self._high)  # False for NaN too: one test when all is well
        if inside.all():
            return actions
        if not np.isfinite(actions).all():
            raise ProtocolError("bad_output", "the model's chunk holds NaN or Inf (as float32)")
        step, dim = (int(i) for i in np.argwhere(~inside)[0])
        low, high = self._ranges[dim]
        raise ProtocolError("bad_output", f"the model's action [{step}, {dim}] = {actions[step, dim]:g} is "
                                          f"outside the contract's action_range [{low:g}, {high:g}]")
