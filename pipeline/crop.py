"""Cut a large image into annotation crops (270 px by default) that overlap, so every cell lies whole in
at least one crop, and record each crop's box in the source image."""
from __future__ import annotations


def crop_starts(length: int, size: int, overlap: int) -> list[int]:
    if size <= 0 or not 0 <= overlap < size:
        raise ValueError(f"need size > 0 and 0 <= overlap < size, got size={size}, overlap={overlap}")
    if length <= size:
        return [0]
    step = size - overlap
    starts = list(range(0, length - size, step))
    starts.append(length - size)  # the last crop ends flush with the image, never past it
    return starts


def crop_boxes(shape: tuple[int, int], size: int = 270, overlap: int = 30) -> list[tuple[int, int, int, int]]:
    """Half-open boxes (y0, x0, y1, x1) of at most `size` px covering an image of `shape` (H, W)."""
    height, width = shape[:2]
    if height <= 0 or width <= 0:
        raise ValueError(f"cannot crop an empty image of shape {shape}")
    return [(y, x, min(y + size, height), min(x + size, width))
            for y in crop_starts(height, size, overlap) for x in crop_starts(width, size, overlap)]
