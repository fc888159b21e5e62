"""The assist tools: cells from the model's maps (click, box, accept), on synthetic tissue whose maps are the
training targets of its true labels (what a perfect model would output), and on random labels and maps."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from backend.edits import EditError, LabelIndex, Patch, apply_edit
from pipeline.model.maps import maps_from_labels, quantize
from pipeline.synthetic import make_tissue


@pytest.fixture(scope="module")
def tissue():
    _, y = make_tissue((200, 200), seed=3)
    y = y.astype(np.int32)
    return y, maps_from_labels(y)


def centre(mask):
    depth = ndimage.distance_transform_edt(mask)
    return [int(v) for v in np.unravel_index(np.argmax(depth), mask.shape)]


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def cells(y, layer, n=12):
    ids = [int(i) for i in np.unique(y[..., layer]) if i]
    sizes = {i: int((y[..., layer] == i).sum()) for i in ids}
    return [i for i in ids if sizes[i] >= 40][:n]


@pytest.mark.parametrize("layer", [0, 1])
def test_click_on_a_missed_cell_draws_the_models_cell(tissue, layer):
    y, maps = tissue
    scores = []
    for label in cells(y, layer):
        truth = y[..., layer] == label
        labels = y.copy()
        labels[..., layer][truth] = 0
        point = centre(truth)
        patch = apply_edit(labels, None, "assist_click", {"layer": layer, "point": point}, maps=maps)
        after = patch.apply(labels.copy())
        new_id = int(labels.max()) + 1
        drawn = after[..., layer] == new_id
        assert patch.layer == layer and after[point[0], point[1], layer] == new_id
        assert ndimage.label(drawn)[1] == 1  # one connected cell
        changed = after[..., layer] != labels[..., layer]
        assert (labels[..., layer][changed] == 0).all()  # exclude mode: background only
        assert np.array_equal(after[..., 1 - layer], labels[..., 1 - layer])
        scores.append(iou(drawn, truth))
    assert np.median(scores) > 0.85 and min(scores) > 0.6, scores


def test_click_respects_the_write_mode(tissue):
    y, maps = tissue
    label = cells(y, 0)[0]
    truth = y[..., 0] == label
    labels = y.copy()
    labels[..., 0][truth] = 0
    # a neighbour strays over a third of the missed cell
    rows = np.flatnonzero(truth.any(axis=1))
    stray = truth & (np.arange(y.shape[0])[:, None] < rows[0] + len(rows) // 3)
    labels[..., 0][stray] = 7777
    point = centre(truth & ~stray)
    exclude = apply_edit(labels, None, "assist_click", {"point": point}, maps=maps).apply(labels.copy())
    assert (exclude[..., 0][stray] == 7777).all()
    overwrite = apply_edit(labels, None, "assist_click", {"point": point, "overwrite": True},
                           maps=maps).apply(labels.copy())
    new = overwrite[point[0], point[1], 0]
    assert (overwrite[..., 0][stray] == new).mean() > 0.8
    assert iou(overwrite[..., 0] == new, truth) > iou(exclude[..., 0] == new, truth)


def test_click_inside_a_cell_redraws_that_cell(tissue):
    y, maps = tissue
    label = cells(y, 0)[1]
    truth = y[..., 0] == label
    labels = y.copy()
    # a badly drawn cell: half of it missing and a blob of background stuck to it
    point = centre(truth)
    half = truth & (np.arange(y.shape[1])[None, :] > point[1])
    labels[..., 0][half] = 0
    patch = apply_edit(labels, None, "assist_click", {"point": point}, maps=maps)
    after = patch.apply(labels.copy())
    assert iou(after[..., 0] == label, truth) > 0.85 > iou(labels[..., 0] == label, truth)
    assert int(after.max()) == int(labels.max())  # no new id: the same cell, redrawn
    others = (labels[..., 0] != label) & (labels[..., 0] != 0)
    assert np.array_equal(after[..., 0][others], labels[..., 0][others])


def test_accept_restores_a_deleted_cell_and_refuses_a_cell(tissue):
    y, maps = tissue
    label = cells(y, 1)[2]
    truth = y[..., 1] == label
    labels = y.copy()
    labels[..., 1][truth] = 0
    point = centre(truth)
    after = apply_edit(labels, None, "assist_accept", {"layer": "nuclear", "point": point,
                                                         "new_label": label}, maps=maps).apply(labels.copy())
    assert iou(after[..., 1] == label, truth) > 0.8
    with pytest.raises(EditError, match="inside cell"):
        apply_edit(y, None, "assist_accept", {"layer": 1, "point": point}, maps=maps)
    with pytest.raises(EditError, match="already used"):
        apply_edit(labels, None, "assist_accept", {"layer": 1, "point": point, "new_label": int(y[..., 0].max())},
                   maps=maps)


def test_refusals_name_the_reason(tissue):
    y, maps = tissue
    background = [int(v) for v in np.argwhere(ndimage.binary_erosion(y[..., 0] == 0, iterations=6))[0]]
    with pytest.raises(EditError, match="no model maps"):
        apply_edit(y, None, "assist_click", {"point": [5, 5]})
    with pytest.raises(EditError, match="sees no cell"):
        apply_edit(y, None, "assist_click", {"point": background}, maps=maps)
    with pytest.raises(EditError, match="do not match"):
        apply_edit(y, None, "assist_click", {"point": [5, 5]}, maps=maps[:-1])
    with pytest.raises(EditError, match="sensitivity"):
        apply_edit(y, None, "assist_box", {"box": [0, 0, 40, 40], "sensitivity": 1.5}, maps=maps)
    with pytest.raises(EditError, match="sensitivity"):
        apply_edit(y, None, "assist_box", {"box": [0, 0, 40, 40], "sensitivity": "high"}, maps=maps)


def two_bumps(saddle):
    """Maps of one blob with two distance peaks of 0.8 whose saddle lies at ``saddle``; labels hold it as one cell."""
    yy, xx = np.mgrid[:60, :80].astype(float)
    sep = 12.0
    # exp(-(sep/2)^2 / (2 s^2)) = saddle / 0.8 at the midpoint
    s2 = (sep / 2) ** 2 / (2 * np.log(0.8 / saddle))
    bump = lambda cx: 0.8 * np.exp(-((yy - 30) ** 2 + (xx - cx) ** 2) / (2 * s2))  # noqa: E731
    dist = np.maximum(bump(40 - sep / 2), bump(40 + sep / 2))
    blob = dist > 0.15
    interior = ndimage.binary_erosion(blob).astype(float)
    maps = quantize(np.stack([np.where(blob, dist, 0), interior, np.zeros_like(dist), np.zeros_like(dist)], -1))
    labels = np.zeros((60, 80, 2), np.int32)
    labels[..., 0][blob] = 5
    labels[2:6, 2:6, 0] = 9  # a cell outside the box stays
    return labels, maps


def test_box_sensitivity_splits_or_keeps_a_merged_cell():
    labels, maps = two_bumps(saddle=0.62)
    box = [10, 10, 50, 70]
    counts = {}
    for s in (0.0, 0.5, 1.0):
        patch = apply_edit(labels, None, "assist_box", {"box": box, "sensitivity": s}, maps=maps)
        after = patch.apply(labels.copy())
        ids = [int(i) for i in np.unique(after[10:50, 10:70, 0]) if i]
        counts[s] = len(ids)
        assert 5 in ids  # the removed cell's id lives on in the new cell that covers most of it
        assert after[3, 3, 0] == 9 and patch.box[0] >= 10
    assert counts[0.0] == 1 and counts[0.5] == 2 and counts[1.0] >= 2, counts


def test_box_resegments_an_oversplit_region_and_leaves_straddling_cells(tissue):
    y, maps = tissue
    label = cells(y, 0)[3]
    truth = y[..., 0] == label
    ys, xs = np.nonzero(truth)
    box = [max(int(ys.min()) - 2, 0), max(int(xs.min()) - 2, 0), int(ys.max()) + 3, int(xs.max()) + 3]
    labels = y.copy()
    # over-split: the cell cut in two ids
    cut = truth & (np.arange(y.shape[1])[None, :] > np.median(xs))
    labels[..., 0][cut] = 4242
    after = apply_edit(labels, None, "assist_box", {"box": box}, maps=maps).apply(labels.copy())
    inside = after[box[0]:box[2], box[1]:box[3], 0]
    assert 4242 not in after[..., 0]
    assert iou(after[..., 0] == after[ys[len(ys) // 2], xs[len(xs) // 2], 0], truth) > 0.85
    # a cell with most of its pixels outside the box keeps them all
    for other in np.unique(labels[box[0]:box[2], box[1]:box[3], 0]):
        whole = labels[..., 0] == other
        if other and other not in (label, 4242) and 2 * whole[box[0]:box[2], box[1]:box[3]].sum() < whole.sum():
            assert np.array_equal(after[..., 0] == other, whole)
    assert inside.any()


# ---- properties on random labels and maps --------------------------------------------------------------------
@st.composite
def worlds(draw):
    h, w = draw(st.integers(8, 40)), draw(st.integers(8, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = int(rng.integers(1, 8))
    seeds = np.zeros((h, w), np.int32)
    seeds[rng.integers(0, h, n), rng.integers(0, w, n)] = np.arange(1, n + 1)
    dist, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    truth = np.where(dist <= rng.uniform(2, 8), seeds[iy, ix], 0).astype(np.int32)
    truth = np.stack([truth, np.where(dist <= 2, truth, 0)], -1)
    maps = maps_from_labels(truth)
    noise = rng.integers(-20, 21, maps.shape)
    maps = np.clip(maps.astype(int) + noise, 0, 255).astype(np.uint8)
    # the labels the annotator has: the truth with cells dropped, renamed and smeared
    labels = truth.copy()
    ids = rng.permutation(np.arange(1, n + 1))
    for i in ids[: n // 2]:
        labels[labels == i] = 0
    labels[rng.random(labels.shape) < 0.05] = 0
    labels = np.where(labels > 0, labels * 3 + 1, 0).astype(np.int32)
    tool = draw(st.sampled_from(["assist_click", "assist_accept", "assist_box"]))
    layer = draw(st.integers(0, 1))
    params = {"layer": layer, "overwrite": draw(st.booleans())}
    if tool == "assist_box":
        a = [int(rng.integers(0, h - 2)), int(rng.integers(0, w - 2))]
        params.update(box=[a[0], a[1], int(rng.integers(a[0] + 2, h + 1)), int(rng.integers(a[1] + 2, w + 1))],
                      sensitivity=float(rng.random()))
    else:
        params["point"] = [int(rng.integers(0, h)), int(rng.integers(0, w))]
    return labels, maps, tool, params


ASSIST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def attempt(labels, maps, tool, params, index=None):
    original = labels.copy()
    try:
        patch = apply_edit(labels, None, tool, params, index=index, maps=maps)
    except EditError as exc:
        return exc
    assert np.array_equal(labels, original)
    return patch


@ASSIST
@given(worlds())
def test_assist_patches_are_tight_reversible_and_in_one_layer(world):
    labels, maps, tool, params = world
    patch = attempt(labels, maps, tool, params)
    if isinstance(patch, EditError):
        assert str(patch)
        return
    after = patch.apply(labels.copy())
    assert np.array_equal(patch.inverse().apply(after.copy()), labels)
    assert Patch.from_bytes(patch.to_bytes()) == patch
    changed = after != labels
    assert not changed[..., 1 - params["layer"]].any()
    if not patch.is_empty:
        ys, xs = np.nonzero(changed[..., params["layer"]])
        assert patch.box == (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)


@ASSIST
@given(worlds())
def test_assist_tools_change_only_what_their_write_mode_allows(world):
    labels, maps, tool, params = world
    patch = attempt(labels, maps, tool, params)
    if isinstance(patch, EditError) or params["overwrite"]:
        return
    layer = params["layer"]
    before, after = labels[..., layer], patch.apply(labels.copy())[..., layer]
    changed = before != after
    if tool == "assist_box":
        y0, x0, y1, x1 = params["box"]
        inside = np.zeros(before.shape, bool)
        inside[y0:y1, x0:x1] = True
        # a cell either stays whole or (most of it inside the box) is removed whole; new cells (which may
        # reuse a removed id) only in the box
        for label in np.unique(before[changed]):
            if label:
                cell = before == label
                assert 2 * (cell & inside).sum() > cell.sum()
                assert not ((after == label) & ~inside).any()
        assert not (changed & ~inside & (after != 0)).any()
    else:
        under = int(before[tuple(params["point"])])
        assert set(np.unique(before[changed]).tolist()) <= {0, under}
        drawn = after == after[tuple(params["point"])]
        assert after[tuple(params["point"])] != 0 and ndimage.label(drawn)[1] == 1


@ASSIST
@given(worlds())
def test_assist_tools_are_deterministic_and_the_index_only_speeds_up(world):
    labels, maps, tool, params = world
    first = attempt(labels, maps, tool, params)
    second = attempt(labels, maps, tool, params, index=LabelIndex.build(labels))
    if isinstance(first, EditError):
        assert isinstance(second, EditError) and str(second) == str(first)
    else:
        assert second == first
    floats = maps.astype(np.float32) / 255
    third = attempt(labels, floats, tool, params)
    assert type(third) is type(first)
