"""Where a launch file argument points: a path as given, else one of the launch files shipped with the package.

Why: `dv-launch sim` has to work from a wheel (`pip install .`), where there is no `launch/` folder beside the
working directory. The YAMLs of the top-level `launch/` folder ship as package data of `robot.launch.packaged`;
in the source tree that directory is a symlink to `launch/`, so a checkout, an editable install and a wheel all
read the same file. The rule, one for every `dv-*` command:

1. an existing path is used as given (relative to the working directory, like every other argument);
2. otherwise a packaged name — `sim`, `sim.yaml` or `launch/sim.yaml` — is the packaged file;
3. otherwise one error names the path and lists the packaged names.

Relative paths inside a launch file (a checkpoint `runs/...`, `processes.logs_dir`) stay relative to the working
directory wherever the file itself lives, so a packaged file never writes into the installed package.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

_PACKAGED_LINK = Path(__file__).parent / "packaged"
PACKAGED_DIR = _PACKAGED_LINK.resolve()
SUFFIX = ".yaml"
DEFAULT_LAUNCH_FILE = PACKAGED_DIR / f"sim{SUFFIX}"


class LaunchFileError(ValueError):
    """A launch file argument that names no file (or one that must not be written); one line naming the path."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def packaged_launch_files() -> list[str]:
    """The names (`sim`, `real_fr3`, ...) of the launch files shipped with this install, sorted."""
    return sorted(p.stem for p in PACKAGED_DIR.glob(f"*{SUFFIX}"))


def packaged_launch_file(path: str | Path) -> Path | None:
    """The packaged file `path` names (`sim`, `sim.yaml`, `launch/sim.yaml`), or None when it names none."""
    parts = Path(path).parts
    if len(parts) == 2 and parts[0] == "launch":
        parts = parts[1:]
    if len(parts) != 1:
        return None
    name = parts[0] if parts[0].endswith(SUFFIX) else parts[0] + SUFFIX
    candidate = PACKAGED_DIR / name
    return candidate if candidate.is_file() else None


def resolve_launch_file(path: str | Path) -> Path:
    """The file a launch file argument means (module docstring); raises `LaunchFileError` when there is none."""
    given = Path(path)
    if given.is_file():
        return given
    packaged = packaged_launch_file(given)
    if packaged is not None:
        return packaged
    if given.exists():
        return given  # a directory, say: reading it says why it is no launch file
    where = "" if given.is_absolute() else f" (relative to {Path.cwd()})"
    raise LaunchFileError(path, f"cannot read: {os.strerror(errno.ENOENT)}{where}, and no packaged launch file has "
                                f"that name; packaged: {', '.join(packaged_launch_files())}")


def installed_copy(path: Path) -> bool:
    """True for a file inside the installed package data: pip owns it (a reinstall overwrites it). In a source
    checkout the packaged directory is the symlink to `launch/`, the user's own folder, so never true there."""
    if _PACKAGED_LINK.is_symlink():
        return False
    return path.resolve().parent == PACKAGED_DIR


def writable_launch_file(path: str | Path) -> Path:
    """The launch file `path` means, for a command that writes into it (`dv-calib --write-launch`). The installed
    copy of a packaged file is refused, with the command that makes a copy the user owns."""
    target = resolve_launch_file(path)
    if installed_copy(target):
        raise LaunchFileError(path, f"is the packaged launch file {target}, which the install owns (a reinstall "
                                    f"overwrites it); copy it and write the copy: cp {target} ./{target.name}")
    return target
