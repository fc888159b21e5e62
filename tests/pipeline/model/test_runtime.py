"""The exported network (ONNX Runtime, OpenVINO) gives Keras' labels on the shipped starter model."""
import json

import numpy as np
import onnxruntime  # noqa: F401  hard dependencies: a broken install fails here, never skips
import openvino  # noqa: F401
import pytest

from pipeline import agreement, synthetic
from pipeline.model import runtime, saving
from pipeline.model.predict import Mesmer
from pipeline.model.starter import STARTER_DIR


@pytest.fixture(scope="module")
def starter():
    return saving.load_model_version(STARTER_DIR)


@pytest.fixture(scope="module")
def tissue():
    X, _ = synthetic.make_tissue((448, 448), seed=5)
    return X


@pytest.fixture(scope="module")
def keras_labels(starter, tissue):
    return Mesmer(starter, runtime="keras").predict(tissue)


def test_export_is_cached_beside_the_version_and_keyed_by_the_keras_file(starter):
    path = runtime.cached_onnx(starter)
    assert path.parent == STARTER_DIR / runtime.CACHE_DIR
    stamp = json.loads((path.parent / runtime.STAMP_FILE).read_text())
    assert stamp["keras_sha256"] == saving.sha256_file(STARTER_DIR / saving.MODEL_FILE)
    before = path.stat().st_mtime_ns
    assert runtime.cached_onnx(starter) == path and path.stat().st_mtime_ns == before  # reused, not re-exported


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_runtime_outputs_and_labels_agree_with_keras(starter, tissue, keras_labels, name):
    batch = np.random.default_rng(0).random((3, 256, 256, 2)).astype(np.float32)
    want = runtime.KerasNetwork(starter.model)(batch)
    got = runtime.network_for(starter, name)(batch)
    for w, g in zip(want, got):
        assert g.shape == w.shape
        assert np.abs(np.asarray(g) - np.asarray(w)).max() < 1e-3  # the tiling test's tolerance on blended maps

    app = Mesmer(starter, runtime=name)
    labels = app.predict(tissue)
    assert app.runtime == name
    share = agreement.changed_share(keras_labels, labels)
    assert share["cells"] > 200
    assert share["changed_share"] <= 0.005 and share["not_identical_share"] <= 0.02, share


def test_unknown_runtime_is_refused(starter):
    with pytest.raises(ValueError, match="onnxruntime, openvino, keras"):
        Mesmer(starter, runtime="tensorrt")


def test_the_runtime_is_a_setting(starter, monkeypatch):
    monkeypatch.delenv("CELLLOOP_INFERENCE_RUNTIME", raising=False)
    assert Mesmer(starter.model).runtime == "keras"  # held in memory: never exported behind the caller's back
    assert Mesmer(STARTER_DIR).runtime == runtime.DEFAULT_RUNTIME
    monkeypatch.setenv("CELLLOOP_INFERENCE_RUNTIME", "openvino")
    assert Mesmer(STARTER_DIR).runtime == "openvino"
    assert Mesmer(STARTER_DIR, runtime="onnxruntime").runtime == "onnxruntime"  # asked for wins over the setting
