"""`SafetyConfig`: every limit the robot side enforces, in one validated place (docs/safety.md: limits and rules).

A bad value fails when the config is loaded, with the field named (pydantic, unknown keys forbidden), never
in the middle of an episode. Every limit has a range (its description ends with it): a value outside is refused
at load, so a typo (5 m of lead, a 60 s policy deadline, no joint margin) can never reach the arm. The ranges
are wide enough for any sane rig and tight enough that the envelope's rules still mean something: a lead of at
most 0.1 m, a TCP speed of at most 1 m/s, a reply deadline of at most 1 s, at least 0.05 rad of joint margin.
Defaults are the bring-up values of docs/safety.md: 15 Hz, chunks of 3 steps (200 ms), v_max 0.25 m/s,
ω_max 0.5 rad/s, relative dynamics 0.1, L_max 50 mm, observations at most 250 ms old when their actions start.
The workspace default fits the sim workcell (robot base at the table top, z = 0); a real rig sets its own box.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from robot.arm.arm import _ERROR_FLAGS as FRANKA_ERRORS

Vec3 = tuple[float, float, float]
Vec7 = tuple[float, float, float, float, float, float, float]

# FR3 joint limits (libfranka 0.15 rate_limiting.h; docs/safety.md); a Panda config sets its own.
FR3_Q_MIN: Vec7 = (-2.7437, -1.7837, -2.9007, -3.0421, -2.8065, 0.5445, -3.0159)
FR3_Q_MAX: Vec7 = (2.7437, 1.7837, 2.9007, -0.1518, 2.8065, 4.5169, 3.0159)
# Panda (FER) joint limits (libfranka 0.9.2 rate_limiting.h): with FR3's, they bound what a soft limit may be.
PANDA_Q_MIN: Vec7 = (-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973)
PANDA_Q_MAX: Vec7 = (2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973)
HARD_Q_MIN: Vec7 = tuple(min(a, b) for a, b in zip(FR3_Q_MIN, PANDA_Q_MIN, strict=True))  # type: ignore[assignment]
HARD_Q_MAX: Vec7 = tuple(max(a, b) for a, b in zip(FR3_Q_MAX, PANDA_Q_MAX, strict=True))  # type: ignore[assignment]

# libfranka errors that mean the arm met something or went unstable: an operator looks before it moves again, so
# none of them may be recovered automatically (docs/safety.md, R1).
NEVER_AUTO_RECOVER = frozenset({"cartesian_reflex", "joint_reflex", "self_collision_avoidance_violation",
                                "tau_j_range_violation", "power_limit_violation", "instability_detected"})
WORKSPACE_REACH_M = 1.2  # no TCP target of a Panda/FR3 lies further than this from its base on any axis


class Box(BaseModel):
    """An axis-aligned box in the `base` frame (metres) that the TCP target must stay inside."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lo: Vec3
    hi: Vec3

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if any(lo >= hi for lo, hi in zip(self.lo, self.hi, strict=True)):
            raise ValueError(f"workspace box needs lo < hi on every axis, got lo={self.lo} hi={self.hi}")
        if any(abs(v) > WORKSPACE_REACH_M for v in (*self.lo, *self.hi)):
            raise ValueError(f"workspace box corners must lie within {WORKSPACE_REACH_M} m of the base on every "
                             f"axis (an FR3 reaches 0.855 m), got lo={self.lo} hi={self.hi}")
        return self


