"""Overlapping-tile prediction for images of any size, blended with a smooth window."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

__all__ = ["spline_window", "tile_starts", "tile_predict"]


def _spline_1d(size: int, power: int = 2) -> np.ndarray:
    # Piecewise-polynomial bump: within a quarter of each edge it rises as (2t)^p / 2 with t the
    # tent height, in the middle it approaches 1 as 1 - (2(1-t))^p / 2. Both pieces meet at 1/2
    # with matching slope, so overlapping tiles hand over smoothly instead of with a step.
    # Pixel centres are sampled so the window is symmetric and never exactly 0 at the edge,
    # which keeps the weight normalisation defined on image borders covered by one tile only.
    pos = (np.arange(size) + 0.5) / size
    tent = 1.0 - np.abs(2.0 * pos - 1.0)
    outer = (2.0 * tent) ** power / 2.0
    inner = 1.0 - (2.0 * (1.0 - tent)) ** power / 2.0
    return np.where(tent < 0.5, outer, inner)


def spline_window(size: int, power: int = 2) -> np.ndarray:
    """2-D float32 (size, size) blending window with mean 1, peaking in the centre."""
    w = _spline_1d(int(size), power)
    w2 = np.outer(w, w)
    return (w2 / w2.mean()).astype(np.float32)


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets covering ``length`` with tiles of ``tile`` px; the last one is flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def tile_predict(
    fn: Callable[[np.ndarray], Sequence[np.ndarray] | np.ndarray],
    X: np.ndarray,
    *,
    tile: int = 256,
    stride: int = 192,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
    power: int = 2,
    fixed_batches: bool = True,
) -> list[np.ndarray]:
    """Run ``fn`` over overlapping tiles of ``X`` (H, W, C) and blend the outputs back.

    ``fn`` takes a float32 batch (B, tile, tile, C) and returns one array or a list of arrays
    (B, tile, tile, k_i). Images smaller than a tile are zero-padded (zeros are what blank
    background looks like after normalisation) and cropped back. Outputs are weighted by
    ``spline_window`` and divided by the summed weights, so a prediction that agrees between
    tiles comes back unchanged. ``progress(done, total)`` is called after each batch. When there is
    more than one batch, every batch holds ``batch_size`` tiles (blank ones fill the last); a single
    batch is filled up to a power of two. ``fixed_batches=False`` (for a runtime that takes any batch size at no
    cost, like ONNX Runtime) sends no blank tiles: the tiles go in batches of near-equal size, none above
    ``batch_size``. The blended outputs are the same either way.
    Returns a list of float32 arrays (H, W, k_i).
    """
    X = np.asarray(X)
    if X.ndim != 3:
        raise ValueError(f"tile_predict expects (H, W, C), got shape {X.shape}")
    if not 0 < stride <= tile:
        raise ValueError("stride must be in (0, tile]")
    h, w, c = X.shape
    ph, pw = max(h, tile), max(w, tile)
    if (ph, pw) != (h, w):
        Xp = np.zeros((ph, pw, c), dtype=np.float32)
        Xp[:h, :w] = X
    else:
        Xp = X.astype(np.float32, copy=False)

    boxes = [(r, q) for r in tile_starts(ph, tile, stride) for q in tile_starts(pw, tile, stride)]
    window = spline_window(tile, power)
    weight = np.zeros((ph, pw), dtype=np.float32)
    for r, q in boxes:
        weight[r : r + tile, q : q + tile] += window
    accum: list[np.ndarray] | None = None
    total = len(boxes)
    done = 0
    if fixed_batches:
        cuts = list(range(0, total, batch_size)) + [total]
    else:
        n_batches = -(-total // batch_size)
        cuts = [round(i * total / n_batches) for i in range(n_batches + 1)]
    weighted = np.empty((tile, tile, 1), np.float32)
    for b0, b1 in zip(cuts[:-1], cuts[1:]):
        chunk = boxes[b0:b1]
        batch = np.stack([Xp[r : r + tile, q : q + tile] for r, q in chunk])
        # Every new batch shape makes a compiled network trace again (seconds on CPU): blank tiles fill
        # a short batch up to the full batch size, or up to a power of two when the image needs only
        # one batch, and their outputs are dropped.
        fill = batch_size if total > batch_size else 1 << (len(chunk) - 1).bit_length()
        if fixed_batches and len(chunk) < fill:
            batch = np.concatenate([batch, np.zeros((fill - len(chunk),) + batch.shape[1:], batch.dtype)])
        outs = fn(batch)
        if isinstance(outs, np.ndarray) or not isinstance(outs, (list, tuple)):
            outs = [outs]
        outs = [np.asarray(o, dtype=np.float32)[: len(chunk)] for o in outs]
        if accum is None:
            accum = [np.zeros((ph, pw, o.shape[-1]), dtype=np.float32) for o in outs]
        for o, acc in zip(outs, accum):
            if o.shape[:3] != (len(chunk), tile, tile):
                raise ValueError(f"fn returned shape {o.shape}, expected ({len(chunk)}, {tile}, {tile}, k)")
            if weighted.shape[-1] != o.shape[-1]:
                weighted = np.empty((tile, tile, o.shape[-1]), np.float32)
            for j, (r, q) in enumerate(chunk):
                # one reused buffer for the weighted tile instead of a new array per tile and output
                np.multiply(o[j], window[..., None], out=weighted)
                acc[r : r + tile, q : q + tile] += weighted
        done += len(chunk)
        if progress is not None:
            progress(done, total)
    assert accum is not None
    # divided in place (a whole image's outputs are GBs on a slide block); the padding is cropped after
    return [np.divide(acc, weight[..., None], out=acc)[:h, :w] for acc in accum]
