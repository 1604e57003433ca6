"""`LaunchConfig`: one YAML file describes a workcell run — robot, cameras, calibration, limits, tasks, server,
rates and the e-stop — validated in full when it is loaded, never halfway through an episode.

The sections reuse the drivers' and the runner's own config classes (`ArmConfig`, the camera configs,
`SafetyConfig`, `RunnerConfig`), so a field has one definition and one set of limits. `load_launch_config`
turns every problem into a line naming the file and the field, e.g.
`launch/sim.yaml: safety.max_speed_mps: Input should be greater than 0`. The YAML files live in `launch/`
(data only) and ship as package data: `load_launch_config("sim")` works from a wheel (`robot.launch.files`);
relative paths inside them are relative to the working directory, like every `dv-*` argument.
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from dreamvla_client.security import MIN_KEY_BYTES, is_loopback, read_key_file
from robot.arm import ArmConfig
from robot.cameras import CameraConfig, camera_config_from_dict
from robot.estop.wire import HEARTBEAT_ENDPOINT, HEARTBEAT_TIMEOUT_S, STATUS_ENDPOINT
from robot.launch.files import DEFAULT_LAUNCH_FILE as DEFAULT_LAUNCH_FILE  # re-exported: the CLIs' --sim default
from robot.launch.files import LaunchFileError, resolve_launch_file
from robot.runner.config import RunnerConfig
from robot.safety import SafetyConfig
from robot.tasks import TASKS

CAMERA_ROLES = ("static", "wrist")
QUATERNION_NORM_TOL = 1e-3  # docs/safety.md, A2: |‖q‖ − 1| < 1e-3

Vec3 = tuple[float, float, float]
Quat = tuple[float, float, float, float]


class LaunchConfigError(ValueError):
    """Everything wrong with one launch file, one `file: field: problem` line each."""

    def __init__(self, path: str | Path, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        super().__init__("\n".join(f"{self.path}: {p}" for p in problems))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _iso_timestamp(value: str) -> str:
    """'' (never calibrated) or an ISO 8601 time with a UTC offset: a calibration's age must be computable."""
    if value == "":
        return value
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise PydanticCustomError("timestamp", f"timestamp {value!r} is not ISO 8601 "
                                  "(e.g. 2026-01-31T12:00:00+00:00)") from None
    if parsed.tzinfo is None:
        raise PydanticCustomError("timestamp", f"timestamp {value!r} has no UTC offset (append +00:00)")
    return value


# An unquoted timestamp in YAML loads as a datetime; accept it as the text it was.
IsoTimestamp = Annotated[str, BeforeValidator(lambda v: v.isoformat() if isinstance(v, datetime) else v),
                         AfterValidator(_iso_timestamp)]


class RobotSection(_Section):
    kind: Literal["sim", "real"] = Field(description="'sim': the franky-sim workcell; 'real': a Panda/FR3.")
    arm: ArmConfig


class CalibratedPose(_Section):
    """A calibrated rigid transform T_a_b (docs/conventions.md); all fields stay empty until calibration writes them."""

    xyz: Vec3 | None = Field(None, description="Translation in metres.")
    quat_xyzw: Quat | None = Field(None, description="Rotation as a unit quaternion (x, y, z, w).")
    timestamp: IsoTimestamp = Field("", description="When the calibration ran (ISO 8601 with a UTC offset).")
    hash: str = Field("", description="Hash of the calibration data that produced it.")
    method: str = Field("", description="Hand-eye method that won on held-out poses (e.g. 'refined').")
    reprojection_px: float | None = Field(None, ge=0, description="Held-out RMS reprojection error in pixels.")
    overrides: list[str] = Field(default_factory=list, description="Safety overrides in force while it was measured "
                                 "(e.g. a real robot moving without e-stop); empty normally.")

    @field_validator("quat_xyzw")
    @classmethod
    def _unit(cls, q: Quat | None) -> Quat | None:
        if q is not None and abs(math.sqrt(sum(c * c for c in q)) - 1.0) > QUATERNION_NORM_TOL:
            norm = math.sqrt(sum(c * c for c in q))
            raise PydanticCustomError("quaternion_norm", f"quaternion norm is {norm:.4f}, expected 1 ± "
                                      f"{QUATERNION_NORM_TOL}")
        return q

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if (self.xyz is None) != (self.quat_xyzw is None):
            raise PydanticCustomError("calibration_incomplete", "set both xyz and quat_xyzw, or neither")
        return self

    @property
    def calibrated(self) -> bool:
        return self.xyz is not None


