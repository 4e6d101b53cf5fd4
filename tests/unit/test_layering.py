"""Fitness rules from STYLE.md: only actors/, controller, cli (and bench, at the CLI's level) import ray; only
rollout/ imports vllm; only tracking imports mlflow; algos/ stays pure torch; tests/unit mirrors rlplat/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "rlplat"
FILES = sorted(PKG.rglob("*.py"))

ALLOWED = {
    "ray": ("actors/", "controller.py", "cli.py", "bench/"),
    "vllm": ("rollout/",),
    "mlflow": ("tracking.py",),
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_heavy_imports_stay_in_their_layer(path: Path) -> None:
    rel = str(path.relative_to(PKG))
    for lib, allowed in ALLOWED.items():
        if lib in _imports(path):
            assert rel.startswith(allowed), f"{rel} imports {lib}; only {allowed} may"


def test_algos_is_pure_math() -> None:
    for path in (PKG / "algos").rglob("*.py"):
        assert _imports(path) <= {"__future__", "torch", "math", "typing", "collections", "dataclasses", "rlplat",
                                  "functools", "numpy", "enum", "itertools"}, path
