"""Labels out of CellLoop in the formats a lab uses next: OME-TIFF per image (image channels and label layers,
named, with the physical pixel size), TissueNet's npz layout, and a per-cell table for single-cell analysis.

Pure writers: numpy arrays and names in, files out; nothing here knows about projects or storage.
"""
from __future__ import annotations

import csv
import os
import secrets
from pathlib import Path

import numpy as np

LAYERS = ("whole-cell", "nuclear")
UINT16_MAX = 65535


def label_dtype(labels: np.ndarray) -> np.dtype:
    """The smallest unsigned type that holds every id: uint16 up to 65,535 cells, uint32 beyond."""
    top = int(labels.max()) if labels.size else 0
    if top < 0:
        raise ValueError("label ids must not be negative")
    return np.dtype(np.uint16 if top <= UINT16_MAX else np.uint32)


def _atomic(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def _replace(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _checked(image: np.ndarray, labels: np.ndarray, channel_names) -> tuple[np.ndarray, np.ndarray, list[str]]:
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise ValueError(f"image must be (H, W, C), got {image.shape}")
    if labels.ndim != 3 or labels.shape[2] != 2 or labels.shape[:2] != image.shape[:2]:
        raise ValueError(f"labels must be (H, W, 2) matching the image {image.shape[:2]}, got {labels.shape}")
    names = [str(n) for n in channel_names]
    if len(names) != image.shape[2]:
        raise ValueError(f"{len(names)} channel names for {image.shape[2]} channels")
    return image, labels, names


def _physical(pixel_size_um: float | None) -> dict:
    if pixel_size_um is None:
        return {}
    if not pixel_size_um > 0:
        raise ValueError(f"pixel size must be positive, got {pixel_size_um}")
    return {"PhysicalSizeX": float(pixel_size_um), "PhysicalSizeXUnit": "µm",
            "PhysicalSizeY": float(pixel_size_um), "PhysicalSizeYUnit": "µm"}


def pixel_size_note(pixel_size_um: float | None, estimated: bool) -> str:
    if pixel_size_um is None:
        return "pixel size unknown"
    return f"pixel size {pixel_size_um:.4g} µm ({'estimated by CellLoop, not measured' if estimated else 'given'})"


def write_ome_tiff(path, labels: np.ndarray, *, image: np.ndarray | None = None, channel_names=None,
                   pixel_size_um: float | None = None, pixel_size_estimated: bool = False,
                   name: str = "image") -> None:
    """One OME-TIFF: series 0 the labels (C = whole-cell, nuclear; uint16, or uint32 where ids need it), series 1
    the image's channels with their names when ``image`` is given. ``PhysicalSizeX/Y`` are written when the pixel
    size is known; an estimated one says so in each image's Description."""
    import tifffile

    path = Path(path)
    labels = np.asarray(labels)
    if image is not None:
        image, labels, names = _checked(image, labels, channel_names)
    elif labels.ndim != 3 or labels.shape[2] != 2:
        raise ValueError(f"labels must be (H, W, 2), got {labels.shape}")
    common = {**_physical(pixel_size_um), "Description": pixel_size_note(pixel_size_um, pixel_size_estimated)}
    tmp = _atomic(path)
    try:
        with tifffile.TiffWriter(tmp, ome=True) as tif:
            tif.write(np.ascontiguousarray(labels.transpose(2, 0, 1).astype(label_dtype(labels))),
                      photometric="minisblack", compression="zlib",
                      metadata={"axes": "CYX", "Name": f"{name} labels", "Channel": {"Name": list(LAYERS)}, **common})
            if image is not None:
                tif.write(np.ascontiguousarray(image.transpose(2, 0, 1)), photometric="minisblack",
                          compression="zlib",
                          metadata={"axes": "CYX", "Name": name, "Channel": {"Name": names}, **common})
        _replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def pad_stack(arrays: list[np.ndarray], dtype) -> np.ndarray:
    """Arrays (H_i, W_i, C) stacked as (N, max H, max W, C), zero-padded at the bottom and right."""
    h = max(a.shape[0] for a in arrays)
    w = max(a.shape[1] for a in arrays)
    out = np.zeros((len(arrays), h, w, arrays[0].shape[2]), dtype)
    for i, a in enumerate(arrays):
        out[i, :a.shape[0], :a.shape[1]] = a
    return out


def write_tissuenet_npz(path, X: np.ndarray, y: np.ndarray, tissues: list[str], platforms: list[str],
                        meta: list[dict] | None = None) -> None:
    """TissueNet's layout: X (N, H, W, C) float32, y (N, H, W, 2) int32 (whole-cell, nuclear), tissue_list and
    platform_list (N,) strings; ``meta`` (one JSON string per entry) when given, as `cellloop dataset` writes."""
    import json

    X = np.asarray(X, np.float32)
    y = np.asarray(y)
    n = X.shape[0]
    if X.ndim != 4 or y.shape != (*X.shape[:3], 2):
        raise ValueError(f"X must be (N, H, W, C) and y (N, H, W, 2) alike, got {X.shape} and {y.shape}")
    if len(tissues) != n or len(platforms) != n:
        raise ValueError(f"{n} images need {n} tissues and platforms")
    if y.size and int(y.max()) > np.iinfo(np.int32).max:
        raise ValueError("label ids beyond int32 do not fit TissueNet's layout")
    arrays = {"X": X, "y": y.astype(np.int32), "tissue_list": np.array([str(t) for t in tissues], dtype=str),
              "platform_list": np.array([str(p) for p in platforms], dtype=str)}
    if meta is not None:
        arrays["meta"] = np.array([json.dumps(m, sort_keys=True, default=str) for m in meta], dtype=str)
    path = Path(path)
    tmp = _atomic(path)
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    _replace(tmp, path)


def cell_table(image_name: str, image: np.ndarray, labels: np.ndarray, channel_names,
               pixel_size_um: float | None = None) -> list[dict]:
    """One row per cell and layer: area (px, and µm² when the pixel size is known), centroid (row, col, in px),
    bounding box (half-open, px) and the mean intensity of every channel over the cell's pixels."""
    from scipy import ndimage

    image, labels, names = _checked(image, labels, channel_names)
    h, w = labels.shape[:2]
    rows_idx, cols_idx = np.indices((h, w))
    out = []
    for layer, layer_name in enumerate(LAYERS):
        lab = labels[..., layer].astype(np.int64, copy=False)
        flat = lab.ravel()
        n = int(flat.max()) + 1 if flat.size else 1
        area = np.bincount(flat, minlength=n)
        ids = np.nonzero(area)[0]
        ids = ids[ids > 0]
        if not len(ids):
            continue
        cy = np.bincount(flat, weights=rows_idx.ravel(), minlength=n)
        cx = np.bincount(flat, weights=cols_idx.ravel(), minlength=n)
        means = [np.bincount(flat, weights=image[..., c].astype(np.float64).ravel(), minlength=n)
                 for c in range(image.shape[2])]
        boxes = ndimage.find_objects(lab)
        for i in ids:
            box = boxes[i - 1]
            row = {"image": image_name, "layer": layer_name, "cell_id": int(i), "area_px": int(area[i]),
                   "area_um2": (float(area[i]) * pixel_size_um ** 2) if pixel_size_um else None,
                   "centroid_y": float(cy[i] / area[i]), "centroid_x": float(cx[i] / area[i]),
                   "bbox_y0": box[0].start, "bbox_x0": box[1].start, "bbox_y1": box[0].stop, "bbox_x1": box[1].stop}
            for name, total in zip(names, means):
                row[f"mean_{name}"] = float(total[i] / area[i])
            out.append(row)
    return out


def write_cell_csv(path, rows: list[dict], channel_names) -> int:
    """The rows of ``cell_table`` (of one or many images) as CSV; returns the number of rows."""
    columns = ["image", "layer", "cell_id", "area_px", "area_um2", "centroid_y", "centroid_x",
               "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"] + [f"mean_{n}" for n in channel_names]
    path = Path(path)
    tmp = _atomic(path)
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="raise")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else f"{r[k]:.6g}" if isinstance(r.get(k), float) else r[k])
                             for k in columns})
    _replace(tmp, path)
    return len(rows)
