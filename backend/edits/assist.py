"""Model-assisted tools: cells drawn from the maps of the model that prelabelled the crop.

The maps are an ``(H, W, 4)`` array beside the labels (``MAP_CHANNELS``: whole-cell inner distance, whole-cell
interior probability, nuclear inner distance, nuclear interior probability), uint8 (value / 255) as stored or
float in [0, 1]. Layer 0 reads the whole-cell pair, layer 1 the nuclear pair. The server passes them to
``apply_edit`` the way it passes the image; a task without maps has no assist tools.

assist_click  {"layer", "point": [y, x], "overwrite": false, "new_label": optional unused id}
    One cell from the maps at the click: marker watershed of the inner distance (markers: its h-maxima, plus
    the click when no marker reaches it) inside the interior probability above a threshold found from the
    maps (a fixed fraction of the smoothed interior's peak at the click, so a faint cell the prelabel missed
    comes out as whole as a confident one), in a window around the click that grows until the cell fits. On background it makes a new
    cell; inside a cell it redraws that cell (same id) as the model's cell at the click. Without
    ``overwrite`` (DeepCell Label's "exclude" mode) the cell takes only background and its own pixels.
assist_box    {"layer", "box": [y0, x0, y1, x1], "sensitivity": 0..1 (default 0.5), "overwrite": false}
    Re-segment a region: every cell with most of its pixels inside the box is removed and the model's
    segmentation of the box takes its place. ``sensitivity`` moves the interior threshold and the h of the
    h-maxima markers together: higher finds more, smaller cells (fixes a merge), lower fewer, larger ones
    (fixes a split); 0.5 is the model's own setting. New cells reuse the removed ids by largest overlap
    (so a nucleus keeps its cell's id), then the next unused ones. Cells that stay are never overwritten
    unless ``overwrite``.
assist_accept {"layer", "point": [y, x], "overwrite": false, "new_label": optional}
    Restore the cell the model proposed here at its own thresholds, with the prelabel's size cut lifted
    (a small cell the prelabel dropped, or one an annotator deleted). The point must be on background.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.morphology import local_maxima, reconstruction
from skimage.segmentation import watershed

from .errors import EditError
from .params import flag, number_in, point_param
from .patch import Patch

MAP_CHANNELS = ("whole-cell distance", "whole-cell interior", "nuclear distance", "nuclear interior")
# the model's own deep-watershed settings (pipeline.model.postprocess defaults) that sensitivity 0.5 reproduces
MODEL_INTERIOR_THRESHOLD = 0.2
MODEL_MAXIMA = (0.075, 0.1)  # whole-cell, nuclear
INTERIOR_SMOOTH = 2.0  # as the model's own post-processing: the smoothed interior reaches over the border
MIN_CELL_PX = 15
CLICK_LEVEL = 0.3      # click: the mask is the smoothed interior above this fraction of its peak at the click
CLICK_MIN_PEAK = 0.04  # ... and below this peak the model sees no cell there
_FIRST_HALF = 24
_MAX_HALF = 512
_CONTEXT = 6  # pixels of map read around a window so smoothing sees past its edge
_FOUR = ndimage.generate_binary_structure(2, 1)


def _check_maps(ctx):
    maps = ctx.maps
    if maps is None:
        raise EditError("this task has no model maps, so the assist tools are off "
                        "(it was not prelabelled by a Mesmer model)")
    return maps


def _maps_window(ctx, box):
    """(distance, interior) float32 of the layer's two maps inside ``box``."""
    maps = _check_maps(ctx)
    y0, x0, y1, x1 = box
    pair = maps[y0:y1, x0:x1, 2 * ctx.layer_index:2 * ctx.layer_index + 2]
    pair = pair.astype(np.float32)
    if maps.dtype == np.uint8:
        pair *= np.float32(1 / 255)
    return pair[..., 0], pair[..., 1]


def _segment(dist, interior, interior_threshold, h):
    """Marker watershed of one window: labels 1..n (int32), and the smoothed interior.

    Markers are the peaks of the inner distance whose dynamic is at least ``h`` (the regional maxima of its
    reconstruction from ``dist - h``: two peaks joined by a saddle less than ``h`` below the lower one make one
    marker, ties included); a piece of the mask that no marker reaches is a cell of its own, so ``h`` decides
    how cells split and the interior threshold which cells exist.
    """
    smooth = ndimage.gaussian_filter(interior, INTERIOR_SMOOTH, truncate=3.0)
    mask = smooth > interior_threshold
    if not mask.any():
        return np.zeros(dist.shape, np.int32), smooth
    inside = np.where(mask, dist, 0).astype(np.float64)
    rec = reconstruction(inside - h, inside, method="dilation")
    peaks = local_maxima(rec, connectivity=2, allow_borders=True) & mask
    markers, n = ndimage.label(peaks, structure=np.ones((3, 3), bool))
    pieces, n_pieces = ndimage.label(mask, _FOUR)
    reached = np.zeros(n_pieces + 1, bool)
    reached[pieces[peaks]] = True
    lonely = ~reached[pieces] & mask
    if lonely.any():
        markers[lonely] = n + pieces[lonely]
    return watershed(-dist, markers, mask=mask, connectivity=1).astype(np.int32), smooth


