"""A wheel of this project, installed into a fresh venv (no editable install, no checkout on the path), runs the
sim from a directory outside the repository (issue 9 §8): `dv-robot run pick_bottle --sim --policy scripted
--episodes 1` succeeds, `dv-launch sim` finds the packaged file, and that installed copy is refused for writing.

Nothing is downloaded: the fresh venv borrows the dependencies of the running environment through a .pth file
(its site-packages directory, plus the lines of its other .pth files, e.g. cmeel's), leaving out the editable
install's own finder, so `robot` can only come from the wheel."""

from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
from sim_episode import EPISODE_ARGS, episode_outcomes, sim_env

REPO = Path(__file__).resolve().parents[2]
EDITABLE_PTH = "__editable__"


def _run(*cmd: str | Path, cwd: Path | None = None, timeout: float = 120, **env: str) -> str:
    clean = {k: v for k, v in sim_env(**env).items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=clean, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _source_copy(dst: Path) -> Path:
    """The working tree as git sees it (tracked and untracked-but-not-ignored files; symlinks kept), so the build
    never writes build/ or *.egg-info into the checkout under test."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if rel.startswith(".") or not src.is_symlink() and not src.is_file():
            continue  # dot folders (CI, caches) and files deleted in the working tree
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst / rel, follow_symlinks=False)
    return dst


def _borrow_dependencies(venv_python: Path) -> None:
    """Put this environment's site-packages behind the fresh venv's own, minus the editable install's finder."""
    target = Path(_run(venv_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    lines = []
    for sp in map(Path, site.getsitepackages()):
        lines.append(str(sp))
        for pth in sorted(sp.glob("*.pth")):
            if not pth.name.startswith(EDITABLE_PTH):
                lines += pth.read_text().splitlines()
    (target / "00-borrowed-dependencies.pth").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv with the project's wheel installed (no dependencies resolved: they are borrowed)."""
    pytest.importorskip("franky_sim")
    root = tmp_path_factory.mktemp("wheel")
    src = _source_copy(root / "src")
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", src,
         "-w", root / "dist")
    (wheel,) = (root / "dist").glob("dreamvla_robot-*.whl")
    venv = root / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    _run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-deps", "--no-index",
         "-q", wheel)
    _borrow_dependencies(venv / "bin" / "python")
    return venv


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    """A working directory outside the repository, with no launch/ folder."""
    assert not tmp_path.is_relative_to(REPO)
    return tmp_path


def test_the_wheel_ships_the_launch_files_and_nothing_leaks_from_the_checkout(venv, elsewhere):
    probe = """if True:
        import json, robot
        from robot.launch.files import DEFAULT_LAUNCH_FILE, installed_copy, packaged_launch_files
        print(json.dumps({"robot": robot.__file__, "default": str(DEFAULT_LAUNCH_FILE),
                          "installed": installed_copy(DEFAULT_LAUNCH_FILE), "packaged": packaged_launch_files()}))"""
    seen = json.loads(_run(venv / "bin" / "python", "-c", probe, cwd=elsewhere).strip().splitlines()[-1])
    assert Path(seen["robot"]).is_relative_to(venv), seen  # not the editable install's /work/main/robot
    assert Path(seen["default"]).is_relative_to(venv) and seen["installed"], seen
    assert seen["packaged"] == sorted(p.stem for p in (REPO / "launch").glob("*.yaml"))


def test_dv_launch_of_a_packaged_name_hands_its_runner_the_installed_file(venv, elsewhere):
    out = _run(venv / "bin" / "dv-launch", "sim", "--dry-run", cwd=elsewhere)
    runner = next(line for line in out.splitlines() if line.startswith("runner: "))
    launch = Path(runner.split("--launch ")[1])
    assert launch.is_relative_to(venv) and launch.name == "sim.yaml", runner
    assert "--out runs/robot-sim-tiny" in out  # relative paths stay relative to the working directory


def test_the_installed_copy_is_refused_for_writing(venv, elsewhere):
    probe = """if True:
        from robot.launch.files import LaunchFileError, writable_launch_file
        try:
            writable_launch_file("sim")
        except LaunchFileError as exc:
            print(exc)"""
    out = _run(venv / "bin" / "python", "-c", probe, cwd=elsewhere).strip()
    assert out.startswith("sim: is the packaged launch file ") and "copy it and write the copy: cp " in out, out


def test_the_wheel_runs_a_sim_episode_from_any_directory(venv, elsewhere):
    _run(venv / "bin" / "dv-robot", *EPISODE_ARGS, cwd=elsewhere, timeout=180)
    assert episode_outcomes(elsewhere) == ["success"]
