import numpy as np
import pytest

from pipeline.baseline import nuclear_expansion
from pipeline.metrics import evaluate
from pipeline.synthetic import make_dataset

def test_runs_on_synthetic_with_consistent_layers():
    X, y = make_dataset(2, (192, 192), seed=3)
    pred = nuclear_expansion(X)
    assert pred.shape == y.shape and pred.dtype == np.int32
    cell, nuc = pred[0, ..., 0], pred[0, ..., 1]
    assert np.all(cell[nuc > 0] == nuc[nuc > 0])
    assert np.count_nonzero(cell) > np.count_nonzero(nuc)
    assert np.bincount(nuc.ravel())[1:].min() >= 15
    nuc_f1 = evaluate(y, pred, layer=1)["pooled"]["f1"]
    wc_f1 = evaluate(y, pred, layer=0)["pooled"]["f1"]
    assert nuc_f1 > 0.5
    # Expanding by 3 px under-grows cells 1.5-2.5x the nucleus: the paper's point.
    assert 0.2 < wc_f1 < nuc_f1


def test_channel_choice_and_expansion():
    X, _ = make_dataset(1, (128, 128), seed=4)
    swapped = X[0, ..., ::-1]
    a = nuclear_expansion(X[0])
    b = nuclear_expansion(swapped, nuclear_channel=1)
    assert np.array_equal(a, b)
    none = nuclear_expansion(X[0], expand_px=0)
    assert np.array_equal(none[..., 0], none[..., 1])


def test_blank_image_gives_no_cells():
    assert not nuclear_expansion(np.zeros((64, 64, 2), np.float32)).any()


def test_vectra_sample_sane_f1(shared_data):
    import tifffile

    VECTRA = shared_data / "vectra"
    img = tifffile.imread(VECTRA / "image0.tif")  # (2, H, W): membrane, nuclear
    gt = tifffile.imread(VECTRA / "image0_wholecell.tif").astype(np.int32)
    X = np.moveaxis(img, 0, -1)
    pred = nuclear_expansion(X, nuclear_channel=1)
    f1 = evaluate(gt, pred, layer=0)["pooled"]["f1"]
    assert f1 > 0.2, f1