class CameraIntrinsics(_Section):
    """One camera's colour-stream intrinsics (OpenCV convention) and depth scale, as `dv-calib intrinsics` stores
    them: the factory values read from the device (or the sim's ground truth), or a ChArUco re-calibration."""

    width: int = Field(gt=0)
    height: int = Field(gt=0)
    fx: float = Field(gt=0, description="Focal length in pixels.")
    fy: float = Field(gt=0, description="Focal length in pixels.")
    cx: float = Field(description="Principal point x in pixels; inside the image.")
    cy: float = Field(description="Principal point y in pixels; inside the image.")
    model: str = Field("none", description="Distortion model (librealsense's name, e.g. 'brown_conrady').")
    coeffs: list[float] = Field(default_factory=list, max_length=14, description="Distortion coefficients.")
    depth_scale_m: float | None = Field(None, gt=0, description="Metres per raw depth unit (0.001 for a D415).")
    source: Literal["factory", "sim", "charuco"] = Field(description="Where the numbers come from.")
    reprojection_px: float | None = Field(None, ge=0, description="RMS reprojection error (charuco only).")
    timestamp: IsoTimestamp = Field(description="When they were read or estimated (ISO 8601 with a UTC offset).")
    hash: str = Field("", description="Hash of the numbers.")

    @model_validator(mode="after")
    def _principal_point_inside(self) -> Self:
        if not (0 <= self.cx < self.width and 0 <= self.cy < self.height):
            raise PydanticCustomError("principal_point", f"principal point ({self.cx}, {self.cy}) lies outside "
                                      f"the {self.width}x{self.height} image")
        if not all(math.isfinite(c) for c in self.coeffs):
            raise PydanticCustomError("coeffs_finite", "distortion coefficients must be finite numbers")
        return self


class Calibration(_Section):
    T_base_cam_static: CalibratedPose = Field(default_factory=CalibratedPose)
    T_ee_cam_wrist: CalibratedPose = Field(default_factory=CalibratedPose)
    intrinsics: dict[Literal["static", "wrist"], CameraIntrinsics] = Field(
        default_factory=dict, description="Per camera role, written by `dv-calib intrinsics`.")


class ServerSection(_Section):
    address: str = Field("tcp://127.0.0.1:5555", description="Where the runner reaches dv-serve.")
    start: bool = Field(True, description="dv-launch starts dv-serve bound to `address` (loopback only).")
    checkpoint: Path | None = Field(None, description="Checkpoint directory dv-launch serves.")
    create: str | None = Field(None, description="Named config (e.g. 'tiny') to create `checkpoint` from, random "
                               "weights, when it does not exist yet.")
    device: Literal["cpu", "cuda"] | None = Field(None, description="Default: cuda when available.")
    ready_timeout_s: float = Field(180.0, gt=0, description="Longest wait for the server's READY line.")
    auth_key_file: Path | None = Field(None, description="The server's shared key: a file whose bytes, stripped of "
                                       "surrounding whitespace, are the key (dv-serve --auth-key-file). Needed for a "
                                       "server that is not on loopback; a server dv-launch starts gets it too.")
    allow_unauthenticated_remote: bool = Field(False, description="Override: reach a server that is not on loopback "
                                               "without a key (anyone on that network can read and answer the "
                                               "robot's requests). Printed in red at every run and recorded.")

    @model_validator(mode="after")
    def _startable(self) -> Self:
        if self.start and self.checkpoint is None:
            raise PydanticCustomError("missing_checkpoint", "start: true needs a checkpoint to serve")
        if self.start and not is_loopback(self.address):
            raise PydanticCustomError(
                "server_not_loopback", f"dv-launch starts dv-serve on loopback only, not {self.address} (start a "
                "remote server yourself and set start: false)")
        if not is_loopback(self.address) and self.auth_key_file is None and not self.allow_unauthenticated_remote:
            raise PydanticCustomError(
                "server_unauthenticated", f"address {self.address} is not loopback: set auth_key_file (the server's "
                "key), or allow_unauthenticated_remote: true to talk to it without one")
        return self

    @field_validator("auth_key_file")
    @classmethod
    def _readable_key(cls, path: Path | None) -> Path | None:
        if path is not None:
            read_key(path)
        return path

    def key(self) -> bytes | None:
        """The key `auth_key_file` holds (None without one)."""
        return None if self.auth_key_file is None else read_key(self.auth_key_file)

    @property
    def unauthenticated_remote(self) -> bool:
        """The override is in force: a server off loopback, reached without a key."""
        return self.allow_unauthenticated_remote and self.auth_key_file is None and not is_loopback(self.address)


