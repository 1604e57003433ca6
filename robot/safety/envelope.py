"""`SafetyEnvelope`: the robot-side filter between whatever the policy says and what franky is asked to do.

Pure logic (numpy and scipy only, no I/O), so every rule is unit-tested without a robot. It works at three levels:
- `check_chunk`: a whole reply, before anything else. Type, dtype, shape and finiteness are checked first,
  because clipping does not remove NaN (openpi's DROID example clips and passes NaN on); a bad chunk is
  rejected as a whole, never partly executed. Finite values beyond the action scale are clipped and counted.
- `check_path` and `filter_target`: each commanded pose. A chunk whose predicted path leaves the workspace box by
  more than the clamp margin is rejected; each single target is then capped per step (speed), kept in the
  orientation cone, clamped into the box and held within `max_lead_m` of the measured pose, so that if
  everything dies the arm stops within L_max (the bounded-lead invariant, docs/safety.md#bounded-lead).
  Given the measured joints, `filter_target` also looks at the arm's kinematics (robot/kinematics.py): the
  condition number κ of the 6x7 Jacobian shrinks the step caps above `singularity_slow_kappa` and refuses every
  target from `singularity_stop_kappa` on (A8), and the joints a target would need, predicted by one damped
  least-squares step q + J⁺·Δx, must stay `joint_margin_rad` inside the limits (A4), so that Control never has
  to raise a limit violation for a target the envelope sent.
- `check_state` and `gripper_open`: reactions to the measured state (force, torque, joint limits) and the
  gripper's hysteresis.
Every change or refusal is counted under its rule name in `interventions`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from robot import kinematics
from robot.geometry import make_T
from robot.safety.config import SafetyConfig
from robot.safety.interventions import Interventions

ACTION_DIM = 7


@dataclass(frozen=True)
class Rejection:
    """Why something was refused; `rule` is the intervention's name."""

    rule: str
    detail: str


def _finite_pose(T: np.ndarray) -> bool:
    return isinstance(T, np.ndarray) and T.shape == (4, 4) and bool(np.isfinite(T).all())


def _rotate_into_cone(R: np.ndarray, nominal: np.ndarray, half_angle: float) -> np.ndarray | None:
    """R turned (about base axes) so its z axis lies within `half_angle` of `nominal`; None if already inside."""
    axis = R[:, 2]
    angle = float(np.arccos(np.clip(axis @ nominal, -1.0, 1.0)))
    if angle <= half_angle:
        return None
    k = np.cross(axis, nominal)
    if np.linalg.norm(k) < 1e-9:  # pointing exactly away from nominal: any perpendicular axis works
        k = np.cross(axis, [1.0, 0.0, 0.0] if abs(axis[0]) < 0.9 else [0.0, 1.0, 0.0])
    k /= np.linalg.norm(k)
    return Rotation.from_rotvec(k * (angle - half_angle)).as_matrix() @ R


