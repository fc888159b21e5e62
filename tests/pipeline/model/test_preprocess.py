import numpy as np
import pytest

from pipeline.model.preprocess import normalize, percentile_clip, resample, resample_labels


def test_range_dtype_shape_and_per_channel_independence():
    rng = np.random.default_rng(0)
    X = np.stack([rng.gamma(2.0, 50.0, (64, 80)), rng.random((64, 80)) * 0.01], -1).astype(np.float32)
    out = normalize(X)
    assert out.shape == X.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    # Both channels use the full range even though their raw scales differ 10⁴-fold.
    assert out[..., 0].max() > 0.9 and out[..., 1].max() > 0.9
    batch = normalize(np.stack([X, X * 3.0]))
    assert batch.shape == (2, 64, 80, 2)
    np.testing.assert_allclose(batch[0], batch[1], atol=1e-5)
    np.testing.assert_allclose(batch[0], out, atol=1e-6)


@pytest.mark.parametrize("value", [0.0, 5.0])
def test_constant_and_blank_channels_become_zero(value):
    X = np.full((40, 40, 2), value, np.float32)
    X[..., 1] = np.linspace(0, 1, 1600).reshape(40, 40)
    out = normalize(X)
    assert not np.any(out[..., 0])
    assert out[..., 1].max() > 0.9


def test_nan_and_inf_never_propagate():
    rng = np.random.default_rng(1)
    X = rng.random((32, 32, 2)).astype(np.float32)
    X[3, 4, 0] = np.nan
    X[5, 6, 1] = np.inf
    out = normalize(X)
    assert np.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1


def test_tiny_images_work():
    for shape in [(1, 1, 2), (1, 7, 2), (3, 3, 2), (5, 200, 2)]:
        out = normalize(np.random.default_rng(2).random(shape).astype(np.float32))
        assert out.shape == shape and np.isfinite(out).all()


def test_percentile_clip_ignores_zeros_and_hot_pixels():
    img = np.zeros((100, 100), np.float32)
    img[:10, :] = np.linspace(1, 2, 1000).reshape(10, 100)
    img[50, 50] = 1000.0
    clipped = percentile_clip(img, 99.9)
    assert clipped.max() < 3.0
    assert clipped[0, 0] == img[0, 0]
    assert np.count_nonzero(clipped) == np.count_nonzero(img)
    # With the percentile over all pixels instead, the mostly-zero image would keep the outlier.


def test_hot_pixel_does_not_squash_contrast():
    rng = np.random.default_rng(3)
    X = rng.random((64, 64, 1)).astype(np.float32)
    X[0, 0, 0] = 1e6
    out = normalize(X, kernel_size=None, clip_limit=1e-9)
    assert np.median(out) > 0.2


def test_resample_to_model_pixel_size():
    X = np.random.default_rng(4).random((100, 60, 2)).astype(np.float32)
    up = resample(X, from_mpp=1.0, to_mpp=0.5)
    assert up.shape == (200, 120, 2) and up.dtype == np.float32
    down = resample(X, from_mpp=0.25)
    assert down.shape == (50, 30, 2)
    assert resample(X, 0.5).shape == X.shape
    assert resample(X[None], 1.0).shape == (1, 200, 120, 2)
    flat = np.full((10, 10, 1), 0.7, np.float32)
    np.testing.assert_allclose(resample(flat, 0.3), 0.7, atol=1e-6)
    with pytest.raises(ValueError):
        resample(X, 0.0)


def test_resample_labels_keeps_ids_and_roundtrips():
    y = np.zeros((40, 30, 2), np.int32)
    y[5:20, 5:15, 0] = 3
    y[8:12, 8:12, 1] = 3
    y[25:35, 10:25, 0] = 11
    big = resample_labels(y, (80, 60))
    assert big.shape == (80, 60, 2)
    assert set(np.unique(big)) == set(np.unique(y))
    back = resample_labels(big, (40, 30))
    assert np.array_equal(back, y)
    stack = resample_labels(np.stack([y, y]), (20, 15))
    assert stack.shape == (2, 20, 15, 2)
    assert resample_labels(y[..., 0], (17, 13)).shape == (17, 13)


def test_channels_normalised_in_threads_give_the_serial_numbers(monkeypatch):
    from pipeline.model import preprocess

    X = np.random.default_rng(7).gamma(2.0, 100.0, (600, 520, 3)).astype(np.float32)
    threaded = normalize(X)
    monkeypatch.setattr(preprocess, "_THREADED_PIXELS", 10**12)
    np.testing.assert_array_equal(threaded, normalize(X))
    np.testing.assert_array_equal(threaded[..., 1], normalize(X[..., 1:2])[..., 0])