def read_key(path: Path) -> bytes:
    """The key as dv-serve reads it (`read_key_file`: the bytes, surrounding whitespace stripped), checked when the
    launch file loads: a ValueError naming the file if it cannot be read, is empty or is too short."""
    try:
        key = read_key_file(path)
    except OSError as exc:
        raise ValueError(f"cannot read key file {path}: {exc.strerror}") from None
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"key file {path} holds {len(key)} bytes; a key needs at least {MIN_KEY_BYTES}")
    return key


def override_notes(without_estop: bool, unauthenticated_server: str | None) -> list[str]:
    """The safety overrides in force, one sentence each: every run prints them in red at its start and end and
    records them in its summary."""
    notes = []
    if without_estop:
        notes.append("OVERRIDE estop.allow_real_robot_without_estop: the real robot moves with no software e-stop")
    if unauthenticated_server is not None:
        notes.append(f"OVERRIDE allow_unauthenticated_remote: the policy server at {unauthenticated_server} is "
                     "reached over the network without a key")
    return notes


class EStopSection(_Section):
    required: bool | None = Field(None, description="The robot moves only while a console heartbeats. "
                                  "Default: required for a real robot, optional in sim.")
    console: bool = Field(True, description="dv-launch starts the dv-estop console (in this terminal if it is one).")
    endpoint: str = Field(HEARTBEAT_ENDPOINT, description="Heartbeat endpoint the runner binds.")
    status_endpoint: str = Field(STATUS_ENDPOINT, description="Status endpoint the runner binds.")
    timeout_s: float = Field(HEARTBEAT_TIMEOUT_S, gt=0, le=1.0, description="Heartbeat silence that latches a stop.")
    allow_real_robot_without_estop: bool = Field(
        False, description="Override: let a real robot (robot.kind: real) run with `required: false`, i.e. move with "
        "no software e-stop at all. Refused at load without it; printed in red at every run and recorded in its "
        "summary.")


class ProcessSection(_Section):
    logs_dir: Path = Field(Path("runs/logs"), description="One <name>.log per supervised process.")
    interrupt_timeout_s: float = Field(10.0, gt=0, description="After SIGINT, how long a process may take to "
                                       "finish (the runner stops the arm and writes its summary) before SIGTERM.")
    terminate_timeout_s: float = Field(3.0, gt=0, description="After SIGTERM, the wait before SIGKILL.")


def _camera(entry: Any) -> Any:
    """Validate a camera entry with the config class its `type` names (errors keep the field's path)."""
    return camera_config_from_dict(entry) if isinstance(entry, dict) else entry


