"""The robot side is torch-free by construction (issue 9 §1): with torch unimportable, every module of `robot`,
`teleop`, `calibration` and `dreamvla_client` imports (none pulls in `policy_server` or `bench`), and a sim
episode runs; and installing the `robot` extra never pulls torch or the model libraries, directly or through a
dependency."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from sim_episode import EPISODE_ARGS, episode_outcomes, sim_env

REPO = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("torch_blocked.py")
SERVER_ONLY = {"torch", "transformers", "diffusers"}


def _blocked(cwd: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(RUNNER), *args], cwd=cwd, env=sim_env(PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=timeout)


def test_every_robot_side_module_imports_without_torch(tmp_path):
    pytest.importorskip("franky_sim")  # robot.sim and the sim cameras are modules too: they must import as well
    proc = _blocked(tmp_path, "imports", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_sim_episode_runs_without_torch(tmp_path):
    pytest.importorskip("franky_sim")
    proc = _blocked(tmp_path, "episode", *EPISODE_ARGS, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert episode_outcomes(tmp_path) == ["success"], proc.stdout[-3000:]


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(requirement).name).lower()


def _pulled(requirements: list[str]) -> set[str]:
    """The distributions `requirements` install, following each installed one's own requirements (no extras)."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = _name(str(req))
        if name in seen or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        try:
            todo += [Requirement(r) for r in metadata.requires(name) or []]
        except metadata.PackageNotFoundError:
            pass  # not installed here: its own name was still checked
    return seen


def test_the_robot_extra_never_pulls_torch():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    robot = project["dependencies"] + project["optional-dependencies"]["robot"]
    assert not {_name(r) for r in robot} & SERVER_ONLY, robot
    assert not _pulled(robot) & SERVER_ONLY
