"""Brush tools: paint and erase along a trace.

paint  {"layer", "points": [[y, x], ...], "radius": 1..100, "label": >= 1, "overwrite": false}
erase  {"layer", "points", "radius", "label": optional (absent, null or 0 erases any label)}

The brush covers every pixel whose centre lies within ``radius`` of the polyline through
the points (a single point is a disc), so a fast stroke with sparse mouse samples still
paints a continuous band. Without ``overwrite`` paint only claims background and pixels
already carrying its label, which is DeepCell Label's default "exclude" mode: a stroke
that strays over a neighbour leaves it intact.
"""

from __future__ import annotations

import numpy as np

from .params import MAX_RADIUS, flag, int_in, label_param, points_param
from .patch import Patch


def stroke_mask(points, radius, shape):
    """Box (y0, x0, y1, x1) of the brush trace, clipped to ``shape``, and its mask."""
    r = int(radius)
    y0 = max(int(points[:, 0].min()) - r, 0)
    x0 = max(int(points[:, 1].min()) - r, 0)
    y1 = min(int(points[:, 0].max()) + r + 1, shape[0])
    x1 = min(int(points[:, 1].max()) + r + 1, shape[1])
    mask = np.zeros((y1 - y0, x1 - x0), bool)
    # Work segment by segment on the segment's own box so long strokes stay cheap.
    starts = points if len(points) == 1 else points[:-1]
    ends = points if len(points) == 1 else points[1:]
    limit = r * r + 1e-9
    for (ay, ax), (by, bx) in zip(starts.tolist(), ends.tolist()):
        sy0, sy1 = max(min(ay, by) - r, 0), min(max(ay, by) + r + 1, shape[0])
        sx0, sx1 = max(min(ax, bx) - r, 0), min(max(ax, bx) + r + 1, shape[1])
        py = np.arange(sy0, sy1, dtype=np.float64)[:, None] - ay
        px = np.arange(sx0, sx1, dtype=np.float64)[None, :] - ax
        dy, dx = by - ay, bx - ax
        length2 = dy * dy + dx * dx
        if length2:
            t = np.clip((py * dy + px * dx) / length2, 0.0, 1.0)
            py = py - t * dy
            px = px - t * dx
        mask[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] |= (py * py + px * px) <= limit
    return (y0, x0, y1, x1), mask


def _trace(ctx):
    points = points_param(ctx.params, "points", ctx.shape)
    radius = int_in(ctx.params, "radius", 1, MAX_RADIUS)
    return stroke_mask(points, radius, ctx.shape)


def paint(ctx):
    label = label_param(ctx.params, "label", minimum=1)
    overwrite = flag(ctx.params, "overwrite", False)
    box, mask = _trace(ctx)
    before = ctx.window(box)
    if not overwrite:
        mask &= (before == 0) | (before == label)
    after = before.copy()
    after[mask] = label
    return Patch.from_windows(ctx.layer_index, box[0], box[1], before, after)


def erase(ctx):
    label = label_param(ctx.params, "label", required=False)
    box, mask = _trace(ctx)
    before = ctx.window(box)
    if label:
        mask &= before == label
    after = before.copy()
    after[mask] = 0
    return Patch.from_windows(ctx.layer_index, box[0], box[1], before, after)
