import numpy as np
import pytest
from skimage.draw import disk, ellipse

from pipeline.model.transforms import inner_distance, make_targets, pixelwise


def _disk_labels(shape, center, radius, lab=1, out=None):
    out = np.zeros(shape, np.int32) if out is None else out
    rr, cc = disk(center, radius, shape=shape)
    out[rr, cc] = lab
    return out


def test_inner_distance_peaks_at_centre_and_decreases_outward():
    y = _disk_labels((41, 41), (20, 20), 12)
    d = inner_distance(y)
    assert d.dtype == np.float32
    assert d[20, 20] == pytest.approx(1.0)
    assert np.unravel_index(np.argmax(d), d.shape) == (20, 20)
    profile = d[20, 20:33]
    inside = profile[profile > 0]
    assert np.all(np.diff(inside) < 0)
    # The 1-px eroded rim and the background stay 0.
    assert d[20, 32] == 0 and d[0, 0] == 0
    assert np.all(d[y == 0] == 0)


def test_inner_distance_formula_uses_squared_radius_and_sqrt_area():
    y = _disk_labels((41, 41), (20, 20), 12)
    d = inner_distance(y)
    eroded_area = np.count_nonzero(d > 0)
    r2 = 5.0**2
    assert d[20, 25] == pytest.approx(1 / (1 + r2 / np.sqrt(eroded_area)), rel=1e-5)
    d_fixed = inner_distance(y, alpha=0.5, beta=2.0)
    assert d_fixed[20, 25] == pytest.approx(1 / (1 + 0.5 * 2.0 * r2), rel=1e-5)


def test_inner_distance_centre_is_distance_weighted():
    # An L-shaped cell: its distance-weighted centre lies in the thick arm, not at the plain centroid.
    y = np.zeros((60, 60), np.int32)
    y[10:50, 10:30] = 1
    y[40:50, 30:55] = 1
    d = inner_distance(y)
    peak = np.unravel_index(np.argmax(d), d.shape)
    assert 10 <= peak[1] < 30 and peak[0] < 40


def test_alpha_auto_makes_profile_nearly_size_independent():
    # At the same relative position, 1/value - 1 = r² / sqrt(area) grows linearly with cell
    # size under alpha="auto" (r² quadruples, sqrt(area) doubles), but 4x with a fixed alpha.
    small = _disk_labels((41, 41), (20, 20), 8)
    big = _disk_labels((81, 81), (40, 40), 16)
    s_auto, b_auto = inner_distance(small)[20, 26], inner_distance(big)[40, 52]
    s_fix, b_fix = inner_distance(small, alpha=0.1)[20, 26], inner_distance(big, alpha=0.1)[40, 52]
    assert s_auto > b_auto > 0
    auto_ratio = (1 / b_auto - 1) / (1 / s_auto - 1)
    fixed_ratio = (1 / b_fix - 1) / (1 / s_fix - 1)
    assert fixed_ratio == pytest.approx(4.0, rel=1e-3)
    assert 1.6 < auto_ratio < 2.4


def test_touching_cells_each_get_their_own_peak():
    y = np.zeros((40, 60), np.int32)
    y[5:35, 5:30] = 1
    y[5:35, 30:55] = 2
    d = inner_distance(y)
    assert np.all(d[:, 29:31] == 0)  # both inner boundaries removed
    assert d[20, 17] == pytest.approx(1.0, abs=0.02) and d[20, 42] == pytest.approx(1.0, abs=0.02)


def test_pixelwise_one_hot_and_border_location():
    y = np.zeros((20, 30), np.int32)
    y[5:15, 5:15] = 1
    y[5:15, 15:25] = 2
    p = pixelwise(y)
    assert p.shape == (20, 30, 3) and p.dtype == np.float32
    assert np.all(p.sum(-1) == 1)
    assert set(np.unique(p)) <= {0.0, 1.0}
    border, interior, background = p[..., 0], p[..., 1], p[..., 2]
    # Inner rim of each cell and where they touch.
    assert border[5, 10] == 1 and border[10, 14] == 1 and border[10, 15] == 1
    # Dilation radius 1: one pixel of background around the cells becomes border too.
    assert border[4, 10] == 1 and border[3, 10] == 0
    assert interior[10, 10] == 1 and interior[10, 20] == 1
    assert background[0, 0] == 1
    assert interior[y == 0].sum() == 0
    assert np.count_nonzero(interior) == 2 * 8 * 8


def test_pixelwise_without_dilation_keeps_border_inside_cells():
    y = _disk_labels((30, 30), (15, 15), 8)
    p = pixelwise(y, border_width=0)
    assert np.all(y[p[..., 0] == 1] > 0)


def test_make_targets_shapes_and_order():
    y = np.zeros((2, 32, 32, 2), np.int32)
    y[:, 4:28, 4:28, 0] = 1
    y[:, 10:22, 10:22, 1] = 1
    t = make_targets(y)
    assert [a.shape for a in t] == [(2, 32, 32, 1), (2, 32, 32, 3), (2, 32, 32, 1), (2, 32, 32, 3)]
    assert np.count_nonzero(t[0][0, ..., 0]) > np.count_nonzero(t[2][0, ..., 0])
    assert np.array_equal(t[1][0], pixelwise(y[0, ..., 0]))
    single = make_targets(y[0])
    assert [a.shape for a in single] == [(32, 32, 1), (32, 32, 3), (32, 32, 1), (32, 32, 3)]
    with pytest.raises(ValueError):
        make_targets(np.zeros((32, 32), np.int32))


def test_background_only_gives_zero_distance_and_all_background():
    y = np.zeros((16, 16), np.int32)
    assert not inner_distance(y).any()
    assert np.all(pixelwise(y)[..., 2] == 1)


def test_matches_whole_image_reference_on_synthetic_tissue():
    # Bounding-box evaluation must equal a straightforward whole-image computation.
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    from pipeline.synthetic import make_tissue

    _, y = make_tissue((96, 96), seed=3)
    lab = y[..., 0]
    fast = inner_distance(lab)
    eroded = np.where(find_boundaries(lab, mode="inner"), 0, lab)
    dist = ndi.distance_transform_edt(eroded > 0)
    ref = np.zeros(lab.shape, np.float32)
    pieces, n = ndi.label(eroded > 0)
    for i in range(1, n + 1):
        m = pieces == i
        rr, cc = np.nonzero(m)
        w = dist[rr, cc]
        cy, cx = (w * rr).sum() / w.sum(), (w * cc).sum() / w.sum()
        ref[rr, cc] = 1 / (1 + ((rr - cy) ** 2 + (cc - cx) ** 2) / np.sqrt(m.sum()))
    np.testing.assert_allclose(fast, ref, atol=1e-5)


def test_ellipse_peak_near_centre():
    y = np.zeros((50, 50), np.int32)
    rr, cc = ellipse(25, 25, 8, 16, shape=y.shape)
    y[rr, cc] = 7
    d = inner_distance(y)
    assert d[25, 25] > 0.98