class SafetyEnvelope:
    """Filters chunks and targets by the rules of a `SafetyConfig` for a loop running every `dt_s` seconds."""

    def __init__(self, config: SafetyConfig, dt_s: float, chunk_length: int = 3,
                 interventions: Interventions | None = None) -> None:
        if dt_s <= 0 or chunk_length < 1:
            raise ValueError("dt_s must be positive and chunk_length at least 1")
        self.config, self.dt_s, self.chunk_length = config, dt_s, chunk_length
        self.interventions = interventions if interventions is not None else Interventions()
        self._step_m, self._step_rad = config.step_caps(dt_s)
        self._bounds = np.array([config.action_clip_translation_m] * 3 + [config.action_clip_rotation_rad] * 3)
        self._lo, self._hi = np.array(config.workspace.lo), np.array(config.workspace.hi)
        nominal = np.asarray(config.tool_axis_nominal, dtype=np.float64)
        self._nominal = nominal / np.linalg.norm(nominal)
        self._q_lo = np.array(config.joint_lower) + config.joint_margin_rad
        self._q_hi = np.array(config.joint_upper) - config.joint_margin_rad
        self._fast_readings = 0  # consecutive measured-speed readings above the limit

    # ------------------------------------------------------------------ whole chunks

    def _reject(self, rule: str, detail: str) -> Rejection:
        self.interventions.record(rule, detail, severe=True)
        return Rejection(rule, detail)

    def check_chunk(self, actions: object) -> np.ndarray | Rejection:
        """A (chunk_length, 7) float64 copy with out-of-scale values clipped, or the Rejection of the whole chunk."""
        if not isinstance(actions, np.ndarray):
            return self._reject("bad_type", f"actions are a {type(actions).__name__}, not an array")
        if actions.dtype not in (np.float32, np.float64):
            return self._reject("bad_dtype", f"actions have dtype {actions.dtype}; expected float32 or float64")
        if actions.shape != (self.chunk_length, ACTION_DIM):
            return self._reject("bad_shape", f"actions have shape {actions.shape}; "
                                             f"expected {(self.chunk_length, ACTION_DIM)}")
        if not np.isfinite(actions).all():
            return self._reject("non_finite", f"{int((~np.isfinite(actions)).sum())} NaN/Inf values")
        cfg = self.config
        out = actions.astype(np.float64)  # always a copy: the caller's buffer may be read-only
        over = np.abs(out[:, :6]) > self._bounds
        if over.any():
            if cfg.action_out_of_range == "reject":
                return self._reject("action_range", f"{int(over.sum())} pose values beyond the action scale")
            out[:, :6] = np.clip(out[:, :6], -self._bounds, self._bounds)
            self.interventions.record("action_clip", f"{int(over.sum())} pose values clipped", n=int(over.sum()))
        grip = out[:, 6]
        outside = (grip < 0.0) | (grip > 1.0)
        if outside.any():
            if cfg.gripper_out_of_range == "reject":
                return self._reject("gripper_range", f"gripper values {grip.tolist()} outside [0, 1]")
            out[:, 6] = np.clip(grip, 0.0, 1.0)
            self.interventions.record("gripper_range", f"gripper values {grip.tolist()} clipped to [0, 1]")
        return out

    def check_path(self, positions: np.ndarray) -> Rejection | None:
        """Reject a chunk whose predicted TCP positions (K, 3) leave the box by more than the clamp margin."""
        outside = np.linalg.norm(positions - np.clip(positions, self._lo, self._hi), axis=1)
        worst = int(np.argmax(outside))
        if outside[worst] > self.config.workspace_clamp_margin_m:
            return self._reject("workspace_path", f"step {worst} would be {outside[worst] * 1e3:.1f} mm outside "
                                                  f"the workspace at {np.round(positions[worst], 3).tolist()}")
        return None

    # ------------------------------------------------------------------ single targets

    def filter_target(self, T_commanded: np.ndarray, T_next: np.ndarray, T_measured: np.ndarray,
                      q_measured: np.ndarray | None = None) -> np.ndarray | Rejection:
        """The target to send instead of `T_next`, or a Rejection (send nothing).

        Rotation: kept in the orientation cone, then capped per step. Translation: capped per step from the last
        commanded target, clamped into the box, then pulled within `max_lead_m` of the measured position. A
        result still outside the box (only possible when the measured pose is itself far outside) is refused.
        With the measured joints `q_measured` (7,) (the control loop always passes them; without them only the
        Cartesian rules apply, e.g. for teleop's what-if counting): near a singularity the step caps shrink or
        the target is refused (A8), and a target whose predicted joints come within `joint_margin_rad` of a
        limit is refused (A4).
        """
        if not (_finite_pose(T_commanded) and _finite_pose(T_next) and _finite_pose(T_measured)):
            return self._reject("non_finite", "a pose given to the target filter is not a finite 4x4")
        cfg, rec = self.config, self.interventions.record
        step_m, step_rad, J = self._step_m, self._step_rad, None
        if q_measured is not None:
            q_measured = np.asarray(q_measured, dtype=np.float64)
            if q_measured.shape != (7,) or not np.isfinite(q_measured).all():
                return self._reject("bad_state", "the measured joints are not 7 finite values")
            J = kinematics.jacobian(q_measured)
            kappa = kinematics.condition_number(J)
            slow, stop = cfg.singularity_slow_kappa, cfg.singularity_stop_kappa
            if not kappa < stop:
                return self._reject("singularity", f"Jacobian condition number {kappa:.1f} >= {stop:.0f} "
                                                   "at the measured joints")
            if kappa > slow:
                scale = (stop - kappa) / (stop - slow)
                rec("singularity_slowdown", f"κ {kappa:.1f} > {slow:.0f}: step caps × {scale:.2f}")
                step_m, step_rad = step_m * scale, step_rad * scale
        R_cmd, R = T_commanded[:3, :3], T_next[:3, :3]
        coned = _rotate_into_cone(R, self._nominal, cfg.cone_half_angle_rad)
        if coned is not None:
            rec("orientation_cone", f"tool axis turned back to {np.degrees(cfg.cone_half_angle_rad):.0f}° of nominal")
            R = coned
        rotvec = Rotation.from_matrix(R_cmd.T @ R).as_rotvec()
        angle = float(np.linalg.norm(rotvec))
        if angle > step_rad:
            rec("step_rotation", f"{angle:.3f} rad capped to {step_rad:.3f}")
            R = R_cmd @ Rotation.from_rotvec(rotvec * (step_rad / angle)).as_matrix()

        p_cmd, p = T_commanded[:3, 3], T_next[:3, 3].copy()
        step = float(np.linalg.norm(p - p_cmd))
        if step > step_m:
            rec("step_translation", f"{step * 1e3:.1f} mm capped to {step_m * 1e3:.1f}")
            p = p_cmd + (p - p_cmd) * (step_m / step)
        boxed = np.clip(p, self._lo, self._hi)
        if not np.array_equal(boxed, p):
            rec("workspace", f"target clamped by {np.linalg.norm(boxed - p) * 1e3:.1f} mm onto the box")
            p = boxed
        p_meas = T_measured[:3, 3]
        lead = float(np.linalg.norm(p - p_meas))
        if lead > cfg.max_lead_m:
            rec("lead", f"target {lead * 1e3:.1f} mm ahead of the measured pose, pulled to {cfg.max_lead_m * 1e3:.0f}")
            p = p_meas + (p - p_meas) * (cfg.max_lead_m / lead)
        if np.any(p < self._lo - 1e-9) or np.any(p > self._hi + 1e-9):
            return self._reject("workspace", f"measured pose {np.round(p_meas, 3).tolist()} is outside the box; "
                                             "no target within the lead limit is inside it")
        if J is not None:  # A4: the joints this target needs, one damped least-squares step from the measured ones
            twist = np.concatenate([p - p_meas, Rotation.from_matrix(R @ T_measured[:3, :3].T).as_rotvec()])
            q_pred = q_measured + kinematics.dls_step(J, twist)
            near = np.flatnonzero((q_pred < self._q_lo) | (q_pred > self._q_hi))
            if near.size:
                i = int(near[0])
                return self._reject("joint_target_limit", f"the target needs joint {i + 1} at {q_pred[i]:.3f} rad, "
                                                          f"within {cfg.joint_margin_rad} rad of its limit")
        return make_T(R, p)

    # ------------------------------------------------------------------ measured state and gripper

    def check_state(self, wrench: np.ndarray, joints: np.ndarray, twist: np.ndarray) -> Rejection | None:
        """A reason for SAFE-HOLD in the measured state (external force/torque, a joint near its limit, the TCP
        moving faster than allowed, the arm at a near-singular pose: κ >= singularity_stop_kappa), or None."""
        cfg = self.config
        if not (np.isfinite(wrench).all() and np.isfinite(joints).all() and np.isfinite(twist).all()):
            return self._reject("bad_state", "the measured wrench, joints or twist hold NaN/Inf")
        speed, limit = float(np.linalg.norm(twist[:3])), cfg.max_speed_mps * cfg.measured_speed_margin
        self._fast_readings = self._fast_readings + 1 if speed > limit else 0
        if self._fast_readings >= cfg.tcp_speed_readings:
            return self._reject("tcp_speed", f"measured TCP speed {speed:.3f} m/s > {limit:.3f} m/s on "
                                             f"{self._fast_readings} readings in a row")
        if self._fast_readings:
            self.interventions.record("tcp_speed_reading", f"measured TCP speed {speed:.3f} m/s > {limit:.3f} m/s")
        force, torque = float(np.linalg.norm(wrench[:3])), float(np.linalg.norm(wrench[3:]))
        if force > cfg.max_force_n:
            return self._reject("force", f"external force {force:.1f} N > {cfg.max_force_n:.1f} N")
        if torque > cfg.max_torque_nm:
            return self._reject("torque", f"external torque {torque:.1f} Nm > {cfg.max_torque_nm:.1f} Nm")
        near = np.flatnonzero((joints < self._q_lo) | (joints > self._q_hi))
        if near.size:
            i = int(near[0])
            return self._reject("joint_limit", f"joint {i + 1} at {joints[i]:.3f} rad is within "
                                               f"{cfg.joint_margin_rad} rad of its limit")
        kappa = kinematics.condition_number(kinematics.jacobian(joints))
        if not kappa < cfg.singularity_stop_kappa:
            return self._reject("singularity", f"Jacobian condition number {kappa:.1f} >= "
                                               f"{cfg.singularity_stop_kappa:.0f} at the measured joints")
        return None

    def gripper_open(self, command: float, is_open: bool) -> bool:
        """Open/closed after hysteresis: the state flips only beyond the thresholds, never on noise about 0.5."""
        cfg = self.config
        want = True if command > cfg.gripper_open_above else False if command < cfg.gripper_close_below else is_open
        if want != (command > 0.5):
            self.interventions.record("gripper_hysteresis", f"command {command:.2f} kept the gripper "
                                                            f"{'open' if want else 'closed'}")
        return want
