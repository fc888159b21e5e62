"""Parsing and validating browser parameters, and the context one edit runs in.

Parameters arrive as JSON, so numbers may be floats and flags may be missing; every
reader here either returns a clean Python value or raises EditError naming the field.
Unknown keys are ignored so the API may pass its own bookkeeping through. Every tool
takes "layer" (0 / "whole-cell", the default, or 1 / "nuclear").
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

from .errors import EditError
from .index import next_label_id

LAYER_NAMES = {"whole-cell": 0, "whole_cell": 0, "cell": 0, "nuclear": 1, "nucleus": 1}
MAX_LABEL = np.iinfo(np.int32).max
MAX_RADIUS = 100


def _is_number(value):
    return isinstance(value, Real) and not isinstance(value, bool)


def as_int(value, name):
    """An integer, accepting integral floats (JSON has one number type)."""
    if isinstance(value, bool) or not _is_number(value):
        raise EditError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, Integral):
        return int(value)
    if not math.isfinite(value) or value != int(value):
        raise EditError(f"{name} must be an integer, got {value!r}")
    return int(value)


def int_in(params, key, lo, hi, default=None):
    if key not in params or params[key] is None:
        if default is None:
            raise EditError(f"missing parameter {key!r}")
        return default
    value = as_int(params[key], key)
    if not lo <= value <= hi:
        raise EditError(f"{key} must be in {lo}..{hi}, got {value}")
    return value


def number_in(params, key, lo, hi, default):
    """A finite number in lo..hi (a float); ``default`` when absent or null."""
    value = params.get(key)
    if value is None:
        return float(default)
    if not _is_number(value) or not math.isfinite(value) or not lo <= value <= hi:
        raise EditError(f"{key} must be a number in {lo}..{hi}, got {value!r}")
    return float(value)


def label_param(params, key, required=True, minimum=0):
    """A label id, ``minimum``..int32 max; None when optional and absent or null."""
    if params.get(key) is None:
        if required:
            raise EditError(f"missing parameter {key!r}")
        return None
    value = as_int(params[key], key)
    if value < minimum or value > MAX_LABEL:
        raise EditError(f"{key} must be a label in {minimum}..{MAX_LABEL}, got {value}")
    return value


def flag(params, key, default):
    value = params.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise EditError(f"{key} must be true or false, got {value!r}")
    return value


def connectivity_param(params, default):
    value = int_in(params, "connectivity", 0, 8, default)
    if value not in (4, 8):
        raise EditError(f"connectivity must be 4 or 8, got {value}")
    return value


def point_value(value, shape, name):
    """A (row, col) pair inside ``shape``; fractional canvas coordinates round to nearest."""
    if not isinstance(value, (list, tuple, np.ndarray)) or len(value) != 2:
        raise EditError(f"{name} must be a [row, col] pair, got {value!r}")
    out = []
    for v, size, axis in zip(value, shape, ("row", "col")):
        if isinstance(v, bool) or not _is_number(v) or not math.isfinite(v):
            raise EditError(f"{name} {axis} must be a finite number, got {v!r}")
        i = int(math.floor(v + 0.5))
        if not 0 <= i < size:
            raise EditError(f"{name} {list(value)} lies outside the image ({shape[0]}x{shape[1]})")
        out.append(i)
    return out[0], out[1]


def point_param(params, key, shape):
    if params.get(key) is None:
        raise EditError(f"missing parameter {key!r}")
    return point_value(params[key], shape, key)


def points_param(params, key, shape, minimum=1):
    value = params.get(key)
    if value is None:
        raise EditError(f"missing parameter {key!r}")
    if not isinstance(value, (list, tuple)) or len(value) < minimum:
        raise EditError(f"{key} must be a list of at least {minimum} [row, col] points")
    return np.array([point_value(p, shape, f"{key}[{i}]") for i, p in enumerate(value)],
                    dtype=np.int64).reshape(-1, 2)


def layer_param(params, n_layers):
    value = params.get("layer", 0)
    if isinstance(value, str):
        if value.lower() not in LAYER_NAMES:
            raise EditError(f"unknown layer {value!r}; use 0/1 or 'whole-cell'/'nuclear'")
        value = LAYER_NAMES[value.lower()]
    else:
        value = as_int(value, "layer")
    if not 0 <= value < n_layers:
        raise EditError(f"layer must be in 0..{n_layers - 1}, got {value}")
    return value


class EditContext:
    """Everything one tool call may read: the labels, image, chosen layer and index."""

    def __init__(self, labels, image, params, index, maps=None):
        self.labels = labels
        self.image = image
        self.maps = maps
        self.params = params
        self.index = index
        self.layer_index = layer_param(params, labels.shape[2])
        self.layer = labels[..., self.layer_index]
        self.shape = labels.shape[:2]

    def channel(self, required=True):
        """The chosen image channel as a 2-D view, or None when optional and not given."""
        if self.params.get("channel") is None:
            if required:
                raise EditError("missing parameter 'channel'")
            return None
        if self.image is None:
            raise EditError("this edit needs an image channel but no image was given")
        c = as_int(self.params["channel"], "channel")
        if not 0 <= c < self.image.shape[2]:
            raise EditError(f"channel must be in 0..{self.image.shape[2] - 1}, got {c}")
        return self.image[..., c]

    def bbox(self, label):
        """Box of ``label`` in the layer, or None; via the index when there is one."""
        if self.index is not None:
            return self.index.tight_bbox(self.layer_index, label, self.labels)
        mask = self.layer == label
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size == 0:
            return None
        cols = np.flatnonzero(mask.any(axis=0))
        return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1

    def require_bbox(self, label, key="label"):
        box = self.bbox(label)
        if box is None:
            raise EditError(f"{key} {label} is not in layer {self.layer_index}")
        return box

    def padded(self, box, pad):
        y0, x0, y1, x1 = box
        return (max(y0 - pad, 0), max(x0 - pad, 0),
                min(y1 + pad, self.shape[0]), min(x1 + pad, self.shape[1]))

    def window(self, box):
        y0, x0, y1, x1 = box
        return self.layer[y0:y1, x0:x1]

    def next_id(self):
        if self.index is not None:
            return self.index.next_id(self.labels)
        return next_label_id(self.labels)

    def new_labels(self, count, key_one="new_label", key_many="new_labels"):
        """``count`` ids for new cells: given by the caller, or the next unused ones."""
        given = self.params.get(key_many)
        if given is None and count == 1 and self.params.get(key_one) is not None:
            given = [self.params[key_one]]
        if given is None:
            first = self.next_id()
            if first + count - 1 > MAX_LABEL:
                raise EditError("no label ids left")
            return list(range(first, first + count))
        if not isinstance(given, (list, tuple)) or len(given) != count:
            raise EditError(f"{key_many} must list exactly {count} label ids")
        ids = [label_param({key_many: v}, key_many, minimum=1) for v in given]
        if len(set(ids)) != count:
            raise EditError(f"{key_many} must be distinct")
        return ids

    @staticmethod
    def window_of(array, box):
        y0, x0, y1, x1 = box
        return array[y0:y1, x0:x1]
