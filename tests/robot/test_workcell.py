"""The workcell plan: what a command line and a launch file ask for, validated before any device opens.

These run without a simulator; opening a plan is exercised by the sim tests (`test_sim_workcell.py`, the expert
episodes through `open_workcell`) and by the real-rig device errors (`test_device_errors.py`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from robot.errors import UsageError
from robot.launch import DEFAULT_LAUNCH_FILE
from robot.tasks import HOME_Q, TASKS, instruction_for
from robot.workcell import plan_workcell

REAL = Path(__file__).resolve().parents[2] / "launch" / "real_fr3.yaml"


def test_a_real_launch_file_gives_its_cameras_limits_and_loop_with_the_command_line_overrides():
    plan = plan_workcell("drawer_open", launch=REAL, mode="receding", rate_hz=10.0)
    assert not plan.sim and plan.launch is not None and plan.launch_file == REAL
    assert [c.name for c in plan.cameras] == [c.name for c in plan.launch.cameras]
    assert plan.safety == plan.launch.safety
    assert (plan.runner.mode, plan.runner.rate_hz) == ("receding", 10.0)
    assert plan.runner.max_episode_s == plan.launch.runner.max_episode_s  # not overridden: the file's
    assert plan.episodes == plan.launch.episodes


def test_the_sim_without_a_launch_file_uses_the_shipped_limits_and_colour_only_cameras():
    plan = plan_workcell("pick_bottle", sim=True, seed=3, episodes=2)
    assert plan.sim and plan.launch is None and plan.seed == 3 and plan.episodes == 2
    assert plan.safety == plan_workcell("pick_bottle", launch=DEFAULT_LAUNCH_FILE).safety
    assert [c.name for c in plan.cameras] == ["static", "wrist"] and not any(c.depth for c in plan.cameras)
    assert plan.overrides == ()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"sim": True, "launch": REAL}, "describes a real robot; drop --sim"),
    ({"sim": False}, "a real robot needs --launch FILE"),
])
def test_a_plan_that_cannot_run_is_refused_with_the_reason(kwargs, message):
    with pytest.raises(UsageError, match=message):
        plan_workcell("pick_bottle", **kwargs)


def test_an_unknown_sim_task_is_refused_naming_the_known_ones():
    with pytest.raises(UsageError, match=r"unknown sim task 'fold_towel'; known: drawer_close, drawer_open"):
        plan_workcell("fold_towel", sim=True)


def test_tasks_and_home_are_shared_facts_without_the_simulator():
    """The real robot reads tasks and its home pose from `robot.tasks`: loading a launch file imports no sim code."""
    assert set(TASKS) == {"pick_bottle", "pick_doll", "place_banana", "place_chili", "drawer_open", "drawer_close"}
    assert len(HOME_Q) == 7
    assert instruction_for("drawer_open") == "open the drawer"
    assert instruction_for("wipe_table") == "wipe table"  # a real rig's own task: its name in words
    code = ("import sys, robot.tasks, robot.launch.config; "
            "assert not [m for m in sys.modules if m.startswith(('robot.sim', 'mujoco'))], 'sim code imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
