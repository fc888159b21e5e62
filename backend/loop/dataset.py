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
from backend.store.models import DatasetBlock, DatasetTile, Project
from backend.store.projects import model_channel_indices, read_image
from backend.store.storage import Storage


def build_dataset(session: Session, storage: Storage, project: Project, out, *, tile: int = 256,
                  seed: int = 0, block: int | None = None, include_unreviewed: bool = False,
                  partial: float | None = None) -> dict:
    """The project's QC-approved stitched images (every stitched one with ``include_unreviewed``, recorded in each
    tile's meta) as a tiled dataset .npz with a frozen split in each tile's meta. Splits go by spatial block
    (``block`` px, default ``pipeline.dataset.BLOCK``; an image keeps the block size of its first dataset), so no
    region of an image is in two splits and the test area survives a change of ``tile``. With ``partial`` (a share
    in (0, 1]) a tile the approved crops cover only in part is kept when that share of it is covered: what nobody
    reviewed (and the cells it cuts) goes into the file's ``mask`` as unknown, so training puts no loss there and
    scoring ignores predictions there."""
    from pipeline import dataset, io

    if tile < 16 or (block is not None and block < 16):
        raise LoopError("--tile and --block must be at least 16 px")
    if partial is not None and not 0 < float(partial) <= 1:
        raise LoopError(f"--partial-tiles must be a share in (0, 1], got {partial}")
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
        tiles, left_out = dataset.cut_tiles(pixels, labels, coverage, size=tile, min_known=partial)
        skipped.update(left_out)
        candidates.extend((image, t) for t in tiles)
    if not candidates:
        raise LoopError(f"no {tile}-px tile passes QC (fully annotated, at least {dataset.MIN_CELLS} cells): "
                        f"{dict(skipped)}")
    splits = _split_by_blocks(session, project, images, candidates, tile, block or dataset.BLOCK, seed)
    straddling = [c for c in candidates if splits[(c[0].id, c[1].y0, c[1].x0)] is None]
    if straddling:
        skipped["straddles_splits"] = len(straddling)
        candidates = [c for c in candidates if splits[(c[0].id, c[1].y0, c[1].x0)] is not None]
    if not candidates:
        raise LoopError(f"no {tile}-px tile lies inside one split's blocks: {dict(skipped)}")
    meta = []
    for image, t in candidates:
        meta.append({"image": image.name, "image_id": image.id, "project": project.name, "source": image.source_path,
                     "box": [t.y0, t.x0, min(t.y0 + tile, image.height), min(t.x0 + tile, image.width)],
                     "tissue": image.tissue or "unknown", "platform": image.platform or "unknown",
                     "pixel_size_um": image.pixel_size_um, "split": splits[(image.id, t.y0, t.x0)],
                     "n_cells": t.n_cells, "qc": qc_states[image.id],
                     "include_unreviewed": include_unreviewed,
                     "known_fraction": 1.0 if t.known is None else round(float(t.known.mean()), 4)})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    n_partial = sum(t.known is not None for _, t in candidates)
    if n_partial:
        # tiles reviewed in part carry a mask: stacked once to save it beside X and y (opt-in, --partial-tiles)
        X = np.stack([t.X for _, t in candidates])
        y = np.stack([t.y for _, t in candidates])
        mask = np.stack([np.ones(X.shape[1:3], bool) if t.known is None else t.known for _, t in candidates])
        io.save_dataset(out, X, y, meta, mask=mask)
        data = {"X": X, "y": y, "meta": meta, "mask": mask}
        hashes = {}
        for split in dataset.SPLITS:
            Xs, ys, _ = dataset.select(data, split)
            hashes[split] = dataset.data_hash(Xs, ys, dataset.select_mask(data, split)) if len(Xs) else None
    else:
        # streamed into the file tile by tile (and hashed on the way): the tiles are held once, never stacked again
        hashes = io.write_dataset_tiles(out, [t.X for _, t in candidates], [t.y for _, t in candidates], meta)
    summary = {"path": str(out), "tiles": len(candidates), "skipped": dict(skipped), "splits": {}, "sha256": {},
               "images": len(images), "include_unreviewed": include_unreviewed, "partial_tiles": n_partial,
               "unreviewed_images": sum(state != "approved" for state in qc_states.values())}
    for split in dataset.SPLITS:
        summary["splits"][split] = sum(m["split"] == split for m in meta)
        summary["sha256"][split] = hashes.get(split)
    return summary


def _split_by_blocks(session: Session, project: Project, images, candidates, tile: int, block: int,
                     seed: int) -> dict:
    """{(image id, y0, x0): split or None} for the candidate tiles: each tile takes the split of the spatial blocks
    under it; blocks under a candidate tile that have none yet are assigned now (80/10/10 over the project's blocks)
    and stored for good. Images tiled before blocks existed keep their frozen test tiles: a block under one is test,
    and a block under one of their train/val tiles is never test."""
    from pipeline import dataset

    ids = [i.id for i in images]
    rows = list(session.scalars(select(DatasetBlock).where(DatasetBlock.image_id.in_([i.id for i in project.images]))))
    size = {r.image_id: r.size for r in rows}
    existing = {(r.image_id, r.y0, r.x0): r.split for r in rows}
    legacy = {}
    for image in images:
        if image.id not in size:
            size[image.id] = block
            legacy[image.id] = list(session.scalars(select(DatasetTile).where(DatasetTile.image_id == image.id)))
    box = {}
    for image, t in candidates:
        box[(image.id, t.y0, t.x0)] = (t.y0, t.x0, min(t.y0 + tile, image.height), min(t.x0 + tile, image.width))
    wanted = sorted({(k[0], *corner) for k, b in box.items() for corner in dataset.blocks_under(*b, size[k[0]])}
                    - set(existing))
    fixed, not_test = {}, set()
    for key in wanted:
        image_id, by, bx = key
        for old in legacy.get(image_id, ()):
            if dataset.blocks_under(old.y0, old.x0, old.y0 + old.size, old.x0 + old.size, size[image_id]) \
                    & {(by, bx)}:
                if old.split == "test":
                    fixed[key] = "test"
                else:
                    not_test.add(key)
    new = dataset.assign_splits({**existing, **fixed}, [k for k in wanted if k not in fixed], seed=seed)
    new = {k: ("train" if v == "test" and k in not_test else v) for k, v in new.items()}
    for (image_id, by, bx), split in {**fixed, **new}.items():
        session.add(DatasetBlock(image_id=image_id, y0=by, x0=bx, size=size[image_id], split=split))
    of_image: dict[int, dict] = {}
    for (image_id, by, bx), split in {**existing, **fixed, **new}.items():
        of_image.setdefault(image_id, {})[(by, bx)] = split
    out = {key: dataset.tile_split(b, size[key[0]], of_image.get(key[0], {})) for key, b in box.items()}
    # the tile rows say which split each tile of this size went to (they follow the blocks)
    known = {(r.image_id, r.y0, r.x0) for r in session.scalars(
        select(DatasetTile).where(DatasetTile.image_id.in_(ids), DatasetTile.size == tile))}
    for (image_id, y0, x0), split in out.items():
        if split is not None and (image_id, y0, x0) not in known:
            session.add(DatasetTile(image_id=image_id, y0=y0, x0=x0, size=tile, split=split))
    session.commit()
    return out
