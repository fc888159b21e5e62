"""Automatic scale: the starter model finds the same cells whatever the image's pixel size."""
from pathlib import Path

import numpy as np
import pytest

from pipeline import io
from pipeline.model import autoscale, preprocess, starter
from pipeline.model.predict import Mesmer

VECTRA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "vectra"


def test_median_diameter_ignores_cells_on_the_edge():
    labels = np.zeros((100, 100), np.int32)
    labels[10:20, 10:20] = 1  # 100 px: diameter 11.3
    labels[40:60, 40:60] = 2  # 400 px: diameter 22.6
    labels[70:90, 10:30] = 3
    labels[0:50, 90:100] = 4  # touches the edge: not measured
    d, n = autoscale.median_diameter(labels)
    assert n == 3 and d == pytest.approx(2 * np.sqrt(400 / np.pi))
    assert autoscale.median_diameter(np.zeros((5, 5), np.int32)) == (None, 0)


def test_probe_window_goes_where_the_signal_is():
    X = np.zeros((1000, 1000, 2), np.float32)
    X[700:900, 600:800] = 1.0
    w = autoscale._probe_window(X, 300)
    assert w.shape == (300, 300, 2) and w.mean() > 0.3


@pytest.fixture(scope="module")
def app():
    folder = starter.starter_model_dir()
    assert folder is not None
    return Mesmer(folder)


def test_same_cells_at_half_native_and_double_resolution(app):
    X, _ = io.read_image(VECTRA / "image0.tif", channels=[1, 0])
    X = X.astype(np.float32)
    counts, mpps = {}, {}
    for factor in (0.5, 1.0, 2.0):
        Xs = X if factor == 1.0 else preprocess.resample(X, 1.0, 1.0 / factor)
        labels = app.predict(Xs, image_mpp="auto", compartment="whole-cell")
        counts[factor] = len(np.unique(labels[..., 0])) - 1
        (estimate,) = app.scale_estimates
        assert estimate.reliable
        mpps[factor] = estimate.image_mpp
    print("cells", counts, "estimated µm/px", mpps)
    assert max(counts.values()) <= 1.1 * min(counts.values()), counts
    # The estimated pixel size follows the resampling: half the pixels, twice the µm per pixel. Within 30%:
    # the model finds the same cells over a range of scales (the shipped starter: 212 / 216 / 213 cells from
    # estimates that imply 0.71 / 0.67 / 0.53 µm/px at native resolution), so the estimate lands anywhere in it.
    assert mpps[0.5] == pytest.approx(2 * mpps[1.0], rel=0.3)
    assert mpps[2.0] == pytest.approx(0.5 * mpps[1.0], rel=0.3)


def test_an_explicit_pixel_size_is_obeyed_even_when_wrong(app):
    from pipeline import synthetic

    X, _ = synthetic.make_tissue((192, 192), seed=8)
    seen = []
    real = app.predict_outputs

    def spy(Xin, image_mpp=None, *a, **k):
        seen.append((Xin.shape, image_mpp))
        return real(Xin, image_mpp, *a, **k)

    app.predict_outputs = spy
    try:
        app.predict(X, image_mpp=0.125)
    finally:
        del app.predict_outputs
    assert app.scale_estimates == [] and seen == [((192, 192, 2), 0.125)]
