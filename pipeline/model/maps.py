"""The model's maps as the editor's assist tools read them: (H, W, 4) uint8.

Channels (``CHANNELS``): whole-cell inner distance, whole-cell interior probability, nuclear inner distance,
nuclear interior probability, each value in [0, 1] stored as round(255 * value). One level is 0.004: far below
what the deep watershed's thresholds (0.075 .. 0.3) resolve, and a 270-px crop's four maps then compress to a
few tens of kilobytes.
"""
from __future__ import annotations

import numpy as np

CHANNELS = ("whole-cell distance", "whole-cell interior", "nuclear distance", "nuclear interior")


def _plane(a) -> np.ndarray:
    a = np.asarray(a, np.float32)
    if a.ndim == 4:
        if a.shape[0] != 1:
            raise ValueError(f"maps are made one image at a time, got a batch of {a.shape[0]}")
        a = a[0]
    return a


def maps_from_outputs(outputs, shape: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 (H, W, 4) maps from the four Mesmer outputs [wc distance, wc pixelwise, nuc distance, nuc
    pixelwise] (pixelwise in the order [border, interior, background]); resampled (bilinear) to ``shape``
    when the outputs are on another grid (the model's pixel size)."""
    if len(outputs) != 4:
        raise ValueError(f"expected the 4 Mesmer outputs, got {len(outputs)}")
    wc_d, wc_p, nuc_d, nuc_p = (_plane(o) for o in outputs)

    def interior(p):
        return p[..., 1] if p.ndim == 3 and p.shape[-1] >= 2 else (p[..., 0] if p.ndim == 3 else p)

    def distance(d):
        return d[..., 0] if d.ndim == 3 else d

    stack = np.stack([distance(wc_d), interior(wc_p), distance(nuc_d), interior(nuc_p)], axis=-1)
    if shape is not None and tuple(stack.shape[:2]) != tuple(shape):
        from skimage.transform import resize

        stack = resize(stack, tuple(shape) + (4,), order=1, mode="edge", anti_aliasing=False,
                       preserve_range=True)
    return quantize(stack)


def quantize(maps) -> np.ndarray:
    """Float maps in [0, 1] (values outside are clipped, NaN is 0) to uint8."""
    maps = np.nan_to_num(np.asarray(maps, np.float32), nan=0.0)
    return np.rint(np.clip(maps, 0.0, 1.0) * 255).astype(np.uint8)


def maps_from_labels(y) -> np.ndarray:
    """The maps a perfect model would give for labels ``y`` (H, W, 2): its training targets. For tests and
    benchmarks of the assist tools (and of anything that reads maps) without a trained network."""
    from pipeline.model.transforms import make_targets

    return maps_from_outputs(make_targets(np.asarray(y)))
