"""Consensus of replicas: several annotators' label images of one crop merged into one, and how well they agree.

Cells are matched across replicas pairwise by linear assignment on IoU (``pipeline.metrics``); matched cells form
groups across all replicas, and a group is kept when a majority of the replicas drew it. Its extent is the
pixel-wise majority of the replicas that drew it (a pixel at least half of them drew is in the cell). Where two kept
groups claim the same pixel, the one more replicas drew it for wins. Numpy in, numpy out.
"""
from __future__ import annotations

import itertools

import numpy as np
from scipy import ndimage as ndi

from pipeline.metrics import object_accuracy

# matching for the merge: IoU above 0.5 makes a pair one-to-one already (two cells cannot both cover more than
# half of the union with a third); a little looser than the F1's 0.6, so sloppy borders still pair up
MERGE_IOU = 0.5
MIN_CELL_PX = 15


def pairwise_agreement(replicas: list[np.ndarray]) -> list[tuple[int, int, float]]:
    """(i, j, F1 of replica j against replica i) for every pair, with the project's own object metric. F1 is
    symmetric in its two images, so the order of a pair does not matter."""
    return [(i, j, float(object_accuracy(replicas[i], replicas[j])["f1"]))
            for i, j in itertools.combinations(range(len(replicas)), 2)]


def mean_agreement(pairs: list[tuple[int, int, float]]) -> float:
    return float(np.mean([f for _, _, f in pairs])) if pairs else 1.0


def _find(parent: dict, node):
    while parent[node] != node:
        parent[node] = parent[parent[node]]
        node = parent[node]
    return node


def merge_layer(replicas: list[np.ndarray], *, min_votes: int | None = None, min_size: int = MIN_CELL_PX) -> np.ndarray:
    """One merged (H, W) int32 label image from K replica label images of the same crop and layer."""
    k = len(replicas)
    if k == 0:
        raise ValueError("no replicas to merge")
    shape = replicas[0].shape
    if any(r.shape != shape for r in replicas):
        raise ValueError(f"replicas differ in shape: {[r.shape for r in replicas]}")
    need = min_votes if min_votes is not None else k // 2 + 1
    parent: dict = {}
    for r, labels in enumerate(replicas):
        for cell in np.unique(labels):
            if cell:
                parent[(r, int(cell))] = (r, int(cell))
    for i, j in itertools.combinations(range(k), 2):
        result = object_accuracy(replicas[i], replicas[j], cutoff1=1.0 - MERGE_IOU)
        for a, b, _ in result["matches"]:
            ra, rb = _find(parent, (i, a)), _find(parent, (j, b))
            if ra != rb:
                parent[rb] = ra
    groups: dict = {}
    for node in parent:
        groups.setdefault(_find(parent, node), []).append(node)
    boxes = [ndi.find_objects(labels) for labels in replicas]
    out = np.zeros(shape, np.int32)
    best = np.zeros(shape, np.int16)  # how many replicas drew the cell that holds each pixel
    next_id = 1
    # groups most replicas drew first: they win contested pixels on equal votes
    for members in sorted(groups.values(), key=lambda m: (-len({r for r, _ in m}), min(m))):
        drew = len({r for r, _ in members})
        if drew < need:
            continue
        y0 = min(boxes[r][c - 1][0].start for r, c in members)
        y1 = max(boxes[r][c - 1][0].stop for r, c in members)
        x0 = min(boxes[r][c - 1][1].start for r, c in members)
        x1 = max(boxes[r][c - 1][1].stop for r, c in members)
        votes = np.zeros((y1 - y0, x1 - x0), np.int16)
        for r, c in members:
            votes += replicas[r][y0:y1, x0:x1] == c
        # at least half of the replicas that drew it (two of three; either of two, which border is right is a toss)
        inside = 2 * votes >= drew
        window_best = best[y0:y1, x0:x1]
        take = inside & (votes > window_best)
        if take.sum() < min_size:
            continue
        out[y0:y1, x0:x1][take] = next_id
        window_best[take] = votes[take]
        next_id += 1
    return _drop_small(out, min_size)


def _drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Cells under ``min_size`` px (what other cells' wins left of them) removed, the rest renumbered 1..n."""
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    mapping = np.zeros(len(sizes), np.int32)
    mapping[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return mapping[labels]


def merge_replicas(replicas: list[np.ndarray], **options) -> np.ndarray:
    """Merged (H, W, L) labels from K replicas of (H, W, L) labels, each layer on its own."""
    stack = [np.asarray(r) for r in replicas]
    if stack[0].ndim == 2:
        return merge_layer(stack, **options)
    return np.stack([merge_layer([r[..., layer] for r in stack], **options)
                     for layer in range(stack[0].shape[-1])], axis=-1)
