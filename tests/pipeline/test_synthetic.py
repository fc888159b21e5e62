import numpy as np
import pytest
from scipy import ndimage as ndi

from pipeline.synthetic import make_dataset, make_tissue


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
