"""Bad requests raise EditError (mapped to 400 by the API) with a message naming the problem."""

import numpy as np
import pytest

from backend.edits import EditError, apply_edit

LABELS = np.zeros((10, 12, 2), np.int32)
LABELS[2:6, 2:6, 0] = 1
LABELS[2:6, 7:10, 0] = 2
IMAGE = np.ones((10, 12, 2), np.float32)


@pytest.mark.parametrize("tool, params, message", [
    ("lasso", {}, "unknown tool"),
    ("paint", {"layer": 2, "points": [[1, 1]], "radius": 1, "label": 1}, "layer"),
    ("paint", {"layer": "cytoplasm", "points": [[1, 1]], "radius": 1, "label": 1}, "layer"),
    ("paint", {"points": [[10, 1]], "radius": 1, "label": 1}, "outside"),
    ("paint", {"points": [[1, -1]], "radius": 1, "label": 1}, "outside"),
    ("paint", {"points": [[1, float("nan")]], "radius": 1, "label": 1}, "finite"),
    ("paint", {"points": [[1, 1, 1]], "radius": 1, "label": 1}, "pair"),
    ("paint", {"points": [], "radius": 1, "label": 1}, "points"),
    ("paint", {"points": [[1, 1]], "radius": 0, "label": 1}, "radius"),
    ("paint", {"points": [[1, 1]], "radius": 101, "label": 1}, "radius"),
    ("paint", {"points": [[1, 1]], "radius": 2.5, "label": 1}, "radius"),
    ("paint", {"points": [[1, 1]], "radius": 1, "label": -3}, "label"),
    ("paint", {"points": [[1, 1]], "radius": 1, "label": 0}, "label"),
    ("paint", {"points": [[1, 1]], "radius": 1, "label": True}, "label"),
    ("paint", {"points": [[1, 1]], "radius": 1, "label": 1, "overwrite": "yes"}, "overwrite"),
    ("paint", {"points": [[1, 1]], "radius": 1}, "label"),
    ("erase", {"points": [[1, 1]], "radius": 1, "label": -1}, "label"),
    ("flood", {"point": [1, 1], "label": 3, "connectivity": 6}, "connectivity"),
    ("flood", {"label": 3}, "point"),
    ("merge", {"a": 1, "b": 9}, "not in layer"),
    ("merge", {"a": 0, "b": 2}, "a must"),
    ("delete", {"label": 9}, "not in layer"),
    ("swap", {"a": 8, "b": 9}, "neither"),
    ("grow", {"label": 1, "n": 0}, "n must"),
    ("split", {"seeds": [[3, 3]]}, "at least 2"),
    ("split", {"seeds": [[3, 3], [3, 8]]}, "one cell"),
    ("split", {"seeds": [[0, 0], [0, 1]]}, "background"),
    ("split", {"seeds": [[3, 3], [3, 3]]}, "distinct"),
    ("split", {"seeds": [[3, 3], [4, 4]], "label": 2}, "not 2"),
    ("split", {"seeds": [[3, 3], [4, 4]], "channel": 5}, "channel"),
    ("split", {"seeds": [[3, 3], [4, 4]], "new_labels": [1]}, "differ"),
    ("split", {"seeds": [[3, 3], [4, 4]], "new_labels": [5, 6]}, "exactly 1"),
    ("split", {"seeds": [[3, 3], [4, 4]], "new_label": 2}, "already used"),
    ("threshold", {"box": [0, 0, 5, 5]}, "channel"),
    ("threshold", {"box": [0, 0, 5], "channel": 0}, "box"),
    ("threshold", {"box": [0, 0, 11, 5], "channel": 0}, r"inside the image \(10x12\)"),
    ("threshold", {"box": [0, 0, 1, 5], "channel": 0}, "2x2"),
    ("autofit", {"label": 1}, "channel"),
    ("autofit", {"label": 1, "channel": 0, "margin": 0}, "margin"),
    ("trim", {"point": [0, 0]}, "background"),
    ("trim", {"point": [3, 3], "label": 2}, "not 2"),
    ("trim", {}, "point"),
])
def test_bad_requests_raise_edit_error(tool, params, message):
    with pytest.raises(EditError, match=message):
        apply_edit(LABELS, IMAGE, tool, params)


def test_edit_error_is_a_value_error():
    assert issubclass(EditError, ValueError)


def test_a_channel_tool_without_an_image_says_so():
    with pytest.raises(EditError, match="no image"):
        apply_edit(LABELS, None, "autofit", {"label": 1, "channel": 0})


@pytest.mark.parametrize("labels, image", [
    (np.zeros((4, 4), np.int32), None),
    (np.zeros((4, 4, 2), np.float32), None),
    (np.zeros((4, 4, 2), np.int32), np.zeros((5, 4, 1), np.float32)),
])
def test_bad_arrays_raise_edit_error(labels, image):
    with pytest.raises(EditError):
        apply_edit(labels, image, "delete", {"label": 1})


def test_params_must_be_a_dict():
    with pytest.raises(EditError):
        apply_edit(LABELS, None, "delete", [1])


def test_fractional_canvas_coordinates_round_to_the_nearest_pixel():
    patch = apply_edit(LABELS, None, "paint", {"points": [[0.4, 10.6]], "radius": 1, "label": 3,
                                               "layer": "nuclear"})
    assert patch.box == (0, 10, 2, 12) and patch.after[0, 1] == 3


def test_an_index_for_other_labels_is_refused():
    from backend.edits import LabelIndex

    with pytest.raises(EditError, match="index"):
        apply_edit(LABELS, None, "delete", {"label": 1}, LabelIndex.build(LABELS[:5]))
