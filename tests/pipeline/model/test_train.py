import json

import numpy as np
import pytest

import keras  # a hard dependency: a broken install fails the suite, never skips it

from pipeline import synthetic  # noqa: E402
from pipeline.model import panoptic, saving, train  # noqa: E402
from pipeline.model.preprocess import normalize  # noqa: E402


def test_augmentation_keeps_image_and_labels_aligned():
    rng = np.random.default_rng(0)
    _, y = synthetic.make_tissue((96, 128), seed=5)
    # The image is the labels themselves, so any misalignment shows as a mismatch.
    x = y[..., :1].astype(np.float32)
    seen_rotations = set()
    for _ in range(12):
        xa, ya = train.augment_pair(rng, x, y, crop=64, zoom=None)
        assert xa.shape == (64, 64, 1) and ya.shape == (64, 64, 2)
        np.testing.assert_array_equal(xa[..., 0], ya[..., 0])
        seen_rotations.add(tuple(np.round(xa[0, :3, 0])))
    assert len(seen_rotations) > 1


def test_zoom_resizes_labels_without_inventing_ids():
    rng = np.random.default_rng(1)
    X, y = synthetic.make_tissue((128, 128), seed=6)
    for _ in range(5):
        xa, ya = train.augment_pair(rng, X, y, crop=64, zoom=(0.7, 1.43))
        assert xa.shape == (64, 64, 2)
        assert set(np.unique(ya)) <= set(np.unique(y))


def test_dataset_batches_hold_the_four_targets():
    X, y = synthetic.make_dataset(3, (96, 96), seed=2)
    ds = train.make_dataset(X, y, batch_size=2, crop_size=64, steps=3)
    assert len(ds) == 3
    xb, targets = ds[0]
    assert xb.shape == (2, 64, 64, 2)
    assert [t.shape[-1] for t in targets] == [1, 3, 1, 3]
    np.testing.assert_allclose(targets[1].sum(-1), 1.0)
    val = train.make_dataset(X, y, batch_size=2, augment=False)
    assert len(val) == 2 and val[1][0].shape == (1, 96, 96, 2)


def test_recalibrated_batchnorm_equals_mean_of_batch_statistics():
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.BatchNormalization()(inp))
    rng = np.random.default_rng(3)
    batches = [rng.normal(loc=i, size=(16, 4)).astype(np.float32) for i in range(5)]
    assert train.recalibrate_batchnorm(model, batches) == 5
    bn = model.layers[-1]
    expected = np.mean([b.mean(axis=0) for b in batches], axis=0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), expected, rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.99


def test_bad_training_data():
    with pytest.raises(ValueError, match="y must be"):
        train.check_dataset(np.zeros((2, 64, 64, 2)), np.zeros((2, 64, 64), np.int32))
    with pytest.raises(ValueError, match="no training data"):
        train.train()


