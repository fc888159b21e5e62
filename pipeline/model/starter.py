"""Where the generalist starter model lives: a model version folder shipped inside the package
(`pipeline/model/starter/model.keras` + `config.json`). New projects start their lineage from it, and
`cellloop predict` / `demo` use it when no model is named."""
from __future__ import annotations

from pathlib import Path

STARTER_DIR = Path(__file__).resolve().parent / "starter"


def starter_model_dir() -> Path | None:
    """The shipped starter model's folder, or None when this checkout has none."""
    if (STARTER_DIR / "model.keras").is_file() and (STARTER_DIR / "config.json").is_file():
        return STARTER_DIR
    return None
