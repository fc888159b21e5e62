from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from pipeline.synthetic import (
    CHANNEL_FAULTS,
    KNOBS,
    VALUE_RANGES,
    contact_sheet,
    make_dataset,
    make_tissue,
    make_varied_tissue,
    random_settings,
)


@pytest.fixture(scope="module")
def tissue():
    return make_tissue((256, 256), seed=0)


def test_shapes_dtypes_and_range(tissue):
    X, y = tissue
    assert X.shape == (256, 256, 2) and X.dtype == np.float32
    assert y.shape == (256, 256, 2) and y.dtype == np.int32
    assert X.min() >= 0 and np.isfinite(X).all()
    for c in range(2):
        assert 0.5 < np.percentile(X[..., c], 99.5) <= 1.01


def test_deterministic_per_seed():
    a = make_tissue((96, 128), seed=4)
    b = make_tissue((96, 128), seed=4)
    c = make_tissue((96, 128), seed=5)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    X1, y1 = make_dataset(3, (64, 64), seed=1)
    X2, y2 = make_dataset(3, (64, 64), seed=1)
    assert X1.shape == (3, 64, 64, 2) and y1.shape == (3, 64, 64, 2)
    assert X1.dtype == np.float32 and y1.dtype == np.int32
    assert np.array_equal(X1, X2) and np.array_equal(y1, y2)
    assert not np.array_equal(y1[0], y1[1])


def test_label_consistency(tissue):
    _, y = tissue
    cell, nuc = y[..., 0], y[..., 1]
    n = cell.max()
    ids = np.unique(cell)[1:]
    assert np.array_equal(ids, np.arange(1, n + 1))  # dense ids
    assert np.all(nuc[nuc > 0] == cell[nuc > 0])  # nucleus inside its own cell
    sizes = np.bincount(cell.ravel())[1:]
    assert sizes.min() >= 15
    nsizes = np.bincount(nuc.ravel(), minlength=n + 1)[1:]
    assert np.all(nsizes[nsizes > 0] >= 15)
    assert np.mean(nsizes > 0) > 0.9  # nearly every cell has a nucleus
    for lab_img in (cell, nuc):
        for i, sl in enumerate(ndi.find_objects(lab_img)):
            if sl is not None:
                assert ndi.label(lab_img[sl] == i + 1)[1] == 1  # one piece each


def test_realistic_sizes_and_counts(tissue):
    X, y = tissue
    cell, nuc = y[..., 0], y[..., 1]
    n = cell.max()
    # TissueNet 256² crops at 0.5 µm/px hold tens to a few hundred cells.
    assert 40 <= n <= 250
    inner = [i for i, sl in enumerate(ndi.find_objects(nuc), 1) if sl and sl[0].start > 0 and sl[1].start > 0
             and sl[0].stop < 256 and sl[1].stop < 256]
    nuc_area = np.bincount(nuc.ravel())[inner]
    cell_area = np.bincount(cell.ravel())[inner]
    nuc_diam = 2 * np.sqrt(nuc_area / np.pi)
    assert 10 <= np.median(nuc_diam) <= 20
    ratio = np.sqrt(cell_area / nuc_area)
    assert 1.3 <= np.median(ratio) <= 2.6
    # Cells touch: a good share of cell border pixels face another cell.
    touching = (cell[:, 1:] != cell[:, :-1]) & (cell[:, 1:] > 0) & (cell[:, :-1] > 0)
    assert touching.sum() > 0.1 * n * 10
    assert 0.4 < np.mean(cell > 0) < 0.95


def test_signal_follows_labels(tissue):
    X, y = tissue
    cell, nuc = y[..., 0], y[..., 1]
    from skimage.segmentation import find_boundaries

    border = find_boundaries(cell, mode="inner")
    bg = cell == 0
    assert X[..., 0][nuc > 0].mean() > 3 * X[..., 0][bg].mean()
    assert X[..., 1][border].mean() > 2 * X[..., 1][(nuc > 0) & ~border].mean()
    # Membrane brightness is uneven between cells.
    per_cell = ndi.mean(X[..., 1], labels=np.where(border, cell, 0), index=np.arange(1, cell.max() + 1))
    assert np.nanstd(per_cell) / np.nanmean(per_cell) > 0.15


