"""Per-label bounding boxes, so tools on a large layer touch only the cell they edit.

A long-lived caller (the API holding one task's labels) builds a ``LabelIndex`` once and
feeds it every applied patch. Boxes are half-open ``(y0, x0, y1, x1)``.

Invariant: the box of every label present contains all its pixels, and labels absent from
the layer have no box. A box is tight unless the label is "loose": that happens only when
``update`` is called without the labels array and a label lost pixels while extending
outside the patch, so its new extent cannot be known from the patch alone. Tools only need
a superset box, so loose boxes are safe; ``update(patch, labels)`` keeps every box tight.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .errors import EditError

# find_objects allocates one slot per id up to the maximum; above this, relabel first.
_DIRECT_MAX_ID = 1 << 22


def next_label_id(labels):
    """The next unused label id: one more than the largest id in any layer (1 if empty)."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return 1
    return max(int(labels.max()), 0) + 1


def _layer_boxes(layer):
    if layer.size == 0:
        return {}
    if not np.issubdtype(layer.dtype, np.integer):
        raise EditError(f"labels must hold integers, got {layer.dtype}")
    top = int(layer.max())
    if int(layer.min()) < 0:
        raise EditError("labels must be >= 0")
    if top == 0:
        return {}
    if top <= _DIRECT_MAX_ID:
        ids, objects = None, ndimage.find_objects(layer)
    else:
        ids, inverse = np.unique(layer, return_inverse=True)
        # shift by one so that find_objects, which skips 0, sees every id including ids[0]
        objects = ndimage.find_objects(inverse.reshape(layer.shape).astype(np.int64) + 1)
    boxes = {}
    for position, found in enumerate(objects):
        if found is None:
            continue
        label = position + 1 if ids is None else int(ids[position])
        if label == 0:
            continue
        ys, xs = found
        boxes[label] = (ys.start, xs.start, ys.stop, xs.stop)
    return boxes


def _mask_box(mask, y0, x0):
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return (y0 + int(rows[0]), x0 + int(cols[0]), y0 + int(rows[-1]) + 1, x0 + int(cols[-1]) + 1)


def _distinct(values):
    """Sorted distinct ints of a 1-D array; counting beats sorting when ids are dense."""
    if values.size == 0:
        return []
    lo, hi = int(values.min()), int(values.max())
    if hi - lo <= 4 * values.size + 1024:
        return (np.flatnonzero(np.bincount(values - lo)) + lo).tolist()
    return np.unique(values).tolist()


def _grouped_boxes(values, ys, xs):
    """{label: box} of the pixels (ys, xs) holding ``values``, in one vectorised pass."""
    if values.size == 0:
        return {}
    lo, hi = int(values.min()), int(values.max())
    if hi - lo < 64:
        # few ids, e.g. a large fill: a pass per id beats sorting millions of pixels
        out = {}
        for label in range(lo, hi + 1):
            where = values == label
            if where.any():
                py, px = ys[where], xs[where]
                out[label] = (int(py.min()), int(px.min()), int(py.max()) + 1, int(px.max()) + 1)
        return out
    ids, inverse = np.unique(values, return_inverse=True)
    big = np.iinfo(np.int64).max
    lo_y, lo_x = np.full(len(ids), big), np.full(len(ids), big)
    hi_y, hi_x = np.full(len(ids), -1), np.full(len(ids), -1)
    np.minimum.at(lo_y, inverse, ys)
    np.minimum.at(lo_x, inverse, xs)
    np.maximum.at(hi_y, inverse, ys)
    np.maximum.at(hi_x, inverse, xs)
    return {int(i): (int(a), int(b), int(c) + 1, int(d) + 1)
            for i, a, b, c, d in zip(ids, lo_y, lo_x, hi_y, hi_x)}


