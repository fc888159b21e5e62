"""The chunk grid of a big task's arrays: square chunks of CHUNK px at level 0 and at coarser levels.

Level k holds every 2**k-th row and column of level 0 (``array[::2**k, ::2**k]``): a coarse chunk's values are
real pixels (16-bit channels stay exact, label ids stay ids; an average of ids would be no id), so the zoomed-out
view shows the data itself, as the renderer's nearest sampling does at that scale. Levels go on halving until one
chunk holds the whole level. Every level uses the same chunk size, so a level-k chunk (i, j) covers the level-0
chunks (i·2**k … (i+1)·2**k − 1, j·2**k …): which coarse chunks an edit dirties follows from the level-0 ones.
Pure geometry and numpy: no storage here.
"""
from __future__ import annotations

import math

import numpy as np

CHUNK = 512


class NoSuchChunk(ValueError):
    """A (level, row, col) outside the grid; the message says what exists."""


class ChunkGrid:
    def __init__(self, shape: tuple[int, int], size: int = CHUNK):
        self.height, self.width = (int(v) for v in shape[:2])
        self.size = int(size)
        if self.size <= 0 or self.height <= 0 or self.width <= 0:
            raise ValueError(f"no chunk grid for shape {shape} with chunk size {size}")
        longest = max(self.height, self.width)
        self.levels = 1 + max(0, math.ceil(math.log2(longest / self.size)))

    def level_shape(self, level: int) -> tuple[int, int]:
        f = 1 << level
        return (-(-self.height // f), -(-self.width // f))

    def grid(self, level: int) -> tuple[int, int]:
        h, w = self.level_shape(level)
        return (-(-h // self.size), -(-w // self.size))

    def describe(self) -> dict:
        """The layout as the editor reads it from the task JSON."""
        return {"size": self.size, "levels": [list(self.level_shape(k)) for k in range(self.levels)]}

    def check(self, level: int, row: int, col: int) -> None:
        """NoSuchChunk, with a message for the client, when (level, row, col) names no chunk."""
        if not 0 <= level < self.levels:
            raise NoSuchChunk(f"level {level} does not exist: this task has levels 0-{self.levels - 1}")
        rows, cols = self.grid(level)
        if not (0 <= row < rows and 0 <= col < cols):
            raise NoSuchChunk(f"chunk ({row}, {col}) is outside level {level}'s {rows}x{cols} grid")

    def cut(self, array: np.ndarray, level: int, row: int, col: int) -> np.ndarray:
        """The chunk's values, a contiguous copy: rows/cols of level 0 taken every 2**level."""
        f, s = 1 << level, self.size
        return np.ascontiguousarray(array[row * s * f:(row + 1) * s * f:f, col * s * f:(col + 1) * s * f:f])

    def chunks(self, level: int):
        rows, cols = self.grid(level)
        return [(i, j) for i in range(rows) for j in range(cols)]

    def touching(self, box) -> set[tuple[int, int]]:
        """Level-0 chunks a half-open level-0 box (y0, x0, y1, x1) overlaps."""
        y0, x0, y1, x1 = box
        if y1 <= y0 or x1 <= x0:
            return set()
        s = self.size
        return {(i, j) for i in range(y0 // s, (y1 - 1) // s + 1) for j in range(x0 // s, (x1 - 1) // s + 1)}

    @staticmethod
    def at_level(level0: set[tuple[int, int]], level: int) -> set[tuple[int, int]]:
        return {(i >> level, j >> level) for i, j in level0}


def apply_patch_at_level(chunk: np.ndarray, grid: ChunkGrid, level: int, row: int, col: int, patch) -> None:
    """Write a level-0 patch's after values into a (h, w, layers) chunk of ``level`` in place: only the patch's
    pixels that level keeps (rows and cols divisible by 2**level)."""
    f, s = 1 << level, grid.size
    y0, x0, y1, x1 = patch.box
    if y1 <= y0 or x1 <= x0:
        return
    oy, ox = row * s * f, col * s * f  # the chunk's first level-0 row and col
    h, w = chunk.shape[:2]
    rows = np.arange(max(y0, oy) + (-max(y0, oy)) % f, min(y1, oy + h * f), f)
    cols = np.arange(max(x0, ox) + (-max(x0, ox)) % f, min(x1, ox + w * f), f)
    if rows.size == 0 or cols.size == 0:
        return
    values = patch.after[np.ix_(rows - y0, cols - x0)]
    chunk[np.ix_((rows - oy) // f, (cols - ox) // f, [patch.layer])] = values[..., None]
