"""Export: a project's reviewed labels out of storage as files a lab uses (OME-TIFF per image, TissueNet npz,
per-cell CSV). Only QC-approved images unless asked otherwise; the writers are in `pipeline.export`."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from backend.loop.common import LoopError
from backend.loop.qc import nothing_reviewed_message, reviewed_images, reviewed_labels
from backend.store.models import Project
from backend.store.projects import model_channel_indices, read_image
from backend.store.storage import Storage

FORMATS = ("ome-tiff", "npz", "csv")


def safe_name(name: str) -> str:
    """An image name as a file name: path separators and odd characters become '_'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "image"


def export_project(session: Session, storage: Storage, project: Project, fmt: str, out, *,
                   images: list[str] | None = None, include_unreviewed: bool = False) -> dict:
    from pipeline import export

    if fmt not in FORMATS:
        raise LoopError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    chosen = reviewed_images(session, project, include_unreviewed=include_unreviewed, names=images)
    if not chosen:
        raise LoopError(nothing_reviewed_message(session, project, "export"))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LoopError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    names = list(project.channel_names)
    written, rows = [], []
    stacks: dict[str, list] = {"X": [], "y": [], "tissue": [], "platform": [], "meta": []}
    model_channels = model_channel_indices(project)
    for image, qc in chosen:
        labels = reviewed_labels(session, storage, image)
        pixels = read_image(storage, image)
        if fmt == "ome-tiff":
            path = out / f"{safe_name(image.name)}.ome.tif"
            export.write_ome_tiff(path, labels, image=pixels, channel_names=names,
                                  pixel_size_um=image.pixel_size_um, name=image.name)
            written.append(str(path))
        elif fmt == "csv":
            rows.extend(export.cell_table(image.name, pixels, labels, names, image.pixel_size_um))
        else:
            stacks["X"].append(pixels[..., model_channels].astype(np.float32))
            stacks["y"].append(labels)
            stacks["tissue"].append(image.tissue or "unknown")
            stacks["platform"].append(image.platform or "unknown")
            stacks["meta"].append({"image": image.name, "project": project.name, "shape": [image.height, image.width],
                                   "pixel_size_um": image.pixel_size_um, "qc": qc,
                                   "channels": [names[i] for i in model_channels]})
    if fmt == "csv":
        path = out / f"{safe_name(project.name)}_cells.csv"
        export.write_cell_csv(path, rows, names)
        written.append(str(path))
    elif fmt == "npz":
        path = out / f"{safe_name(project.name)}.npz"
        export.write_tissuenet_npz(path, export.pad_stack(stacks["X"], np.float32),
                                   export.pad_stack(stacks["y"], np.int32), stacks["tissue"], stacks["platform"],
                                   meta=stacks["meta"])
        written.append(str(path))
    return {"files": written, "images": [i.name for i, _ in chosen], "cells": len(rows) if fmt == "csv" else None,
            "unreviewed": [i.name for i, s in chosen if s != "approved"]}


def export_dataset_split(dataset_path, split: str, out) -> dict:
    """One split of a dataset made by `cellloop dataset` in TissueNet's layout (X, y, tissue_list, platform_list)."""
    from pipeline import dataset, export, io

    data = io.load_dataset(dataset_path)
    X, y, meta = dataset.select(data, split)
    if not len(X):
        raise LoopError(f"{dataset_path}: the {split} split is empty, nothing to export")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{Path(dataset_path).stem}_{split}.npz"
    export.write_tissuenet_npz(path, X, y, [m.get("tissue", "unknown") for m in meta],
                               [m.get("platform", "unknown") for m in meta], meta=meta)
    return {"files": [str(path)], "images": len(X), "cells": None, "unreviewed": []}
