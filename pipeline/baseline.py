"""The classic "nuclear expansion" baseline of the Mesmer paper, with no learning in it.

Nuclei from an Otsu threshold of the nuclear channel, touching nuclei split by a watershed on
their distance transform, each nucleus grown by a few pixels to stand in for its whole cell.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.segmentation import expand_labels, watershed

from pipeline.model.postprocess import relabel_sequential, remove_small
from pipeline.model.preprocess import percentile_clip

__all__ = ["nuclear_expansion", "segment_nuclei"]


def segment_nuclei(nuclear: np.ndarray, *, min_size: int = 15, smooth: float = 1.0, min_distance: int = 4) -> np.ndarray:
    """Label nuclei in one 2-D nuclear channel; int32 (H, W)."""
    img = np.nan_to_num(np.asarray(nuclear, dtype=np.float32))
    img = percentile_clip(img, 99.9)
    lo, hi = float(img.min()), float(img.max())
    if not hi > lo:
        return np.zeros(img.shape, np.int32)
    img = (img - lo) / (hi - lo)
    if smooth > 0:
        img = ndi.gaussian_filter(img, smooth)
    try:
        thr = threshold_otsu(img)
    except ValueError:
        return np.zeros(img.shape, np.int32)
    fg = ndi.binary_fill_holes(img > thr)
    fg = ndi.binary_opening(fg)
    if not fg.any():
        return np.zeros(img.shape, np.int32)
    # Smoothing the distance keeps one peak per roundish nucleus instead of one per bump of
    # its outline; min_distance is about the radius of the smallest nuclei kept.
    dist = ndi.gaussian_filter(ndi.distance_transform_edt(fg), 1.0)
    comps, _ = ndi.label(fg)
    coords = peak_local_max(dist, min_distance=min_distance, labels=comps, exclude_border=False)
    markers = np.zeros(img.shape, np.int32)
    markers[coords[:, 0], coords[:, 1]] = np.arange(1, len(coords) + 1)
    nuclei = watershed(-dist, markers, mask=fg)
    nuclei = remove_small(nuclei, min_size)
    return relabel_sequential(nuclei)


def nuclear_expansion(X, *, nuclear_channel: int = 0, expand_px: int = 3, min_size: int = 15) -> np.ndarray:
    """Baseline labels int32 (H, W, 2) [whole-cell, nuclear] for ``X`` (H, W, C), or (N, H, W, 2) for (N, H, W, C).

    The whole cell is its nucleus grown by ``expand_px`` pixels (never into another cell), so
    a cell and its nucleus share an id.
    """
    X = np.asarray(X)
    if X.ndim == 4:
        return np.stack([nuclear_expansion(x, nuclear_channel=nuclear_channel, expand_px=expand_px, min_size=min_size) for x in X])
    if X.ndim != 3:
        raise ValueError(f"nuclear_expansion expects (H, W, C) or (N, H, W, C), got shape {X.shape}")
    nuclei = segment_nuclei(X[..., nuclear_channel], min_size=min_size)
    cells = expand_labels(nuclei, distance=expand_px) if expand_px > 0 else nuclei.copy()
    return np.stack([cells, nuclei], axis=-1).astype(np.int32)
