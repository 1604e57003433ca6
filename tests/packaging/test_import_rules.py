"""The arrows between packages (docs/architecture.md), checked on every import statement in the source, including
the ones inside functions: a rule that only a reviewer remembers does not hold for long."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# package (a dotted prefix) -> module prefixes it must never import
FORBIDDEN = {
    "policy_server.training": ("policy_server.serving", "robot", "teleop", "calibration", "bench"),
    "policy_server.serving": ("policy_server.training", "robot", "teleop", "calibration", "bench"),
    "policy_server.model": ("policy_server.serving", "policy_server.training", "robot", "teleop", "bench"),
    "dreamvla_client": ("policy_server", "robot", "teleop", "calibration", "bench", "torch"),
    "robot": ("policy_server", "teleop", "bench", "torch"),
    "teleop": ("policy_server", "bench", "torch"),
    "calibration": ("policy_server", "teleop", "bench", "torch"),
}

# exceptions to the above: training reads recorded datasets through their format library, and nothing else of teleop
ALLOWED = {"policy_server.training": ("teleop.dataset",)}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in the file."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def source_files() -> list[Path]:
    return sorted(p for top in ("dreamvla_client", "policy_server", "robot", "teleop", "calibration", "bench")
                  for p in (REPO / top).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_runs_against_the_arrows(package: str) -> None:
    broken = []
    for path in source_files():
        name = module_name(path)
        if not within(name, package):
            continue
        for line, target in imported(ast.parse(path.read_text(), str(path))):
            if any(within(target, bad) for bad in FORBIDDEN[package]) and not any(
                    within(target, ok) for ok in ALLOWED.get(package, ())):
                broken.append(f"{path.relative_to(REPO)}:{line} imports {target}")
    assert not broken, "\n".join(broken)


def test_nothing_imports_the_benchmarks() -> None:
    users = [f"{p.relative_to(REPO)}:{line}" for p in source_files() if not within(module_name(p), "bench")
             for line, target in imported(ast.parse(p.read_text())) if within(target, "bench")]
    assert not users, users


def test_the_checker_sees_imports_inside_functions() -> None:
    tree = ast.parse("def f():\n    from policy_server.serving.engine import PolicyEngine\n")
    assert imported(tree) == [(2, "policy_server.serving.engine")]
