"""backend/ is built in floors; a module imports only floors below its own (or its own package), so a newcomer can
read each floor without the ones above it, and the science library (pipeline/) never imports the application."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BACKEND = REPO / "backend"

# package -> floor; siblings on one floor (loop and web) do not import each other
FLOORS = {"config": 0, "edits": 0, "store": 1, "tasks": 2, "loop": 3, "web": 3, "cli": 4}
# the package's own entry points sit above every floor
TOP = {"__init__", "__main__"}


def _imports(path: Path):
    """Absolute imports (relative ones stay inside their own package), lazy ones inside functions included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "backend":
            yield from (f"backend.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def _package(path: Path) -> str:
    return path.relative_to(BACKEND).parts[0].removesuffix(".py")


def test_backend_is_packages_by_responsibility():
    entries = {p.name.removesuffix(".py") for p in BACKEND.iterdir() if p.name != "__pycache__"}
    assert entries == set(FLOORS) | TOP


def test_backend_imports_only_downwards():
    offenders = []
    for path in sorted(BACKEND.rglob("*.py")):
        own = _package(path)
        if own in TOP:
            continue
        for module in _imports(path):
            parts = module.split(".")
            if parts[0] != "backend" or len(parts) < 2 or parts[1] == own:
                continue
            if FLOORS[parts[1]] >= FLOORS[own]:
                offenders.append(f"{path.relative_to(REPO)} (floor {FLOORS[own]}) imports {module}")
    assert offenders == []


def test_edits_is_pure():
    """The editing engine is numpy functions: nothing of the application, Flask or the database inside."""
    offenders = [f"{path.relative_to(REPO)}: {module}"
                 for path in sorted((BACKEND / "edits").rglob("*.py"))
                 for module in _imports(path)
                 if module.split(".")[0] in ("flask", "sqlalchemy", "backend", "boto3")]
    assert offenders == []