def _union(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def _inside(inner, outer):
    return (inner[0] >= outer[0] and inner[1] >= outer[1]
            and inner[2] <= outer[2] and inner[3] <= outer[3])


class LabelIndex:
    """Bounding box of every label, per layer, for one labels array."""

    def __init__(self, boxes, shape):
        self.boxes = boxes
        self.shape = tuple(shape)
        self.loose = [set() for _ in boxes]

    @classmethod
    def build(cls, labels):
        labels = np.asarray(labels)
        if labels.ndim != 3:
            raise EditError(f"labels must be (H, W, layers), got shape {labels.shape}")
        return cls([_layer_boxes(labels[..., k]) for k in range(labels.shape[2])], labels.shape)

    def copy(self):
        twin = LabelIndex([dict(b) for b in self.boxes], self.shape)
        twin.loose = [set(s) for s in self.loose]
        return twin

    def bbox(self, layer, label):
        """The box of ``label`` in ``layer``, or None when the label is absent."""
        return self.boxes[layer].get(int(label))

    def labels(self, layer):
        return set(self.boxes[layer])

    def tight_bbox(self, layer, label, labels):
        """Like ``bbox``, but a loose box is first tightened by scanning only that box."""
        label = int(label)
        box = self.boxes[layer].get(label)
        if box is None or label not in self.loose[layer]:
            return box
        window = np.asarray(labels)[box[0]:box[2], box[1]:box[3], layer] == label
        fresh = _mask_box(window, box[0], box[1])
        self.loose[layer].discard(label)
        if fresh is None:
            del self.boxes[layer][label]
        else:
            self.boxes[layer][label] = fresh
        return fresh

    def update(self, patch, labels=None):
        """Account for ``patch`` once it has been applied.

        ``labels`` (the array after applying) lets shrunken labels get tight boxes by
        rescanning only their old box; without it they may stay loose (see module doc).
        """
        if patch.is_empty:
            return
        layer = patch.layer
        if layer >= len(self.boxes):
            raise EditError(f"patch layer {layer} is not in this index")
        boxes, loose = self.boxes[layer], self.loose[layer]
        y0, x0 = patch.box[0], patch.box[1]
        changed = patch.before != patch.after
        ys, xs = np.nonzero(changed)
        # A label's unchanged pixels are already inside its box, so only changed pixels
        # can extend it.
        for label, grown in _grouped_boxes(patch.after[ys, xs], ys + y0, xs + x0).items():
            if label:
                boxes[label] = _union(boxes.get(label), grown)
        exact, rescan = [], []
        for label in _distinct(patch.before[ys, xs]):
            if label == 0 or label not in boxes:
                continue
            # With no pixels outside the patch box, the patch's after state says everything.
            if _inside(boxes[label], patch.box) and label not in loose:
                exact.append(label)
            elif labels is not None:
                rescan.append(label)
            else:
                loose.add(label)
        if exact:
            ys, xs = np.nonzero(np.isin(patch.after, exact))
            found = _grouped_boxes(patch.after[ys, xs], ys + y0, xs + x0)
            for label in exact:
                self._set(layer, label, found.get(label))
        for label in rescan:
            old = boxes[label]
            window = np.asarray(labels)[old[0]:old[2], old[1]:old[3], layer] == label
            self._set(layer, label, _mask_box(window, old[0], old[1]))

    def _set(self, layer, label, box):
        self.loose[layer].discard(label)
        if box is None:
            self.boxes[layer].pop(label, None)
        else:
            self.boxes[layer][label] = box

    def next_id(self, labels=None):
        """Like ``next_label_id`` but from the index.

        A loose label may have vanished unnoticed; with ``labels`` given, such labels at the
        top are checked within their box so the answer matches a full scan.
        """
        while True:
            top, top_layer = 0, None
            for k, boxes in enumerate(self.boxes):
                if boxes:
                    m = max(boxes)
                    if m > top:
                        top, top_layer = m, k
            if top_layer is None:
                return 1
            loose_in = [k for k, s in enumerate(self.loose) if top in s]
            if labels is None or not loose_in:
                return top + 1
            present = False
            for k in range(len(self.boxes)):
                box = self.boxes[k].get(top)
                if box is None:
                    continue
                if k not in loose_in:
                    present = True
                    break
                window = np.asarray(labels)[box[0]:box[2], box[1]:box[3], k]
                if np.any(window == top):
                    present = True
                    break
                del self.boxes[k][top]
                self.loose[k].discard(top)
            if present:
                return top + 1
