"""Launch file arguments (issue 9 §8), in a source checkout: an existing path is used as given, a packaged name
(`sim`, `sim.yaml`, `launch/sim.yaml`) means the shipped file from any directory, anything else is one error
naming the path and the packaged names; every YAML of `launch/` is shipped, and not as a top-level `launch`
package (ROS 2 owns that name). The wheel itself is tested in test_wheel_install.py."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from robot.launch import DEFAULT_LAUNCH_FILE, LaunchConfigError, load_launch_config
from robot.launch.files import (
    PACKAGED_DIR,
    LaunchFileError,
    installed_copy,
    packaged_launch_files,
    resolve_launch_file,
    writable_launch_file,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p.stem for p in (REPO / "launch").glob("*.yaml"))


def test_every_launch_yaml_is_packaged_and_the_default_is_sim():
    assert SHIPPED and packaged_launch_files() == SHIPPED
    assert DEFAULT_LAUNCH_FILE == PACKAGED_DIR / "sim.yaml" == (REPO / "launch" / "sim.yaml").resolve()


def test_pyproject_ships_the_yamls_as_data_of_a_robot_subpackage():
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert tool["package-data"] == {"robot.launch.packaged": ["*.yaml"]}
    assert (REPO / "robot" / "launch" / "packaged").resolve() == (REPO / "launch").resolve()
    assert not (REPO / "launch" / "__init__.py").exists()  # `import launch` stays ROS 2's
    assert not any(p == "launch" or p.startswith("launch*") for p in tool["packages"]["find"]["include"])


@pytest.mark.parametrize("name", ["sim", "sim.yaml", "launch/sim.yaml", "launch/sim"])
def test_a_packaged_name_resolves_from_any_directory(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_launch_file(name) == DEFAULT_LAUNCH_FILE
    assert load_launch_config(name).robot.kind == "sim"


def test_an_existing_path_wins_over_a_packaged_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sim.yaml").write_text(DEFAULT_LAUNCH_FILE.read_text().replace("episodes: 3", "episodes: 7"))
    assert resolve_launch_file("sim.yaml") == Path("sim.yaml")
    assert load_launch_config("sim.yaml").episodes == 7
    assert load_launch_config("sim").episodes == 3  # the bare name is not a path here: the packaged file
    assert resolve_launch_file(REPO / "launch" / "real_fr3.yaml") == REPO / "launch" / "real_fr3.yaml"


def test_an_unknown_launch_file_is_one_line_naming_it_and_the_packaged_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for arg in ("simm", "configs/sim.yaml", "launch/nope.yaml"):
        with pytest.raises(LaunchConfigError) as err:
            load_launch_config(arg)
        message = str(err.value)
        assert "\n" not in message
        assert message.startswith(f"{arg}: cannot read: No such file or directory (relative to {tmp_path})")
        assert message.endswith(f"packaged: {', '.join(SHIPPED)}")


def test_errors_in_a_packaged_file_name_the_file_that_was_read(tmp_path, monkeypatch):
    from robot.launch import files

    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "broken.yaml").write_text(DEFAULT_LAUNCH_FILE.read_text().replace("episodes: 3", "episodes: 0"))
    monkeypatch.setattr(files, "PACKAGED_DIR", shipped)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LaunchConfigError) as err:
        load_launch_config("broken")
    assert str(err.value).startswith(f"{shipped / 'broken.yaml'}: episodes: ")


def test_a_directory_is_no_launch_file(tmp_path, monkeypatch):
    """A folder named like a packaged file (a dataset `sim/`, say) does not hide it; any other folder given as the
    launch file is read as given, and refused."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sim").mkdir()
    (tmp_path / "rig").mkdir()
    assert resolve_launch_file("sim") == DEFAULT_LAUNCH_FILE
    with pytest.raises(LaunchConfigError, match=r"^rig: cannot read: Is a directory$"):
        load_launch_config("rig")


def test_writing_a_launch_file_in_a_checkout_writes_the_users_launch_folder(tmp_path, monkeypatch):
    """In a checkout the packaged directory is launch/ itself (the user's folder): writable. In a wheel it is
    pip's copy, refused (test_wheel_install.py)."""
    monkeypatch.chdir(tmp_path)
    assert writable_launch_file("sim") == DEFAULT_LAUNCH_FILE and not installed_copy(DEFAULT_LAUNCH_FILE)
    with pytest.raises(LaunchFileError, match=r"^nope: cannot read: No such file"):
        writable_launch_file("nope")


def test_dv_launch_runs_a_packaged_name_from_any_directory(tmp_path):
    """dv-launch validates the name and hands the runner the very file it resolved to (dry run: nothing starts)."""
    proc = subprocess.run([sys.executable, "-m", "robot.launch.supervisor", "sim", "--dry-run"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"--launch {DEFAULT_LAUNCH_FILE}" in proc.stderr