class SafetyConfig(BaseModel):
    """The safety envelope's rules. Each rule's interventions are counted under the name in its description; each
    limit's allowed range closes its description (docs/safety.md lists them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- chunk validation (whole-chunk rules) ---
    action_clip_translation_m: float = Field(
        0.02, gt=0, le=0.05, description="Per-component bound of dx,dy,dz (the ±1 action scale of "
        "docs/conventions.md). Rule 'action_clip' (or 'action_range' when rejecting). Range (0, 0.05] m.")
    action_clip_rotation_rad: float = Field(
        0.05, gt=0, le=0.2, description="Per-component bound of droll,dpitch,dyaw (±1 × 0.05 rad). "
        "Range (0, 0.2] rad.")
    action_out_of_range: Literal["clip", "reject"] = Field(
        "clip", description="Finite components beyond the bounds: clip them (docs/conventions.md) or reject the "
        "chunk.")
    gripper_out_of_range: Literal["clip", "reject"] = Field(
        "clip", description="A finite gripper value outside [0, 1]: clip it, or reject the chunk (rule "
        "'gripper_range'). Clip by default because the value is thresholded anyway; NaN is always rejected.")

    # --- per-step target rules ---
    workspace: Box = Field(
        default_factory=lambda: Box(lo=(0.25, -0.45, 0.01), hi=(0.80, 0.45, 0.65)),
        description="Box for every commanded TCP target (rule 'workspace'). z is the TCP, fingertips are ~9 mm "
        "lower. Corners within 1.2 m of the base on every axis.")
    workspace_clamp_margin_m: float = Field(
        0.01, ge=0, le=0.05, description="A chunk whose predicted path leaves the box by more than this is "
        "rejected (rule 'workspace_path'); closer targets are clamped onto the box (rule 'workspace'). "
        "Range [0, 0.05] m.")
    max_step_translation_m: float = Field(0.02, gt=0, le=0.05, description="Cap on one step's translation "
                                          "(rule 'step_translation'). Range (0, 0.05] m.")
    max_step_rotation_rad: float = Field(0.05, gt=0, le=0.2, description="Cap on one step's rotation angle "
                                         "(rule 'step_rotation'). Range (0, 0.2] rad.")
    max_speed_mps: float = Field(0.25, gt=0, le=1.0, description="TCP speed cap: a step moves at most this × dt. "
                                 "Range (0, 1.0] m/s (0.25 while people are near the arm).")
    max_angular_speed_rps: float = Field(0.5, gt=0, le=2.5, description="Rotation speed cap: a step turns at most "
                                         "this × dt. Range (0, 2.5] rad/s (Franka's Cartesian rotation limit).")
    max_lead_m: float = Field(0.05, gt=0, le=0.1, description="Never command a target further than this from the "
                              "measured TCP (rule 'lead'): if everything dies, the arm travels at most this far. "
                              "Range (0, 0.1] m.")
    tool_axis_nominal: Vec3 = Field((0.0, 0.0, -1.0), description="Nominal direction of the tool z axis in base "
                                    "(any non-zero vector).")
    cone_half_angle_rad: float = Field(0.6, gt=0, le=3.1416, description="Tool z must stay within this angle of "
                                       "the nominal axis (rule 'orientation_cone'). Range (0, π] rad.")
    relative_dynamics_factor: float = Field(0.1, gt=0, le=1.0, description="franky's robot-level dynamics "
                                            "ceiling. Range (0, 1] (0.1 for bring-up).")

    # --- measured-state reactions (SAFE-HOLD) ---
    max_force_n: float = Field(25.0, gt=0, le=100.0, description="External force norm at the EE that triggers "
                               "SAFE-HOLD (rule 'force'); below franky's 30 N reflex so the software reacts first. "
                               "Range (0, 100] N.")
    max_torque_nm: float = Field(10.0, gt=0, le=30.0, description="External torque norm at the EE (rule 'torque'). "
                                 "Range (0, 30] Nm.")
    measured_speed_margin: float = Field(1.2, ge=1.0, le=2.0, description="SAFE-HOLD when the measured TCP speed "
                                         "exceeds max_speed_mps by this factor (rule 'tcp_speed'; A5: the commanded "
                                         "steps are capped, so this catches what the caps cannot, e.g. a push). "
                                         "Range [1, 2].")
    tcp_speed_readings: int = Field(2, ge=1, le=5, description="Consecutive readings (ticks) above that speed before "
                                    "SAFE-HOLD; a single one is counted ('tcp_speed_reading') but not acted on: the "
                                    "measured twist comes from an estimated dq, and in one loaded sim run a lone "
                                    "reading crossed the limit while every commanded step was capped. Range [1, 5].")
    joint_lower: Vec7 = Field(FR3_Q_MIN, description="Joint limits the margin is measured from (rad); FR3's by "
                              "default. Each within the Panda's and FR3's hard limits, below joint_upper.")
    joint_upper: Vec7 = Field(FR3_Q_MAX, description="Upper joint limits (rad), as joint_lower.")
    joint_margin_rad: float = Field(0.1, ge=0.05, le=0.5, description="SAFE-HOLD when a measured joint is this "
                                    "close to a limit (rule 'joint_limit'), before Control raises a limit violation; "
                                    "a target whose predicted joints come this close is refused (rule "
                                    "'joint_target_limit', A4). Range [0.05, 0.5] rad.")
    singularity_slow_kappa: float = Field(17.0, gt=1, le=60.0, description="Above this condition number of the "
                                          "measured 6x7 Jacobian the step caps shrink linearly, to zero at "
                                          "singularity_stop_kappa (rule 'singularity_slowdown', A8). Range (1, 60].")
    singularity_stop_kappa: float = Field(30.0, gt=1, le=60.0, description="At or above this condition number every "
                                          "target is refused (rule 'singularity', A8; MoveIt servo's 17/30). "
                                          "Range (1, 60], above singularity_slow_kappa.")

    # --- freshness ---
    max_obs_age_s: float = Field(0.25, gt=0, le=0.5, description="An action whose observation is older than this "
                                 "when it would start is dropped (rule 'stale'). Range (0, 0.5] s.")
    max_frame_age_s: float = Field(0.1, gt=0, le=0.5, description="A camera frame older than this is not sent "
                                   "(rule 'frame_stale'). Range (0, 0.5] s.")
    camera_timeout_s: float = Field(0.2, gt=0, le=1.0, description="No fresh frame for this long: SAFE-HOLD "
                                    "'camera_stale'. Range (0, 1] s.")
    max_camera_skew_s: float | None = Field(
        None, gt=0, le=0.1, description="Frames of two cameras captured further apart than this do not make an "
        "observation (rule 'camera_skew', O4); persistent skew ends in 'camera_stale'. Off by default (the frame-age "
        "limit bounds it already); a D415 pair at 30 fps: 0.033. The sim's cameras render each on its own at 15 fps: "
        "leave it off. Range None or (0, 0.1] s.")

    # --- gripper ---
    gripper_open_above: float = Field(0.6, ge=0, le=1, description="Open when the command rises above this "
                                      "(hysteresis). Range [0, 1], at least gripper_close_below.")
    gripper_close_below: float = Field(0.4, ge=0, le=1, description="Close when the command falls below this. "
                                       "Range [0, 1].")

    # --- policy liveness ---
    policy_deadline_s: float | None = Field(None, gt=0, le=1.0, description="Reply deadline and silence limit "
                                            "before SAFE-HOLD; None = one chunk horizon (chunk_length / rate). "
                                            "Range None or (0, 1] s.")
    max_consecutive_misses: int = Field(3, ge=1, le=5, description="Timeouts, error replies or rejected chunks in a "
                                        "row that abort the episode. Range [1, 5].")

    # --- Franka errors ---
    auto_recover_errors: tuple[str, ...] = Field(
        (), description="libfranka error names (franky's `Errors` flags, e.g. 'communication_constraints_violation') "
        "recovered automatically between episodes. Reflexes, collisions and instability never belong here. Empty: "
        "every error needs an operator.")
    max_auto_recoveries: int = Field(1, ge=0, le=5, description="Automatic recoveries allowed per run. Range [0, 5].")

    @field_validator("auto_recover_errors")
    @classmethod
    def _known_errors(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        """Names the loop matches exactly against the arm's error flags: an empty or unknown name could only ever
        match by accident, and a reflex must always reach an operator."""
        problems = [f"{n!r} is not a libfranka error name" for n in names if n not in FRANKA_ERRORS]
        problems += [f"{n!r} must never be recovered automatically (an operator checks the arm first)"
                     for n in names if n in NEVER_AUTO_RECOVER]
        if len(set(names)) != len(names):
            problems.append(f"a name is listed twice: {list(names)}")
        if problems:
            raise ValueError("; ".join(problems) + " (names as in franky.Errors, e.g. "
                             "'communication_constraints_violation')")
        return names

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if not 0.0 <= self.gripper_close_below <= self.gripper_open_above <= 1.0:
            raise ValueError("gripper thresholds need 0 <= gripper_close_below <= gripper_open_above <= 1")
        if any(lo >= hi for lo, hi in zip(self.joint_lower, self.joint_upper, strict=True)):
            raise ValueError("joint_lower must be below joint_upper for every joint")
        if any(lo < h for lo, h in zip(self.joint_lower, HARD_Q_MIN, strict=True)) or any(
                hi > h for hi, h in zip(self.joint_upper, HARD_Q_MAX, strict=True)):
            raise ValueError(f"joint_lower/joint_upper must lie within the arm's hard limits {HARD_Q_MIN} .. "
                             f"{HARD_Q_MAX} (Panda and FR3)")
        if any(hi - lo <= 2 * self.joint_margin_rad for lo, hi in zip(self.joint_lower, self.joint_upper, strict=True)):
            raise ValueError("joint_margin_rad leaves no room: every joint needs joint_upper - joint_lower > "
                             "2 × joint_margin_rad")
        if not self.singularity_slow_kappa < self.singularity_stop_kappa:
            raise ValueError("singularity_slow_kappa must be below singularity_stop_kappa")
        if sum(c * c for c in self.tool_axis_nominal) < 1e-12:
            raise ValueError("tool_axis_nominal must be a non-zero vector")
        return self

    def step_caps(self, dt_s: float) -> tuple[float, float]:
        """(translation m, rotation rad) one control step may move: the per-step cap or the speed cap × dt."""
        return (min(self.max_step_translation_m, self.max_speed_mps * dt_s),
                min(self.max_step_rotation_rad, self.max_angular_speed_rps * dt_s))

    def deadline_s(self, chunk_length: int, rate_hz: float) -> float:
        return self.policy_deadline_s if self.policy_deadline_s is not None else chunk_length / rate_hz
