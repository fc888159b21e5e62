"""What one request may ask of the server, checked before any work starts: body sizes per route, and the
size of one edit (points per stroke, stroke length, brush work, box area, seeds).

A crowd link is anonymous, so every cap is about what a single request can cost a worker: the largest
legitimate edit (the editor sends at most 2,000 points per request; a stroke at 2048² with the largest brush)
must pass, while a request built to hold a worker for seconds gets a 413 that says which cap it hit. Only the
parameters each tool knows are kept, so the revision log never stores a client's extra fields.
"""
from __future__ import annotations

import math
import re
from numbers import Real

from flask import abort, request

from backend.edits.params import MAX_RADIUS

# bodies: JSON everywhere except label uploads, which are sized to their task (see label_upload_limit)
JSON_BODY_BYTES = 64 * 1024
EDIT_BODY_BYTES = 1024 * 1024
EDIT_ENDPOINTS = frozenset({"crowd.edit", "review.edit", "crowd.preview", "review.preview"})

MAX_STROKE_POINTS = 5000
# total stroke length in pixels: 20 px per point at the point cap, more on tasks large enough to need it
MIN_STROKE_LENGTH_CAP = 100_000
STROKE_LENGTH_PER_SIDE = 32
# pixels the brush visits (sum of each segment's box): ~13 ns each, so the cap bounds one stroke to ~1.5 s
MAX_STROKE_WORK = 100_000_000
MAX_BOX_PIXELS = 2048 * 2048
MAX_SPLIT_SEEDS = 64
MAX_COORDINATE = 2**31 - 1
# the parts of one long stroke name it: they are one undo step (backend.tasks.revisions)
STROKE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

_COMMON = ("layer",)
KNOWN_PARAMS: dict[str, frozenset[str]] = {tool: frozenset(_COMMON + extra) for tool, extra in {
    "paint": ("points", "radius", "label", "overwrite", "stroke"),
    "erase": ("points", "radius", "label", "stroke"),
    "flood": ("point", "label", "connectivity"),
    "trim": ("point", "label", "connectivity"),
    "merge": ("a", "b"),
    "swap": ("a", "b"),
    "delete": ("label",),
    "split": ("seeds", "label", "channel", "invert", "new_label", "new_labels"),
    "threshold": ("box", "channel", "largest", "label", "new_label", "new_labels"),
    "autofit": ("label", "channel", "margin"),
    "grow": ("label", "n"),
    "shrink": ("label", "n"),
    "assist_click": ("point", "overwrite", "new_label"),
    "assist_accept": ("point", "overwrite", "new_label"),
    "assist_box": ("box", "sensitivity", "overwrite"),
}.items()}


class TooLarge(Exception):
    """A request over one of the caps (the API answers 413 with this message)."""


def cap_request_body() -> None:
    """before_request: refuse an oversized body from its Content-Length, before a byte of it is read; the same
    limit bounds a body sent without a length (chunked) while it streams in."""
    if request.endpoint in EDIT_ENDPOINTS:
        limit = EDIT_BODY_BYTES
    elif request.endpoint == "review.upload_labels":
        return  # sized to the task by the view itself, once it knows the task
    else:
        limit = JSON_BODY_BYTES
    enforce_body_limit(limit)


def enforce_body_limit(limit: int) -> None:
    request.max_content_length = limit
    if request.content_length is not None and request.content_length > limit:
        abort(413, description=f"request body of {request.content_length} bytes is over this route's limit "
                               f"of {limit} bytes")


def label_upload_limit(shape: tuple[int, int]) -> int:
    """Bytes a gzip .npy of (H, W, 2) labels may take: the widest allowed dtype raw, plus header and gzip
    framing (gzip never grows data by more than a small fraction)."""
    raw = shape[0] * shape[1] * 2 * 8
    return raw + raw // 100 + 64 * 1024


def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if isinstance(value, int):
        if abs(value) > MAX_COORDINATE:
            raise ValueError(f"{name} {value} is out of range")
        return float(value)
    if not math.isfinite(value) or abs(value) > MAX_COORDINATE:
        raise ValueError(f"{name} must be a finite number in range, got {value!r}")
    return float(value)


