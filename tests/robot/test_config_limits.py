"""Every limit of `SafetyConfig` has a range, and a value outside it is refused at load with the field named
(issue: "SafetyConfig has no upper bounds: a 5 m lead and a 60 s policy deadline load; joint_margin_rad may be 0").
`auto_recover_errors` holds libfranka error names only, never an empty one and never a reflex."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import annotated_types
import franky
import pytest
import yaml
from pydantic import ValidationError

from robot.launch import LaunchConfigError, load_launch_config
from robot.safety import SafetyConfig
from robot.safety.config import FRANKA_ERRORS, NEVER_AUTO_RECOVER

REPO = Path(__file__).resolve().parents[2]
SIM, REAL = REPO / "launch" / "sim.yaml", REPO / "launch" / "real_fr3.yaml"

# The numbers the issue reported as loading, and values just outside each range.
OUTSIDE = {
    "max_lead_m": (5.0, "less than or equal to 0.1"),
    "policy_deadline_s": (60.0, "less than or equal to 1"),
    "joint_margin_rad": (0.0, "greater than or equal to 0.05"),
    "max_speed_mps": (1.5, "less than or equal to 1"),
    "max_angular_speed_rps": (3.0, "less than or equal to 2.5"),
    "max_step_translation_m": (0.2, "less than or equal to 0.05"),
    "max_step_rotation_rad": (0.5, "less than or equal to 0.2"),
    "action_clip_translation_m": (0.1, "less than or equal to 0.05"),
    "action_clip_rotation_rad": (1.0, "less than or equal to 0.2"),
    "workspace_clamp_margin_m": (0.5, "less than or equal to 0.05"),
    "max_force_n": (500.0, "less than or equal to 100"),
    "max_torque_nm": (100.0, "less than or equal to 30"),
    "measured_speed_margin": (5.0, "less than or equal to 2"),
    "tcp_speed_readings": (50, "less than or equal to 5"),
    "singularity_stop_kappa": (1000.0, "less than or equal to 60"),
    "max_obs_age_s": (5.0, "less than or equal to 0.5"),
    "max_frame_age_s": (5.0, "less than or equal to 0.5"),
    "camera_timeout_s": (10.0, "less than or equal to 1"),
    "max_camera_skew_s": (1.0, "less than or equal to 0.1"),
    "max_consecutive_misses": (100, "less than or equal to 5"),
    "max_auto_recoveries": (100, "less than or equal to 5"),
    "gripper_open_above": (1.5, "less than or equal to 1"),
    "gripper_close_below": (-0.5, "greater than or equal to 0"),
    "relative_dynamics_factor": (2.0, "less than or equal to 1"),
}


def _bounds(field: str) -> tuple[Any, Any]:
    """(lower, upper) bound objects pydantic enforces on `field` (None where there is none)."""
    meta = SafetyConfig.model_fields[field].metadata
    lower = next((m for m in meta if isinstance(m, annotated_types.Gt | annotated_types.Ge)), None)
    upper = next((m for m in meta if isinstance(m, annotated_types.Lt | annotated_types.Le)), None)
    return lower, upper


NUMERIC = [name for name, f in SafetyConfig.model_fields.items()
           if f.annotation in (float, int, float | None, "float", "int", "float | None")]


def test_every_numeric_limit_has_a_range_stated_in_its_description():
    assert len(NUMERIC) >= 25, NUMERIC  # the annotation filter found the limits
    for name in NUMERIC:
        lower, upper = _bounds(name)
        assert lower is not None and upper is not None, f"{name} has no range"
        assert "Range" in (SafetyConfig.model_fields[name].description or ""), f"{name}: range not described"
    assert set(OUTSIDE) <= set(NUMERIC)


@pytest.mark.parametrize("field", sorted(OUTSIDE))
def test_a_limit_outside_its_range_is_refused_naming_the_field(field, tmp_path):
    value, expected = OUTSIDE[field]
    with pytest.raises(ValidationError, match=field):
        SafetyConfig(**{field: value})
    data = yaml.safe_load(SIM.read_text())
    data["safety"] = {**(data.get("safety") or {}), field: value}
    path = tmp_path / "sim.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(LaunchConfigError) as info:
        load_launch_config(path)
    assert f"{path}: safety.{field}: Input should be {expected}" in str(info.value), str(info.value)


def test_defaults_and_shipped_launch_files_sit_inside_every_range():
    for cfg in (SafetyConfig(), load_launch_config(SIM).safety, load_launch_config(REAL).safety):
        for name in NUMERIC:
            value = getattr(cfg, name)
            if value is None:
                continue
            lower, upper = _bounds(name)
            low = getattr(lower, "gt", getattr(lower, "ge", None))
            high = getattr(upper, "lt", getattr(upper, "le", None))
            assert low <= value <= high, (name, value)


@pytest.mark.parametrize("changes, expected", [
    ({"joint_lower": (-4.0, -1.7837, -2.9007, -3.0421, -2.8065, 0.5445, -3.0159)}, "within the arm's hard limits"),
    ({"joint_margin_rad": 0.5, "joint_lower": (-2.7437, -1.7837, -2.9007, -1.0, -2.8065, 0.5445, -3.0159),
      "joint_upper": (2.7437, 1.7837, 2.9007, -0.2, 2.8065, 4.5169, 3.0159)}, "joint_margin_rad leaves no room"),
    ({"workspace": {"lo": [0.3, -0.4, 0.0], "hi": [5.0, 0.4, 0.6]}}, "within 1.2 m of the base"),
])
def test_joint_limits_and_workspace_must_be_physical(changes, expected):
    with pytest.raises(ValidationError, match=expected):
        SafetyConfig.model_validate(changes)


def test_panda_joint_limits_are_accepted():
    from robot.safety.config import PANDA_Q_MAX, PANDA_Q_MIN

    assert SafetyConfig(joint_lower=PANDA_Q_MIN, joint_upper=PANDA_Q_MAX).joint_lower == PANDA_Q_MIN


# ------------------------------------------------------------------------------------------------ auto recovery


@pytest.mark.parametrize("names, expected", [
    (("",), "'' is not a libfranka error name"),  # an empty name matched every error by substring
    (("communication",), "'communication' is not a libfranka error name"),
    (("cartesian_reflex",), "'cartesian_reflex' must never be recovered automatically"),
    (("joint_reflex",), "'joint_reflex' must never be recovered automatically"),
    (("communication_constraints_violation",) * 2, "listed twice"),
])
def test_auto_recover_errors_are_exact_known_non_reflex_names(names, expected):
    with pytest.raises(ValidationError, match="auto_recover_errors") as info:
        SafetyConfig(auto_recover_errors=names)
    assert expected in str(info.value)


def test_auto_recover_error_names_are_franky_s_error_flags():
    flags = {n for n in dir(franky.Errors) if isinstance(getattr(franky.Errors, n), property)}
    assert set(FRANKA_ERRORS) == flags and NEVER_AUTO_RECOVER <= flags
    ok = SafetyConfig(auto_recover_errors=("communication_constraints_violation",
                                           "cartesian_motion_generator_velocity_discontinuity"))
    assert len(ok.auto_recover_errors) == 2


def test_a_launch_file_with_an_empty_recovery_name_fails_at_load(tmp_path):
    data = copy.deepcopy(yaml.safe_load(REAL.read_text()))
    data["safety"]["auto_recover_errors"] = [""]
    path = tmp_path / "real.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(LaunchConfigError, match=r"safety.auto_recover_errors: '' is not a libfranka error name"):
        load_launch_config(path)
