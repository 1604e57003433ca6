"""The state/action conventions: one declaration (dreamvla_client.conventions) that the docs, the contracts, the
robot and the recorder all follow."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from dreamvla_client.contract import physical_state_range
from dreamvla_client.conventions import ACTION_DIM, ACTION_NAMES, POSE_NAMES, STATE_DIM, STATE_LAYOUT, STATE_UNITS

DOCS = Path(__file__).parents[2] / "docs" / "conventions.md"


def test_the_state_layout_is_the_documented_table_in_order():
    """docs/conventions.md's state table, row by row (`| 0–2 | `x`, `y`, `z` | ...`), is STATE_LAYOUT."""
    rows = re.findall(r"^\| \d[–\d]* \| (.+?) \|", DOCS.read_text(), flags=re.MULTILINE)
    documented = [name for row in rows for name in re.findall(r"`(\w+)`", row)]
    assert tuple(documented) == STATE_LAYOUT


def test_names_units_and_sizes_agree():
    assert STATE_LAYOUT == ("x", "y", "z", "roll", "pitch", "yaw", "gripper_open")
    assert ACTION_NAMES == ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper_open")
    assert STATE_LAYOUT[:6] == POSE_NAMES and (STATE_DIM, ACTION_DIM) == (7, 7)
    assert list(STATE_UNITS) == list(STATE_LAYOUT)
    assert [STATE_UNITS[n] for n in STATE_LAYOUT] == ["m"] * 3 + ["rad"] * 3 + [""]
    assert len(physical_state_range(list(STATE_LAYOUT))) == STATE_DIM  # every entry has a physical range


def test_the_robot_and_the_recorder_use_the_declared_names():
    """What dv-robot announces at hello and what dv-teleop writes as column names come from the one declaration."""
    from robot.execution import state_vector
    from robot.policy import robot_contract
    from teleop.rows import dataset_config

    contract = robot_contract({"static": (48, 64)}, 15.0, 3)
    assert contract.state_layout == list(STATE_LAYOUT)
    cfg = dataset_config({"static": (48, 64, False)}, 15, {})
    assert (cfg.state_names, cfg.action_names) == (list(STATE_LAYOUT), list(ACTION_NAMES))
    assert cfg.extra_features["action.target"] == list(STATE_LAYOUT)
    assert state_vector(np.eye(4), True).shape == (STATE_DIM,)
