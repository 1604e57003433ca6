"""`SafetyConfig`: every limit the robot side enforces, in one validated place (safety_reliability.md §0, §6).

A bad value fails when the config is loaded, with the field named (pydantic, unknown keys forbidden), never
in the middle of an episode. Defaults are the bring-up values of the reference's test matrix: 15 Hz, chunks of
3 steps (200 ms), v_max 0.25 m/s, ω_max 0.5 rad/s, relative dynamics 0.1, L_max 50 mm, observations at most
250 ms old when their actions start. The workspace default fits the sim workcell (robot base at the table top,
z = 0); a real rig sets its own box.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

Vec3 = tuple[float, float, float]
Vec7 = tuple[float, float, float, float, float, float, float]

# FR3 joint limits (libfranka 0.15 rate_limiting.h, safety_reliability.md §1.2); a Panda config sets its own.
FR3_Q_MIN: Vec7 = (-2.7437, -1.7837, -2.9007, -3.0421, -2.8065, 0.5445, -3.0159)
FR3_Q_MAX: Vec7 = (2.7437, 1.7837, 2.9007, -0.1518, 2.8065, 4.5169, 3.0159)


class Box(BaseModel):
    """An axis-aligned box in the `base` frame (metres) that the TCP target must stay inside."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lo: Vec3
    hi: Vec3

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if any(lo >= hi for lo, hi in zip(self.lo, self.hi, strict=True)):
            raise ValueError(f"workspace box needs lo < hi on every axis, got lo={self.lo} hi={self.hi}")
        return self


