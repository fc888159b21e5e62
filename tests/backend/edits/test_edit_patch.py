"""Patches: construction, application, inversion, binary form, and the label index."""

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from backend.edits import EditError, LabelIndex, Patch


def small_arrays(shape):
    return hnp.arrays(np.int32, shape, elements=st.integers(0, 5))


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_from_windows_is_tight_and_round_trips(data):
    h, w = data.draw(st.integers(1, 12)), data.draw(st.integers(1, 12))
    before = data.draw(small_arrays((h, w)))
    after = data.draw(small_arrays((h, w)))
    y0, x0 = data.draw(st.integers(0, 5)), data.draw(st.integers(0, 5))
    labels = np.zeros((y0 + h + 2, x0 + w + 2, 2), np.int32)
    labels[y0:y0 + h, x0:x0 + w, 1] = before
    original = labels.copy()
    patch = Patch.from_windows(1, y0, x0, before, after)
    patch.apply(labels, check=True)
    assert np.array_equal(labels[y0:y0 + h, x0:x0 + w, 1], after)
    assert Patch.from_bytes(patch.to_bytes()) == patch
    patch.inverse().apply(labels, check=True)
    assert np.array_equal(labels, original)
    changed = before != after
    assert patch.is_empty == (not changed.any())
    if changed.any():
        ys, xs = np.nonzero(changed)
        assert patch.box == (y0 + ys.min(), x0 + xs.min(), y0 + ys.max() + 1, x0 + xs.max() + 1)
        assert patch.changed_labels() == set(np.union1d(before[changed], after[changed]).tolist()) - {0}
    else:
        assert patch.box[0] == patch.box[2] and patch.changed_labels() == set()


def test_patch_owns_its_arrays():
    labels = np.zeros((4, 4, 1), np.int32)  # a single layer makes labels[..., 0] contiguous
    before = labels[..., 0]
    patch = Patch(0, (0, 0, 4, 4), before, np.ones((4, 4), np.int32))
    patch.apply(labels)
    assert (patch.before == 0).all()


def test_apply_with_check_refuses_the_wrong_base():
    patch = Patch(0, (0, 0, 1, 2), [[1, 1]], [[2, 2]])
    labels = np.zeros((3, 3, 2), np.int32)
    with pytest.raises(EditError, match="before"):
        patch.apply(labels, check=True)
    with pytest.raises(EditError, match="outside"):
        Patch(0, (2, 2, 4, 4), np.zeros((2, 2), int), np.ones((2, 2), int)).apply(labels)


def test_constructor_rejects_mismatched_shapes():
    with pytest.raises(EditError):
        Patch(0, (0, 0, 2, 2), np.zeros((2, 3)), np.zeros((2, 3), np.int32))
    with pytest.raises(EditError):
        Patch(0, (3, 0, 2, 2), np.zeros((0, 2), int), np.zeros((0, 2), int))


def test_empty_patch_bytes_round_trip():
    empty = Patch.empty(1)
    again = Patch.from_bytes(empty.to_bytes())
    assert again.is_empty and again.layer == 1 and again.box == (0, 0, 0, 0)


def test_a_large_uniform_patch_compresses():
    patch = Patch(0, (0, 0, 512, 512), np.zeros((512, 512), np.int32), np.full((512, 512), 7))
    assert len(patch.to_bytes()) < 10_000


GOOD = Patch(0, (1, 2, 3, 5), np.arange(6).reshape(2, 3), np.zeros((2, 3), np.int32)).to_bytes()
HEADER = struct.Struct("<4sBBxxIIII")


@pytest.mark.parametrize("data", [
    b"", b"CLPT", b"garbage" * 10, GOOD[:-3], GOOD + b"x",
    b"XXXX" + GOOD[4:],
    HEADER.pack(b"CLPT", 9, 0, 0, 0, 1, 1) + zlib.compress(b"\0" * 8),     # unknown version
    HEADER.pack(b"CLPT", 1, 0, 5, 0, 1, 1) + zlib.compress(b""),           # inverted box
    HEADER.pack(b"CLPT", 1, 0, 0, 0, 2, 2) + zlib.compress(b"\0" * 8),     # too little data
    HEADER.pack(b"CLPT", 1, 0, 0, 0, 1, 1) + b"not zlib at all",
    HEADER.pack(b"CLPT", 1, 0, 0, 0, 100000, 100000) + zlib.compress(b""),  # absurd size
])
def test_from_bytes_rejects_garbage(data):
    with pytest.raises(EditError):
        Patch.from_bytes(data)


def test_from_bytes_rejects_non_bytes():
    with pytest.raises(EditError):
        Patch.from_bytes("a string")


def test_index_build_matches_brute_force_including_huge_ids():
    labels = np.zeros((6, 7, 2), np.int32)
    labels[1:3, 2:5, 0] = 3
    labels[5, 6, 0] = 3
    labels[0, 0, 1] = 2_000_000_000
    labels[4:6, 0:2, 1] = 2_000_000_000
    index = LabelIndex.build(labels)
    assert index.boxes[0] == {3: (1, 2, 6, 7)}
    assert index.boxes[1] == {2_000_000_000: (0, 0, 6, 2)}
    assert index.next_id() == 2_000_000_001


def test_index_update_without_labels_stays_a_superset_then_tightens_on_lookup():
    labels = np.zeros((5, 5, 2), np.int32)
    labels[0, 0, 0] = 1
    labels[4, 4, 0] = 1
    index = LabelIndex.build(labels)
    patch = Patch(0, (4, 4, 5, 5), [[1]], [[0]])
    patch.apply(labels)
    index.update(patch)
    assert index.bbox(0, 1) == (0, 0, 5, 5)  # cannot know better from the patch alone
    assert index.tight_bbox(0, 1, labels) == (0, 0, 1, 1)
    patch = Patch(0, (0, 0, 1, 1), [[1]], [[0]])
    patch.apply(labels)
    index.update(patch)
    assert index.bbox(0, 1) is None and index.next_id(labels) == 1
