"""A light PanopticNet trained on CPU for a few minutes must beat the classic baseline.

Baseline: ``pipeline.baseline.nuclear_expansion`` (Otsu nuclei grown by 3 px), scored with the same
object-level whole-cell F1 (IoU > 0.6 matches) on images the model never saw in training.
Longer trainings and their figures: ``python bench/model.py --case accuracy``.
"""
from pathlib import Path

import numpy as np
import pytest

import keras  # a hard dependency: a broken install fails the suite, never skips it

from pipeline import baseline, io, metrics, synthetic  # noqa: E402
from pipeline.model import train  # noqa: E402
from pipeline.model.predict import Mesmer  # noqa: E402

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"

# 300 small steps (batch 4 of 128 px crops; ~5 min on 2 busy cores) with a learning rate 10x
# Mesmer's, which the issue allows for CPU training from scratch; 3e-3 killed the ReLU distance head
# (no cells at all). At 200 steps two random initialisations gave F1 0.62 and 0.49 against the
# baseline's 0.53, too close to call, hence the longer run and a fixed seed.
BUDGET = dict(backbone="mobilenetv2", batch_size=4, crop_size=128, lr=1e-3, verbose=0, bn_batches=8, seed=0)
EPOCHS, STEPS = 15, 20


def _whole_cell_f1(truth, labels):
    return metrics.evaluate(truth, labels, layer=0)["pooled"]["f1"]


@pytest.mark.slow
def test_beats_nuclear_expansion_on_held_out_synthetic_tissue():
    X, y = synthetic.make_dataset(16, (256, 256), seed=1)
    Xt, yt = synthetic.make_dataset(4, (256, 256), seed=99)
    result = train.train(X, y, val=(Xt[:1], yt[:1]), epochs=EPOCHS, steps_per_epoch=STEPS, **BUDGET)
    # Scored on the 3 images used neither for training nor for choosing the epoch.
    model_f1 = _whole_cell_f1(yt[1:], Mesmer(result.version).predict(Xt[1:]))
    base_f1 = _whole_cell_f1(yt[1:], baseline.nuclear_expansion(Xt[1:]))
    print(f"synthetic whole-cell F1: model {model_f1:.3f}, baseline {base_f1:.3f}")
    assert model_f1 > base_f1


VECTRA = SHARED / "vectra"
# Real tissue is harder than synthetic: 1,200 steps (~9 min on 2 cores) of the same small batches.
VECTRA_EPOCHS = 60


@pytest.mark.slow
def test_beats_nuclear_expansion_on_held_out_half_of_real_vectra_tissue(shared_data):
    # The file stores membrane then nuclear; Mesmer takes nuclear first.
    X, _ = io.read_image(VECTRA / "image0.tif", channels=[1, 0])
    # Whole-cell annotations only (an empty nuclear layer): train() switches the nuclear heads off.
    y = io.read_labels(VECTRA / "image0_wholecell.tif")
    cells = y[..., 0]
    assert X.shape == (400, 400, 2) and not y[..., 1].any() and len(np.unique(cells)) > 250
    result = train.train(X[None, :200], y[None, :200], val_split=0, epochs=VECTRA_EPOCHS, steps_per_epoch=STEPS,
                         **BUDGET)
    assert result.config["training"]["nuclear_weight"] == 0.0
    # Scored on the bottom half, which training never saw, with the default post-processing.
    model_f1 = _whole_cell_f1(cells[200:], Mesmer(result.version).predict(X[200:]))
    base_f1 = _whole_cell_f1(cells[200:], baseline.nuclear_expansion(X[200:]))
    print(f"vectra whole-cell F1: model {model_f1:.3f}, baseline {base_f1:.3f}")
    assert model_f1 > base_f1