class SafetyConfig(BaseModel):
    """The safety envelope's rules. Each rule's interventions are counted under the name in its description."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- chunk validation (whole-chunk rules) ---
    action_clip_translation_m: float = Field(
        0.02, gt=0, description="Per-component bound of dx,dy,dz (the ±1 action scale of CONVENTIONS.md). "
        "Rule 'action_clip' (or 'action_range' when rejecting).")
    action_clip_rotation_rad: float = Field(
        0.05, gt=0, description="Per-component bound of droll,dpitch,dyaw (±1 × 0.05 rad).")
    action_out_of_range: Literal["clip", "reject"] = Field(
        "clip", description="Finite components beyond the bounds: clip them (CONVENTIONS.md) or reject the chunk.")
    gripper_out_of_range: Literal["clip", "reject"] = Field(
        "clip", description="A finite gripper value outside [0, 1]: clip it, or reject the chunk (rule "
        "'gripper_range'). Clip by default because the value is thresholded anyway; NaN is always rejected.")

    # --- per-step target rules ---
    workspace: Box = Field(
        default_factory=lambda: Box(lo=(0.25, -0.45, 0.01), hi=(0.80, 0.45, 0.65)),
        description="Box for every commanded TCP target (rule 'workspace'). z is the TCP, fingertips are ~9 mm lower.")
    workspace_clamp_margin_m: float = Field(
        0.01, ge=0, description="A chunk whose predicted path leaves the box by more than this is rejected "
        "(rule 'workspace_path'); closer targets are clamped onto the box (rule 'workspace').")
    max_step_translation_m: float = Field(0.02, gt=0, description="Cap on one step's translation "
                                          "(rule 'step_translation').")
    max_step_rotation_rad: float = Field(0.05, gt=0, description="Cap on one step's rotation angle "
                                         "(rule 'step_rotation').")
    max_speed_mps: float = Field(0.25, gt=0, le=1.0, description="TCP speed cap: a step moves at most this × dt.")
    max_angular_speed_rps: float = Field(0.5, gt=0, le=2.5, description="Rotation speed cap: a step turns at most "
                                         "this × dt.")
    max_lead_m: float = Field(0.05, gt=0, description="Never command a target further than this from the measured "
                              "TCP (rule 'lead'): if everything dies, the arm travels at most this far.")
    tool_axis_nominal: Vec3 = Field((0.0, 0.0, -1.0), description="Nominal direction of the tool z axis in base.")
    cone_half_angle_rad: float = Field(0.6, gt=0, le=3.1416, description="Tool z must stay within this angle of "
                                       "the nominal axis (rule 'orientation_cone').")
    relative_dynamics_factor: float = Field(0.1, gt=0, le=1.0, description="franky's robot-level dynamics ceiling.")

    # --- measured-state reactions (SAFE-HOLD) ---
    max_force_n: float = Field(25.0, gt=0, description="External force norm at the EE that triggers SAFE-HOLD "
                               "(rule 'force'); below franky's 30 N reflex so the software reacts first.")
    max_torque_nm: float = Field(10.0, gt=0, description="External torque norm at the EE (rule 'torque').")
    measured_speed_margin: float = Field(1.2, ge=1.0, description="SAFE-HOLD when the measured TCP speed exceeds "
                                         "max_speed_mps by this factor (rule 'tcp_speed'; A5: the commanded "
                                         "steps are capped, so this catches what the caps cannot, e.g. a push).")
    tcp_speed_readings: int = Field(2, ge=1, description="Consecutive readings (ticks) above that speed before "
                                    "SAFE-HOLD; a single one is counted ('tcp_speed_reading') but not acted on: the "
                                    "measured twist comes from an estimated dq, and in one loaded sim run a lone "
                                    "reading crossed the limit while every commanded step was capped.")
    joint_lower: Vec7 = FR3_Q_MIN
    joint_upper: Vec7 = FR3_Q_MAX
    joint_margin_rad: float = Field(0.1, ge=0, description="SAFE-HOLD when a measured joint is this close to a "
                                    "limit (rule 'joint_limit'), before Control raises a limit violation; a target "
                                    "whose predicted joints come this close is refused (rule 'joint_target_limit', "
                                    "A4).")
    singularity_slow_kappa: float = Field(17.0, gt=1, description="Above this condition number of the measured "
                                          "6x7 Jacobian the step caps shrink linearly, to zero at "
                                          "singularity_stop_kappa (rule 'singularity_slowdown', A8).")
    singularity_stop_kappa: float = Field(30.0, gt=1, description="At or above this condition number every target "
                                          "is refused (rule 'singularity', A8; MoveIt servo's 17/30).")

    # --- freshness ---
    max_obs_age_s: float = Field(0.25, gt=0, description="An action whose observation is older than this when it "
                                 "would start is dropped (rule 'stale').")
    max_frame_age_s: float = Field(0.1, gt=0, description="A camera frame older than this is not sent "
                                   "(rule 'frame_stale').")
    camera_timeout_s: float = Field(0.2, gt=0, description="No fresh frame for this long: SAFE-HOLD 'camera_stale'.")
    max_camera_skew_s: float | None = Field(
        None, gt=0, description="Frames of two cameras captured further apart than this do not make an observation "
        "(rule 'camera_skew', O4); persistent skew ends in 'camera_stale'. Off by default (the frame-age limit bounds "
        "it already); a D415 pair at 30 fps: 0.033. The sim's cameras render each on its own at 15 fps: leave it off.")

    # --- gripper ---
    gripper_open_above: float = Field(0.6, description="Open when the command rises above this (hysteresis).")
    gripper_close_below: float = Field(0.4, description="Close when the command falls below this.")

    # --- policy liveness ---
    policy_deadline_s: float | None = Field(None, gt=0, description="Reply deadline and silence limit before "
                                            "SAFE-HOLD; None = one chunk horizon (chunk_length / rate).")
    max_consecutive_misses: int = Field(3, ge=1, description="Timeouts, error replies or rejected chunks in a row "
                                        "that abort the episode.")

    # --- Franka errors ---
    auto_recover_errors: tuple[str, ...] = Field(
        (), description="Error names (substring of the franky error) recovered automatically between episodes, e.g. "
        "'communication_constraints_violation'. Reflexes never belong here. Empty: every error needs an operator.")
    max_auto_recoveries: int = Field(1, ge=0, description="Automatic recoveries allowed per run.")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if not 0.0 <= self.gripper_close_below <= self.gripper_open_above <= 1.0:
            raise ValueError("gripper thresholds need 0 <= gripper_close_below <= gripper_open_above <= 1")
        if any(lo >= hi for lo, hi in zip(self.joint_lower, self.joint_upper, strict=True)):
            raise ValueError("joint_lower must be below joint_upper for every joint")
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
