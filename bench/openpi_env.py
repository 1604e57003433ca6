"""The separate virtual environment in which `dv-bench serve` runs openpi's transport.

Why separate: `openpi-client` (PyPI) pins numpy<2 while this project runs numpy 2, so it can never be one
of the project's dependencies. The comparison runs openpi's client exactly as its users install it, with
its declared dependencies (numpy 1.x, msgpack, websockets, dm-tree, pillow) resolved by pip, rather than
with `--no-deps` on numpy 2: the point is to measure openpi's transport as deployed, and its numpy pin is
part of that deployment.

Made once, then reused: `python -m bench.openpi_env [DIR]` (or automatically by the
benchmark). The default place is outside the work tree (`$DV_OPENPI_VENV`, else
`${XDG_CACHE_HOME:-~/.cache}/dreamvla/openpi-bench-venv`), so nothing is added to git and ruff/pytest
never wander into a venv's site-packages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

# openpi-client 0.1.2 is the newest release on PyPI; its server side (openpi's WebsocketPolicyServer) uses
# `websockets.asyncio.server`, which exists from websockets 13 on. typing_extensions: openpi-client 0.1.2's
# websocket_client_policy imports it without declaring it (a bare install fails with ModuleNotFoundError).
REQUIREMENTS = ("openpi-client==0.1.2", "websockets>=14", "typing_extensions>=4")
CHECK = "import openpi_client.msgpack_numpy, openpi_client.websocket_client_policy, websockets.asyncio.server"


def default_venv() -> Path:
    if os.environ.get("DV_OPENPI_VENV"):
        return Path(os.environ["DV_OPENPI_VENV"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "dreamvla" / "openpi-bench-venv"


def venv_python(path: Path) -> Path:
    return path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def is_ready(path: Path) -> bool:
    """True when the venv exists and imports everything the openpi scripts need."""
    python = venv_python(path)
    if not python.exists():
        return False
    return subprocess.run([str(python), "-c", CHECK], capture_output=True, env=clean_env()).returncode == 0


def clean_env() -> dict[str, str]:
    """The environment for the venv's processes: without PYTHONPATH, so this repository (and its numpy 2
    interpreter's packages) can never shadow what the venv installed."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def ensure(path: Path | None = None, *, quiet: bool = True) -> Path:
    """The venv's interpreter, creating the venv and installing `REQUIREMENTS` first if needed.

    Raises RuntimeError with pip's output when the install fails (e.g. no access to PyPI)."""
    path = path or default_venv()
    if is_ready(path):
        return venv_python(path)
    venv.EnvBuilder(with_pip=True, clear=False).create(path)
    python = venv_python(path)
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *(["-q"] if quiet else []),
           *REQUIREMENTS]
    done = subprocess.run(cmd, capture_output=quiet, text=True, env=clean_env())
    if done.returncode != 0 or not is_ready(path):
        raise RuntimeError(f"could not prepare the openpi venv at {path} ({' '.join(cmd)}):\n"
                           f"{(done.stdout or '')[-2000:]}{(done.stderr or '')[-2000:]}")
    return python


def versions(python: Path) -> dict[str, str]:
    """Installed versions of the packages that make up openpi's transport, as the venv reports them."""
    code = ("import json, importlib.metadata as m; print(json.dumps({p: m.version(p) for p in "
            "('openpi-client', 'websockets', 'msgpack', 'numpy')}))")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True, env=clean_env())
    return dict(json.loads(out.stdout))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    python = ensure(Path(args[0]) if args else None, quiet=False)
    print(f"{python} {versions(python)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
