import numpy as np
import pytest

from pipeline.metrics import object_accuracy
from pipeline.model.postprocess import (
    NUCLEAR_DEFAULTS,
    PUBLISHED_VARIANT,
    calibrate,
    WHOLE_CELL_DEFAULTS,
    deep_watershed,
    fill_small_holes,
    match_nuclei_to_cells,
    postprocess_mesmer,
    remove_small,
)
from pipeline.model.transforms import make_targets
from pipeline.synthetic import make_tissue


@pytest.fixture(scope="module")
def tissue():
    _, y = make_tissue((256, 256), seed=5)
    return y, make_targets(y)


def test_reference_defaults():
    assert WHOLE_CELL_DEFAULTS["maxima_threshold"] == 0.075
    assert NUCLEAR_DEFAULTS["maxima_threshold"] == 0.1
    for d in (WHOLE_CELL_DEFAULTS, NUCLEAR_DEFAULTS):
        assert d["interior_threshold"] == 0.2 and d["interior_smooth"] == 2
        assert d["small_objects_threshold"] == 15 and d["fill_holes_threshold"] == 15


def test_recovers_labels_from_their_own_targets(tissue):
    y, t = tissue
    out = postprocess_mesmer(t)
    assert out.shape == y.shape and out.dtype == np.int32
    wc = object_accuracy(y[..., 0], out[..., 0])
    nuc = object_accuracy(y[..., 1], out[..., 1])
    assert wc["f1"] > 0.95, wc
    assert nuc["f1"] > 0.95, nuc
    # Batched (1, H, W, k) outputs and a single compartment work the same way.
    one = postprocess_mesmer([a[None] for a in t], compartment="whole-cell")
    assert one.shape == y.shape[:2] + (1,)
    assert np.array_equal(one[..., 0], out[..., 0])
    with pytest.raises(ValueError):
        postprocess_mesmer(t, compartment="cytoplasm")


def test_nuclei_take_their_cell_ids(tissue):
    _, t = tissue
    out = postprocess_mesmer(t)
    wc, nuc = out[..., 0], out[..., 1]
    inside = (nuc > 0) & (wc > 0)
    agree = np.mean(nuc[inside] == wc[inside])
    assert agree > 0.95
    raw = postprocess_mesmer(t, match_ids=False)
    assert np.mean(raw[..., 1][inside] == raw[..., 0][inside]) < 0.5


def test_touching_cells_split_along_distance_valley():
    y = np.zeros((40, 70), np.int32)
    y[5:35, 5:35] = 1
    y[5:35, 35:65] = 2
    t = make_targets(np.stack([y, y], -1))
    lab = deep_watershed(t[0], t[1], **WHOLE_CELL_DEFAULTS)
    assert lab.max() == 2
    assert len(np.unique(lab[10:30, 10:30])) == 1 and len(np.unique(lab[10:30, 40:60])) == 1
    assert lab[20, 15] != lab[20, 55]


def test_small_objects_removed_and_holes_filled():
    y = np.zeros((60, 60), np.int32)
    y[5:35, 5:35] = 1
    y[45:48, 45:49] = 2  # 12 px
    dist = make_targets(np.stack([y, y], -1))[0][..., 0]
    interior = (y > 0).astype(np.float32)
    interior[10:13, 10:13] = 0  # a 9-px hole, away from the marker
    pw = np.stack([np.zeros_like(interior), interior, 1 - interior], -1)
    lab = deep_watershed(dist, pw, interior_smooth=0, maxima_threshold=0.05)
    assert lab.max() == 1
    assert lab[11, 11] == 1
    assert not lab[45:48, 45:49].any()
    kept = deep_watershed(dist, pw, interior_smooth=0, maxima_threshold=0.05, small_objects_threshold=0, fill_holes_threshold=0)
    assert kept.max() == 2 and kept[11, 11] == 0


