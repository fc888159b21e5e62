"""Training data from stitched labels, as in the Mesmer paper: quality control (cells under 15 px dropped, images
under 20 cells dropped), fixed-size tiles, and an 80/10/10 train/val/test split by spatial blocks: an image is divided into fixed blocks
(BLOCK px on a grid from the origin, whatever the tile size), each block once assigned keeps its split, and a tile
takes the split of the blocks it lies in (one across blocks of different splits is left out). So no region of an
image is in two splits, the test area stays frozen across cycles and tile sizes, and models are compared on the
same data.

Tiles lie on a fixed grid from the image origin (so a tile's identity survives re-stitching); edge tiles are
padded with background. A tile is used only when annotated crops cover all of its image pixels, or, with
``min_known``, at least that share of them: the rest of it (the uncovered pixels and the cells they cut) is
then unknown, carried as the tile's ``known`` mask, so training puts no loss there.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

TILE = 256
MIN_CELL_PIXELS = 15
MIN_CELLS = 20
SPLITS = ("train", "val", "test")
RATIOS = {"train": 0.8, "val": 0.1, "test": 0.1}


@dataclass
class Tile:
    y0: int
    x0: int
    X: np.ndarray  # (size, size, C) float32
    y: np.ndarray  # (size, size, 2) int32 after QC
    n_cells: int
    known: np.ndarray | None = None  # (size, size) bool where the labels are known; None: everywhere


def grid(shape, size: int = TILE) -> list[tuple[int, int]]:
    """Top-left corners of the tiles covering an image of ``shape`` (H, W)."""
    return [(y, x) for y in range(0, int(shape[0]), size) for x in range(0, int(shape[1]), size)]


def remove_small_cells(labels2d: np.ndarray, min_pixels: int) -> np.ndarray:
    sizes = np.bincount(labels2d.ravel())
    small = sizes < min_pixels
    small[0] = False
    return np.where(small[labels2d], 0, labels2d).astype(labels2d.dtype, copy=False)


def quality_controlled(labels: np.ndarray, min_cell_pixels: int = MIN_CELL_PIXELS) -> np.ndarray:
    """``labels`` (H, W, 2) with cells under ``min_cell_pixels`` removed from each layer."""
    out = labels.copy()
    for layer in range(out.shape[-1]):
        out[..., layer] = remove_small_cells(out[..., layer], min_cell_pixels)
    return out


def cut_tiles(image: np.ndarray, labels: np.ndarray, coverage: np.ndarray, *, size: int = TILE,
              min_cells: int = MIN_CELLS, min_cell_pixels: int = MIN_CELL_PIXELS,
              min_known: float | None = None) -> tuple[list[Tile], dict]:
    """The QC-passing tiles of one stitched image, and counts of the tiles left out and why. With ``min_known``
    (0 < share <= 1) a tile that annotated crops cover only in part is kept when at least that share of its
    image pixels is covered, with its ``known`` mask (``known_where_covered``) and its unknown labels zeroed."""
    if min_known is not None and not 0 < float(min_known) <= 1:
        raise ValueError(f"min_known must be in (0, 1], got {min_known}")
    h, w = labels.shape[:2]
    tiles, skipped = [], {"uncovered": 0, "few_cells": 0}
    for y0, x0 in grid((h, w), size):
        y1, x1 = min(y0 + size, h), min(x0 + size, w)
        covered = np.asarray(coverage[y0:y1, x0:x1], bool)
        partial = not covered.all()
        if partial and (min_known is None or covered.mean() < float(min_known)):
            skipped["uncovered"] += 1
            continue
        X = np.zeros((size, size, image.shape[2]), np.float32)
        y = np.zeros((size, size, 2), np.int32)
        X[:y1 - y0, :x1 - x0] = image[y0:y1, x0:x1]
        y[:y1 - y0, :x1 - x0] = labels[y0:y1, x0:x1]
        y = quality_controlled(y, min_cell_pixels)
        known = None
        if partial:
            padded = np.ones((size, size), bool)  # the padding beyond the image is background, known
            padded[:y1 - y0, :x1 - x0] = covered
            known = known_where_covered(y, padded)
            y = np.where(known[..., None], y, 0).astype(np.int32)
        n_cells = int(len(np.unique(y[..., 0])) - 1)
        if n_cells < min_cells:
            skipped["few_cells"] += 1
            continue
        tiles.append(Tile(y0, x0, X, y, n_cells, known))
    return tiles, skipped


def known_where_covered(labels: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Where a partly reviewed tile's labels (H, W, 2) are known: the covered pixels less every cell (of
    either layer) that touches an uncovered one, since the uncovered side may hold the rest of it."""
    from scipy import ndimage as ndi

    covered = np.asarray(covered, bool)
    near = ndi.binary_dilation(~covered, structure=ndi.generate_binary_structure(2, 1)) & covered
    known = covered.copy()
    for layer in range(labels.shape[-1]):
        lab = labels[..., layer]
        cut = np.unique(lab[near & (lab > 0)])
        if cut.size:
            known &= ~np.isin(lab, cut)
    return known


BLOCK = 512


