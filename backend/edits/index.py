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
        gained = np.unique(patch.after[changed])
        lost = np.unique(patch.before[changed])
        for label in gained:
            label = int(label)
            if label:
                grown = _mask_box(patch.after == label, y0, x0)
                boxes[label] = _union(boxes.get(label), grown)
        gained_set = set(int(v) for v in gained)
        for label in lost:
            label = int(label)
            if label == 0 or label not in boxes:
                continue
            old = boxes[label]
            # The label's pixels outside the patch box are unchanged; if it had none,
            # the patch's after state says everything.
            if _inside(old, patch.box) and label not in loose:
                fresh = _mask_box(patch.after == label, y0, x0)
            elif labels is not None:
                ys, xs = slice(old[0], old[2]), slice(old[1], old[3])
                fresh = _mask_box(np.asarray(labels)[ys, xs, layer] == label, old[0], old[1])
                if label in gained_set:
                    fresh = _union(fresh, _mask_box(patch.after == label, y0, x0))
                loose.discard(label)
            else:
                loose.add(label)
                continue
            if fresh is None:
                del boxes[label]
                loose.discard(label)
            else:
                boxes[label] = fresh

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
