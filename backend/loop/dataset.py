"""Dataset: the project's stitched images as QC'd, tiled training data with a frozen split."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.loop.common import LoopError
from backend.loop.qc import nothing_reviewed_message, reviewed_images, reviewed_labels
from backend.loop.stitch import stitched_labels
from backend.store.models import DatasetTile, Project
from backend.store.projects import model_channel_indices, read_image
from backend.store.storage import Storage


def build_dataset(session: Session, storage: Storage, project: Project, out, *, tile: int = 256,
                  seed: int = 0, include_unreviewed: bool = False) -> dict:
    """The project's QC-approved stitched images (every stitched one with ``include_unreviewed``, recorded in
    each tile's meta) as a QC'd, tiled dataset .npz with a frozen split in each tile's meta."""
    from pipeline import dataset, io

    channels = model_channel_indices(project)
    reviewed = reviewed_images(session, project, include_unreviewed=include_unreviewed)
    qc_states = {i.id: state for i, state in reviewed}
    images = [i for i, _ in reviewed]
    if not images:
        raise LoopError(nothing_reviewed_message(session, project, "build a dataset from"))
    candidates, skipped = [], Counter()
    for image in images:
        _, coverage = stitched_labels(storage, image)
        labels = reviewed_labels(session, storage, image)
        pixels = read_image(storage, image)[..., channels]
        tiles, left_out = dataset.cut_tiles(pixels, labels, coverage, size=tile)
        skipped.update(left_out)
        candidates.extend((image, t) for t in tiles)
    if not candidates:
        raise LoopError(f"no {tile}-px tile passes QC (fully annotated, at least {dataset.MIN_CELLS} cells): "
                        f"{dict(skipped)}")
    frozen = {(r.image_id, r.y0, r.x0): r.split for r in session.scalars(
        select(DatasetTile).where(DatasetTile.image_id.in_([i.id for i in images]), DatasetTile.size == tile))}
    keys = [(image.id, t.y0, t.x0) for image, t in candidates]
    new = dataset.assign_splits(frozen, [k for k in keys if k not in frozen], seed=seed)
    for (image_id, y0, x0), split in new.items():
        session.add(DatasetTile(image_id=image_id, y0=y0, x0=x0, size=tile, split=split))
    session.commit()
    splits = {**frozen, **new}
    meta = []
    for image, t in candidates:
        meta.append({"image": image.name, "image_id": image.id, "project": project.name, "source": image.source_path,
                     "box": [t.y0, t.x0, min(t.y0 + tile, image.height), min(t.x0 + tile, image.width)],
                     "tissue": image.tissue or "unknown", "platform": image.platform or "unknown",
                     "pixel_size_um": image.pixel_size_um, "split": splits[(image.id, t.y0, t.x0)],
                     "n_cells": t.n_cells, "qc": qc_states[image.id],
                     "include_unreviewed": include_unreviewed})
    X = np.stack([t.X for _, t in candidates])
    y = np.stack([t.y for _, t in candidates])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    io.save_dataset(out, X, y, meta)
    data = {"X": X, "y": y, "meta": meta}
    summary = {"path": str(out), "tiles": len(candidates), "skipped": dict(skipped), "splits": {}, "sha256": {},
               "images": len(images), "include_unreviewed": include_unreviewed,
               "unreviewed_images": sum(state != "approved" for state in qc_states.values())}
    for split in dataset.SPLITS:
        Xs, ys, _ = dataset.select(data, split)
        summary["splits"][split] = int(len(Xs))
        summary["sha256"][split] = dataset.data_hash(Xs, ys) if len(Xs) else None
    return summary