def test_options_change_the_tissue():
    _, sparse = make_tissue((128, 128), seed=1, density=0.4)
    _, dense = make_tissue((128, 128), seed=1, density=1.0)
    assert sparse[..., 0].max() < dense[..., 0].max()
    Xq, _ = make_tissue((128, 128), seed=1, noise=0.0, debris=0.0, blur=0.0)
    Xn, _ = make_tissue((128, 128), seed=1, noise=0.3)
    assert np.isfinite(Xq).all() and np.isfinite(Xn).all()


def test_odd_shapes():
    X, y = make_tissue((37, 300), seed=3)
    assert X.shape == (37, 300, 2) and y.shape == (37, 300, 2)


@pytest.mark.slow
def test_large_tissue():
    # How long it takes: `python bench/model.py --case synthetic@2048`.
    X, y = make_tissue((2048, 2048), seed=0)
    assert X.shape == (2048, 2048, 2) and y[..., 0].max() > 3000


# --- domain randomisation ------------------------------------------------------------------------

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _check_label_invariants(y):
    cell, nuc = y[..., 0], y[..., 1]
    ids = np.unique(cell)[1:]
    assert np.array_equal(ids, np.arange(1, len(ids) + 1))
    assert np.all(nuc[nuc > 0] == cell[nuc > 0])
    assert np.bincount(cell.ravel())[1:].min() >= 15
    for i, sl in enumerate(ndi.find_objects(cell)):
        if sl is not None:
            assert ndi.label(cell[sl] == i + 1)[1] == 1


def test_random_settings_are_seeded_listed_and_varied():
    a, b = random_settings(3), random_settings(3)
    assert a == b and set(a) == set(KNOBS)
    draws = [random_settings(s) for s in range(200)]
    diam = np.array([d["nucleus_diameter"] * d["cell_scale"] for d in draws])
    assert diam.min() < 9 and diam.max() > 45  # 6-60 px cells by default
    assert {d["value_range"] for d in draws} == set(VALUE_RANGES)
    assert {d["channel_fault"] for d in draws} == set(CHANNEL_FAULTS)
    assert any(d["cytoplasm"] == 1.0 for d in draws) and any(d["cytoplasm"] == 0.0 for d in draws)
    assert any(d["elongation"] > 2 for d in draws)


def test_varied_tissues_keep_the_label_invariants_and_sheet_is_written():
    samples = []
    for seed in range(10):
        X, y, settings = make_varied_tissue((160, 192), seed=seed)
        assert X.shape == (160, 192, 2) and y.shape == (160, 192, 2) and y.dtype == np.int32
        assert X.dtype == {"unit": np.float32, "float": np.float32, "uint8": np.uint8, "uint16": np.uint16}[
            settings["value_range"]]
        assert np.isfinite(X.astype(np.float64)).all()
        _check_label_invariants(y)
        samples.append((X, y))
    ARTIFACTS.mkdir(exist_ok=True)
    sheet = ARTIFACTS / "synthetic_sheet.png"
    contact_sheet(samples, sheet, tile=160)
    from PIL import Image

    assert Image.open(sheet).size == (4 * 160, 10 * 164)


def _median_aspect(cell):
    from skimage.measure import regionprops

    props = [p for p in regionprops(cell) if p.area > 50 and p.axis_minor_length > 0]
    return np.median([p.axis_major_length / p.axis_minor_length for p in props])


def test_elongation_and_size_knobs():
    _, round_ = make_tissue((256, 256), seed=2)
    _, long_ = make_tissue((256, 256), seed=2, elongation=2.5)
    assert _median_aspect(long_[..., 0]) > 1.5 * _median_aspect(round_[..., 0])
    _check_label_invariants(long_)
    for nd, cs, lo, hi in ((4.0, 1.5, 4, 10), (30.0, 2.0, 40, 75)):
        _, y = make_tissue((384, 384), seed=1, nucleus_diameter=nd, cell_scale=cs)
        areas = np.bincount(y[..., 0].ravel())[1:]
        diam = 2 * np.sqrt(np.median(areas) / np.pi)
        assert lo <= diam <= hi, (nd, diam)
        _check_label_invariants(y)


