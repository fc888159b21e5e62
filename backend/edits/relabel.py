"""Tools that rename whole labels.

merge  {"layer", "a": >= 1, "b": >= 1}   every pixel of b becomes a ("replace" in DeepCell Label)
swap   {"layer", "a": >= 1, "b": >= 1}   a and b exchange pixels
delete {"layer", "label": >= 1}          the label becomes background

Each works only inside the label's bounding box (from the index when given). merge and
delete need their source label to exist; swap needs at least one of the two.
"""

from __future__ import annotations

import numpy as np

from .errors import EditError
from .index import _union
from .params import label_param
from .patch import Patch


def _patch(ctx, box, after_of):
    before = ctx.window(box)
    return Patch.from_windows(ctx.layer_index, box[0], box[1], before, after_of(before))


def merge(ctx):
    a = label_param(ctx.params, "a", minimum=1)
    b = label_param(ctx.params, "b", minimum=1)
    box = ctx.require_bbox(b, "b")
    if a == b:
        return Patch.empty(ctx.layer_index)
    return _patch(ctx, box, lambda w: np.where(w == b, a, w).astype(np.int32))


def swap(ctx):
    a = label_param(ctx.params, "a", minimum=1)
    b = label_param(ctx.params, "b", minimum=1)
    box = _union(ctx.bbox(a), ctx.bbox(b))
    if box is None:
        raise EditError(f"neither {a} nor {b} is in layer {ctx.layer_index}")
    if a == b:
        return Patch.empty(ctx.layer_index)

    def swapped(w):
        out = w.copy()
        out[w == a] = b
        out[w == b] = a
        return out
    return _patch(ctx, box, swapped)


def delete(ctx):
    label = label_param(ctx.params, "label", minimum=1)
    box = ctx.require_bbox(label)
    return _patch(ctx, box, lambda w: np.where(w == label, 0, w).astype(np.int32))
