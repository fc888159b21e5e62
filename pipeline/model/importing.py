"""Models made elsewhere (the published Mesmer weights, a lab's own) brought in as CellLoop model versions.

Three formats, told apart by the path:
- a Keras 3 ``.keras`` archive and a Keras 2 / legacy HDF5 file (``.h5``, ``.hdf5``): loaded as Keras models
  and saved as the version's ``model.keras``, so they predict and fine-tune like any version;
- a TensorFlow SavedModel folder (``saved_model.pb`` inside): called through its ``serving_default`` signature
  (TensorFlow backend only). Its graph is frozen for inference, so it prelabels and is scored but is not
  fine-tuned (``config["fine_tune"]`` is false); the folder travels as ``saved_model.tar`` in the version.

Every model must have Mesmer's signature: one input ``(batch, height, width, 2)`` = [nuclear, membrane] at
0.5 µm/px, and four outputs at the input's size, in order whole-cell inner distance (1 channel), whole-cell
pixelwise (3: border, interior, background), nuclear inner distance (1), nuclear pixelwise (3). The check runs
the model once on a blank 256 px tile and names the first thing that differs in one line.
"""
from __future__ import annotations

import io as _io
import re
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np

SAVEDMODEL_ARCHIVE = "saved_model.tar"
SAVEDMODEL_DIR = "saved_model"
FORMATS = ("keras", "hdf5", "savedmodel")
OUTPUTS = ("whole-cell distance", "whole-cell pixelwise", "nuclear distance", "nuclear pixelwise")
CHECK_TILE = 256


def detect_format(path) -> str:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no model at {path}")
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "savedmodel"
        raise ValueError(f"{path} is a folder without saved_model.pb: not a TensorFlow SavedModel")
    suffix = path.suffix.lower()
    if suffix == ".keras":
        return "keras"
    if suffix in (".h5", ".hdf5"):
        return "hdf5"
    raise ValueError(f"{path}: import takes a .keras file, a .h5/.hdf5 file or a SavedModel folder, not {suffix or 'this'}")


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(name))]