def blocks_under(y0: int, x0: int, y1: int, x1: int, block: int) -> set[tuple[int, int]]:
    """Corners of the ``block``-px blocks (a fixed grid from the image origin) that the box y0:y1, x0:x1 touches."""
    return {(by, bx) for by in range(y0 // block * block, y1, block) for bx in range(x0 // block * block, x1, block)}


def tile_split(box, block: int, block_split: dict) -> str | None:
    """The split of the tile at ``box`` (y0, x0, y1, x1: its image pixels) given its image's {(by, bx): split} of
    ``block``-px blocks: the split of all the blocks under it, or None when they differ or one has no split yet
    (such a tile belongs to no split, so no pixel is ever in two)."""
    splits = {block_split.get(corner) for corner in blocks_under(*box, block)}
    return splits.pop() if len(splits) == 1 else None


def assign_splits(existing: dict, new_keys: list, ratios: dict = RATIOS, seed: int = 0) -> dict:
    """Splits for ``new_keys`` given the frozen ``existing`` {key: split}: each new tile goes to the split
    furthest below its share of the total, in an order shuffled by ``seed`` (deterministic); a small first
    dataset gets its first test tile at three tiles and its first validation tile at four."""
    counts = {s: sum(1 for v in existing.values() if v == s) for s in SPLITS}
    order = sorted(new_keys, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())
    assigned = {}
    for key in order:
        total = sum(counts.values()) + 1
        # deficit: how far each split is below its share once this tile is counted
        deficit = {s: ratios[s] * total - counts[s] for s in SPLITS}
        if counts["train"] == 0:
            choice = "train"  # the first tile trains; a model needs something to learn from
        elif total >= 3 and counts["test"] == 0:
            choice = "test"  # without a test tile nothing can be promoted
        elif total >= 4 and counts["val"] == 0:
            choice = "val"
        else:
            choice = max(("test", "val", "train"), key=lambda s: deficit[s])
        assigned[key] = choice
        counts[choice] += 1
    return assigned


def data_hash(X: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> str:
    """Hash of a split's arrays; a known-label mask, where there is one, is part of what was trained or scored on."""
    digest = hashlib.sha256()
    for arr in (X, y) if mask is None else (X, y, np.asarray(mask, bool)):
        arr = np.ascontiguousarray(arr)
        digest.update(str((arr.dtype.str, arr.shape)).encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def select(data: dict, split: str) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """X, y and meta of one split of a dataset written by `cellloop dataset` (as loaded by ``io.load_dataset``)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    keep = [i for i, m in enumerate(data["meta"]) if m.get("split") == split]
    return data["X"][keep], data["y"][keep], [data["meta"][i] for i in keep]


def select_mask(data: dict, split: str) -> np.ndarray | None:
    """The known-label mask of one split (as ``select`` orders its tiles), or None when every label is known."""
    if data.get("mask") is None:
        return None
    keep = [i for i, m in enumerate(data["meta"]) if m.get("split") == split]
    mask = np.asarray(data["mask"], bool)[keep]
    return None if mask.all() else mask


# ---- partial labels --------------------------------------------------------------------------------------

# One pixel: the widest band around traced cells whose training targets do not depend on what the untraced
# pixels hold. A pixel 4-adjacent to a traced cell is "border" in the pixelwise target whether it is
# background or the edge of an untraced neighbour, and its inner distance is 0 either way (a cell's own
# edge is eroded away); one pixel further it could be the interior of an untraced cell.
PARTIAL_BAND_PX = 1


def partial_label_mask(labels2d: np.ndarray, band: int = PARTIAL_BAND_PX) -> np.ndarray:
    """Where partial labels (H, W) are known: the traced cells grown by ``band`` px (4-connected steps).
    Everything else is unknown, not background, and carries no loss in training."""
    from scipy import ndimage as ndi

    labels2d = np.asarray(labels2d)
    if labels2d.ndim != 2:
        raise ValueError(f"partial_label_mask expects a 2-D label image, got shape {labels2d.shape}")
    if band < 0:
        raise ValueError(f"band must be at least 0, got {band}")
    known = labels2d > 0
    if band:
        known = ndi.binary_dilation(known, structure=ndi.generate_binary_structure(2, 1), iterations=int(band))
    return known


def keep_known_cells(pred2d: np.ndarray, known: np.ndarray, min_fraction: float = 0.5) -> np.ndarray:
    """Predicted cells (H, W) with at least ``min_fraction`` of their pixels where labels are known; the
    others lie on untraced cells, which partial labels can neither confirm nor refute. Scoring against
    partial labels after this counts a cell the annotators never traced as neither right nor wrong."""
    pred2d = np.asarray(pred2d)
    if not pred2d.any():
        return pred2d
    sizes = np.bincount(pred2d.ravel())
    inside = np.bincount(pred2d.ravel(), weights=np.asarray(known, bool).ravel(), minlength=len(sizes))
    drop = inside < min_fraction * np.maximum(sizes, 1)
    drop[0] = False
    return np.where(drop[pred2d], 0, pred2d).astype(pred2d.dtype, copy=False)
