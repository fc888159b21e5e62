"""Fine-tuning within a budget: replay of the starter's synthetic tissue, warm-up, early stopping."""
import numpy as np
import pytest

from pipeline import synthetic
from pipeline.model import finetune, saving, starter_recipe, train



def tiny_mesmer():
    """A few-layer model with Mesmer's signature: fit() traces in a second, unlike a MobileNetV2."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 2))
    x = keras.layers.BatchNormalization()(keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp))
    return keras.Model(inp, [keras.layers.Conv2D(k, 1, activation="relu" if k == 1 else "softmax")(x)
                             for k in (1, 3, 1, 3)])


def test_replay_mixes_the_starters_synthetic_tissue_into_each_batch():
    X, y = synthetic.make_dataset(3, (64, 64), seed=1)
    y[0, ..., 1] = 0  # a whole-cell-only correction
    Xa, ya, mask, weights, sampling, record = finetune.with_replay(X, y, share=0.25, n=2)
    assert Xa.shape == (5, 64, 64, 2) and mask is None and record["tiles"] == 2
    Xr, yr, _ = starter_recipe.synthetic_data(2, starter_recipe.RECIPE["synthetic_seed"], shape=(64, 64))
    np.testing.assert_array_equal(Xa[3:], Xr)
    np.testing.assert_array_equal(ya[3:], yr)
    assert sampling[3:].sum() == pytest.approx(0.25) and sampling.sum() == pytest.approx(1.0)
    # The nuclear heads learn nothing from a tile without nuclei; replay trains both layers.
    np.testing.assert_array_equal(weights, [[1, 0], [1, 1], [1, 1], [1, 1], [1, 1]])
    _, _, m, _, _, _ = finetune.with_replay(X, y, share=0.5, n=1, mask=np.zeros((3, 64, 64), bool))
    assert not m[:3].any() and m[3:].all()
    Xn, _, _, _, s, rec = finetune.with_replay(X, y, share=0.0, n=5)
    assert len(Xn) == 3 and s is None and rec["tiles"] == 0
    with pytest.raises(ValueError, match="replay share"):
        finetune.with_replay(X, y, share=1.0, n=1)


@pytest.mark.slow
def test_fine_tune_warms_up_stops_early_and_records_its_recipe(tmp_path):
    X, y = synthetic.make_dataset(4, (64, 64), seed=2)
    saving.save_model_version(tiny_mesmer(), tmp_path / "parent")
    # A learning rate of ~0 and frozen batch-norm statistics: the validation loss never improves after epoch 0,
    # so patience 1 stops training after epoch 1 (of at most 4).
    version = saving.load_model_version(tmp_path / "parent")
    for bn in train._batchnorm_layers(version.model):
        bn.momentum = 1.0
    tuned = finetune.fine_tune(X, y, from_version=version, minutes=5, replay=0.25, n_replay=2, epochs=4,
                               patience=1, lr=1e-30, steps_per_epoch=1, batch_size=2, crop_size=64, verbose=0,
                               bn_batches=0, calibrate=False, out=tmp_path / "child")
    cfg = saving.load_model_version(tmp_path / "child").config
    t = cfg["training"]
    assert len(tuned.history) == 2 and t["stopped_early"] and t["best_epoch"] == 0
    assert t["fine_tune"]["replay"]["tiles"] == 2 and t["fine_tune"]["minutes"] == 5
    assert t["n_val"] == 1 and t["n_train"] == 3 + 2  # validation from the new tiles only, replay trains
    assert t["warmup_epochs"] == 1 and tuned.history[0]["learning_rate"] == pytest.approx(0.5e-30)
    assert cfg["parent"] == str(tmp_path / "parent")
    assert version.model is tuned.model
    # A tiny budget ends training after the first epoch.
    quick = finetune.fine_tune(X, y, from_version=tmp_path / "parent", minutes=1e-5, replay=0.0, patience=None, epochs=3,
                               steps_per_epoch=1, batch_size=2, crop_size=64, verbose=0, bn_batches=0,
                               calibrate=False)
    assert len(quick.history) == 1 and not quick.config["training"]["stopped_early"]
    with pytest.raises(ValueError, match="budget must be positive"):
        finetune.fine_tune(X, y, from_version=tmp_path / "parent", minutes=0)
