"""The safety envelope as pure logic: every rule of `SafetyConfig`, and the invariants no input may break.

Rows of the fault matrix (docs/safety.md) named in each docstring. Hypothesis drives the invariants that must hold for
*any* input: NaN/Inf and malformed chunks are always rejected whole (A1, A2), and no target outside the
workspace box ever leaves the filter (A3), whatever the policy asked for.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import ValidationError
from scipy.spatial.transform import Rotation

from robot.geometry import make_T
from robot.kinematics import condition_number, fk, jacobian
from robot.safety import Interventions, Rejection, SafetyConfig, SafetyEnvelope
from robot.tasks import HOME_Q

DT = 1 / 15
CFG = SafetyConfig()
STEP_M, STEP_RAD = CFG.step_caps(DT)
LO, HI = np.array(CFG.workspace.lo), np.array(CFG.workspace.hi)
TOOL_DOWN = Rotation.from_euler("x", math.pi).as_matrix()  # the home orientation: ee z pointing down


def pose(p, R=TOOL_DOWN) -> np.ndarray:
    return make_T(R, p)


def envelope(**changes) -> SafetyEnvelope:
    return SafetyEnvelope(SafetyConfig(**changes), DT)


def inside(p) -> bool:
    return bool(np.all(p >= LO - 1e-9) and np.all(p <= HI + 1e-9))


finite = st.floats(-1e3, 1e3, allow_nan=False)
positions_in_box = st.tuples(*(st.floats(lo, hi) for lo, hi in zip(LO, HI, strict=True))).map(np.array)
any_positions = st.tuples(finite, finite, finite).map(np.array)
rotations = st.tuples(*(st.floats(-math.pi, math.pi),) * 3).map(lambda e: Rotation.from_euler("xyz", e).as_matrix())


def tool_angle(R: np.ndarray) -> float:
    return math.acos(float(np.clip(R[:, 2] @ np.array([0.0, 0.0, -1.0]), -1, 1)))


# ------------------------------------------------------------------------------------------------ config


def test_config_errors_name_the_field():
    """Issue §6/§7 'bad launch config → clear error': a bad value fails at load, naming the field."""
    with pytest.raises(ValidationError, match="max_speed_mps"):
        SafetyConfig(max_speed_mps=-0.1)
    with pytest.raises(ValidationError, match="relative_dynamics_factor"):
        SafetyConfig(relative_dynamics_factor=1.5)
    with pytest.raises(ValidationError, match="max_sped_mps"):
        SafetyConfig.model_validate({"max_sped_mps": 0.2})  # a typo is an error, not a silent default
    with pytest.raises(ValidationError, match="lo < hi"):
        SafetyConfig.model_validate({"workspace": {"lo": [0.5, 0, 0], "hi": [0.4, 1, 1]}})
    with pytest.raises(ValidationError, match="gripper"):
        SafetyConfig(gripper_open_above=0.3, gripper_close_below=0.6)
    with pytest.raises(ValidationError, match="singularity_slow_kappa"):
        SafetyConfig(singularity_slow_kappa=30, singularity_stop_kappa=17)


def test_step_caps_are_the_tighter_of_step_and_speed():
    """A5: one step moves at most min(max_step, v_max·dt): 16.7 mm and 33 mrad at 15 Hz and the defaults."""
    assert CFG.step_caps(DT) == pytest.approx((0.25 / 15, 0.5 / 15))
    assert CFG.step_caps(1.0) == pytest.approx((0.02, 0.05))
    assert CFG.deadline_s(3, 15.0) == pytest.approx(0.2)
    assert SafetyConfig(policy_deadline_s=0.3).deadline_s(3, 15.0) == 0.3


# ------------------------------------------------------------------------------------------------ whole chunks


@settings(max_examples=200, deadline=None)
@given(chunk=hnp.arrays(np.float64, (3, 7), elements=st.floats(-2, 2)), where=st.tuples(st.integers(0, 2),
       st.integers(0, 6)), bad=st.sampled_from([math.nan, math.inf, -math.inf]), f32=st.booleans())
def test_any_nan_or_inf_rejects_the_whole_chunk(chunk, where, bad, f32):
    """A1: one NaN/Inf anywhere rejects the whole chunk before clipping (clipping does not remove NaN)."""
    chunk[where] = bad
    env = envelope()
    result = env.check_chunk(chunk.astype(np.float32) if f32 else chunk)
    assert isinstance(result, Rejection) and result.rule == "non_finite"
    assert env.interventions.counts == {"non_finite": 1}


@settings(max_examples=200, deadline=None)
@given(shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=8).filter(lambda s: s != (3, 7)))
def test_any_other_shape_is_rejected(shape):
    """A2: a chunk is exactly (3, 7); any other shape is rejected."""
    result = envelope().check_chunk(np.zeros(shape))
    assert isinstance(result, Rejection) and result.rule == "bad_shape"


@pytest.mark.parametrize("value, rule", [
    (np.zeros((3, 7), np.float16), "bad_dtype"),
    (np.zeros((3, 7), np.int64), "bad_dtype"),
    (np.zeros((3, 7), object), "bad_dtype"),
    (np.zeros((3, 7), ">f8"), "bad_dtype"),
    ([[0.0] * 7] * 3, "bad_type"),
    (None, "bad_type"),
])
def test_wrong_type_or_dtype_is_rejected(value, rule):
    """A2: only float32/float64 arrays are accepted (dtype checked before values are read)."""
    result = envelope().check_chunk(value)
    assert isinstance(result, Rejection) and result.rule == rule


def test_values_beyond_the_action_scale_are_clipped_and_counted():
    """A5 / docs/conventions.md: pose values beyond ±1 × (0.02 m, 0.05 rad) are clipped, each one counted."""
    chunk = np.zeros((3, 7), np.float32)
    chunk[0, :6] = [0.5, -0.03, 0.01, 0.2, 0.0, -0.06]
    chunk[:, 6] = [1.0, 3.0, -2.0]
    env = envelope()
    out = env.check_chunk(chunk)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_allclose(out[0, :6], [0.02, -0.02, 0.01, 0.05, 0.0, -0.05])
    np.testing.assert_allclose(out[:, 6], [1.0, 1.0, 0.0])
    assert env.interventions.counts == {"action_clip": 4, "gripper_range": 1}
    assert chunk[0, 0] == np.float32(0.5), "the caller's array is never modified"


def test_reject_modes_refuse_instead_of_clipping():
    """A5/A7 with `action_out_of_range`/`gripper_out_of_range` = reject: out-of-range chunks are refused whole."""
    chunk = np.zeros((3, 7))
    chunk[1, 2] = 0.03
    assert envelope(action_out_of_range="reject").check_chunk(chunk) == Rejection(
        "action_range", "1 pose values beyond the action scale")
    chunk[1, 2], chunk[2, 6] = 0.0, 1.5
    result = envelope(gripper_out_of_range="reject").check_chunk(chunk)
    assert isinstance(result, Rejection) and result.rule == "gripper_range"


def test_path_leaving_the_box_beyond_the_margin_is_rejected():
    """A3: the predicted path is checked on every step; ≤ 1 cm outside passes (clamped later), beyond is rejected."""
    env = envelope()
    path = np.array([[0.5, 0.0, 0.3], [0.5, 0.0, LO[2] - 0.009], [0.5, 0.0, 0.3]])
    assert env.check_path(path) is None
    path[2, 0] = HI[0] + 0.02
    result = env.check_path(path)
    assert isinstance(result, Rejection) and result.rule == "workspace_path" and "step 2" in result.detail


# ------------------------------------------------------------------------------------------------ single targets


@settings(max_examples=300, deadline=None)
@given(p_cmd=positions_in_box, p_next=any_positions, p_meas=positions_in_box, R_next=rotations)
def test_no_target_outside_the_box_ever_leaves_the_filter(p_cmd, p_next, p_meas, R_next):
    """A3, A5, A6 for any requested target and any measured pose in the box: the target sent is inside the box,
    within L_max of the measured pose, turns at most ω_max·dt from the last command, and keeps the tool axis
    in the cone."""
    env = envelope()
    T_cmd = pose(p_cmd)
    out = env.filter_target(T_cmd, pose(p_next, R_next), pose(p_meas))
    assert isinstance(out, np.ndarray)
    p = out[:3, 3]
    assert inside(p)
    assert np.linalg.norm(p - p_meas) <= CFG.max_lead_m + 1e-9
    rotation = np.linalg.norm(Rotation.from_matrix(T_cmd[:3, :3].T @ out[:3, :3]).as_rotvec())
    assert rotation <= STEP_RAD + 1e-6
    assert tool_angle(out[:3, :3]) <= CFG.cone_half_angle_rad + 1e-3
    np.testing.assert_allclose(out[:3, :3].T @ out[:3, :3], np.eye(3), atol=1e-9)


@settings(max_examples=300, deadline=None)
@given(p_cmd=positions_in_box, p_next=any_positions, lag=st.tuples(*(st.floats(-1, 1),) * 3).map(np.array))
def test_a_step_never_exceeds_the_speed_cap(p_cmd, p_next, lag):
    """A5: while the last command is within L_max of the arm (which the filter itself maintains), a target moves
    at most v_max·dt from it, whatever was asked: the box and lead clamps are projections onto convex sets that
    contain the last command, so they never lengthen a step."""
    p_meas = np.clip(p_cmd + lag * CFG.max_lead_m / max(1.0, float(np.linalg.norm(lag))), LO, HI)
    out = envelope().filter_target(pose(p_cmd), pose(p_next), pose(p_meas))
    assert np.linalg.norm(out[:3, 3] - p_cmd) <= STEP_M + 1e-9


@settings(max_examples=200, deadline=None)
@given(p_cmd=any_positions, p_next=any_positions, p_meas=any_positions)
def test_even_from_outside_the_box_nothing_outside_is_sent(p_cmd, p_next, p_meas):
    """A3 with the measured pose anywhere (a bad start, an overshoot): the filter returns a target inside the box
    or refuses; it never returns one outside."""
    out = envelope().filter_target(pose(p_cmd), pose(p_next), pose(p_meas))
    assert isinstance(out, Rejection) or inside(out[:3, 3])
    if isinstance(out, Rejection):
        assert out.rule == "workspace"


def test_each_target_rule_is_counted_under_its_name():
    """A3/A5/A6: step caps, box clamp, lead and cone each count their own interventions."""
    env = envelope()
    T_cmd = pose([0.5, 0.0, 0.3])
    env.filter_target(T_cmd, pose([0.6, 0.0, 0.3]), pose([0.5, 0.0, 0.3]))  # 100 mm step
    assert env.interventions.take() == {"step_translation": 1}
    env.filter_target(pose([0.5, 0.0, LO[2] + 0.005]), pose([0.5, 0.0, LO[2] - 0.005]), pose([0.5, 0.0, 0.02]))
    assert env.interventions.take() == {"workspace": 1}
    lagging = env.filter_target(pose([0.5, 0.0, 0.3]), pose([0.51, 0.0, 0.3]), pose([0.45, 0.0, 0.3]))
    assert env.interventions.take() == {"lead": 1}
    assert np.linalg.norm(lagging[:3, 3] - [0.45, 0.0, 0.3]) == pytest.approx(CFG.max_lead_m)
    tilted = TOOL_DOWN @ Rotation.from_euler("y", 0.62).as_matrix()  # just outside the 0.6 rad cone
    env.filter_target(pose([0.5, 0.0, 0.3], tilted), pose([0.5, 0.0, 0.3], tilted), pose([0.5, 0.0, 0.3]))
    assert env.interventions.take() == {"orientation_cone": 1}


def test_tool_pointing_up_is_turned_back_into_the_cone_at_the_speed_cap():
    """Cone rule, the degenerate case (tool axis opposite the nominal one): from inside the cone the target is
    kept at the cone; from outside (a bad start) it turns back no faster than ω_max·dt, because speed wins."""
    up, env = np.eye(3), envelope()
    edge = TOOL_DOWN @ Rotation.from_euler("y", 0.59).as_matrix()
    out = env.filter_target(pose([0.5, 0, 0.3], edge), pose([0.5, 0, 0.3], up), pose([0.5, 0, 0.3]))
    assert tool_angle(out[:3, :3]) <= CFG.cone_half_angle_rad + 1e-6
    out = env.filter_target(pose([0.5, 0, 0.3], up), pose([0.5, 0, 0.3], up), pose([0.5, 0, 0.3]))
    assert math.pi - tool_angle(out[:3, :3]) == pytest.approx(STEP_RAD)


def test_non_finite_poses_are_refused():
    """A1 at the last line: a NaN pose handed to the filter (measured or commanded) is refused, never sent."""
    bad = pose([0.5, 0, 0.3])
    bad[0, 3] = math.nan
    for args in ((bad, pose([0.5, 0, 0.3]), pose([0.5, 0, 0.3])), (pose([0.5, 0, 0.3]), pose([0.5, 0, 0.3]), bad)):
        result = envelope().filter_target(*args)
        assert isinstance(result, Rejection) and result.rule == "non_finite"


# ------------------------------------------------------------------------------------------------ joints (A4, A8)

# Tool pointing down (q6 = q2 - q4), all in the workspace box. The FR3's stretched-elbow singularity is at
# q4 ≈ -0.5 (κ > 400), beyond the soft limit -0.25; κ falls as the elbow bends: 40 at q4 = -0.8, 26 at -1.0.
Q_HOME = np.array(HOME_Q)
Q_SLOW = np.array([0.0, 0.6, 0.0, -1.0, 0.0, 1.6, math.pi / 4])  # reaching far forward: 17 < κ < 30
Q_STOP = np.array([0.0, 0.6, 0.0, -0.8, 0.0, 1.4, math.pi / 4])  # further stretched: κ > 30
Q_FOLDED = np.array([0.0, 0.25, 0.0, -2.92, 0.0, 3.17, math.pi / 4])  # q4 0.022 rad inside its soft lower limit


def moved(T: np.ndarray, dp) -> np.ndarray:
    out = T.copy()
    out[:3, 3] += dp
    return out


def test_kappa_of_the_test_configurations():
    """The configurations below sit where their names say: home far below both A8 thresholds (printed)."""
    kappa = {name: condition_number(jacobian(q)) for name, q in
             (("home", Q_HOME), ("slow", Q_SLOW), ("stop", Q_STOP), ("folded", Q_FOLDED))}
    print("\nκ: " + ", ".join(f"{name} {k:.1f}" for name, k in kappa.items()))
    assert kappa["home"] < 10 and kappa["folded"] < CFG.singularity_slow_kappa
    assert CFG.singularity_slow_kappa < kappa["slow"] < CFG.singularity_stop_kappa < kappa["stop"]
    for q in (Q_HOME, Q_SLOW, Q_STOP, Q_FOLDED):
        assert inside(fk(q)[:3, 3]) and tool_angle(fk(q)[:3, :3]) < 1e-6
        assert np.all(q > np.array(CFG.joint_lower) + CFG.joint_margin_rad)  # no joint near its limit yet
        assert np.all(q < np.array(CFG.joint_upper) - CFG.joint_margin_rad)


def test_a_normal_step_at_home_is_unaffected_by_the_joint_rules():
    """A4/A8 do not touch ordinary motion: a 10 mm, 0.03 rad step at home is sent as asked, nothing counted."""
    env, T = envelope(), fk(Q_HOME)
    T_next = moved(T, [0.01, -0.005, 0.0])
    T_next[:3, :3] = Rotation.from_euler("z", 0.03).as_matrix() @ T[:3, :3]
    out = env.filter_target(T, T_next, T, Q_HOME)
    np.testing.assert_allclose(out, T_next, atol=1e-12)
    assert env.interventions.take() == {}


def test_near_a_singularity_steps_slow_down_then_stop():
    """A8: between κ 17 and 30 the step caps shrink linearly (to zero at 30), counted as singularity_slowdown;
    at κ >= 30 every target is refused (rule singularity), so nothing is sent."""
    env = envelope()
    T = fk(Q_SLOW)
    kappa = condition_number(jacobian(Q_SLOW))
    scale = (CFG.singularity_stop_kappa - kappa) / (CFG.singularity_stop_kappa - CFG.singularity_slow_kappa)
    out = env.filter_target(T, moved(T, [-0.01, 0.0, 0.0]), T, Q_SLOW)  # 10 mm, under the normal cap
    assert np.linalg.norm(out[:3, 3] - T[:3, 3]) == pytest.approx(STEP_M * scale)
    assert env.interventions.take() == {"singularity_slowdown": 1, "step_translation": 1}
    T = fk(Q_STOP)
    result = env.filter_target(T, moved(T, [-0.005, 0.0, 0.0]), T, Q_STOP)
    assert isinstance(result, Rejection) and result.rule == "singularity"
    assert env.interventions.take() == {"singularity": 1}
    stricter = envelope(singularity_slow_kappa=5, singularity_stop_kappa=8)
    assert stricter.filter_target(fk(Q_HOME), fk(Q_HOME), fk(Q_HOME), Q_HOME).rule == "singularity"
    assert env.check_state(np.zeros(6), Q_SLOW, np.zeros(6)) is None  # slow, not yet a reason to hold
    assert env.check_state(np.zeros(6), Q_STOP, np.zeros(6)).rule == "singularity"  # the loop's SAFE-HOLD


def test_a_target_that_needs_a_joint_past_its_soft_limit_is_refused():
    """A4: folded near joint 4's lower limit, a 10 mm step that folds it further would need q4 within 0.1 rad of
    the limit: refused (joint_target_limit), counted, nothing returned to send; the step away is sent."""
    env, T = envelope(), fk(Q_FOLDED)
    result = env.filter_target(T, moved(T, [-0.01, 0.0, 0.0]), T, Q_FOLDED)
    assert isinstance(result, Rejection) and result.rule == "joint_target_limit" and "joint 4" in result.detail
    assert env.interventions.take() == {"joint_target_limit": 1}
    away = moved(T, [0.01, 0.0, 0.0])
    np.testing.assert_allclose(env.filter_target(T, away, T, Q_FOLDED), away, atol=1e-12)
    assert env.interventions.take() == {}


def test_bad_measured_joints_are_refused():
    for q in (np.full(7, math.nan), np.zeros(6)):
        result = envelope().filter_target(fk(Q_HOME), fk(Q_HOME), fk(Q_HOME), q)
        assert isinstance(result, Rejection) and result.rule == "bad_state"


# ------------------------------------------------------------------------------------------------ state, gripper


def test_force_torque_joint_limits_and_tcp_speed_call_for_safe_hold():
    """R1 (software side): external force/torque above the thresholds, or a joint within 0.1 rad of its limit
    (A4), is a reason for SAFE-HOLD before Control raises a reflex or a limit violation; so is a measured TCP
    speed above the cap × margin (A5), which the step caps cannot cause but a push or a controller fault can."""
    env = envelope()
    home = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785])
    still = np.zeros(6)
    assert env.check_state(np.zeros(6), home, still) is None
    assert env.check_state(np.array([20.0, 20.0, 0, 0, 0, 0]), home, still).rule == "force"
    assert env.check_state(np.array([0, 0, 0, 8.0, 8.0, 0]), home, still).rule == "torque"
    near = home.copy()
    near[3] = CFG.joint_upper[3] - 0.05
    result = env.check_state(np.zeros(6), near, still)
    assert result.rule == "joint_limit" and "joint 4" in result.detail
    assert env.check_state(np.full(6, math.nan), home, still).rule == "bad_state"
    limit = CFG.max_speed_mps * CFG.measured_speed_margin
    assert env.check_state(np.zeros(6), home, np.array([0.99 * limit, 0, 0, 0, 0, 0])) is None
    fast = np.array([0, 0.8 * limit, -0.8 * limit, 0, 0, 0])
    assert env.check_state(np.zeros(6), home, fast) is None  # one reading: counted, not acted on
    assert env.check_state(np.zeros(6), home, still) is None  # and forgotten once the speed is back
    assert env.check_state(np.zeros(6), home, fast) is None
    result = env.check_state(np.zeros(6), home, fast)  # the second reading in a row
    assert result.rule == "tcp_speed" and "2 readings in a row" in result.detail
    assert env.interventions.counts["tcp_speed_reading"] == 2
    assert env.check_state(np.zeros(6), home, np.array([math.inf, 0, 0, 0, 0, 0])).rule == "bad_state"


@settings(max_examples=100, deadline=None)
@given(commands=st.lists(st.floats(0.4, 0.6), min_size=1, max_size=50), start_open=st.booleans())
def test_gripper_never_flips_inside_the_hysteresis_band(commands, start_open):
    """A7: a command flapping about 0.5 (inside [0.4, 0.6]) never changes the gripper state."""
    env, is_open = envelope(), start_open
    for c in commands:
        is_open = env.gripper_open(c, is_open)
    assert is_open == start_open


def test_gripper_flips_beyond_the_thresholds_and_counts_suppressed_flips():
    """A7: open above 0.6, close below 0.4; a flip the 0.5 threshold would have made is counted."""
    env = envelope()
    assert env.gripper_open(0.61, False) is True
    assert env.gripper_open(0.39, True) is False
    assert env.gripper_open(0.55, False) is False
    assert env.interventions.counts == {"gripper_hysteresis": 1}


def test_interventions_take_returns_and_resets_counts():
    """Every intervention is counted by rule; `take` hands an episode's counts over and starts afresh."""
    counter = Interventions(keep_events=2)
    for rule in ("lead", "lead", "stale"):
        counter.record(rule, "x")
    assert len(counter.events) == 2
    assert counter.take() == {"lead": 2, "stale": 1}
    assert counter.take() == {}
