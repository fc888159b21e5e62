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


def test_the_export_upsamples_with_resize_nodes(starter):
    import onnx

    from pipeline.model import panoptic

    graph = onnx.load(str(runtime.cached_onnx(starter))).graph
    upsamplers = [la for la in starter.model.layers if isinstance(la, panoptic.BilinearUpsample2x)]
    ops = [node.op_type for node in graph.node]
    assert upsamplers and ops.count("Resize") == len(upsamplers)
    assert "Range" not in ops  # the backend-neutral layer's index arithmetic is gone
    x = np.arange(6, dtype=np.float32).reshape(1, 2, 3, 1)
    up = np.asarray(panoptic.BilinearUpsample2x()(x))[0, 0, :, 0]  # Keras' layer is its own again after export
    np.testing.assert_allclose(up, [0, 0.25, 0.75, 1.25, 1.75, 2])


def test_an_export_by_another_exporter_is_made_again(starter, tmp_path, monkeypatch):
    import shutil

    folder = tmp_path / "version"
    folder.mkdir()
    shutil.copyfile(STARTER_DIR / saving.MODEL_FILE, folder / saving.MODEL_FILE)
    shutil.copyfile(STARTER_DIR / "config.json", folder / "config.json")
    sha = saving.sha256_file(folder / saving.MODEL_FILE)
    cache = folder / runtime.CACHE_DIR
    cache.mkdir()
    (cache / runtime.ONNX_FILE).write_bytes(b"old")
    (cache / runtime.STAMP_FILE).write_text(json.dumps({"keras_sha256": sha, "exporter": "keras.export(format='onnx')"}))
    monkeypatch.setenv("CELLLOOP_MODEL_CACHE", str(tmp_path / "shared"))
    exported = []

    def fake_export(model, path):
        exported.append(path)
        path.write_bytes(b"new")
        return path

    monkeypatch.setattr(runtime, "export_onnx", fake_export)
    version = saving.load_model_version(folder)
    path = runtime.cached_onnx(version)
    assert exported == [path] and path.read_bytes() == b"new"
    assert json.loads((cache / runtime.STAMP_FILE).read_text())["exporter"] == runtime.EXPORTER
    assert runtime.cached_onnx(version) == path and len(exported) == 1  # then reused


def test_stored_versions_predict_on_an_exported_runtime_by_default(monkeypatch):
    monkeypatch.delenv("CELLLOOP_INFERENCE_RUNTIME", raising=False)
    assert runtime.DEFAULT_RUNTIME == "openvino" and Mesmer(STARTER_DIR).runtime == "openvino"
