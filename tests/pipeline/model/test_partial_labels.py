"""Training on partial labels: unknown pixels carry no loss, the mask travels with the dataset file."""
import json

import numpy as np
import pytest

import keras  # a hard dependency: a broken install fails the suite, never skips it
import tensorflow as tf

from pipeline import dataset, io, synthetic
from pipeline.model import losses, saving, train, transforms



def tiny_mesmer():
    """A few-layer model with Mesmer's signature: fit() traces in a second, unlike a MobileNetV2."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 2))
    x = keras.layers.BatchNormalization()(keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp))
    return keras.Model(inp, [keras.layers.Conv2D(k, 1, activation="relu" if k == 1 else "softmax")(x)
                             for k in (1, 3, 1, 3)])


def _partial(y, keep_every=3):
    """Every ``keep_every``-th whole-cell id kept as 'traced', the rest erased; the mask of what is known."""
    cells = y[..., 0]
    traced = np.isin(cells, np.unique(cells[cells > 0])[::keep_every])
    partial = np.where(traced, cells, 0)
    return np.stack([partial, np.zeros_like(partial)], -1).astype(np.int32), dataset.partial_label_mask(partial)


def test_the_band_is_where_targets_do_not_depend_on_untraced_pixels():
    _, y = synthetic.make_tissue((128, 128), seed=11, density=0.95)
    partial, known = _partial(y)
    assert 0.1 < known.mean() < 0.7
    full_t = transforms.make_targets(np.stack([y[..., 0], y[..., 0]], -1))
    part_t = transforms.make_targets(np.stack([partial[..., 0], partial[..., 0]], -1))
    for a, b in zip(full_t, part_t):
        np.testing.assert_array_equal(a[known], b[known])
    # One pixel further out the targets do depend on the untraced neighbours: the band is as wide as it can be.
    wider = dataset.partial_label_mask(partial[..., 0], band=2)
    assert any(not np.array_equal(a[wider], b[wider]) for a, b in zip(full_t, part_t))


def test_mask_survives_save_and_load(tmp_path):
    X, y = synthetic.make_dataset(2, (48, 48), seed=3)
    mask = np.zeros((2, 48, 48), bool)
    mask[0, 5:20, 7:30] = True
    mask[1] = True
    io.save_dataset(tmp_path / "p.npz", X, y, [{"i": 0}, {"i": 1}], mask=mask)
    data = io.load_dataset(tmp_path / "p.npz")
    assert data["mask"].dtype == bool
    np.testing.assert_array_equal(data["mask"], mask)
    X2, y2, m2 = train.load_npz_masked(tmp_path / "p.npz")
    np.testing.assert_array_equal(m2, mask)
    io.save_dataset(tmp_path / "full.npz", X, y)
    assert io.load_dataset(tmp_path / "full.npz")["mask"] is None
    with pytest.raises(ValueError, match="mask must be"):
        io.save_dataset(tmp_path / "bad.npz", X, y, mask=mask[:, :10])
    np.savez(tmp_path / "bad2.npz", X=X, y=y, mask=np.full((2, 48, 48), 7, np.uint8))
    with pytest.raises(ValueError, match="mask must hold 0"):
        io.load_dataset(tmp_path / "bad2.npz")


def _loss_and_grads(model, batch):
    x, targets, weights = batch
    with tf.GradientTape() as tape:
        preds = model(x, training=False)
        total = 0.0
        for fn, w_head, t, p, sw in zip(*losses.mesmer_losses(0.0), targets, preds, weights):
            total += w_head * tf.reduce_mean(fn(t, p) * sw)
    grads = tape.gradient(total, model.trainable_weights)
    return float(total), [g.numpy() for g in grads if g is not None]


def test_masked_pixels_contribute_no_gradient():
    X, y = synthetic.make_dataset(2, (64, 64), seed=5, density=0.95)
    y[..., 1] = 0
    parts = [_partial(yi) for yi in y]
    yp = np.stack([p[0] for p in parts])
    mask = np.stack([p[1] for p in parts])
    # The same known pixels, but the unknown ones hold something else: the full truth there.
    other = np.where(mask[..., None], yp, y)
    assert not np.array_equal(other, yp)
    keras.utils.set_random_seed(0)
    model = tiny_mesmer()
    Xn = np.asarray(X, np.float32) / max(1.0, float(X.max()))
    for augment in (False, True):
        a = train.make_dataset(Xn, yp, batch_size=2, crop_size=64, augment=augment, steps=1, mask=mask, seed=2)[0]
        b = train.make_dataset(Xn, other, batch_size=2, crop_size=64, augment=augment, steps=1, mask=mask, seed=2)[0]
        loss_a, grads_a = _loss_and_grads(model, a)
        loss_b, grads_b = _loss_and_grads(model, b)
        assert loss_a == pytest.approx(loss_b, rel=1e-6)
        # Equal up to float summation order (oneDNN): compared against the gradient's own scale.
        scale = max(float(np.abs(g).max()) for g in grads_a)
        assert scale > 0
        for ga, gb in zip(grads_a, grads_b):
            np.testing.assert_allclose(ga, gb, rtol=1e-4, atol=1e-5 * scale)
    # Without the mask the same change moves the loss: the test can fail.
    c = train.make_dataset(Xn, yp, batch_size=2, augment=False, layer_weights=np.ones((2, 2)))[0]
    d = train.make_dataset(Xn, other, batch_size=2, augment=False, layer_weights=np.ones((2, 2)))[0]
    (loss_c, grads_c), (loss_d, grads_d) = _loss_and_grads(model, c), _loss_and_grads(model, d)
    assert loss_c != pytest.approx(loss_d, rel=1e-3)
    scale = max(float(np.abs(g).max()) for g in grads_c)
    assert max(float(np.abs(gc - gd).max()) for gc, gd in zip(grads_c, grads_d)) > 1e-2 * scale


@pytest.mark.slow
def test_training_on_a_partial_dataset_records_the_mask(tmp_path):
    X, y = synthetic.make_dataset(3, (64, 64), seed=9, density=0.95)
    y[..., 1] = 0
    parts = [_partial(yi) for yi in y]
    yp = np.stack([p[0] for p in parts])
    mask = np.stack([p[1] for p in parts])
    mask[2] = True  # one fully labelled image
    yp[2] = y[2]
    io.save_dataset(tmp_path / "partial.npz", X, yp, mask=mask)
    result = train.train(data=tmp_path / "partial.npz", val_split=0.34, from_version=saving.ModelVersion(
                         tiny_mesmer(), saving.default_config(2)), epochs=2, steps_per_epoch=1, batch_size=2, crop_size=64,
                         verbose=0, bn_batches=0, calibrate=False, out=tmp_path / "v", seed=1)
    record = json.loads((tmp_path / "v" / "config.json").read_text())["training"]["label_mask"]
    assert record["of"] == 3 and record["images"] == 2
    assert record["known_fraction"] == pytest.approx(mask[:2].mean(), abs=1e-4)
    assert all(np.isfinite(h["loss"]) and np.isfinite(h["val_loss"]) for h in result.history)


def test_scoring_against_partial_labels_ignores_cells_nobody_traced():
    _, y = synthetic.make_tissue((96, 96), seed=4, density=0.95)
    partial, known = _partial(y)
    from pipeline import metrics

    # A perfect prediction of every cell, traced or not: only the traced ones count, all of them right.
    kept = dataset.keep_known_cells(y[..., 0], known)
    assert set(np.unique(kept)) == set(np.unique(partial[..., 0]))
    assert metrics.evaluate([partial[..., 0]], [kept])["pooled"]["f1"] == 1.0
    assert metrics.evaluate([partial[..., 0]], [y[..., 0]])["pooled"]["f1"] < 0.7
