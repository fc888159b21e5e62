"""Whole-image QC: when an image is stitched again after more crops are approved, the expert's QC edits are kept
(an expert's later work is never overwritten by older crowd work)."""
from __future__ import annotations

import numpy as np


def expert_region(base: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Pixels (H, W) the expert owns: those changed from ``base`` (the stitched labels the QC started from) in
    either layer, and every pixel of a cell the expert touched, so an edited cell stays whole."""
    changed = (current != base).any(axis=2)
    region = changed.copy()
    for layer in range(current.shape[2]):
        touched = np.unique(current[..., layer][changed])
        touched = touched[touched != 0]
        if len(touched):
            region |= np.isin(current[..., layer], touched)
    return region


def keep_expert_edits(new: np.ndarray, base: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, int]:
    """``new`` stitched labels with the expert's work (``current`` where it differs from ``base``) laid over it.

    Inside the expert's region the expert's labels win, ids unchanged; elsewhere the new stitch. A new cell whose
    id the expert's region uses takes a fresh id (the same in both layers, which name one cell). Returns the
    labels and the number of pixels kept from the expert."""
    if not (new.shape == base.shape == current.shape) or new.ndim != 3:
        raise ValueError(f"labels disagree in shape: {new.shape}, {base.shape}, {current.shape}")
    region = expert_region(base, current)
    if not region.any():
        return new.copy(), 0
    kept_ids = np.unique(current[region])
    kept_ids = kept_ids[kept_ids != 0]
    out = new.astype(np.int64)
    clash = np.intersect1d(np.unique(out[~region]), kept_ids)
    if len(clash):
        top = int(max(out.max(), current.max()))
        lookup = {int(old): top + 1 + i for i, old in enumerate(clash)}
        ids, inverse = np.unique(out, return_inverse=True)
        remapped = np.array([lookup.get(int(i), int(i)) for i in ids], np.int64)
        out = remapped[inverse].reshape(out.shape)
    out[region] = current[region]
    if out.max() > np.iinfo(np.int32).max:
        raise ValueError("label ids overflow int32")
    return out.astype(np.int32), int(region.sum())
