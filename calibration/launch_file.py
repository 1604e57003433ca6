"""Write calibration results into a launch file's `calibration:` section, and nothing else.

Why a text replacement and not load-modify-dump: the launch files are edited by people and carry comments
that explain every choice (`launch/real_fr3.yaml`); PyYAML drops them and ruamel.yaml is not a dependency.
So only the lines of the top-level `calibration:` block are regenerated; every other line stays byte-identical.
The new file is validated with `load_launch_config` before it replaces the old one (temp file in the same
folder, fsync, `os.replace`), so a crash or a bad value never leaves a half-written or invalid launch file.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml

from robot.launch.config import LaunchConfigError, load_launch_config
from robot.launch.files import LaunchFileError, writable_launch_file

_KEY = re.compile(r"^calibration\s*:(?P<rest>.*)$")
_COMMENT = re.compile(r"\s#.*$")


class LaunchWriteError(RuntimeError):
    """The launch file was left untouched; the message says why."""


def _block(lines: list[str]) -> tuple[int, int] | None:
    """[start, end) of the top-level `calibration:` block: its key line and the indented lines under it."""
    start = next((i for i, line in enumerate(lines) if _KEY.match(line)), None)
    if start is None:
        return None
    end = start + 1
    last_body = start
    while end < len(lines):
        line = lines[end]
        if line.strip() and not line[0].isspace() and not line.startswith("#"):
            break  # the next top-level key
        if line.strip() and line[0].isspace():
            last_body = end
        end += 1
    return start, last_body + 1  # blank lines and column-0 comments after the block belong to what follows


def _render(key_line: str, calibration: dict[str, Any]) -> list[str]:
    """The block's lines; a comment on the key line is kept, in its column where it fits."""
    comment = _COMMENT.search(key_line.rstrip("\n"))
    head = "calibration:" if calibration else "calibration: {}"
    if comment:
        head = head.ljust(comment.start()) + " " + comment.group(0).strip()
    if not calibration:
        return [head + "\n"]
    body = yaml.safe_dump(calibration, sort_keys=False, default_flow_style=None, width=120)
    return [head + "\n"] + [f"  {line}\n" for line in body.splitlines()]


def merge(current: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    """`updates` over `current`: whole entries replace entries; `intrinsics` is merged per camera role."""
    out = dict(current)
    for key, value in updates.items():
        if key == "intrinsics" and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def write_calibration(path: str | Path, updates: dict[str, Any]) -> None:
    """Merge `updates` into the `calibration` section of the launch file at `path`, atomically and validated.

    Raises `LaunchWriteError` (file untouched) when the file is unreadable or invalid as it stands, or when the
    result would not load.
    """
    try:
        path = writable_launch_file(path)  # a name such as `sim` means the packaged file, which may be pip's copy
    except LaunchFileError as e:
        raise LaunchWriteError(str(e)) from None
    try:
        load_launch_config(path)
    except LaunchConfigError as e:
        raise LaunchWriteError(f"{path} is not a valid launch file as it stands; fix it first:\n{e}") from None
    text = path.read_text()
    current = (yaml.safe_load(text) or {}).get("calibration") or {}
    lines = text.splitlines(keepends=True)
    span = _block(lines)
    new_block = _render(lines[span[0]] if span else "calibration:", merge(current, updates))
    if span is None:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        new_lines = lines + ["\n"] + new_block
    else:
        new_lines = lines[: span[0]] + new_block + lines[span[1]:]
    try:
        _replace_validated(path, "".join(new_lines))
    except OSError as e:
        raise LaunchWriteError(f"cannot write {path}: {e.strerror} (the file is unchanged)") from None


def _replace_validated(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            load_launch_config(tmp)
        except LaunchConfigError as e:
            problems = "\n".join(f"{path}: {p}" for p in e.problems)
            raise LaunchWriteError(f"refusing to write {path}: the result would not load:\n{problems}") from None
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)
