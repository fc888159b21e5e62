"""Tools on connected regions: flood fill and trim.

flood {"layer", "point": [y, x], "label": >= 0, "connectivity": 4 (default) or 8}
    The connected region of equal value under the point takes ``label`` (fill a hole or a
    background pocket, or recolour one piece of a cell). Label 0 clears the region.
trim  {"layer", "point": [y, x], "label": optional, "connectivity": 8 (default) or 4}
    Keep only the connected piece of the label under the point; its other pieces become
    background. With ``label`` and no point, the largest piece is kept (ties: the one
    first in row-major order). 8-connectivity by default so that diagonal touches, which
    are part of a drawn outline, are not trimmed away.

flood works in a window around the point that grows (x4 per side) until the region no longer
reaches an inner window edge, so filling a hole costs what the hole costs; filling the
background of a whole image is inherently a whole-image edit.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.segmentation import flood as _flood

from .errors import EditError
from .params import connectivity_param, label_param, point_param
from .patch import Patch

_FIRST_HALF_WIDTH = 32

STRUCTURES = {4: ndimage.generate_binary_structure(2, 1),
              8: ndimage.generate_binary_structure(2, 2)}


def flood(ctx):
    py, px = point_param(ctx.params, "point", ctx.shape)
    label = label_param(ctx.params, "label")
    connectivity = connectivity_param(ctx.params, 4)
    if ctx.layer[py, px] == label:
        return Patch.empty(ctx.layer_index)
    h, w = ctx.shape
    half = _FIRST_HALF_WIDTH
    while True:
        box = (max(py - half, 0), max(px - half, 0), min(py + half + 1, h), min(px + half + 1, w))
        before = ctx.window(box)
        region = _flood(before, (py - box[0], px - box[1]),
                        connectivity=1 if connectivity == 4 else 2)
        # The region is complete unless it reaches an edge of the window that is not
        # an edge of the image: it may continue beyond.
        escapes = ((box[0] > 0 and region[0].any()) or (box[2] < h and region[-1].any())
                   or (box[1] > 0 and region[:, 0].any()) or (box[3] < w and region[:, -1].any()))
        if not escapes:
            break
        # grow fast: the rounds before the last then cost a small fraction of it; once a window
        # would hold an eighth of the layer, take the whole layer rather than pay for both
        half *= 4
        if (2 * half + 1) ** 2 * 8 > h * w:
            half = max(h, w)
    after = before.copy()
    after[region] = label
    # every region pixel held the point's value, which differs from label
    return Patch.from_windows(ctx.layer_index, box[0], box[1], before, after, changed=region)


def trim(ctx):
    label = label_param(ctx.params, "label", required=False, minimum=1)
    connectivity = connectivity_param(ctx.params, 8)
    point = None
    if ctx.params.get("point") is not None:
        point = point_param(ctx.params, "point", ctx.shape)
        under = int(ctx.layer[point])
        if under == 0:
            raise EditError(f"point {list(point)} is on background; trim needs a cell")
        if label is not None and label != under:
            raise EditError(f"point {list(point)} holds label {under}, not {label}")
        label = under
    elif label is None:
        raise EditError("trim needs a 'point' (or a 'label')")
    box = ctx.require_bbox(label)
    before = ctx.window(box)
    mask = before == label
    pieces, count = ndimage.label(mask, STRUCTURES[connectivity])
    if count <= 1:
        return Patch.empty(ctx.layer_index)
    if point is not None:
        keep = pieces[point[0] - box[0], point[1] - box[1]]
    else:
        keep = int(np.argmax(np.bincount(pieces.ravel())[1:])) + 1
    after = before.copy()
    after[mask & (pieces != keep)] = 0
    return Patch.from_windows(ctx.layer_index, box[0], box[1], before, after)