def savedmodel_as_keras(folder):
    """A Keras model calling the SavedModel's ``serving_default`` signature; outputs in the natural order of the
    signature's output names (``semantic_0`` … ``semantic_3``, ``output_0`` … ``output_3``)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ValueError(f"a TensorFlow SavedModel runs only with KERAS_BACKEND=tensorflow, not {keras.backend.backend()}")
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(folder))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"cannot load the SavedModel {folder}: {first}") from None
    signature = getattr(loaded, "signatures", {}).get("serving_default")
    if signature is None:
        raise ValueError(f"the SavedModel {folder} has no serving_default signature")
    _, kwargs = signature.structured_input_signature
    if len(kwargs) != 1:
        raise ValueError(f"a Mesmer model takes one input, the SavedModel's signature takes {len(kwargs)}")
    spec = next(iter(kwargs.values()))
    if spec.shape.rank != 4:
        raise ValueError(f"a Mesmer model takes one (batch, height, width, channels) input, not {spec.shape}")
    names = sorted(signature.structured_outputs, key=_natural_key)
    layer = keras.layers.TFSMLayer(str(folder), call_endpoint="serving_default", trainable=False)
    inp = keras.Input(tuple(spec.shape[1:]), name="image")
    out = layer(inp)
    outputs = [out[n] for n in names] if isinstance(out, dict) else list(out)
    return keras.Model(inp, outputs, name="imported_savedmodel")


def load_any(path, fmt: str | None = None):
    """(Keras model, format) for a ``.keras``, ``.h5`` or SavedModel path; ValueError naming what is wrong."""
    import keras

    from pipeline.model import panoptic

    fmt = fmt or detect_format(path)
    if fmt == "savedmodel":
        return savedmodel_as_keras(path), fmt
    try:
        model = keras.saving.load_model(str(path), compile=False,
                                        custom_objects={"Location2D": panoptic.Location2D,
                                                        "BilinearUpsample2x": panoptic.BilinearUpsample2x})
    except Exception as exc:  # Keras raises many types for a damaged or foreign file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"cannot load {path} as a {'Keras 3' if fmt == 'keras' else 'Keras HDF5'} model: {first}") from None
    if not isinstance(model, keras.Model):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a Keras model")
    return model, fmt


def check_signature(model) -> None:
    """Raise ValueError (one line) unless ``model`` has Mesmer's input and four outputs at the input's size."""
    if len(model.inputs) != 1:
        raise ValueError(f"a Mesmer model takes one input, this one takes {len(model.inputs)}")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4:
        raise ValueError(f"a Mesmer model takes one (batch, height, width, channels) input, this one {shape}")
    if shape[-1] != 2:
        raise ValueError(f"a Mesmer model takes 2 channels [nuclear, membrane], this one takes {shape[-1]}")
    for side in shape[1:3]:
        if side is not None and side != CHECK_TILE and side % 32:
            raise ValueError(f"a Mesmer model takes 256 px tiles, this one's input is {shape[1:3]}")
    if len(model.outputs) != 4:
        raise ValueError(f"a Mesmer model has 4 outputs ({', '.join(OUTPUTS)}), this one has {len(model.outputs)}")
    want = (1, 3, 1, 3)
    got = tuple(int(o.shape[-1]) if o.shape[-1] is not None else -1 for o in model.outputs)
    if got != want:
        raise ValueError(f"a Mesmer model's outputs have {want} channels ({', '.join(OUTPUTS)}), this one has {got}")
    h = shape[1] or CHECK_TILE
    w = shape[2] or CHECK_TILE
    x = np.zeros((1, h, w, 2), np.float32)
    x[0, h // 4: h // 2, w // 4: w // 2] = 1.0
    try:
        outs = model.predict_on_batch(x)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"the model fails on a {h}x{w} 2-channel tile: {first}") from None
    for name, out, k in zip(OUTPUTS, outs, want):
        out = np.asarray(out)
        if out.shape != (1, h, w, k):
            raise ValueError(f"the {name} output is {out.shape[1:]} for a {(h, w, 2)} input; Mesmer's is {(h, w, k)}")
        if not np.isfinite(out).all():
            raise ValueError(f"the {name} output holds NaN or infinite values")
    for name, out in ((OUTPUTS[1], outs[1]), (OUTPUTS[3], outs[3])):
        if not np.allclose(np.sum(out, axis=-1), 1.0, atol=1e-3):
            raise ValueError(f"the {name} output is not a softmax over [border, interior, background]")


def import_model(src, out, *, mpp: float = 0.5, name: str | None = None) -> tuple[Path, dict]:
    """Check ``src`` and write it as a model version folder ``out``; returns (folder, config)."""
    from pipeline.model import saving

    src = Path(src)
    fmt = detect_format(src)
    model, fmt = load_any(src, fmt)
    check_signature(model)
    if not float(mpp) > 0:
        raise ValueError(f"the pixel size must be positive, got {mpp}")
    config = saving.default_config(2, name=name, mpp=float(mpp), parent=None,
                                   imported={"source": str(src), "format": fmt,
                                             "sha256": saving.sha256_file(src) if src.is_file() else _tree_hash(src)},
                                   model_format="savedmodel" if fmt == "savedmodel" else "keras",
                                   fine_tune=fmt != "savedmodel")
    if fmt != "savedmodel":
        return saving.save_model_version(model, out, config), config
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} already exists and is not empty; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    buf = _io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(src, arcname=SAVEDMODEL_DIR)
    (out / SAVEDMODEL_ARCHIVE).write_bytes(buf.getvalue())
    import json

    config["created"] = None
    (out / saving.CONFIG_FILE).write_text(json.dumps(saving._jsonable(config), indent=2, sort_keys=True) + "\n")
    return out, config


def _tree_hash(folder: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def unpacked_savedmodel(folder) -> Path:
    """The SavedModel folder of a version holding ``saved_model.tar``, unpacked beside it once."""
    folder = Path(folder)
    target = folder / SAVEDMODEL_DIR
    if (target / "saved_model.pb").is_file():
        return target
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=folder))
    try:
        with tarfile.open(folder / SAVEDMODEL_ARCHIVE) as tar:
            for member in tar.getmembers():
                # Only plain files and folders under saved_model/: nothing that points outside.
                parts = Path(member.name).parts
                if not (member.isfile() or member.isdir()) or ".." in parts or Path(member.name).is_absolute() \
                        or not parts or parts[0] != SAVEDMODEL_DIR:
                    raise ValueError(f"{folder / SAVEDMODEL_ARCHIVE}: unexpected member {member.name!r}")
            tar.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        try:
            (tmp / SAVEDMODEL_DIR).rename(target)
        except OSError:  # another process unpacked it first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
