"""Array shapes and dtypes the whole system agrees on, and their validation: images (H, W, C) and
labels (H, W, 2) [whole-cell, nuclear]. Numpy only, so the science library and the application share it."""
from __future__ import annotations

import numpy as np

__all__ = ["ArrayError", "MAX_PIXELS_DEFAULT", "validate_labels", "validate_image"]

MAX_PIXELS_DEFAULT = 8192 * 8192
_INT32_MAX = np.iinfo(np.int32).max


class ArrayError(ValueError):
    """Bytes or an array that is not an acceptable image, label array or encoded array."""


def validate_labels(arr, *, shape=None, allow_2d: bool = False) -> np.ndarray:
    """Labels as C-contiguous int32 (H, W, 2): layer 0 whole-cell, layer 1 nuclear.

    Any integer dtype is accepted if values are in [0, int32 max]. (H, W) becomes whole-cell labels
    with an empty nuclear layer only with allow_2d. `shape`, if given, is the required (H, W).
    """
    arr = np.asarray(arr)
    if arr.dtype.kind not in "iu":
        raise ArrayError(f"labels must have an integer dtype, got {arr.dtype}")
    if arr.ndim == 2:
        if not allow_2d:
            raise ArrayError(f"labels must be (H, W, 2), got shape {arr.shape}")
        arr = np.stack([arr, np.zeros_like(arr)], axis=-1)
    elif arr.ndim != 3 or arr.shape[2] != 2:
        raise ArrayError(f"labels must be (H, W, 2) [whole-cell, nuclear], got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ArrayError(f"labels have an empty spatial dimension: {arr.shape}")
    if shape is not None:
        want = tuple(int(n) for n in tuple(shape)[:2])
        if arr.shape[:2] != want:
            raise ArrayError(f"labels are {arr.shape[0]}x{arr.shape[1]}, expected {want[0]}x{want[1]}")
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0:
            raise ArrayError(f"labels must be >= 0, found {lo}")
        if hi > _INT32_MAX:
            raise ArrayError(f"label {hi} does not fit in int32")
    return np.ascontiguousarray(arr, dtype=np.int32)


_KEPT_IMAGE_DTYPES = (np.dtype(np.float32), np.dtype(np.uint8), np.dtype(np.uint16))


def validate_image(arr, *, max_pixels: int | None = MAX_PIXELS_DEFAULT) -> np.ndarray:
    """An image as (H, W, C), C >= 1, in float32, uint8 or uint16.

    (H, W) gains a channel axis. float32/uint8/uint16 are kept; bool becomes uint8; other integer
    and float types become float32 (exact for integers up to 2**24). Floats must be finite.
    """
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, np.newaxis]
    elif arr.ndim != 3:
        raise ArrayError(f"image must be (H, W) or (H, W, C), got shape {arr.shape}")
    h, w, c = arr.shape
    if h < 1 or w < 1 or c < 1:
        raise ArrayError(f"image has an empty dimension: {arr.shape}")
    if max_pixels is not None and h * w > max_pixels:
        raise ArrayError(f"{h}x{w} = {h * w} pixels exceeds the limit of {max_pixels}")
    kind = arr.dtype.kind
    if kind == "b":
        arr = arr.astype(np.uint8)
    elif kind not in "iuf":
        raise ArrayError(f"image dtype {arr.dtype} is not numeric")
    elif arr.dtype.newbyteorder("=") not in _KEPT_IMAGE_DTYPES:
        # Out-of-range float64 becomes inf here and is refused just below.
        with np.errstate(over="ignore"):
            arr = arr.astype(np.float32)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ArrayError("image contains NaN or infinite values")
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))
