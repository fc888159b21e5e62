"""Automatic scale: estimate an image's pixel size from its own cells.

Users rarely know (or give) the µm per pixel the model needs, and a model fed cells at the wrong size
splits or merges them. A model version records the typical whole-cell diameter it segments best
(``config["cell_diameter"]``, px at the model's pixel size). The estimate runs the model itself on a
probe window of the image, measures the median diameter of the cells it finds, rescales the probe so
that diameter matches the model's, and measures again until the scale settles (a pass at a wrong scale
is biased towards the scale it ran at), at most ``REFINEMENTS`` times. The image's pixel size follows from the final factor. Images whose
second (membrane) channel is blank, nuclei-only stains, are measured by their nuclei instead
(``config["nuclear_diameter"]``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_CELL_DIAMETER = 24.0  # px at 0.5 µm/px (~12 µm), for model versions that do not record theirs
NUCLEUS_TO_CELL = 1 / 1.8  # typical nucleus/cell diameter ratio, when a model does not record its nuclear size
PROBE = 384  # side of the probe window, in model pixels
MIN_CELLS = 5
REFINEMENTS = 3  # measurements after the first; each starts from the scale the previous one implied
FACTOR_LIMITS = (0.25, 4.0)  # resampling factors beyond these are not trusted (cells 6-96 px across)


@dataclass
class ScaleEstimate:
    image_mpp: float
    factor: float  # resampling factor applied to the image (>1 enlarges)
    cell_diameter: float | None  # median whole-cell diameter found, px at the image's resolution
    n_cells: int
    passes: int
    reliable: bool

    def describe(self) -> str:
        if not self.reliable:
            return (f"too few cells to estimate the pixel size ({self.n_cells} found); "
                    f"assumed {self.image_mpp:.3g} µm/px")
        return (f"estimated {self.image_mpp:.3g} µm/px: median cell {self.cell_diameter:.0f} px across "
                f"({self.n_cells} cells in a probe window), resampled x{self.factor:.2f}")

    def as_dict(self) -> dict:
        return asdict(self)


def median_diameter(labels: np.ndarray) -> tuple[float | None, int]:
    """Median equivalent diameter (px) of the objects in ``labels`` that do not touch its edge, and their count."""
    labels = np.asarray(labels)
    if not labels.any():
        return None, 0
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    areas = np.bincount(labels.ravel())
    keep = areas > 0
    keep[0] = False
    keep[edge] = False
    if not keep.any():
        # Cells bigger than the window: every one touches an edge; their areas are lower bounds.
        keep = areas > 0
        keep[0] = False
    sizes = areas[keep]
    return float(2.0 * math.sqrt(np.median(sizes) / math.pi)), int(keep.sum())


def _probe_window(X: np.ndarray, side: int) -> np.ndarray:
    """The ``side`` × ``side`` window (clipped to the image) with the most signal, from a coarse grid."""
    h, w = X.shape[:2]
    if h <= side and w <= side:
        return X
    sh, sw = min(side, h), min(side, w)
    signal = np.zeros(X.shape[:2], np.float32)
    for c in range(X.shape[-1]):
        ch = np.asarray(X[..., c], np.float32)
        top = np.percentile(ch, 99) if ch.size else 0
        if top > 0:
            signal += np.minimum(ch / top, 1.0)
    best, best_rc = -1.0, (0, 0)
    for r in np.linspace(0, h - sh, num=max(1, min(5, (h - sh) // max(1, sh // 2) + 1))).astype(int):
        for q in np.linspace(0, w - sw, num=max(1, min(5, (w - sw) // max(1, sw // 2) + 1))).astype(int):
            s = float(signal[r:r + sh, q:q + sw].mean())
            if s > best:
                best, best_rc = s, (r, q)
    r, q = best_rc
    return X[r:r + sh, q:q + sw]


def _measure(app, X: np.ndarray, factor: float, layer: int = 0):
    """Median diameter (px at the image's resolution) of the cells (``layer`` 0) or nuclei (1) the model
    finds at ``factor``."""
    from pipeline.model import postprocess, preprocess

    side = int(math.ceil(PROBE / factor))
    window = _probe_window(X, side)
    scaled = window if factor == 1.0 else preprocess.resample(window, 1.0, 1.0 / factor)
    outputs = app.predict_outputs(scaled)
    key, defaults = (("whole_cell_kwargs", postprocess.WHOLE_CELL_DEFAULTS) if layer == 0
                     else ("nuclear_kwargs", postprocess.NUCLEAR_DEFAULTS))
    kwargs = {**defaults, **((app.config.get("postprocess") or {}).get(key) or {})}
    labels = postprocess.deep_watershed(outputs[2 * layer], outputs[2 * layer + 1], **kwargs)
    diameter, n = median_diameter(labels)
    return (None if diameter is None else diameter / factor), n


def estimate_image_mpp(app, X: np.ndarray) -> ScaleEstimate:
    """Estimate the pixel size of image ``X`` (H, W, C) for ``app`` (a ``predict.Mesmer``)."""
    cell = float(app.config.get("cell_diameter") or DEFAULT_CELL_DIAMETER)
    membrane = np.asarray(X[..., 1]) if X.shape[-1] > 1 else None
    layer = 1 if membrane is not None and not np.ptp(membrane) > 0 else 0
    target = cell if layer == 0 else float(app.config.get("nuclear_diameter") or cell * NUCLEUS_TO_CELL)
    lo, hi = FACTOR_LIMITS
    factor, passes, found = 1.0, 0, []
    diameter, n = _measure(app, X, 1.0, layer)
    passes += 1
    if n < MIN_CELLS:
        # Nothing recognisable at the native scale: try much smaller and much larger cells.
        for trial in (0.5, 2.0):
            d, k = _measure(app, X, trial, layer)
            passes += 1
            found.append((k, d, trial))
        k, d, _ = max(found, key=lambda t: t[0])
        if k >= MIN_CELLS:
            diameter, n = d, k
    if diameter is not None and n >= MIN_CELLS:
        factor = float(np.clip(target / diameter, lo, hi))
        for _ in range(REFINEMENTS):
            d2, n2 = _measure(app, X, factor, layer)
            passes += 1
            if d2 is None or n2 < MIN_CELLS:
                break
            diameter, n = d2, n2
            new = float(np.clip(target / diameter, lo, hi))
            if abs(new / factor - 1) < 0.03:
                factor = new
                break
            factor = new
    reliable = diameter is not None and n >= MIN_CELLS
    if not reliable:
        factor = 1.0
    return ScaleEstimate(image_mpp=float(app.model_mpp * factor), factor=factor, cell_diameter=diameter,
                         n_cells=int(n), passes=passes, reliable=bool(reliable))
