"""Patches: the unit every edit produces, stores and replays.

A patch is one layer's half-open box ``(y0, x0, y1, x1)`` with the values it held before
and after the edit. Tools build it tight (the box bounds exactly the changed pixels), so
storing, sending and undoing an edit costs what the touched area costs.

Binary form (``to_bytes``): a 24-byte little-endian header
``b"CLPT", version u8, layer u8, 2 pad bytes, y0 u32, x0 u32, y1 u32, x1 u32``
followed by one zlib stream holding ``before`` then ``after`` as little-endian int32.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from .errors import EditError

_MAGIC = b"CLPT"
_VERSION = 1
_HEADER = struct.Struct("<4sBBxxIIII")
# Refuse to inflate anything larger than this; a 16k x 16k box of two int32 arrays
# is already 2 GiB, far beyond what any browser edit produces.
_MAX_PIXELS = 16384 * 16384


def _as_int32_2d(array, name):
    array = np.asarray(array)
    if array.ndim != 2:
        raise EditError(f"patch {name} must be 2-D, got shape {array.shape}")
    if array.dtype != np.int32:
        if not np.issubdtype(array.dtype, np.integer):
            raise EditError(f"patch {name} must hold integers, got {array.dtype}")
        array = array.astype(np.int32)
    # always copy: a view into the labels would change under a later apply()
    return np.array(array, dtype=np.int32, order="C", copy=True)


class Patch:
    """The change one edit made to one label layer."""

    # _encoded: to_bytes() once; a patch is stored and sent, and never changes after it is made
    __slots__ = ("layer", "box", "before", "after", "_encoded")

    def __init__(self, layer, box, before, after):
        y0, x0, y1, x1 = (int(v) for v in box)
        if not (0 <= y0 <= y1 and 0 <= x0 <= x1):
            raise EditError(f"patch box {box} is not a valid half-open box")
        before = _as_int32_2d(before, "before")
        after = _as_int32_2d(after, "after")
        if before.shape != (y1 - y0, x1 - x0) or after.shape != before.shape:
            raise EditError(
                f"patch arrays {before.shape}/{after.shape} do not match box {box}")
        if int(layer) < 0:
            raise EditError(f"patch layer must be >= 0, got {layer}")
        self.layer = int(layer)
        self.box = (y0, x0, y1, x1)
        self.before = before
        self.after = after
        self._encoded = None

    @classmethod
    def empty(cls, layer):
        nothing = np.zeros((0, 0), np.int32)
        return cls(layer, (0, 0, 0, 0), nothing, nothing)

    @classmethod
    def from_windows(cls, layer, y0, x0, before, after, changed=None):
        """Patch for a window at (y0, x0), cut down to the pixels that actually differ.

        ``changed`` (before != after, when the caller already knows it) saves a pass.
        """
        if changed is None:
            changed = before != after
        rows = np.flatnonzero(changed.any(axis=1))
        if rows.size == 0:
            return cls.empty(layer)
        cols = np.flatnonzero(changed.any(axis=0))
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        return cls(layer, (y0 + r0, x0 + c0, y0 + r1, x0 + c1),
                   before[r0:r1, c0:c1], after[r0:r1, c0:c1])

    @property
    def is_empty(self):
        return self.before.size == 0 or not np.any(self.before != self.after)

    @property
    def slices(self):
        y0, x0, y1, x1 = self.box
        return slice(y0, y1), slice(x0, x1)

    def _check_fits(self, labels):
        if labels.ndim != 3 or self.layer >= labels.shape[2]:
            raise EditError(
                f"patch for layer {self.layer} does not fit labels of shape {labels.shape}")
        y0, x0, y1, x1 = self.box
        if y1 > labels.shape[0] or x1 > labels.shape[1]:
            raise EditError(
                f"patch box {self.box} lies outside labels of shape {labels.shape}")

    def apply(self, labels, check=False):
        """Write ``after`` into ``labels`` in place and return ``labels``.

        With ``check=True`` the box must currently hold ``before``; that catches a patch
        replayed onto the wrong revision instead of silently corrupting it.
        """
        if self.before.size == 0:
            return labels
        self._check_fits(labels)
        ys, xs = self.slices
        if check and not np.array_equal(labels[ys, xs, self.layer], self.before):
            raise EditError("patch does not apply: labels differ from the patch's before state")
        labels[ys, xs, self.layer] = self.after
        return labels

    def inverse(self):
        return Patch(self.layer, self.box, self.after, self.before)

    def changed_labels(self):
        """Label ids that gained or lost pixels (0 excluded).

        Only changed pixels count: a neighbour that merely shares the box is untouched.
        """
        changed = self.before != self.after
        ids = np.union1d(self.before[changed], self.after[changed])
        return {int(v) for v in ids if v != 0}

    def to_bytes(self):
        if self._encoded is None:
            self._encoded = self._encode()
        return self._encoded

    def _encode(self):
        y0, x0, y1, x1 = self.box
        header = _HEADER.pack(_MAGIC, _VERSION, self.layer, y0, x0, y1, x1)
        body = self.before.astype("<i4", copy=False).tobytes() + \
            self.after.astype("<i4", copy=False).tobytes()
        # whole-image edits are rare and big: trade a little size for several times the speed
        level = 6 if self.before.size < (1 << 20) else 1
        return header + zlib.compress(body, level)

    @classmethod
    def from_bytes(cls, data):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise EditError(f"patch bytes expected, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < _HEADER.size:
            raise EditError("patch bytes too short for a header")
        magic, version, layer, y0, x0, y1, x1 = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise EditError("not a CellLoop patch (bad magic)")
        if version != _VERSION:
            raise EditError(f"unsupported patch version {version}")
        if y1 < y0 or x1 < x0:
            raise EditError(f"patch header has an invalid box {(y0, x0, y1, x1)}")
        h, w = y1 - y0, x1 - x0
        if h * w > _MAX_PIXELS:
            raise EditError(f"patch box {h}x{w} is too large")
        expected = 2 * h * w * 4
        inflater = zlib.decompressobj()
        try:
            body = inflater.decompress(data[_HEADER.size:], expected + 1)
        except zlib.error as exc:
            raise EditError(f"patch body is not valid zlib data: {exc}") from None
        if len(body) != expected or not inflater.eof or inflater.unused_data:
            raise EditError("patch body length does not match its box")
        arrays = np.frombuffer(body, dtype="<i4").astype(np.int32).reshape(2, h, w)
        return cls(layer, (y0, x0, y1, x1), arrays[0], arrays[1])

    def __eq__(self, other):
        if not isinstance(other, Patch):
            return NotImplemented
        return (self.layer == other.layer and self.box == other.box
                and np.array_equal(self.before, other.before)
                and np.array_equal(self.after, other.after))

    __hash__ = None

    def __repr__(self):
        return f"Patch(layer={self.layer}, box={self.box}, changed={int(np.count_nonzero(self.before != self.after))})"
