"""The sim episode both packaging tests run (`dv-robot run pick_bottle --sim --policy scripted --episodes 1`), and
how they judge it: exit code 0 and a `success` outcome in the summary JSON it writes under the working directory."""

from __future__ import annotations

import json
import os
from pathlib import Path

EPISODE_ARGS = ["run", "pick_bottle", "--sim", "--policy", "scripted", "--episodes", "1"]


def sim_env(**extra: str) -> dict[str, str]:
    """The environment a sim subprocess runs in: MuJoCo renders headless (EGL) unless the caller chose otherwise."""
    return {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), **extra}


def episode_outcomes(cwd: Path) -> list[str]:
    """The outcomes in the one summary `dv-robot run` wrote to its default place, relative to `cwd`."""
    summaries = sorted((cwd / "runs" / "robot").glob("summary-pick_bottle-*.json"))
    assert len(summaries) == 1, f"expected one summary under {cwd}/runs/robot, found {summaries}"
    return [episode["outcome"] for episode in json.loads(summaries[0].read_text())["episodes"]]
