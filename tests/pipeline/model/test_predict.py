import numpy as np
import pytest

import keras  # a hard dependency: a broken install fails the suite, never skips it

from pipeline import metrics, synthetic  # noqa: E402
from pipeline.model import panoptic, predict, transforms  # noqa: E402


@pytest.fixture(scope="module")
def app():
    return predict.Mesmer(panoptic.build_panoptic(2, panoptic.LIGHT_BACKBONE))


def _oracle(n_channels=8):
    """A Mesmer whose 'network' reads the four target maps straight from the 8 input channels."""
    app = predict.Mesmer(panoptic.build_panoptic(n_channels, panoptic.LIGHT_BACKBONE))
    calls = []

    def network(batch):
        calls.append(batch.shape)
        return [batch[..., 0:1], batch[..., 1:4], batch[..., 4:5], batch[..., 5:8]]

    app._network = network
    return app, calls


def _targets_as_image(y):
    return np.concatenate(transforms.make_targets(y), axis=-1).astype(np.float32)


@pytest.mark.parametrize("shape", [(300, 420), (120, 90)])
def test_tiling_and_postprocess_recover_the_cells(monkeypatch, shape):
    # Perfect network outputs must give back the ground-truth cells through tiling, blending and
    # deep watershed, for images bigger than a tile and smaller than one (padded).
    monkeypatch.setattr(predict.preprocess, "normalize", lambda X: np.asarray(X, np.float32))
    _, y = synthetic.make_tissue(shape, seed=3)
    app, calls = _oracle()
    labels = app.predict(_targets_as_image(y))
    assert labels.shape == shape + (2,) and labels.dtype == np.int32
    assert all(c[1:3] == (256, 256) for c in calls)
    assert metrics.evaluate(y, labels, layer=0)["pooled"]["f1"] > 0.9
    assert metrics.evaluate(y, labels, layer=1)["pooled"]["f1"] > 0.9
    assert app.timings["network_s"] > 0 and app.timings["postprocess_s"] > 0


def test_image_pixel_size_is_resampled_to_the_model_and_back(monkeypatch):
    monkeypatch.setattr(predict.preprocess, "normalize", lambda X: np.asarray(X, np.float32))
    _, y = synthetic.make_tissue((256, 256), seed=4)
    image = _targets_as_image(y)
    # The same tissue imaged at 0.25 µm/px: twice the pixels. The model must see it at 0.5 µm/px.
    fine = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)
    fine_truth = np.repeat(np.repeat(y, 2, axis=0), 2, axis=1)
    app, calls = _oracle()
    labels = app.predict(fine, image_mpp=0.25)
    assert labels.shape == (512, 512, 2)
    # 256 px at model scale is one tile; without resampling a 512 image takes 9.
    assert sum(c[0] for c in calls) == 1
    assert metrics.evaluate(fine_truth, labels, layer=0)["pooled"]["f1"] > 0.9


def test_real_model_shapes_batch_and_compartments(app):
    X, _ = synthetic.make_dataset(2, (96, 160), seed=1)
    both = app.predict(X, batch_size=2)
    assert both.shape == (2, 96, 160, 2) and both.dtype == np.int32
    wc = app.predict(X[0], compartment="whole-cell")
    assert wc.shape == (96, 160, 2) and not wc[..., 1].any()
    nuc = app.predict(X[0], compartment="nuclear")
    assert not nuc[..., 0].any()


def test_progress_reports_every_tile(app):
    X, _ = synthetic.make_tissue((300, 300), seed=2)
    seen = []
    app.predict(X, batch_size=2, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (4, 4) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_bad_inputs(app):
    with pytest.raises(ValueError, match="2 channels"):
        app.predict(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="expected an image"):
        app.predict(np.zeros((64, 64), np.float32))
    with pytest.raises(ValueError, match="compartment"):
        app.predict(np.zeros((64, 64, 2), np.float32), compartment="cyto")
    with pytest.raises(ValueError, match="image_mpp"):
        app.predict(np.zeros((64, 64, 2), np.float32), image_mpp=0)
