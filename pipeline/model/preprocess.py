"""Input normalisation and pixel-size resampling for the Mesmer model."""
from __future__ import annotations

import numpy as np
from skimage.exposure import equalize_adapthist
from skimage.transform import resize

__all__ = ["normalize", "percentile_clip", "resample", "resample_labels", "MODEL_MPP"]

MODEL_MPP = 0.5  # µm per pixel of TissueNet and of the published model
_THREADED_PIXELS = 512 * 512  # below this a thread pool costs more than it saves
_THREADS = 2


def percentile_clip(channel: np.ndarray, percentile: float = 99.9) -> np.ndarray:
    """Clip one channel at the given percentile of its nonzero pixels (blank channels unchanged).

    Nonzero pixels only, because multiplexed images are often mostly empty background and a
    percentile over all pixels would then clip the cells themselves.
    """
    channel = np.asarray(channel, dtype=np.float32)
    nonzero = channel[channel != 0]
    if nonzero.size == 0:
        return channel.copy()
    top = np.percentile(nonzero, percentile)
    return np.minimum(channel, top).astype(np.float32)


def channel_range(channel: np.ndarray, percentile: float = 99.9) -> tuple[float, float]:
    """(low, high) that ``normalize`` rescales one channel by: its minimum and the ``percentile`` of its nonzero
    pixels. Computed once on a sample of a whole slide, it lets every block of the slide be normalised alike."""
    channel = np.nan_to_num(np.asarray(channel, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    clipped = percentile_clip(channel, percentile)
    if clipped.size == 0:
        return 0.0, 0.0
    return float(clipped.min()), float(clipped.max())


def _normalize_channel(channel, percentile, kernel_size, clip_limit, fixed_range=None):
    channel = np.nan_to_num(np.asarray(channel, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if fixed_range is None:
        channel = percentile_clip(channel, percentile)
        lo, hi = float(channel.min()), float(channel.max())
    else:
        lo, hi = (float(v) for v in fixed_range)
        channel = np.clip(channel, lo, hi)
    if not hi > lo:
        # A constant channel carries no information; zeros keep the model input well defined.
        return np.zeros_like(channel)
    scaled = (channel - lo) / (hi - lo)
    if min(channel.shape) < 2:
        return scaled.astype(np.float32)
    eq = equalize_adapthist(scaled, kernel_size=kernel_size, clip_limit=clip_limit)
    return np.clip(np.nan_to_num(eq), 0.0, 1.0).astype(np.float32)


def normalize(X, *, percentile: float = 99.9, kernel_size: int | None = 128, clip_limit: float = 0.01,
              ranges=None) -> np.ndarray:
    """Mesmer pre-processing of ``X`` (H, W, C) or (N, H, W, C); float32 in [0, 1], same shape.

    Per image and channel: clip at the ``percentile`` of nonzero pixels, rescale to [0, 1], then
    CLAHE (``equalize_adapthist(kernel_size, clip_limit)``). Constant or blank channels become
    zeros; NaN and infinities are treated as 0, so the output never holds NaN. ``ranges``: one (low, high) per
    channel (``channel_range`` of the whole slide) to rescale by instead of each image's own.
    """
    X = np.asarray(X)
    if X.ndim not in (3, 4):
        raise ValueError(f"normalize expects (H,W,C) or (N,H,W,C), got shape {X.shape}")
    single = X.ndim == 3
    Xb = X[None] if single else X
    out = np.empty(Xb.shape, dtype=np.float32)

    def one(i, c):
        fixed = None if ranges is None else ranges[c]
        out[i, ..., c] = _normalize_channel(Xb[i, ..., c], percentile, kernel_size, clip_limit, fixed)

    jobs = [(i, c) for i in range(Xb.shape[0]) for c in range(Xb.shape[-1])]
    if len(jobs) > 1 and Xb.shape[-3] * Xb.shape[-2] >= _THREADED_PIXELS:
        # Channels are independent and CLAHE's array work releases the GIL: two threads, the same numbers.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(len(jobs), _THREADS)) as pool:
            list(pool.map(lambda job: one(*job), jobs))
    else:
        for job in jobs:
            one(*job)
    return out[0] if single else out


def _scaled_shape(shape_hw, from_mpp, to_mpp):
    if from_mpp <= 0 or to_mpp <= 0:
        raise ValueError("pixel sizes must be positive")
    scale = float(from_mpp) / float(to_mpp)
    return tuple(max(1, int(round(s * scale))) for s in shape_hw)


def resample(X, from_mpp: float, to_mpp: float = MODEL_MPP) -> np.ndarray:
    """Resample an image (H, W, C) or (N, H, W, C) from ``from_mpp`` to ``to_mpp`` µm/px.

    Linear interpolation, anti-aliased when shrinking. Returns float32; a no-op copy when the
    pixel sizes agree.
    """
    X = np.asarray(X)
    if X.ndim not in (3, 4):
        raise ValueError(f"resample expects (H,W,C) or (N,H,W,C), got shape {X.shape}")
    hw = X.shape[-3:-1]
    new_hw = _scaled_shape(hw, from_mpp, to_mpp)
    if new_hw == tuple(hw):
        return X.astype(np.float32, copy=True)
    shrinking = new_hw[0] < hw[0] or new_hw[1] < hw[1]
    out_shape = X.shape[:-3] + new_hw + X.shape[-1:]
    return resize(
        X.astype(np.float32), out_shape, order=1, mode="reflect", anti_aliasing=shrinking, preserve_range=True
    ).astype(np.float32)


def resample_labels(y, shape) -> np.ndarray:
    """Nearest-neighbour resize of labels ``y`` (H, W), (H, W, K) or (N, H, W, K) to spatial ``shape``.

    Pure index lookup, so ids are never blended into values that are not in ``y``.
    """
    y = np.asarray(y)
    th, tw = int(shape[0]), int(shape[1])
    if y.ndim == 2:
        h, w = y.shape
        axes = (0, 1)
    elif y.ndim in (3, 4):
        h, w = y.shape[-3], y.shape[-2]
        axes = (y.ndim - 3, y.ndim - 2)
    else:
        raise ValueError(f"resample_labels expects 2-4 dims, got shape {y.shape}")
    rows = np.minimum(((np.arange(th) + 0.5) * h / th).astype(np.intp), h - 1)
    cols = np.minimum(((np.arange(tw) + 0.5) * w / tw).astype(np.intp), w - 1)
    return np.take(np.take(y, rows, axis=axes[0]), cols, axis=axes[1])
