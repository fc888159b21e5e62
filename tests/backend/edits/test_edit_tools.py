"""One worked example per tool, on small hand-made layers."""

import numpy as np
import pytest
from scipy import ndimage

from backend.edits import TOOLS, LabelIndex, apply_edit, next_label_id


def layers(whole, nuclear=None):
    whole = np.asarray(whole, np.int32)
    nuclear = np.zeros_like(whole) if nuclear is None else np.asarray(nuclear, np.int32)
    return np.stack([whole, nuclear], -1)


def edit(labels, tool, params, image=None):
    patch = apply_edit(labels, image, tool, params)
    return patch, patch.apply(labels.copy())


def test_tools_tuple_is_the_published_set():
    assert TOOLS == ("paint", "erase", "flood", "merge", "swap", "delete", "split",
                     "threshold", "autofit", "grow", "shrink", "trim",
                     "assist_click", "assist_box", "assist_accept")


def test_paint_interpolates_between_points_and_spares_neighbours():
    labels = layers(np.zeros((7, 12)))
    labels[3, 6, 0] = 9  # a neighbour pixel right on the stroke
    patch, out = edit(labels, "paint", {"layer": "whole-cell", "points": [[3, 1], [3, 10]],
                                        "radius": 1, "label": 4})
    expected = np.zeros((7, 12), np.int32)
    expected[3, 0:12] = 4           # the line and its round caps
    expected[2, 1:11] = 4
    expected[4, 1:11] = 4
    expected[3, 6] = 9
    assert np.array_equal(out[..., 0], expected)
    assert patch.box == (2, 0, 5, 12)
    assert patch.changed_labels() == {4}
    _, over = edit(labels, "paint", {"layer": 0, "points": [[3, 1], [3, 10]], "radius": 1,
                                     "label": 4, "overwrite": True})
    assert over[3, 6, 0] == 4


def test_paint_on_the_nuclear_layer_leaves_whole_cell_alone():
    labels = layers(np.ones((5, 5)))
    patch, out = edit(labels, "paint", {"layer": "nuclear", "points": [[2, 2]], "radius": 1, "label": 1})
    assert patch.layer == 1
    assert out[..., 1].sum() == 5 and np.array_equal(out[..., 0], labels[..., 0])


def test_erase_only_the_selected_label_or_anything():
    labels = layers([[1, 1, 2, 2]])
    _, out = edit(labels, "erase", {"points": [[0, 0], [0, 3]], "radius": 1, "label": 2})
    assert out[..., 0].tolist() == [[1, 1, 0, 0]]
    _, out = edit(labels, "erase", {"points": [[0, 0], [0, 3]], "radius": 1})
    assert out[..., 0].tolist() == [[0, 0, 0, 0]]


def test_flood_fills_a_hole_but_not_the_outside():
    ring = np.zeros((7, 7), np.int32)
    ring[1:6, 1:6] = 3
    ring[3, 3] = 0
    labels = layers(ring)
    patch, out = edit(labels, "flood", {"point": [3, 3], "label": 3})
    assert patch.box == (3, 3, 4, 4) and out[3, 3, 0] == 3
    assert (out[..., 0] == 0).sum() == 49 - 25


def test_flood_connectivity_eight_crosses_diagonals():
    diag = layers(np.eye(4, dtype=np.int32) * 5)
    _, four = edit(diag, "flood", {"point": [0, 0], "label": 6})
    _, eight = edit(diag, "flood", {"point": [0, 0], "label": 6, "connectivity": 8})
    assert (four[..., 0] == 6).sum() == 1
    assert (eight[..., 0] == 6).sum() == 4


def test_flood_on_its_own_label_is_a_no_op():
    patch, _ = edit(layers([[2, 2]]), "flood", {"point": [0, 0], "label": 2})
    assert patch.is_empty and patch.box == (0, 0, 0, 0)


def test_merge_turns_b_into_a():
    labels = layers([[1, 0, 2], [2, 0, 3]])
    patch, out = edit(labels, "merge", {"a": 1, "b": 2})
    assert out[..., 0].tolist() == [[1, 0, 1], [1, 0, 3]]
    assert patch.changed_labels() == {1, 2}


def test_swap_exchanges_two_labels():
    _, out = edit(layers([[1, 2, 3]]), "swap", {"a": 1, "b": 3})
    assert out[..., 0].tolist() == [[3, 2, 1]]


def test_delete_clears_one_label():
    patch, out = edit(layers([[4, 5, 4]]), "delete", {"label": 4})
    assert out[..., 0].tolist() == [[0, 5, 0]]
    assert patch.box == (0, 0, 1, 3)


def dumbbell():
    cell = np.zeros((9, 17), np.int32)
    yy, xx = np.mgrid[:9, :17]
    cell[(yy - 4) ** 2 + (xx - 4) ** 2 <= 12] = 7
    cell[(yy - 4) ** 2 + (xx - 12) ** 2 <= 12] = 7
    cell[4, 4:13] = 7  # the narrow waist
    return cell


def test_split_on_distance_cuts_a_dumbbell_at_its_waist():
    labels = layers(dumbbell())
    labels[0, 0, 1] = 11  # the next id must skip ids used in the nuclear layer
    patch, out = edit(labels, "split", {"seeds": [[4, 3], [4, 13]]})
    whole = out[..., 0]
    assert set(np.unique(whole)) == {0, 7, 12}
    assert (whole[:, :7] == 12).sum() == 0 and (whole[:, 10:] == 7).sum() == 0
    assert ((whole > 0) == (dumbbell() > 0)).all()