@pytest.mark.slow
def test_train_saves_version_keeps_best_and_fine_tunes(tmp_path):
    X, y = synthetic.make_dataset(4, (96, 96), seed=7)
    np.savez(tmp_path / "train.npz", X=X, y=y)
    out = tmp_path / "v1"
    result = train.train(
        data=tmp_path / "train.npz", val_split=0.25, backbone="mobilenetv2", epochs=3, steps_per_epoch=1,
        batch_size=2, crop_size=64, lr=1e-3, out=out, verbose=0, bn_batches=2,
    )
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["backbone"] == "mobilenetv2" and cfg["channels"] == ["nuclear", "membrane"] and cfg["mpp"] == 0.5
    assert cfg["training"]["data"][0]["sha256"] == saving.sha256_file(tmp_path / "train.npz")
    assert cfg["training"]["n_train"] == 3 and cfg["training"]["n_val"] == 1
    assert cfg["postprocess"]["whole_cell_kwargs"]["maxima_threshold"] == 0.075
    history = result.history
    assert len(history) == 3 and (out / "history.csv").read_text().count("\n") == 4
    val_losses = [h["val_loss"] for h in history]
    assert cfg["training"]["best_epoch"] == int(np.argmin(val_losses))
    assert [h["learning_rate"] for h in history] == pytest.approx([1e-3, 0.99e-3, 0.99**2 * 1e-3], rel=1e-5)

    # The kept weights are the best epoch's: re-evaluating them gives the best validation loss.
    order = np.random.default_rng(0).permutation(4)  # train()'s split with seed 0
    val = train.make_dataset(normalize(X[order[:1]]), y[order[:1]], batch_size=2, augment=False)
    assert result.model.evaluate(val, verbose=0)[0] == pytest.approx(min(val_losses), rel=1e-4)
    version = saving.load_model_version(out)
    assert version.config["training"]["best_loss"] == pytest.approx(min(val_losses), rel=1e-5)

    # Fine-tuning starts from the parent's weights: with a near-zero learning rate the trainable
    # weights come out as the parent's, which a fresh initialisation would not match.
    tuned = train.train(X, y, from_version=out, epochs=1, steps_per_epoch=1, batch_size=2, crop_size=64,
                        lr=1e-12, out=tmp_path / "v2", verbose=0, bn_batches=0, seed=1)
    assert tuned.config["parent"] == str(out) and tuned.config["backbone"] == "mobilenetv2"
    child = saving.load_model_version(tmp_path / "v2").model
    fresh = panoptic.build_panoptic(2, "mobilenetv2")
    parent_w = [keras.ops.convert_to_numpy(w) for w in version.model.trainable_weights]
    child_w = [keras.ops.convert_to_numpy(w) for w in child.trainable_weights]
    fresh_w = [keras.ops.convert_to_numpy(w) for w in fresh.trainable_weights]
    assert max(np.abs(a - b).max() for a, b in zip(parent_w, child_w)) < 1e-6
    assert max(np.abs(a - b).max() for a, b in zip(parent_w, fresh_w)) > 1e-2


@pytest.mark.slow
def test_whole_cell_only_labels_switch_off_the_nuclear_heads():
    X, y = synthetic.make_dataset(2, (64, 64), seed=8)
    y[..., 1] = 0
    result = train.train(X, y, val_split=0.5, backbone="mobilenetv2", epochs=1, steps_per_epoch=1,
                         batch_size=2, crop_size=64, verbose=0, bn_batches=1)
    assert result.config["training"]["nuclear_weight"] == 0.0


def test_mixed_annotations_sampling_and_masks():
    X, y = synthetic.make_dataset(3, (96, 96), seed=4)
    weights = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
    ds = train.make_dataset(X, y, batch_size=4, crop_size=64, steps=2, layer_weights=weights, sampling=[0, 1, 0])
    xb, targets, sample_weights = ds[0]
    assert xb.shape == (4, 64, 64, 2) and len(targets) == 4 and len(sample_weights) == 4
    # Only image 1 (nuclei only) is drawn: whole-cell heads weigh 0, nuclear heads 1, per sample.
    for w, expected in zip(sample_weights, (0.0, 0.0, 1.0, 1.0)):
        assert w.shape == (4, 1, 1) and np.all(w == expected)


def test_wall_clock_budget_and_best_checkpoint(tmp_path):
    X, y = synthetic.make_dataset(3, (96, 96), seed=5)
    result = train.train(X, y, val=(X[:1], y[:1]), backbone="mobilenetv2", epochs=5, steps_per_epoch=1,
                         batch_size=2, crop_size=64, verbose=0, bn_batches=0, calibrate=False,
                         architecture=dict(pyramid_filters=32, head_filters=8, location=False),
                         layer_weights=np.ones((3, 2)), max_seconds=1e-3, checkpoint=tmp_path / "ckpt")
    assert len(result.history) == 1  # stopped after the first epoch past the budget
    saved = saving.load_model_version(tmp_path / "ckpt")
    assert saved.config["training"]["checkpoint_epoch"] == 0
    assert saved.config["architecture"] == {"pyramid_filters": 32, "head_filters": 8, "location": False}
    assert not any("location" in layer.name for layer in saved.model.layers)
    with pytest.raises(ValueError, match="layer_weights"):
        train.train(X, y, backbone="mobilenetv2", epochs=1, steps_per_epoch=1, layer_weights=np.ones((2, 2)))
