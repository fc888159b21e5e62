import json

import numpy as np
import pytest

import keras  # a hard dependency: a broken install fails the suite, never skips it

from pipeline.model import panoptic, saving  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return panoptic.build_panoptic(2, panoptic.LIGHT_BACKBONE)


def test_round_trip_keeps_weights_and_config(model, tmp_path):
    x = np.random.default_rng(1).random((1, 64, 64, 2), dtype=np.float32)
    expected = model.predict_on_batch(x)
    folder = saving.save_model_version(
        model, tmp_path / "v1", {"backbone": "mobilenetv2", "mpp": 0.65, "metrics": {"f1": 0.7}, "parent": "v0"}
    )
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.keras"]
    version = saving.load_model_version(folder)
    assert version.config["backbone"] == "mobilenetv2"
    assert version.mpp == 0.65
    assert version.channels == ["nuclear", "membrane"]
    assert version.config["parent"] == "v0" and version.config["metrics"] == {"f1": 0.7}
    assert version.config["created"]
    for a, b in zip(expected, version.model.predict_on_batch(x)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_refuses_to_overwrite_a_version(model, tmp_path):
    saving.save_model_version(model, tmp_path / "v", {})
    with pytest.raises(ValueError, match="not empty"):
        saving.save_model_version(model, tmp_path / "v", {})


def test_bare_keras_file_without_config_infers_channels(tmp_path):
    six = panoptic.build_panoptic(6, panoptic.LIGHT_BACKBONE)
    path = tmp_path / "user_model.keras"
    six.save(path)
    version = saving.load_model_version(path)
    assert len(version.channels) == 6
    assert version.mpp == saving.DEFAULT_MPP


def test_missing_and_corrupt_versions_give_clear_errors(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        saving.load_model_version(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no model.keras"):
        saving.load_model_version(empty)
    folder = saving.save_model_version(model, tmp_path / "v", {})
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        saving.load_model_version(folder)
    (folder / "config.json").write_text(json.dumps({"channels": ["a", "b", "c"]}))
    with pytest.raises(ValueError, match="3 channels"):
        saving.load_model_version(folder)
    (folder / "config.json").write_text("{}")
    (folder / "model.keras").write_bytes(b"garbage, not a zip")
    with pytest.raises(ValueError, match="cannot load"):
        saving.load_model_version(folder)


def test_model_with_wrong_outputs_is_rejected(tmp_path):
    inp = keras.Input((None, None, 2))
    out = keras.layers.Conv2D(3, 1)(inp)
    path = tmp_path / "other.keras"
    keras.Model(inp, [out]).save(path)
    with pytest.raises(ValueError, match="4 outputs"):
        saving.load_model_version(path)


def test_hashes_depend_on_content():
    a = np.zeros((2, 4, 4, 2), np.float32)
    b = a.copy()
    b[0, 0, 0, 0] = 1
    assert saving.sha256_arrays(a) == saving.sha256_arrays(a.copy())
    assert saving.sha256_arrays(a) != saving.sha256_arrays(b)
    assert saving.sha256_arrays(a) != saving.sha256_arrays(a.astype(np.float64))