def _points(value, name: str) -> list[tuple[float, float]]:
    if not isinstance(value, list):
        raise ValueError(f"{name} must be a list of [row, col] points")
    if len(value) > MAX_STROKE_POINTS:
        raise TooLarge(f"{name} has {len(value)} points; a stroke may have at most {MAX_STROKE_POINTS} "
                       f"(send a longer stroke as several edits)")
    out = []
    for i, p in enumerate(value):
        if not isinstance(p, list) or len(p) != 2:
            raise ValueError(f"{name}[{i}] must be a [row, col] pair")
        out.append((_number(p[0], f"{name}[{i}] row"), _number(p[1], f"{name}[{i}] col")))
    return out


def _stroke_cost(points: list[tuple[float, float]], radius: float) -> tuple[float, float]:
    """(length in pixels, pixels the brush visits) of a polyline stroke."""
    side = 2 * radius + 1
    if len(points) == 1:
        return 0.0, side * side
    length = work = 0.0
    for (ay, ax), (by, bx) in zip(points, points[1:]):
        dy, dx = abs(by - ay), abs(bx - ax)
        length += math.hypot(dy, dx)
        work += (dy + side) * (dx + side)
    return length, work


def check_edit(tool: str, params: dict, shape: tuple[int, int]) -> dict:
    """The params of an edit request with only the keys ``tool`` knows, after the cost caps: ValueError (400)
    for a malformed value the caps need to read, TooLarge (413) for a request over a cap. Everything else
    (ranges, labels, points inside the image) is the edit engine's to check."""
    known = KNOWN_PARAMS.get(tool)
    if known is None:
        return params  # the engine answers with the list of tools
    kept = {k: v for k, v in params.items() if k in known}
    if "points" in kept:
        points = _points(kept["points"], "points")
        radius = kept.get("radius", 1)
        radius = _number(radius, "radius") if radius is not None else 1.0
        # the engine refuses radii outside 1..MAX_RADIUS itself; clamp so its message, not ours, is seen
        length, work = _stroke_cost(points, min(max(radius, 0.0), MAX_RADIUS))
        max_length = max(MIN_STROKE_LENGTH_CAP, STROKE_LENGTH_PER_SIDE * (shape[0] + shape[1]))
        if length > max_length:
            raise TooLarge(f"stroke is {length:.0f} px long; at most {max_length} px on this task "
                           f"(send it as several edits)")
        if work > MAX_STROKE_WORK:
            raise TooLarge(f"this stroke would cover {work:.0f} brush pixels, over the limit of "
                           f"{MAX_STROKE_WORK}: use a smaller brush or a shorter stroke")
    if "stroke" in kept and kept["stroke"] is not None and not (
            isinstance(kept["stroke"], str) and STROKE_ID.match(kept["stroke"])):
        raise ValueError("stroke must be 1-64 letters, digits, _ or - (the id shared by the parts of one stroke)")
    if "seeds" in kept:
        seeds = _points(kept["seeds"], "seeds")
        if len(seeds) > MAX_SPLIT_SEEDS:
            raise TooLarge(f"a split takes at most {MAX_SPLIT_SEEDS} seeds, got {len(seeds)}")
    if isinstance(kept.get("point"), list) and len(kept["point"]) == 2:
        _points([kept["point"]], "point")
    if isinstance(kept.get("box"), list) and len(kept["box"]) == 4:
        y0, x0, y1, x1 = (_number(v, "box corner") for v in kept["box"])
        area = abs(y1 - y0) * abs(x1 - x0)
        if area > MAX_BOX_PIXELS:
            raise TooLarge(f"box covers {area:.0f} pixels; at most {MAX_BOX_PIXELS}")
    if isinstance(kept.get("new_labels"), list) and len(kept["new_labels"]) > MAX_SPLIT_SEEDS:
        raise TooLarge(f"new_labels may list at most {MAX_SPLIT_SEEDS} ids")
    return kept
