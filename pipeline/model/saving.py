"""Model versions on disk: a folder holding ``model.keras`` and ``config.json``.

``config.json`` records what prediction and the registry need to use the model correctly (channel
order, pixel size, post-processing defaults) and where it came from (training data hashes, parent
version, metrics). A bare ``.keras`` file, or a folder with a minimal config, also loads, so users
can bring their own Mesmer-order model.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
FORMAT = "cellloop-model-version"
DEFAULT_MPP = 0.5
DEFAULT_CHANNELS = ("nuclear", "membrane")


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_arrays(*arrays) -> str:
    """Hash of array contents, shapes and dtypes, so the same data in memory or re-saved hashes alike."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def default_config(n_channels: int = 2, **overrides) -> dict:
    if n_channels == 2:
        channels = list(DEFAULT_CHANNELS)
    else:
        channels = [f"channel_{i}" for i in range(n_channels)]
    cfg = {
        "format": FORMAT,
        "format_version": 1,
        "channels": channels,
        "backbone": None,
        "heads": None,
        "mpp": DEFAULT_MPP,
        "postprocess": {},
        "training": {},
        "metrics": {},
        "parent": None,
        "created": None,
    }
    cfg.update(overrides)
    return cfg


@dataclass
class ModelVersion:
    model: Any
    config: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def channels(self) -> list[str]:
        return list(self.config["channels"])

    @property
    def mpp(self) -> float:
        return float(self.config.get("mpp") or DEFAULT_MPP)

    @property
    def postprocess(self) -> dict:
        return dict(self.config.get("postprocess") or {})


def save_model_version(model, directory, config: dict | None = None, overwrite: bool = False) -> Path:
    """Write ``model`` and its config into ``directory``; returns the folder.

    Written into a sibling temporary folder first and renamed, so a crash never leaves a half
    version that later loads as a valid one.
    """
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        if not overwrite:
            raise ValueError(f"{directory} already exists and is not empty; choose a new folder")
    n_channels = int(model.inputs[0].shape[-1])
    cfg = default_config(n_channels)
    cfg.update(config or {})
    cfg["format"] = FORMAT
    if len(cfg["channels"]) != n_channels:
        raise ValueError(f"config names {len(cfg['channels'])} channels but the model takes {n_channels}")
    cfg["created"] = cfg.get("created") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        model.save(tmp / MODEL_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(_jsonable(cfg), indent=2, sort_keys=True) + "\n")
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_model_version(path, compile: bool = False) -> ModelVersion:
    """Load a model version folder, or a bare ``.keras`` file, as a ModelVersion.

    Raises ValueError (FileNotFoundError for a missing path) with a message naming what is wrong.
    """
    import keras

    from pipeline.model import losses as _losses  # noqa: F401  registers the custom losses
    from pipeline.model import panoptic

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
    if path.is_dir() and not (path / MODEL_FILE).exists() and (path / "saved_model.tar").is_file():
        return _load_savedmodel_version(path)
    if path.is_dir():
        model_file = path / MODEL_FILE
        if not model_file.exists():
            candidates = sorted(path.glob("*.keras"))
            if len(candidates) != 1:
                raise ValueError(f"{path} is not a model version: it has no {MODEL_FILE}")
            model_file = candidates[0]
        config_file = path / CONFIG_FILE
    else:
        if path.suffix != ".keras":
            raise ValueError(f"{path} is neither a model version folder nor a .keras file")
        model_file = path
        # A config beside the file describes it only when the file is that folder's model.keras.
        config_file = path.with_name(CONFIG_FILE) if path.name == MODEL_FILE else None

    config: dict = {}
    if config_file is not None and config_file.exists():
        try:
            config = json.loads(config_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{config_file} is not valid JSON: {exc}") from None
        if not isinstance(config, dict):
            raise ValueError(f"{config_file} must hold a JSON object")

    try:
        model = keras.saving.load_model(
            model_file, compile=compile, custom_objects={"Location2D": panoptic.Location2D}
        )
    except Exception as exc:  # Keras raises many types for a damaged archive
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot load {model_file}: {first}") from None
    panoptic.check_mesmer_outputs(model)

    n_channels = int(model.inputs[0].shape[-1])
    full = default_config(n_channels)
    full.update(config)
    if len(full["channels"]) != n_channels:
        raise ValueError(
            f"{config_file} names {len(full['channels'])} channels but the model takes {n_channels}"
        )
    return ModelVersion(model=model, config=full, path=path if path.is_dir() else path.parent)


def _load_savedmodel_version(folder: Path) -> ModelVersion:
    """A version imported from a TensorFlow SavedModel (``pipeline.model.importing``): inference only."""
    from pipeline.model import importing, panoptic

    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{folder / CONFIG_FILE} is missing or not valid JSON: {exc}") from None
    model = importing.savedmodel_as_keras(importing.unpacked_savedmodel(folder))
    panoptic.check_mesmer_outputs(model)
    full = default_config(int(model.inputs[0].shape[-1]))
    full.update(config)
    return ModelVersion(model=model, config=full, path=folder)


def can_fine_tune(config: dict) -> bool:
    """False for versions whose weights cannot be trained here (an imported SavedModel)."""
    return bool((config or {}).get("fine_tune", True))


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj
