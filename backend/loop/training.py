"""Train, evaluate and promote: fine-tune from the current model, score on the frozen test split (every model run
as prelabel runs it), promote only when better (a tie keeps the current model)."""
from __future__ import annotations

import secrets
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from backend.loop import registry
from backend.loop.common import LoopError
from backend.loop.prelabel import load_mesmer, scale_for
from backend.store.models import Image, Project
from backend.store.storage import Storage


def _load_split(path, split):
    """X, y, meta and the known-label mask (None: every label known) of one split of a `cellloop dataset` file."""
    from pipeline import dataset, io

    data = io.load_dataset(path)
    if not any("split" in m for m in data["meta"]):
        raise LoopError(f"{path} has no split in its meta; make it with `cellloop dataset`")
    return (*dataset.select(data, split), dataset.select_mask(data, split))


def train_version(session: Session, storage: Storage, config, project: Project, data, *, start: str = "current",
                  epochs: int = 4, steps_per_epoch: int | None = None, batch_size: int = 8, crop_size: int = 256,
                  backbone: str | None = None, lr: float = 1e-4, seed: int = 0, minutes: float | None = None,
                  replay: float | None = None, patience: int | None = None) -> tuple:
    """Fine-tune ``start`` (a version, or from scratch when it is the baseline) on the dataset's train split,
    validating on its val split; register the result with its parent and data hashes. Returns (row, parent).

    With ``minutes`` training follows ``pipeline.model.finetune`` instead of a fixed number of epochs: a
    wall-clock budget (``epochs`` then only caps it), synthetic replay (``replay``: the share of each batch,
    none when training from scratch), warm-up, early stopping after ``patience`` epochs without a better
    validation loss, post-processing recalibrated on the val split."""
    from pipeline import dataset
    from pipeline.model import panoptic, train

    Xt, yt, _, mt = _load_split(data, "train")
    Xv, yv, _, mv = _load_split(data, "val")
    val = None if not len(Xv) else (Xv, yv) if mv is None else (Xv, yv, mv)
    if len(Xt) == 0:
        raise LoopError(f"{data} has no training tiles")
    try:
        choice = registry.resolve(session, storage, project, start)
    except LookupError as exc:
        raise LoopError(str(exc)) from None
    cache_root = Path(config.instance_dir) / "model-cache"
    parent = choice.version
    if parent is not None and not (parent.config or {}).get("fine_tune", True):
        raise LoopError(f"{parent.name} was imported from a TensorFlow SavedModel, which runs for inference only: "
                        "import its .keras or .h5 form to fine-tune it, or train from another version (--from)")
    from_folder = registry.local_folder(storage, parent, cache_root) if parent is not None else None
    name = registry.next_name(session, project)
    out = Path(config.instance_dir) / "model-cache" / f"{name}.training-{secrets.token_hex(3)}"
    sizes = {i.pixel_size_um for i in project.images if i.labels_key}
    if minutes is not None:
        from pipeline.model import finetune

        if not 0 < float(minutes) <= 24 * 60:
            raise LoopError(f"--minutes must be between 0 and {24 * 60}, got {minutes}")
        if replay is not None and not 0 <= float(replay) < 1:
            raise LoopError(f"--replay must be in [0, 1), got {replay}")
        try:
            result = finetune.fine_tune(
                Xt, yt, from_version=from_folder, val=val, mask=mt, minutes=minutes,
                replay=(replay if from_folder is not None else 0.0), patience=patience, epochs=epochs,
                steps_per_epoch=steps_per_epoch, batch_size=batch_size, crop_size=crop_size,
                lr=lr if lr != 1e-4 else None, seed=seed, out=out, verbose=0,
                backbone=backbone or panoptic.LIGHT_BACKBONE,
                mpp=(sizes.pop() if len(sizes) == 1 and None not in sizes else None) if from_folder is None else None)
        except ValueError as exc:
            raise LoopError(str(exc).splitlines()[0]) from None
    else:
        result = train.train(
            Xt, yt, val=val, mask=mt, val_split=0.0 if len(Xv) or len(Xt) < 2 else 0.1,
            from_version=from_folder, backbone=backbone or panoptic.LIGHT_BACKBONE, epochs=epochs,
            steps_per_epoch=steps_per_epoch, batch_size=batch_size, crop_size=crop_size, lr=lr, seed=seed,
            mpp=(sizes.pop() if len(sizes) == 1 and None not in sizes else None) if from_folder is None else None,
            out=out, verbose=0)
    hashes = {"path": str(data), "train": dataset.data_hash(Xt, yt, mt),
              "val": dataset.data_hash(Xv, yv, mv) if len(Xv) else None}
    # name=None: the next free name when the row goes in (a concurrent cycle may have taken ``name`` meanwhile)
    row = registry.register(session, storage, project, result.path, name=None, parent=parent, dataset=hashes)
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    return row, parent