def box_settings(sensitivity, layer):
    """(interior threshold, h of the markers) for a sensitivity; 0.5 gives the model's own settings."""
    s = float(sensitivity)
    interior = MODEL_INTERIOR_THRESHOLD * (4.0 ** (1.0 - 2.0 * s))  # 0.8 .. 0.05, 0.2 at 0.5
    h = MODEL_MAXIMA[min(layer, 1)] * (8.0 ** (1.0 - 2.0 * s))      # 8x .. 1/8x of the model's
    return min(interior, 0.9), h


def _window(ctx, point, half):
    py, px = point
    h, w = ctx.shape
    return (max(py - half, 0), max(px - half, 0), min(py + half + 1, h), min(px + half + 1, w))


def _touches_inner_edge(cell, box, shape):
    return ((box[0] > 0 and cell[0].any()) or (box[2] < shape[0] and cell[-1].any())
            or (box[1] > 0 and cell[:, 0].any()) or (box[3] < shape[1] and cell[:, -1].any()))


def _cell_at(ctx, point, box, settings):
    """The model's cell containing ``point`` in ``box``, as a mask over ``box`` (None: no cell there). The maps
    are read with a margin of context, so the smoothing sees past the window's edge."""
    outer = ctx.padded(box, _CONTEXT)
    cell = _cell_in(ctx, (point[0] - outer[0], point[1] - outer[1]), outer, settings)
    if cell is None:
        return None
    oy, ox = box[0] - outer[0], box[1] - outer[1]
    return cell[oy:oy + box[2] - box[0], ox:ox + box[3] - box[1]]


def _cell_in(ctx, local, box, settings):
    dist, interior = _maps_window(ctx, box)
    ly, lx = local
    if settings is None:  # click: threshold from the maps around the click
        smooth = ndimage.gaussian_filter(interior, INTERIOR_SMOOTH, truncate=3.0)
        near = smooth[max(ly - 3, 0):ly + 4, max(lx - 3, 0):lx + 4]
        peak = float(near.max())
        if peak < CLICK_MIN_PEAK:
            return None
        # the cell's own confidence sets the level: a faint cell the prelabel missed comes out as whole as
        # a bright one
        threshold = CLICK_LEVEL * peak
        h = MODEL_MAXIMA[min(ctx.layer_index, 1)]
    else:
        threshold, h = settings
    segments, smooth = _segment(dist, interior, threshold, h)
    at = segments[ly, lx]
    if at == 0:
        if smooth[ly, lx] <= threshold:
            return None
        # no marker reached the click: its piece of the mask is the cell, seeded from the click
        pieces, _ = ndimage.label(smooth > threshold, _FOUR)
        return (pieces == pieces[ly, lx]) & (segments == 0)
    return segments == at


def _grow_cell(ctx, point, settings, extra_box=None):
    """(box, cell mask) with a window grown until the cell does not reach an inner window edge."""
    half = _FIRST_HALF
    while True:
        box = _window(ctx, point, half)
        if extra_box is not None:
            box = (min(box[0], extra_box[0]), min(box[1], extra_box[1]),
                   max(box[2], extra_box[2]), max(box[3], extra_box[3]))
        cell = _cell_at(ctx, point, box, settings)
        if cell is None or half >= _MAX_HALF or not _touches_inner_edge(cell, box, ctx.shape):
            return box, cell
        half *= 4


def _keep_piece(mask, local_point):
    """The 4-connected piece of ``mask`` holding the point, else its largest piece."""
    pieces, n = ndimage.label(mask, _FOUR)
    if n <= 1:
        return mask
    at = pieces[local_point]
    if at == 0:
        at = int(np.argmax(np.bincount(pieces.ravel())[1:])) + 1
    return pieces == at


