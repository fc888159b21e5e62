"""Put annotated crops back together into whole-image labels.

Each crop's labels are its own (ids 1..n, the same id for a cell in both layers). A cell cut by a crop border
appears in two or more crops; it gets one id by **maximum overlap**: in the zone two crops share, a crop cell is
joined to the neighbour crop's cell it shares most pixels with, when that cell shares most with it too (mutual
best). Everything else in an overlap zone is reported for expert QC: ties, cells that overlap without being each
other's best match (one crop split what the other kept whole), and components that join two cells of one crop.
Crops that only touch (overlap 0) are joined across the seam by the same rule on the two facing pixel rows.
Joins are made strongest first, and a join that would put two cells of one crop into one cell is not made: such a
**contradiction** (neighbours disagree about a cell one crop split) is listed, and the crop's cells stay separate.

Pixels covered by several crops are taken from the crop with the highest ``priority`` (newer approved work: a
re-annotation wins over the crop it re-does), and among crops of equal priority from the crop in which they lie
deepest (farthest from a crop border inside the image), so the labels near a crop's cut edge, where annotators see
least context, lose.

A cell one crop kept while an overlapping crop left its pixels background ("deleted" it: at least half of the cell's
pixels in the shared zone, and no join with a cell of that crop) is a **kept-vs-deleted** conflict, never a silent
cut: when the deleting crop is not newer, the cell is kept whole (its pixels that the other crop left background
come from the crop that kept it; outcome "kept"); when the deleting crop is newer work, the deletion wins on the
newer crop's pixels, and the conflict is listed (outcome "cut by newer work") only if part of the cell survives
outside it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

Box = tuple[int, int, int, int]


@dataclass
class StitchResult:
    labels: np.ndarray  # (H, W, layers) int32, ids 1..n shared by the layers
    coverage: np.ndarray  # (H, W) bool: pixels some crop covers
    conflicts: list[dict] = field(default_factory=list)


def relabel_crop(labels: np.ndarray) -> np.ndarray:
    """Ids 1..n in the order of the original ids, keeping a cell's id shared between layers."""
    labels = np.asarray(labels)
    top = int(labels.max(initial=0))
    if top > 4 * labels.size:  # sparse huge ids: sorting is cheaper than a lookup table
        ids, inverse = np.unique(labels, return_inverse=True)
        inverse = inverse.reshape(labels.shape)
        return (inverse if ids[0] == 0 else inverse + 1).astype(np.int32)
    present = np.zeros(top + 1, bool)
    present[labels.ravel()] = True
    present[0] = False
    lookup = np.cumsum(present, dtype=np.int32)
    lookup[0] = 0
    return lookup[labels]


def cut_crops(labels: np.ndarray, boxes: list[Box], *, relabel: bool = True) -> list[tuple[Box, np.ndarray]]:
    """The crops of ``labels`` (H, W[, layers]) at ``boxes``, each relabelled as an annotator's crop would be."""
    out = []
    for box in boxes:
        y0, x0, y1, x1 = box
        crop = labels[y0:y1, x0:x1]
        out.append((tuple(int(v) for v in box), relabel_crop(crop) if relabel else crop.copy()))
    return out


