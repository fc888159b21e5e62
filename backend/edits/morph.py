"""Grow and shrink one label by n pixels without touching any other label.

grow   {"layer", "label": >= 1, "n": 1..100}
    Background pixels within Euclidean distance n of the cell join it, if they connect
    (4-connected, through background) to the cell, so growth never jumps over a neighbour.
shrink {"layer", "label": >= 1, "n": 1..100}
    Cell pixels within distance n of anything that is not the cell become background. The
    image border does not erode a cell: on a crop it is an arbitrary cut, not a boundary.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .params import MAX_RADIUS, int_in, label_param
from .patch import Patch

_FOUR = ndimage.generate_binary_structure(2, 1)


def grow(ctx):
    label = label_param(ctx.params, "label", minimum=1)
    n = int_in(ctx.params, "n", 1, MAX_RADIUS)
    box = ctx.padded(ctx.require_bbox(label), n)
    before = ctx.window(box)
    cell = before == label
    near = ndimage.distance_transform_edt(~cell) <= n
    candidate = near & ((before == 0) | cell)
    pieces, _ = ndimage.label(candidate, _FOUR)
    attached = np.unique(pieces[cell])
    joined = np.isin(pieces, attached[attached > 0]) & (before == 0)
    after = before.copy()
    after[joined] = label
    return Patch.from_windows(ctx.layer_index, box[0], box[1], before, after)


def shrink(ctx):
    label = label_param(ctx.params, "label", minimum=1)
    n = int_in(ctx.params, "n", 1, MAX_RADIUS)
    box = ctx.padded(ctx.require_bbox(label), 1)
    before = ctx.window(box)
    cell = before == label
    h, w = ctx.shape
    # Pad with "cell" on sides that are the image border, so that border never erodes.
    pads = ((n if box[0] == 0 else 0, n if box[2] == h else 0),
            (n if box[1] == 0 else 0, n if box[3] == w else 0))
    padded = np.pad(cell, pads, constant_values=True)
    depth = ndimage.distance_transform_edt(padded)
    depth = depth[pads[0][0]:pads[0][0] + cell.shape[0], pads[1][0]:pads[1][0] + cell.shape[1]]
    after = before.copy()
    after[cell & (depth <= n)] = 0
    return Patch.from_windows(ctx.layer_index, box[0], box[1], before, after)