def test_fill_small_holes_only_fills_holes_of_a_single_cell():
    lab = np.zeros((20, 30), np.int32)
    lab[2:12, 2:12] = 1
    lab[5:7, 5:7] = 0  # inside cell 1
    lab[2:12, 12:22] = 2
    lab[6, 11:13] = 0  # a gap between cells 1 and 2, enclosed by both
    lab[15:18, 24:27] = 3
    out = fill_small_holes(lab, 15)
    assert np.all(out[5:7, 5:7] == 1)
    assert np.all(out[6, 11:13] == 0)
    assert np.array_equal(out[lab > 0], lab[lab > 0])
    big = lab.copy()
    big[3:11, 3:11] = 0
    assert np.count_nonzero(fill_small_holes(big, 15)[3:11, 3:11]) == 0


def test_remove_small_keeps_large_ids():
    lab = np.zeros((10, 10), np.int32)
    lab[:4, :4] = 4
    lab[8, 8] = 9
    out = remove_small(lab, 15)
    assert out[0, 0] == 4 and out[8, 8] == 0


def test_empty_and_flat_inputs():
    z = np.zeros((64, 64), np.float32)
    pw = np.zeros((64, 64, 3), np.float32)
    pw[..., 2] = 1
    assert not deep_watershed(z, pw).any()
    pw2 = np.zeros((64, 64, 3), np.float32)
    pw2[..., 1] = 1
    assert not deep_watershed(z, pw2).any()  # interior everywhere but no maxima


def test_match_nuclei_gives_fresh_ids_to_orphans():
    wc = np.zeros((20, 20), np.int32)
    wc[:10, :10] = 5
    nuc = np.zeros_like(wc)
    nuc[2:5, 2:5] = 1
    nuc[6:9, 6:9] = 2  # a second, larger nucleus in cell 5 (15 px against 9)
    nuc[6:9, 2:4] = 2
    nuc[14:18, 14:18] = 3  # outside every cell
    out = match_nuclei_to_cells(wc, nuc)
    assert out[7, 7] == 5  # the larger of the two nuclei in cell 5
    assert out[3, 3] not in (0, 5)
    assert out[15, 15] not in (0, 5, out[3, 3])


@pytest.mark.slow
def test_one_megapixel_image():
    # Its speed (under 1 s for 1 MP) is measured by `python bench/model.py --case postprocess@1024`.
    _, y = make_tissue((1024, 1024), seed=1)
    t = make_targets(y)
    lab = deep_watershed(t[0], t[1], **WHOLE_CELL_DEFAULTS)
    assert object_accuracy(y[..., 0], lab)["f1"] > 0.95


def test_calibrate_picks_the_better_grid_point(tissue):
    y, t = tissue
    # A mask threshold near 1 on the smoothed interior shrinks every cell by a few pixels.
    bad = {**WHOLE_CELL_DEFAULTS, "interior_threshold": 0.98}
    found = calibrate([t[0]], [t[1]], [y[..., 0]], bad, grid={"interior_threshold": (0.98, 0.2, 0.5)})
    assert found["tried"] == 3
    assert found["kwargs"] == {**bad, "interior_threshold": 0.2}
    assert found["f1"] > 0.95 and found["default_f1"] < found["f1"] - 0.1
    # The reported F1 is what those parameters give.
    again = object_accuracy(y[..., 0], deep_watershed(t[0], t[1], **found["kwargs"]))["f1"]
    assert again == pytest.approx(found["f1"])


def test_calibrate_keeps_the_defaults_unless_something_is_better(tissue):
    y, t = tissue
    # With perfect maps both radii find every cell: the defaults stay.
    found = calibrate([t[0]], [t[1]], [y[..., 0]], dict(WHOLE_CELL_DEFAULTS), grid={"radius": (1, 2)})
    assert found["kwargs"] == WHOLE_CELL_DEFAULTS and found["f1"] == found["default_f1"]