def evaluate_choice(session: Session, storage: Storage, config, project: Project, choice, data,
                    split: str = "test") -> dict:
    """Whole-cell object accuracy of a model (or the baseline) on one split of a `cellloop dataset` file;
    a version's result is recorded in its metrics under the split's data hash. Every model is run as prelabel runs
    it: on the whole source image (tiled inside the model, so no tile-edge artefacts) at the same pixel size
    (`scale_for`), then cut to each tile's box; a tile whose image is not in this project is run on its own."""
    from pipeline import dataset, metrics

    X, y, meta, known = _load_split(data, split)
    if len(X) == 0:
        raise LoopError(f"{data} has no {split} tiles (the project needs more annotated tiles)")
    data_hash = dataset.data_hash(X, y, known)
    key = f"{split}:{data_hash[:16]}:as-prelabel"
    if choice.version is not None and key in (choice.version.metrics or {}):
        return choice.version.metrics[key]
    if choice.kind == registry.BASELINE:
        from pipeline.baseline import nuclear_expansion

        def segment(pixels, pixel_size_um):
            return nuclear_expansion(pixels, nuclear_channel=0)
    elif choice.version is not None:
        folder = registry.local_folder(storage, choice.version, Path(config.instance_dir) / "model-cache")
        mesmer = load_mesmer(str(folder))

        def segment(pixels, pixel_size_um):
            return mesmer.predict(pixels, image_mpp=scale_for(choice.version, pixel_size_um))
    else:
        raise LoopError("nothing to evaluate: choose a model version or the baseline")
    pred = _predict_as_prelabel(session, storage, project, X, meta, segment)
    if known is not None:
        # Predicted cells where nobody reviewed can be neither right nor wrong.
        pred[..., 0] = np.stack([dataset.keep_known_cells(p, k) for p, k in zip(pred[..., 0], known)])
    pooled = metrics.evaluate(y, pred, layer=0)["pooled"]
    result = {"model": choice.label, "split": split, "data_sha256": data_hash, "n_images": int(len(X)),
              **{k: (round(float(pooled[k]), 4) if isinstance(pooled[k], float) else pooled[k])
                 for k in ("f1", "precision", "recall", "jaccard", "n_true", "n_pred", "correct")}}
    if choice.version is not None:
        registry.record_metrics(session, choice.version, key, result)
    return result


def _predict_as_prelabel(session: Session, storage: Storage, project: Project, X, meta, segment) -> np.ndarray:
    from backend.store.projects import model_channel_indices, read_image

    channels = model_channel_indices(project)
    whole: dict[int, np.ndarray] = {}
    pred = np.zeros(X.shape[:3] + (2,), np.int32)
    for i, (x, m) in enumerate(zip(X, meta)):
        image = session.get(Image, m.get("image_id")) if m.get("image_id") is not None else None
        if image is None or image.project_id != project.id or len(m.get("box") or ()) != 4:
            pred[i] = segment(x, m.get("pixel_size_um"))
            continue
        if image.id not in whole:
            pixels = np.ascontiguousarray(read_image(storage, image)[..., channels], dtype=np.float32)
            whole[image.id] = segment(pixels, image.pixel_size_um)
        y0, x0, y1, x1 = (int(v) for v in m["box"])
        pred[i, :y1 - y0, :x1 - x0] = whole[image.id][y0:y1, x0:x1]
    return pred


def promote_if_not_worse(session: Session, project: Project, candidate, candidate_f1: float,
                         current_f1: float | None) -> bool:
    """Never promote blind: the candidate must do better than the current model on the same frozen test split
    (a tie keeps the current model)."""
    if current_f1 is not None and candidate_f1 <= current_f1:
        return False
    registry.promote(session, project, candidate)
    return True
