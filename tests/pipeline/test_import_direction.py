"""pipeline/ is the science library: it never imports the application (backend/), so it works in a notebook or
on a GPU host with nothing else installed."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _imported_modules(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):  # lazy imports inside functions count too
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_no_module_of_pipeline_imports_backend():
    offenders = [f"{path.relative_to(REPO)}: {module}"
                 for path in sorted((REPO / "pipeline").rglob("*.py"))
                 for module in _imported_modules(path)
                 if module == "backend" or module.startswith("backend.")]
    assert offenders == []


def test_pipeline_modules_import_without_the_application():
    light = ["pipeline.arrays", "pipeline.io", "pipeline.crop", "pipeline.stitch", "pipeline.dataset",
             "pipeline.metrics", "pipeline.synthetic", "pipeline.simulate", "pipeline.cli", "pipeline.baseline"]
    code = (f"import sys; [__import__(m) for m in {light!r}]; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('backend', 'flask', 'sqlalchemy'));"
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