class LaunchConfig(_Section):
    robot: RobotSection
    cameras: list[SerializeAsAny[Annotated[CameraConfig, BeforeValidator(_camera)]]]
    calibration: Calibration = Field(default_factory=Calibration)
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    tasks: list[str] = Field(min_length=1, description="Tasks this workcell runs; the first is the default.")
    episodes: int = Field(1, ge=1, description="Episodes per run.")
    server: ServerSection = Field(default_factory=ServerSection)
    estop: EStopSection = Field(default_factory=EStopSection)
    processes: ProcessSection = Field(default_factory=ProcessSection)

    @field_validator("cameras")
    @classmethod
    def _roles(cls, cameras: list[CameraConfig], info: ValidationInfo) -> list[CameraConfig]:
        names = [c.name for c in cameras]
        missing = [r for r in CAMERA_ROLES if r not in names]
        extra = [n for n in names if n not in CAMERA_ROLES or names.count(n) > 1]
        if missing or extra:
            raise PydanticCustomError(
                "camera_roles", f"need exactly one camera per role {list(CAMERA_ROLES)} (the `name` field); "
                f"missing {missing}, unexpected or repeated {extra}")
        robot = info.data.get("robot")
        if robot is not None:
            wrong = [c.name for c in cameras if (c.type == "sim") != (robot.kind == "sim")]
            if wrong:
                raise PydanticCustomError("camera_kind", f"camera(s) {wrong} do not match robot.kind "
                                          f"{robot.kind!r} (sim cameras go with a sim robot only)")
        return cameras

    @field_validator("tasks")
    @classmethod
    def _known_once(cls, tasks: list[str]) -> list[str]:
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise PydanticCustomError("unknown_task", f"unknown task(s) {unknown}; known: {sorted(TASKS)}")
        if len(set(tasks)) != len(tasks):
            raise PydanticCustomError("duplicate_task", f"a task is listed twice: {tasks}")
        return tasks

    @field_validator("estop")
    @classmethod
    def _estop_on_a_real_robot(cls, estop: EStopSection, info: ValidationInfo) -> EStopSection:
        """A real arm moves only under a software e-stop unless the file says, in so many words, that it may not."""
        robot = info.data.get("robot")
        if robot is not None and robot.kind == "real" and estop.required is False \
                and not estop.allow_real_robot_without_estop:
            raise PydanticCustomError(
                "real_robot_without_estop", "required: false on a real robot (robot.kind: real) leaves the arm with "
                "no software e-stop; remove it (a real robot requires the dv-estop console), or set "
                "allow_real_robot_without_estop: true to run without one on purpose")
        return estop

    @property
    def estop_required(self) -> bool:
        return self.robot.kind == "real" if self.estop.required is None else self.estop.required

    @property
    def without_estop(self) -> bool:
        """A real robot that may move with no software e-stop (only under `estop.allow_real_robot_without_estop`)."""
        return self.robot.kind == "real" and not self.estop_required

    @property
    def overrides(self) -> list[str]:
        """The overrides this file puts in force (`override_notes`)."""
        return override_notes(self.without_estop, self.server.address if self.server.unauthenticated_remote else None)

    def camera(self, role: str) -> CameraConfig:
        return next(c for c in self.cameras if c.name == role)


# ------------------------------------------------------------------------------------------------ loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping (PyYAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _field(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _message(err: dict[str, Any]) -> str:
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def parse_launch_config(data: Any, source: str | Path) -> LaunchConfig:
    """Validate already-parsed YAML data; errors name `source` and each field."""
    if not isinstance(data, dict):
        raise LaunchConfigError(source, ["the file must be a mapping of sections (robot, cameras, ...)"])
    try:
        return LaunchConfig.model_validate(data)
    except ValidationError as exc:
        raise LaunchConfigError(source, [f"{_field(e['loc'])}: {_message(e)}" for e in exc.errors()]) from None


def load_launch_config(path: str | Path) -> LaunchConfig:
    """Read and validate the launch file `path` means (`resolve_launch_file`: a path as given, else a packaged
    name such as `sim`); raises `LaunchConfigError` naming the file and every bad field."""
    try:
        found = resolve_launch_file(path)
    except LaunchFileError as exc:
        raise LaunchConfigError(path, [exc.problem]) from None
    if found != Path(path):
        path = found  # a packaged file: errors name the file that was read
    try:
        text = found.read_text()
    except OSError as exc:
        raise LaunchConfigError(path, [f"cannot read: {exc.strerror}"]) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: plain data only, never objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise LaunchConfigError(path, [f"{where}YAML error: {problem}"]) from None
    return parse_launch_config(data, path)