def test_nucleus_knobs():
    _, y0 = make_tissue((256, 256), seed=4)
    _, ym = make_tissue((256, 256), seed=4, missing_nuclei=0.3)
    share = lambda y: np.mean(np.bincount(y[..., 1].ravel(), minlength=y[..., 0].max() + 1)[1:] > 0)  # noqa: E731
    assert share(ym) < share(y0) - 0.15
    _, yo = make_tissue((256, 256), seed=4, nucleus_offset=0.5)

    def offset(y):
        ids = np.arange(1, y[..., 0].max() + 1)
        has = np.bincount(y[..., 1].ravel(), minlength=len(ids) + 1)[1:] > 0
        c = np.array(ndi.center_of_mass(y[..., 0] > 0, y[..., 0], ids[has]))
        n = np.array(ndi.center_of_mass(y[..., 1] > 0, y[..., 1], ids[has]))
        return np.median(np.hypot(*(c - n).T))

    assert offset(yo) > 1.3 * offset(y0)
    Xd, yd = make_tissue((256, 256), seed=4, dim_nuclei=1.0)
    X0, _ = make_tissue((256, 256), seed=4)
    assert np.array_equal(yd, y0)  # out of focus: still labelled
    nuc = y0[..., 1] > 0
    assert Xd[..., 0][nuc].mean() / Xd[..., 0][~nuc].mean() < 0.6 * X0[..., 0][nuc].mean() / X0[..., 0][~nuc].mean()


def test_stain_and_instrument_knobs():
    X0, y = make_tissue((256, 256), seed=6, noise=0.0, debris=0.0)
    Xc, _ = make_tissue((256, 256), seed=6, noise=0.0, debris=0.0, cytoplasm=1.0)
    from skimage.segmentation import find_boundaries

    border = find_boundaries(y[..., 0], mode="inner")
    inside = (y[..., 0] > 0) & ~border & (y[..., 1] == 0)
    ratio = lambda X: X[..., 1][inside].mean() / X[..., 1][border].mean()  # noqa: E731
    assert ratio(Xc) > 2 * ratio(X0)  # a fill, not an outline
    Xi, _ = make_tissue((256, 256), seed=6, illumination=0.7)
    bg = y[..., 0] == 0
    q = lambda X: [X[:128][bg[:128]].mean(), X[128:][bg[128:]].mean(), X[:, :128][bg[:, :128]].mean(), X[:, 128:][bg[:, 128:]].mean()]  # noqa: E731
    assert np.ptp(q(Xi[..., 0])) > 2 * np.ptp(q(make_tissue((256, 256), seed=6)[0][..., 0]))
    Xb, _ = make_tissue((256, 256), seed=6, bleed=0.3)
    nuc = y[..., 1] > 0
    assert Xb[..., 1][nuc].mean() > 1.5 * make_tissue((256, 256), seed=6)[0][..., 1][nuc].mean()
    X8, _ = make_tissue((128, 128), seed=6, value_range="uint8")
    X16, _ = make_tissue((128, 128), seed=6, value_range="uint16")
    assert X8.dtype == np.uint8 and X16.dtype == np.uint16 and X16.max() > 255
    Xe, _ = make_tissue((128, 128), seed=6, channel_fault="empty-membrane")
    assert Xe[..., 1].std() < 0.05 * Xe[..., 0].std()
    Xs, _ = make_tissue((128, 128), seed=6, channel_fault="saturated-nuclear")
    assert np.mean(Xs[..., 0] == Xs[..., 0].max()) > 0.1
    Xa, _ = make_tissue((256, 256), seed=6, artefacts=4.0, debris=0.0)
    assert (Xa > 1.5).sum() > (make_tissue((256, 256), seed=6, debris=0.0)[0] > 1.5).sum() + 20
    with pytest.raises(ValueError, match="value_range"):
        make_tissue((64, 64), value_range="int8")
    with pytest.raises(ValueError, match="channel_fault"):
        make_tissue((64, 64), channel_fault="broken")
