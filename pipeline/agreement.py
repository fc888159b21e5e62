"""How far two segmentations of the same image agree, cell by cell: the yardstick for changes that should leave
labels as they were (another inference runtime, bigger tiles, a slide cut into blocks joined at seams)."""
from __future__ import annotations

import numpy as np


def best_iou(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """For each cell id of ``reference`` (H, W) in increasing order, the IoU of the ``other`` cell overlapping it most
    (0 for a cell no other cell touches)."""
    reference = np.asarray(reference).astype(np.int64, copy=False)
    other = np.asarray(other).astype(np.int64, copy=False)
    if reference.shape != other.shape:
        raise ValueError(f"labels of shapes {reference.shape} and {other.shape} do not cover the same image")
    ids = np.unique(reference)
    ids = ids[ids > 0]
    if ids.size == 0:
        return np.zeros(0)
    ref_sizes = np.bincount(reference.ravel())
    other_sizes = np.bincount(other.ravel())
    both = (reference > 0) & (other > 0)
    base = int(other.max()) + 1
    codes, counts = np.unique(reference[both] * base + other[both], return_counts=True)
    ref_of, other_of = codes // base, codes % base
    iou = counts / (ref_sizes[ref_of] + other_sizes[other_of] - counts)
    best = np.zeros(ref_sizes.size)
    np.maximum.at(best, ref_of, iou)
    return best[ids]


def changed_share(reference: np.ndarray, other: np.ndarray, min_iou: float = 0.9) -> dict:
    """Share of ``reference`` cells that ``other`` changed (no cell with IoU >= ``min_iou``) and share not kept
    pixel for pixel, per layer of (H, W[, layers]) labels, pooled over layers."""
    reference, other = np.asarray(reference), np.asarray(other)
    if reference.ndim == 2:
        reference, other = reference[..., None], other[..., None]
    ious = np.concatenate([best_iou(reference[..., k], other[..., k]) for k in range(reference.shape[-1])])
    n = int(ious.size)
    return {"cells": n, "changed_share": float((ious < min_iou).mean()) if n else 0.0,
            "not_identical_share": float((ious < 1.0).mean()) if n else 0.0, "min_iou": min_iou}