def test_published_variant_floods_the_interior_and_merges_touching_peaks():
    # Two cells whose distance valley (column 30) and interior valley (column 38) disagree: the
    # boundary follows the surface that is flooded.
    rows, cols = np.mgrid[0:20, 0:60].astype(np.float32)
    dist = sum(np.exp(-0.5 * (((cols - c) / 10) ** 2 + ((rows - 10) / 10) ** 2)) for c in (15, 45))
    interior = np.full((20, 60), 0.9, np.float32)
    interior[:, 38] = 0.3
    published = deep_watershed(dist, interior, interior_smooth=0, **PUBLISHED_VARIANT)
    ours = deep_watershed(dist, interior, interior_smooth=0)
    assert published.max() == ours.max() == 2
    assert published[10, 34] == published[10, 15] != published[10, 45]  # split at the interior valley
    assert ours[10, 34] == ours[10, 45] != ours[10, 15]  # split at the distance valley
    # Two peaks 8 px apart, the lower one rising less than the maxima threshold above the saddle:
    # h-maxima keeps only peaks that stand out by the threshold (one seed), peak_local_max keeps
    # both (two objects).
    rows, cols = np.mgrid[0:30, 0:50].astype(np.float32)
    twin = 0.6 * np.exp(-0.5 * (((cols - 25) / 12) ** 2 + ((rows - 15) / 8) ** 2))
    for c, height in ((21, 0.3), (29, 0.27)):
        twin = twin + height * np.exp(-0.5 * (((cols - c) / 3) ** 2 + ((rows - 15) / 3) ** 2))
    mask = (twin > 0.05).astype(np.float32)
    assert deep_watershed(twin, mask, interior_smooth=0, **PUBLISHED_VARIANT).max() == 1
    assert deep_watershed(twin, mask, interior_smooth=0).max() == 2


def test_published_variant_recovers_noisy_targets(tissue):
    y, t = tissue
    rng = np.random.default_rng(0)
    noisy = [a + rng.normal(0, 0.02, a.shape).astype(np.float32) for a in t]
    out = postprocess_mesmer(noisy, whole_cell_kwargs=PUBLISHED_VARIANT, nuclear_kwargs=PUBLISHED_VARIANT)
    assert object_accuracy(y[..., 0], out[..., 0])["f1"] > 0.95
    with pytest.raises(ValueError, match="maxima_algorithm"):
        deep_watershed(t[0], t[1], maxima_algorithm="hmax")
    with pytest.raises(ValueError, match="flood"):
        deep_watershed(t[0], t[1], flood="border")


def test_peak_coordinates_are_peak_local_maxs_including_ties_and_plateaus():
    from skimage.feature import peak_local_max

    from pipeline.model.postprocess import peak_coordinates

    rng = np.random.default_rng(4)
    for trial in range(60):
        img = rng.random(tuple(rng.integers(5, 60, 2))).astype(np.float32)
        if trial % 3 == 0:
            img = np.round(img * 3) / 3  # plateaus: equal peaks closer than min_distance, the spacing pass's case
        if trial % 10 == 0:
            img[:] = 0.5
        for min_distance, threshold in ((1, 0.0), (2, 0.1), (4, 0.3)):
            want = peak_local_max(img, min_distance=min_distance, threshold_abs=threshold, exclude_border=False)
            np.testing.assert_array_equal(peak_coordinates(img, min_distance, threshold), want)


def test_fill_small_holes_matches_a_direct_neighbour_count():
    rng = np.random.default_rng(6)
    for _ in range(20):
        labels = ((rng.random((40, 50)) < 0.7) * rng.integers(1, 4, (40, 50))).astype(np.int32)
        out = fill_small_holes(labels, 4)
        from scipy import ndimage as ndi

        holes, n = ndi.label(labels == 0)
        want = labels.copy()
        for h in range(1, n + 1):
            where = holes == h
            if where.sum() >= 4 or where[0].any() or where[-1].any() or where[:, 0].any() or where[:, -1].any():
                continue
            ring = ndi.binary_dilation(where) & ~where  # 4-neighbours (the default cross)
            around = np.unique(labels[ring])
            if around.size == 1 and around[0] > 0:
                want[where] = around[0]
        np.testing.assert_array_equal(out, want)
