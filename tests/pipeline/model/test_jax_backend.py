"""The model code is Keras 3 only: a model saved under TensorFlow loads, predicts the same maps and
fine-tunes under ``KERAS_BACKEND=jax`` (the GPU machine has JAX but no TensorFlow).

JAX runs in a child process: Keras fixes its backend at import, and this process already has TensorFlow.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import keras  # a hard dependency: a broken install fails the suite, never skips it
import jax  # noqa: E402,F401  (the JAX backend is a test dependency)

from pipeline.model import panoptic, saving  # noqa: E402

REPO = Path(__file__).resolve().parents[3]

CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import keras
    from pipeline import synthetic
    from pipeline.model import saving, train
    from pipeline.model.predict import Mesmer

    folder, x_path, out_path = sys.argv[1:4]
    version = saving.load_model_version(folder)
    x = np.load(x_path)
    np.savez(out_path, *version.model.predict_on_batch(x))
    X, y = synthetic.make_dataset(3, (96, 96), seed=4)
    tuned = train.train(X, y, val_split=0.34, from_version=version, epochs=1, steps_per_epoch=2, batch_size=2,
                        crop_size=64, verbose=0, out=folder + "-jax")
    labels = Mesmer(saving.load_model_version(folder + "-jax")).predict(X[0])
    print(json.dumps({"backend": keras.backend.backend(), "parent": tuned.config["parent"],
                      "labels": list(labels.shape), "dtype": str(labels.dtype),
                      "loss": tuned.history[-1]["loss"]}))
""")


@pytest.mark.slow
def test_tensorflow_model_loads_predicts_and_fine_tunes_under_jax(tmp_path):
    keras.utils.set_random_seed(3)
    model = panoptic.build_panoptic(2, panoptic.LIGHT_BACKBONE)
    folder = saving.save_model_version(model, tmp_path / "v1", {"backbone": panoptic.LIGHT_BACKBONE})
    x = np.random.default_rng(0).random((1, 64, 96, 2), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    expected = model.predict_on_batch(x)

    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), str(tmp_path / "x.npy"), str(tmp_path / "jax.npz")],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["backend"] == "jax"
    with np.load(tmp_path / "jax.npz") as got:
        for i, want in enumerate(expected):
            np.testing.assert_allclose(got[f"arr_{i}"], want, atol=2e-4, rtol=1e-3)
    assert report["parent"] == str(folder)
    assert report["labels"] == [96, 96, 2] and report["dtype"] == "int32"
    assert np.isfinite(report["loss"])
