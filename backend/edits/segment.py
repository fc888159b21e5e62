"""Tools that draw boundaries from the image: split, threshold, autofit.

split     {"layer", "seeds": [[y, x], [y, x], ...] (>= 2, all in one cell), "label": optional
           (checked against the seeds), "channel": optional, "invert": false,
           "new_labels": optional list of len(seeds) - 1 unused ids ("new_label" for two seeds)}
    Seeded watershed inside the cell. With a channel, bright pixels are basins (seeds sit
    on nuclei of a nuclear channel); ``invert`` makes bright pixels ridges instead (seeds
    in cells divided by a bright membrane). Without a channel, the cell's distance
    transform, so the cut follows its narrowest waist. The first seed keeps the label, the
    others get new ids. Every pixel of the cell ends up in one of the parts; when the cell
    is connected, each part is a connected region.
threshold {"layer", "box": [y0, x0, y1, x1] (half-open, corners in any order), "channel",
           "label": optional (default: next unused id), "largest": true}
    Otsu threshold of the channel inside the box; bright background pixels take the label
    (cells are never overwritten; a given existing ``label`` extends that cell). ``largest``
    keeps only the largest 4-connected piece so the new cell is one object.
autofit   {"layer", "label", "channel", "margin": 1..100 (default 3)}
    Snap the cell to nearby edges: a marker watershed on the gradient of the smoothed
    channel, between the cell's core (the cell eroded by ``margin``) and the ring beyond
    ``margin`` pixels outside it. Only this cell and background change.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import sobel, threshold_otsu
from skimage.segmentation import watershed

from .errors import EditError
from .params import MAX_RADIUS, flag, int_in, label_param, point_value, points_param
from .patch import Patch

_FOUR = ndimage.generate_binary_structure(2, 1)
_AUTOFIT_SIGMA = 1.0
_AUTOFIT_KERNEL_PAD = 2 + int(4 * _AUTOFIT_SIGMA + 0.5) + 1  # ring + gaussian + sobel reach


def split(ctx):
    seeds = points_param(ctx.params, "seeds", ctx.shape, minimum=2)
    if len({tuple(s) for s in seeds.tolist()}) != len(seeds):
        raise EditError("split seeds must be distinct pixels")
    under = {int(ctx.layer[y, x]) for y, x in seeds.tolist()}
    if under == {0}:
        raise EditError("split seeds are on background")
    if len(under) != 1:
        raise EditError(f"split seeds must all lie in one cell, they hit labels {sorted(under)}")
    label = under.pop()
    given = label_param(ctx.params, "label", required=False, minimum=1)
    if given is not None and given != label:
        raise EditError(f"split seeds lie in label {label}, not {given}")
    channel = ctx.channel(required=False)
    invert = flag(ctx.params, "invert", False)
    new_ids = ctx.new_labels(len(seeds) - 1)
    if label in new_ids:
        raise EditError(f"new label ids must differ from the split label {label}")
    taken = [i for i in new_ids if ctx.bbox(i) is not None]
    if taken:
        raise EditError(f"new label ids {taken} are already used in layer {ctx.layer_index}")

    # One pixel of margin so the distance transform sees the cell's edge on every side.
    box = ctx.padded(ctx.require_bbox(label), 1)
    before = ctx.window(box)
    cell = before == label
    markers = np.zeros(cell.shape, np.int32)
    local = seeds - np.array(box[:2])
    markers[local[:, 0], local[:, 1]] = np.arange(1, len(seeds) + 1)
    if channel is None:
        surface = -ndimage.distance_transform_edt(cell)
    else:
        surface = np.asarray(ctx.window_of(channel, box), np.float64)
        if not invert:
            surface = -surface
    parts = watershed(surface, markers, mask=cell, connectivity=1)
    unreached = cell & (parts == 0)
    if unreached.any():
        # Pieces of a disconnected cell without a seed join the nearest part.
        _, nearest = ndimage.distance_transform_edt(parts == 0, return_indices=True)
        parts[unreached] = parts[nearest[0][unreached], nearest[1][unreached]]
    ids = np.array([label] + new_ids, np.int32)
    after = before.copy()
    after[cell] = ids[parts[cell] - 1]
    return Patch.from_windows(ctx.layer_index, box[0], box[1], before, after)


def _box_param(ctx):
    value = ctx.params.get("box")
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise EditError("box must be [y0, x0, y1, x1]")
    h, w = ctx.shape
    # Half-open: the far corner may sit on the image edge, so check it against size + 1.
    try:
        a = point_value(value[:2], (h + 1, w + 1), "box corner")
        b = point_value(value[2:], (h + 1, w + 1), "box corner")
    except EditError:
        raise EditError(f"box {list(value)} must be a half-open box "
                        f"inside the image ({h}x{w})") from None
    y0, y1 = sorted((a[0], b[0]))
    x0, x1 = sorted((a[1], b[1]))
    if y1 - y0 < 2 or x1 - x0 < 2:
        raise EditError("box must be at least 2x2 pixels")
    return y0, x0, y1, x1


def threshold(ctx):
    box = _box_param(ctx)
    channel = ctx.channel()
    largest = flag(ctx.params, "largest", True)
    given = label_param(ctx.params, "label", required=False, minimum=1)
    values = np.asarray(ctx.window_of(channel, box), np.float64)
    if not np.isfinite(values).all():
        raise EditError("channel holds non-finite values inside the box")
    if values.min() == values.max():
        return Patch.empty(ctx.layer_index)
    before = ctx.window(box)
    fresh = (values > threshold_otsu(values)) & (before == 0)
    if largest and fresh.any():
        pieces, _ = ndimage.label(fresh, _FOUR)
        fresh = pieces == int(np.argmax(np.bincount(pieces.ravel())[1:])) + 1
    if not fresh.any():
        return Patch.empty(ctx.layer_index)
    label = given if given is not None else ctx.new_labels(1)[0]
    after = before.copy()
    after[fresh] = label
    return Patch.from_windows(ctx.layer_index, box[0], box[1], before, after)


def autofit(ctx):
    label = label_param(ctx.params, "label", minimum=1)
    channel = ctx.channel()
    margin = int_in(ctx.params, "margin", 1, MAX_RADIUS, 3)
    # Room for the smoothing and gradient kernels, so the window's edge cannot bend the fit.
    box = ctx.padded(ctx.require_bbox(label), margin + _AUTOFIT_KERNEL_PAD)
    before = ctx.window(box)
    cell = before == label
    allowed = cell | (before == 0)
    region = allowed & (ndimage.distance_transform_edt(~cell) <= margin)
    depth = ndimage.distance_transform_edt(cell)
    core = depth > margin
    if not core.any():
        core = depth >= depth.max()
    markers = np.zeros(cell.shape, np.int32)
    markers[allowed & ~region] = 2
    markers[core] = 1
    values = np.asarray(ctx.window_of(channel, box), np.float64)
    gradient = sobel(ndimage.gaussian_filter(values, _AUTOFIT_SIGMA))
    fitted = watershed(gradient, markers, mask=allowed, connectivity=1) == 1
    after = before.copy()
    after[region & cell & ~fitted] = 0
    after[region & ~cell & fitted] = label
    return Patch.from_windows(ctx.layer_index, box[0], box[1], before, after)