def _as_layers(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[..., None]
    if labels.ndim != 3 or labels.dtype.kind not in "iu":
        raise ValueError(f"crop labels must be integer (h, w) or (h, w, layers), got {labels.dtype} {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError("crop labels must be >= 0")
    return labels.astype(np.int64, copy=False)


def _check_crops(shape, crops):
    height, width = int(shape[0]), int(shape[1])
    checked = []
    n_layers = None
    for i, (box, labels) in enumerate(crops):
        y0, x0, y1, x1 = (int(v) for v in box)
        if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
            raise ValueError(f"crop {i}: box {box} is not inside the {height}x{width} image")
        labels = _as_layers(labels)
        if labels.shape[:2] != (y1 - y0, x1 - x0):
            raise ValueError(f"crop {i}: labels of shape {labels.shape[:2]} do not fit box {box}")
        if n_layers is None:
            n_layers = labels.shape[2]
        elif labels.shape[2] != n_layers:
            raise ValueError(f"crop {i} has {labels.shape[2]} layers, earlier crops {n_layers}")
        checked.append(((y0, x0, y1, x1), labels))
    return checked, n_layers or 1


def _pair_counts(a: np.ndarray, b: np.ndarray, base: int):
    """Pixel counts of each (a-cell, b-cell) pair where both are cells; ids coded as a * base + b."""
    both = (a > 0) & (b > 0)
    codes, counts = np.unique(a[both] * base + b[both], return_counts=True)
    return codes // base, codes % base, counts


def _best(keys: np.ndarray, partners: np.ndarray, counts: np.ndarray):
    """For each key, its partner with most pixels, and whether that maximum is shared (a tie)."""
    order = np.lexsort((-counts, keys))
    keys, partners, counts = keys[order], partners[order], counts[order]
    first = np.ones(len(keys), bool)
    first[1:] = keys[1:] != keys[:-1]
    second = np.zeros(len(keys), bool)
    second[1:] = first[:-1] & ~first[1:]  # the runner-up of each key
    tie_keys = set(keys[second][counts[second] == counts[np.flatnonzero(second) - 1]].tolist())
    return dict(zip(keys[first].tolist(), zip(partners[first].tolist(), counts[first].tolist()))), tie_keys


def _depth(box: Box, shape) -> np.ndarray:
    """Distance of each crop pixel to the nearest crop border that is not an image border."""
    y0, x0, y1, x1 = box
    big = np.iinfo(np.int32).max
    rows = np.arange(y0, y1)
    cols = np.arange(x0, x1)
    dy = np.full(len(rows), big, np.int64)
    dx = np.full(len(cols), big, np.int64)
    if y0 > 0:
        dy = np.minimum(dy, rows - y0)
    if y1 < shape[0]:
        dy = np.minimum(dy, y1 - 1 - rows)
    if x0 > 0:
        dx = np.minimum(dx, cols - x0)
    if x1 < shape[1]:
        dx = np.minimum(dx, x1 - 1 - cols)
    return np.minimum(dy[:, None], dx[None, :])


def _zones(boxes: list[Box]):
    """Pairs of crops that overlap (zone = shared box) or share an edge (zone = the two facing pixel rows)."""
    b = np.array(boxes, np.int64).reshape(-1, 4)
    iy0 = np.maximum(b[:, None, 0], b[None, :, 0])
    ix0 = np.maximum(b[:, None, 1], b[None, :, 1])
    iy1 = np.minimum(b[:, None, 2], b[None, :, 2])
    ix1 = np.minimum(b[:, None, 3], b[None, :, 3])
    for k, j in zip(*np.nonzero(np.triu(np.ones((len(b), len(b)), bool), 1))):
        zy0, zx0, zy1, zx1 = iy0[k, j], ix0[k, j], iy1[k, j], ix1[k, j]
        if zy1 > zy0 and zx1 > zx0:
            yield int(k), int(j), "overlap", (int(zy0), int(zx0), int(zy1), int(zx1))
        elif zy1 == zy0 and zx1 > zx0:  # one crop ends on the row where the other begins
            yield int(k), int(j), "seam-y", (int(zy0), int(zx0), int(zy1), int(zx1))
        elif zx1 == zx0 and zy1 > zy0:
            yield int(k), int(j), "seam-x", (int(zy0), int(zx0), int(zy1), int(zx1))


def _facing(crops, k, j, kind, zone):
    """The labels of crops k and j on their shared zone (overlap) or facing rows (seam), layers stacked."""
    (bk, lk), (bj, lj) = crops[k], crops[j]
    zy0, zx0, zy1, zx1 = zone
    if kind == "overlap":
        a = lk[zy0 - bk[0]:zy1 - bk[0], zx0 - bk[1]:zx1 - bk[1]]
        b = lj[zy0 - bj[0]:zy1 - bj[0], zx0 - bj[1]:zx1 - bj[1]]
        return a.ravel(), b.ravel(), (zy0 + zy1) // 2, (zx0 + zx1) // 2
    if kind == "seam-y":
        upper_first = bk[2] == zy0
        up, down = ((bk, lk), (bj, lj)) if upper_first else ((bj, lj), (bk, lk))
        ru = up[1][-1, zx0 - up[0][1]:zx1 - up[0][1]]
        rd = down[1][0, zx0 - down[0][1]:zx1 - down[0][1]]
        a, b = (ru, rd) if upper_first else (rd, ru)
        return a.ravel(), b.ravel(), zy0, (zx0 + zx1) // 2
    left_first = bk[3] == zx0
    left, right = ((bk, lk), (bj, lj)) if left_first else ((bj, lj), (bk, lk))
    cl = left[1][zy0 - left[0][0]:zy1 - left[0][0], -1]
    cr = right[1][zy0 - right[0][0]:zy1 - right[0][0], 0]
    a, b = (cl, cr) if left_first else (cr, cl)
    return a.ravel(), b.ravel(), (zy0 + zy1) // 2, zx0


def _background_share(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per cell id of ``a``: its pixels in the zone, and how many of them ``b`` leaves background."""
    n = int(a.max(initial=0)) + 1
    return np.bincount(a, minlength=n), np.bincount(a[b == 0], minlength=n)


def stitch_crops(shape, crops, *, priority=None) -> StitchResult:
    """Whole-image labels (H, W, layers) from ``crops``: a list of (box, labels) with half-open boxes
    (y0, x0, y1, x1) in the image of ``shape`` (H, W) and labels (h, w) or (h, w, layers). ``priority`` (one number
    per crop, higher = newer approved work; default all equal) decides who owns pixels several crops cover."""
    crops, n_layers = _check_crops(shape, crops)
    priority = [0] * len(crops) if priority is None else [int(p) for p in priority]
    if len(priority) != len(crops):
        raise ValueError(f"{len(priority)} priorities for {len(crops)} crops")
    height, width = int(shape[0]), int(shape[1])
    offsets = [0]
    for _, labels in crops:
        offsets.append(offsets[-1] + int(labels.max(initial=0)) + 1)
    n_nodes = offsets[-1]
    conflicts: list[dict] = []
    joins: list[tuple[int, int, int, dict]] = []  # (pixels, node, node, where) of mutual best matches
    deleted: list[tuple[int, int, int, dict]] = []  # (crop that kept, cell, crop that deleted, where)
    for k, j, kind, zone in _zones([box for box, _ in crops]):
        a, b, cy, cx = _facing(crops, k, j, kind, zone)
        where = {"zone": kind, "y": int(cy), "x": int(cx)}
        base = max(int(a.max(initial=0)), int(b.max(initial=0))) + 1
        ka, kb, counts = _pair_counts(a, b, base)
        best_of_a, ties_a = _best(ka, kb, counts) if len(counts) else ({}, set())
        best_of_b, ties_b = _best(kb, ka, counts) if len(counts) else ({}, set())
        joined_a, joined_b = set(), set()
        for cell_a, (cell_b, n) in best_of_a.items():
            if best_of_b.get(cell_b, (None,))[0] == cell_a and cell_a not in ties_a and cell_b not in ties_b:
                joins.append((int(n), offsets[k] + cell_a, offsets[j] + cell_b, where))
                joined_a.add(cell_a)
                joined_b.add(cell_b)
        if kind == "overlap":
            # a cell one crop has where the other crop left (at least half of) its pixels background
            for crop, other, cells, others, joined in ((k, j, a, b, joined_a), (j, k, b, a, joined_b)):
                total, background = _background_share(cells, others)
                for cell in np.flatnonzero((2 * background >= total) & (total > 0)).tolist():
                    if cell and cell not in joined:
                        deleted.append((crop, cell, other, where))
                        joined.add(cell)  # listed as kept-vs-deleted, not again as a disagreement
        for cell_a, (cell_b, n) in best_of_a.items():
            if cell_a not in joined_a:
                conflicts.append({"kind": "tie" if (cell_a in ties_a or cell_b in ties_b) else "disagreement",
                                  "crops": [k, j], "cells": [int(cell_a), int(cell_b)], "pixels": int(n), **where})
        for cell_b in set(best_of_b) - set(best_of_a[c][0] for c in best_of_a) - joined_b:
            cell_a, n = best_of_b[cell_b]
            conflicts.append({"kind": "tie" if cell_b in ties_b else "disagreement", "crops": [k, j],
                              "cells": [int(cell_a), int(cell_b)], "pixels": int(n), **where})
    component = _join(n_nodes, offsets, joins, conflicts)

    owner = np.full((height, width), -1, np.int64)
    owner_rank = np.full((height, width), -1, np.int64)
    stitched = np.zeros((height, width, n_layers), np.int64)
    coverage = np.zeros((height, width), bool)
    depth_span = height + width + 1
    for k, (box, labels) in enumerate(crops):
        y0, x0, y1, x1 = box
        depth = np.minimum(_depth(box, (height, width)), depth_span - 1)
        rank = (priority[k] - min(priority)) * depth_span + depth
        wins = rank > owner_rank[y0:y1, x0:x1]
        owner_rank[y0:y1, x0:x1][wins] = rank[wins]
        owner[y0:y1, x0:x1][wins] = k
        # component ids + 1, so 0 stays background
        lookup = component[offsets[k]:offsets[k + 1]] + 1
        lookup[0] = 0
        window = stitched[y0:y1, x0:x1]
        window[wins] = lookup[labels[wins]]
        coverage[y0:y1, x0:x1] = True
    _resolve_deleted(crops, priority, component, offsets, owner, stitched, deleted, conflicts)
    return StitchResult(labels=_sequential(stitched), coverage=coverage, conflicts=conflicts)


def _join(n_nodes: int, offsets, joins, conflicts) -> np.ndarray:
    """Components of the joins, strongest first; a join that would make two cells of one crop one cell is left out
    and listed as a contradiction (the crop's cells stay separate)."""
    crop_of = np.searchsorted(np.asarray(offsets), np.arange(n_nodes), side="right") - 1
    parent = list(range(n_nodes))
    members: dict[int, dict[int, int]] = {}  # root -> {crop: its one cell in the component}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for n, u, v, where in sorted(joins, key=lambda e: (-e[0], e[1], e[2])):
        ru, rv = find(u), find(v)
        if ru == rv:
            continue
        mu = members.get(ru, {int(crop_of[u]): u})
        mv = members.get(rv, {int(crop_of[v]): v})
        clash = sorted(set(mu) & set(mv))
        if clash:
            for crop in clash:
                conflicts.append({"kind": "contradiction", "crops": [crop],
                                  "cells": sorted([mu[crop] - offsets[crop], mv[crop] - offsets[crop]]),
                                  "pixels": int(n), **where})
            continue
        parent[rv] = ru
        members[ru] = {**mu, **mv}
        members.pop(rv, None)
    roots = np.array([find(x) for x in range(n_nodes)], np.int64)
    return np.unique(roots, return_inverse=True)[1].reshape(-1)


def _resolve_deleted(crops, priority, component, offsets, owner, stitched, deleted, conflicts) -> None:
    """Kept-vs-deleted cells: kept whole unless the crop that deleted them is newer work (see the module doc)."""
    for crop, cell, other, where in deleted:
        (y0, x0, y1, x1), labels = crops[crop]
        mine = labels == cell
        cid = component[offsets[crop] + cell] + 1
        window = stitched[y0:y1, x0:x1]
        owned = owner[y0:y1, x0:x1]
        total = int(mine.sum())
        entry = {"kind": "kept-vs-deleted", "crops": [crop, other], "cells": [int(cell), 0], "pixels": total,
                 **where}
        if priority[other] <= priority[crop]:
            # background the other crop (not newer) put over this cell's pixels gives way to the cell
            regain = mine & (window == 0) & (owned != crop)[..., None]
            if regain.any():  # else the cell lay where its own crop owns the pixels: nothing was cut
                window[regain] = cid
                conflicts.append({**entry, "outcome": "kept", "regained_pixels": int(regain.sum())})
        else:
            left = int((window[mine] == cid).sum())
            if left:
                conflicts.append({**entry, "outcome": "cut by newer work", "kept_pixels": left})


def _sequential(labels: np.ndarray) -> np.ndarray:
    used = np.zeros(int(labels.max(initial=0)) + 1, bool)
    used[labels.ravel()] = True
    used[0] = False
    lookup = np.cumsum(used).astype(np.int32)
    lookup[0] = 0
    return lookup[labels]


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label images divide the pixels into the same cells (ids may differ)."""
    a = np.asarray(a).ravel()
    b = np.asarray(b).ravel()
    if a.shape != b.shape or not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a, b]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def mutual_best_matches(a: np.ndarray, b: np.ndarray) -> list[tuple[int, int, int]]:
    """(cell of ``a``, cell of ``b``, shared pixels) for every pair of cells that are each other's maximum-overlap
    partner without a tie, on two labelings of the same pixels (any shape; layers may be stacked): the rule
    ``stitch_crops`` joins crops by, for callers that join pieces too big to hold whole (slide blocks)."""
    a = np.asarray(a).astype(np.int64, copy=False).ravel()
    b = np.asarray(b).astype(np.int64, copy=False).ravel()
    base = max(int(a.max(initial=0)), int(b.max(initial=0))) + 1
    ka, kb, counts = _pair_counts(a, b, base)
    if not len(counts):
        return []
    best_of_a, ties_a = _best(ka, kb, counts)
    best_of_b, ties_b = _best(kb, ka, counts)
    return [(int(cell_a), int(cell_b), int(n)) for cell_a, (cell_b, n) in best_of_a.items()
            if best_of_b.get(cell_b, (None,))[0] == cell_a and cell_a not in ties_a and cell_b not in ties_b]


def join_cells(n_nodes: int, offsets, joins) -> tuple[np.ndarray, list[dict]]:
    """Components of ``joins`` ((pixels, node, node, where) with node = offsets[piece] + cell), strongest first, never
    putting two cells of one piece into one cell (``stitch_crops``' contradiction rule); (component per node,
    contradictions)."""
    conflicts: list[dict] = []
    component = _join(int(n_nodes), list(offsets), list(joins), conflicts)
    return component, conflicts
