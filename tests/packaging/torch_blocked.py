"""Run the robot side with torch made unimportable: `python torch_blocked.py imports` imports every module of the
torch-free packages; `python torch_blocked.py episode` runs one sim episode through `dv-robot`'s `main()`.

torch is refused by a meta-path finder installed before anything else is imported, rather than by
`sys.modules["torch"] = None`: SciPy's array-API layer does `getattr(sys.modules["torch"], "Tensor")` whenever
that key exists, so a None entry breaks `scipy.spatial.transform.Rotation` (a SciPy quirk, not a torch import).
The finder makes `import torch` fail exactly as on a robot PC without it, and leaves no key behind.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec

BLOCKED = "torch"
TORCH_FREE = ("robot", "teleop", "calibration", "dreamvla_client")
SERVER_SIDE = ("policy_server", "bench")  # the robot side never imports these either


class RefuseTorch:
    """A meta-path finder that answers every `torch` / `torch.*` import with ModuleNotFoundError."""

    @staticmethod
    def find_spec(name: str, path: Sequence[str] | None = None, target: object = None) -> ModuleSpec | None:
        if name == BLOCKED or name.startswith(BLOCKED + "."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the torch-free test)", name=name)
        return None


sys.meta_path.insert(0, RefuseTorch)


def _import_everything() -> int:
    """Import every module and subpackage of the torch-free packages; print each failure, return their count."""
    import importlib
    import pkgutil

    failures: list[str] = []
    for top in TORCH_FREE:
        package = importlib.import_module(top)
        for info in pkgutil.walk_packages(package.__path__, f"{top}.", onerror=failures.append):
            try:
                importlib.import_module(info.name)
            except Exception as exc:  # every module's failure is reported, not only the first
                failures.append(f"{info.name}: {type(exc).__name__}: {exc}")
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in SERVER_SIDE)
    failures += [f"imported server-side module {m}" for m in leaked]
    print("\n".join(failures) or "all modules imported")
    return len(failures)


def main(argv: list[str]) -> int:
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        print("torch is still importable: the block did not take")
        return 3
    if argv == ["imports"]:
        return 1 if _import_everything() else 0
    if argv and argv[0] == "episode":
        from robot.cli import main as dv_robot

        return dv_robot(argv[1:])
    print(f"usage: {sys.argv[0]} imports | episode DV-ROBOT-ARGS...")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