def test_split_follows_the_chosen_channel():
    cell = np.zeros((6, 10), np.int32)
    cell[1:5, 1:9] = 2
    labels = layers(cell)
    image = np.zeros((6, 10, 2), np.float32)
    image[:, 1:3, 1] = 1.0  # a small bright nucleus, a dark gap at column 3, a big nucleus
    image[:, 4:9, 1] = 1.0
    params = {"seeds": [[2, 1], [2, 8]], "new_labels": [30]}
    _, by_distance = edit(labels, "split", params, image)
    _, by_channel = edit(labels, "split", dict(params, channel=1), image)
    # the cut sits at the dark gap, which the box's own shape knows nothing about
    assert not np.array_equal(by_distance, by_channel)
    assert (by_channel[1:5, 1:3, 0] == 2).all() and (by_channel[1:5, 4:9, 0] == 30).all()
    _, inverted = edit(labels, "split", dict(params, channel=1, invert=True), image)
    assert not np.array_equal(inverted, by_channel)


def test_threshold_labels_bright_background_inside_the_box():
    labels = layers(np.zeros((10, 10)))
    labels[0, 0, 0] = 4
    image = np.zeros((10, 10, 1), np.float32)
    image[3:6, 3:6, 0] = 1.0
    image[8, 8, 0] = 1.0  # bright but outside the box
    patch, out = edit(labels, "threshold", {"box": [7, 7, 2, 2], "channel": 0}, image)
    assert (out[..., 0] == 5).sum() == 9 and (out[3:6, 3:6, 0] == 5).all()
    assert out[8, 8, 0] == 0 and patch.changed_labels() == {5}


def test_autofit_snaps_a_cell_to_the_membrane_edge():
    yy, xx = np.mgrid[:30, :30]
    truth = (yy - 15) ** 2 + (xx - 15) ** 2 <= 49       # the real cell, radius 7
    drawn = (yy - 15) ** 2 + (xx - 15) ** 2 <= 16       # a sloppy annotation, radius 4
    neighbour = (yy < 3) & (xx < 3)
    labels = layers(np.where(drawn, 1, 0) + np.where(neighbour, 2, 0))
    image = truth[..., None].astype(np.float32)
    _, out = edit(labels, "autofit", {"label": 1, "channel": 0, "margin": 4}, image)
    fitted = out[..., 0] == 1
    assert (fitted ^ truth).sum() <= 0.1 * truth.sum()
    assert (out[..., 0] == 2).sum() == 9


def test_grow_and_shrink_respect_neighbours():
    row = layers([[0, 0, 1, 0, 2, 2, 0, 0]])
    _, grown = edit(row, "grow", {"label": 1, "n": 2})
    assert grown[..., 0].tolist() == [[1, 1, 1, 1, 2, 2, 0, 0]]
    block = np.zeros((7, 7), np.int32)
    block[1:6, 1:6] = 3
    _, shrunk = edit(layers(block), "shrink", {"label": 3, "n": 1})
    assert (shrunk[..., 0] == 3).sum() == 9 and (shrunk[2:5, 2:5, 0] == 3).all()


def test_shrink_does_not_erode_at_the_image_border():
    _, out = edit(layers(np.full((4, 6), 8)), "shrink", {"label": 8, "n": 1})
    assert (out[..., 0] == 8).all()


def test_trim_keeps_the_piece_under_the_point():
    labels = layers([[6, 6, 0, 0, 6], [6, 6, 0, 0, 0]])
    _, out = edit(labels, "trim", {"point": [1, 0]})
    assert out[..., 0].tolist() == [[6, 6, 0, 0, 0], [6, 6, 0, 0, 0]]
    _, out = edit(labels, "trim", {"point": [0, 4]})
    assert out[..., 0].tolist() == [[0, 0, 0, 0, 6], [0, 0, 0, 0, 0]]
    _, out = edit(labels, "trim", {"label": 6})
    assert (out[..., 0] == 6).sum() == 4


def test_next_label_id_spans_both_layers():
    assert next_label_id(np.zeros((3, 3, 2), np.int32)) == 1
    assert next_label_id(layers([[1, 4]], [[9, 0]])) == 10
    assert LabelIndex.build(layers([[1, 4]], [[9, 0]])).next_id() == 10


@pytest.mark.parametrize("tool", ["merge", "delete", "grow", "shrink", "trim", "split"])
def test_index_lookups_give_identical_patches_on_a_large_layer(tool):
    rng = np.random.default_rng(3)
    seeds = np.zeros((200, 200), np.int32)
    seeds[rng.integers(0, 200, 60), rng.integers(0, 200, 60)] = np.arange(1, 61)
    dist, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    labels = layers(np.where(dist < 9, seeds[iy, ix], 0))
    label = int(labels[100, 100, 0]) or int(labels[..., 0].max())
    ys, xs = np.nonzero(labels[..., 0] == label)
    params = {"merge": {"a": label, "b": int(labels[..., 0].max()) if label != labels.max() else 1},
              "delete": {"label": label}, "grow": {"label": label, "n": 3},
              "shrink": {"label": label, "n": 2}, "trim": {"point": [int(ys[0]), int(xs[0])]},
              "split": {"seeds": [[int(ys[0]), int(xs[0])], [int(ys[-1]), int(xs[-1])]]}}[tool]
    index = LabelIndex.build(labels)
    assert apply_edit(labels, None, tool, params, index) == apply_edit(labels, None, tool, params)