def _draw_cell(ctx, point, settings, accept=False):
    overwrite = flag(ctx.params, "overwrite", False)
    under = int(ctx.layer[point])
    if accept and under:
        raise EditError(f"point {list(point)} is inside cell {under}; accept restores a cell on background "
                        f"(assist click redraws an existing one)")
    old_box = ctx.require_bbox(under) if under else None
    box, cell = _grow_cell(ctx, point, settings, old_box)
    if cell is None:
        raise EditError(f"the model sees no cell at {list(point)}")
    before = ctx.window(box)
    label = under or ctx.new_labels(1)[0]
    if not under and ctx.bbox(label) is not None:
        raise EditError(f"new_label {label} is already used in layer {ctx.layer_index}")
    allowed = np.ones(cell.shape, bool) if overwrite else (before == 0) | (before == label)
    local = (point[0] - box[0], point[1] - box[1])
    cell = _keep_piece(cell & allowed, local)
    if not cell.any():
        raise EditError(f"the model's cell at {list(point)} lies under other cells (exclude mode)")
    # holes filled, but a filled hole behind another cell's pixels would be a second piece: keep one
    cell = _keep_piece(ndimage.binary_fill_holes(cell) & allowed, local)
    after = before.copy()
    if under:
        after[before == under] = 0
    after[cell] = label
    return Patch.from_windows(ctx.layer_index, box[0], box[1], before, after)


def assist_click(ctx):
    point = point_param(ctx.params, "point", ctx.shape)
    return _draw_cell(ctx, point, None)


def assist_accept(ctx):
    point = point_param(ctx.params, "point", ctx.shape)
    return _draw_cell(ctx, point, (MODEL_INTERIOR_THRESHOLD, MODEL_MAXIMA[min(ctx.layer_index, 1)]), accept=True)


def assist_box(ctx):
    from .segment import _box_param

    box = _box_param(ctx)
    sensitivity = number_in(ctx.params, "sensitivity", 0.0, 1.0, 0.5)
    overwrite = flag(ctx.params, "overwrite", False)
    threshold, h = box_settings(sensitivity, ctx.layer_index)
    # the model's segmentation of the box, computed with a little context so the edge does not bend it
    outer = ctx.padded(box, _CONTEXT)
    dist, interior = _maps_window(ctx, outer)
    segments, _ = _segment(dist, interior, threshold, h)
    iy, ix = box[0] - outer[0], box[1] - outer[1]
    segments = segments[iy:iy + box[2] - box[0], ix:ix + box[3] - box[1]]
    inside = ctx.window(box)
    ids, counts = np.unique(inside[inside > 0], return_counts=True)
    removed, work = [], box
    for label, count in zip(ids.tolist(), counts.tolist()):
        cell_box = ctx.require_bbox(label)
        whole = int(np.count_nonzero(ctx.window(cell_box) == label))
        if 2 * count > whole:
            removed.append(label)
            work = (min(work[0], cell_box[0]), min(work[1], cell_box[1]),
                    max(work[2], cell_box[2]), max(work[3], cell_box[3]))
    before = ctx.window(work)
    after = before.copy()
    if removed:
        after[np.isin(before, removed)] = 0
    oy, ox = box[0] - work[0], box[1] - work[1]
    region = after[oy:oy + box[2] - box[0], ox:ox + box[3] - box[1]]  # a view into ``after``
    free = np.ones(region.shape, bool) if overwrite else region == 0
    if overwrite:
        region[...] = 0
    seg = np.where(free, segments, 0)
    sizes = np.bincount(seg.ravel())
    sizes[0] = 0
    keep = np.flatnonzero(sizes >= MIN_CELL_PX)
    if keep.size == 0:
        return Patch.from_windows(ctx.layer_index, work[0], work[1], before, after)
    # reuse removed ids where a new cell covers most of an old one, largest overlaps first
    pairs = {}
    for s in keep.tolist():
        where = seg == s
        olds, n = np.unique(inside[where], return_counts=True)
        for o, c in zip(olds.tolist(), n.tolist()):
            if o in removed:
                pairs[(s, o)] = c
    mapping, used = {}, set()
    for (s, o), _ in sorted(pairs.items(), key=lambda kv: -kv[1]):
        if s not in mapping and o not in used:
            mapping[s] = o
            used.add(o)
    fresh = [s for s in keep.tolist() if s not in mapping]
    if fresh:
        first = ctx.next_id()
        for k, s in enumerate(fresh):
            mapping[s] = first + k
    lut = np.zeros(int(seg.max()) + 1, np.int32)
    for s, label in mapping.items():
        lut[s] = label
    new = lut[seg]
    region[new > 0] = new[new > 0]
    return Patch.from_windows(ctx.layer_index, work[0], work[1], before, after)
