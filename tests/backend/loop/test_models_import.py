"""`cellloop models import`: Keras 3, Keras HDF5 and SavedModel files with Mesmer's signature become lineage
roots that prelabel; the Keras forms fine-tune, the SavedModel is inference only; a wrong signature is one line."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
from sqlalchemy import select

import keras  # a hard dependency: a broken install fails the suite, never skips it

from backend import loop
from backend.cli import main
from backend.loop import registry
from backend.loop.common import LoopError
from backend.store.models import Batch, ModelVersion
from pipeline import io
from pipeline.model import importing, saving, train
from pipeline.model.predict import Mesmer
from pipeline.synthetic import make_tissue


def mesmer_like(n_in=2, outs=(1, 3, 1, 3), stride=1):
    """A small model with Mesmer's signature (or a broken one): [nuclear, membrane] in, four maps out."""
    keras.utils.set_random_seed(3)
    inp = keras.Input((None, None, n_in))
    x = keras.layers.Conv2D(8, 3, strides=stride, padding="same", activation="relu")(inp)
    x = keras.layers.BatchNormalization()(x)
    heads = [keras.layers.Conv2D(k, 1, activation="relu" if k == 1 else "softmax", name=f"semantic_{i}")(x)
             for i, k in enumerate(outs)]
    return keras.Model(inp, heads)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    model = mesmer_like()
    model.save(folder / "mesmer.keras")
    model.save(folder / "mesmer.h5")  # the legacy HDF5 format Keras 2 wrote
    model.export(folder / "mesmer_savedmodel", format="tf_saved_model", verbose=False)
    mesmer_like(outs=(1, 3, 1)).save(folder / "three_outputs.keras")
    mesmer_like(n_in=3).save(folder / "three_channels.h5")
    mesmer_like(outs=(1, 2, 1, 3)).save(folder / "two_classes.keras")
    mesmer_like(stride=2).save(folder / "half_size.keras")
    (folder / "junk.h5").write_bytes(b"not an hdf5 file")
    return folder, model


def test_each_format_predicts_what_the_original_model_predicts(files, tmp_path):
    folder, model = files
    x = np.random.default_rng(0).random((1, 64, 64, 2)).astype(np.float32)
    want = [np.asarray(o) for o in model.predict_on_batch(x)]
    for src, fmt, tunable in (("mesmer.keras", "keras", True), ("mesmer.h5", "hdf5", True),
                              ("mesmer_savedmodel", "savedmodel", False)):
        out, config = importing.import_model(folder / src, tmp_path / fmt)
        assert config["imported"]["format"] == fmt and config["fine_tune"] is tunable and config["mpp"] == 0.5
        version = saving.load_model_version(out)
        assert saving.can_fine_tune(version.config) is tunable
        got = version.model.predict_on_batch(x)
        for a, b in zip(want, got):
            np.testing.assert_allclose(np.asarray(b), a, rtol=1e-5, atol=1e-6)
        labels = Mesmer(version).predict(np.random.default_rng(1).random((80, 90, 2)).astype(np.float32))
        assert labels.shape == (80, 90, 2)
    with pytest.raises(ValueError, match="inference only"):
        train.train(np.zeros((2, 64, 64, 2), np.float32), np.zeros((2, 64, 64, 2), np.int32),
                    from_version=tmp_path / "savedmodel", epochs=1, steps_per_epoch=1, val_split=0.5)


@pytest.mark.parametrize("name, message", [
    ("three_outputs.keras", "has 4 outputs .* this one has 3"),
    ("three_channels.h5", "takes 2 channels"),
    ("two_classes.keras", r"outputs have \(1, 3, 1, 3\) channels"),
    ("half_size.keras", "output is .* for a"),
    ("junk.h5", "cannot load"),
    ("nothing.keras", "no model at"),
])
def test_a_wrong_signature_is_named(files, tmp_path, name, message):
    folder, _ = files
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        importing.import_model(folder / name, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _ingest(tmp_path):
    X, _ = make_tissue((128, 128), seed=5)
    tifffile.imwrite(tmp_path / "img0.ome.tif", np.moveaxis(X, -1, 0), ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "CD45"]}})
    assert main(["db", "upgrade"]) == 0
    assert main(["ingest", str(tmp_path / "img0.ome.tif"), "--project", "lab", "--pixel-size", "0.5"]) == 0


@pytest.fixture
def instance(tmp_path, monkeypatch):
    folder = tmp_path / "instance"
    monkeypatch.setenv("CELLLOOP_INSTANCE_DIR", str(folder))
    monkeypatch.delenv("CELLLOOP_DATABASE_URL", raising=False)
    monkeypatch.delenv("CELLLOOP_STORAGE_URL", raising=False)
    return folder


def _open():
    from backend.cli.admin_commands import _config, _session, _storage

    class Args:
        instance = None

    config = _config(Args())
    return config, _session(config), _storage(config)


def test_import_prelabels_and_fine_tunes_from_the_imported_root(files, instance, tmp_path, capsys):
    folder, _ = files
    _ingest(tmp_path)
    capsys.readouterr()
    # A wrong signature: one line, exit 2, nothing registered or stored.
    assert main(["models", "import", str(folder / "two_classes.keras"), "--project", "lab"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cellloop models: error:") and "(1, 3, 1, 3)" in err and "\n" not in err
    assert not (instance / "storage" / "models").exists()

    assert main(["models", "import", str(folder / "mesmer.h5"), "--project", "lab", "--name", "mesmer",
                 "--promote"]) == 0
    assert "imported mesmer" in capsys.readouterr().out
    assert main(["models", "import", str(folder / "mesmer_savedmodel"), "--project", "lab"]) == 0
    assert "inference only" in capsys.readouterr().out
    assert main(["models", "import", str(folder / "mesmer.h5"), "--project", "lab", "--name", "mesmer"]) == 2
    assert "exists already" in capsys.readouterr().err
    config, session, storage = _open()
    rows = {r.name: r for r in session.scalars(select(ModelVersion))}
    assert rows["mesmer"].parent_id is None and rows["mesmer"].promoted
    assert rows["lab-mesmer_savedmodel"].config["fine_tune"] is False
    from backend.store.projects import get_project

    project = get_project(session, "lab")
    assert registry.current_model(session, storage, project).label == "mesmer"

    # It prelabels: the batch records the imported version.
    assert main(["batch", "create", "b1", "--project", "lab", "--all-new", "--size", "64", "--overlap", "0"]) == 0
    assert main(["prelabel", "--batch", "b1"]) == 0
    session.expire_all()
    assert session.scalar(select(Batch).where(Batch.name == "b1")).prelabel == "mesmer"
    assert main(["prelabel", "--batch", "b1", "--model", "lab-mesmer_savedmodel"]) == 0

    # It fine-tunes (the HDF5 form) into a child version; the SavedModel refuses in one line.
    X, y = make_tissue((64, 64), seed=6)
    data = tmp_path / "d.npz"
    io.save_dataset(data, np.stack([X, X]), np.stack([y, y]), [{"split": "train"}, {"split": "val"}])
    child, parent = loop.train_version(session, storage, config, project, data, start="mesmer", epochs=1,
                                       steps_per_epoch=1, batch_size=2, crop_size=64)
    assert parent.name == "mesmer" and child.parent_id == rows["mesmer"].id
    assert [v.name for v in registry.lineage(session, child)] == [child.name, "mesmer"]
    # Within a budget: the fine-tuning recipe (replay of the starter's synthetic tissue, early stopping).
    budgeted, _ = loop.train_version(session, storage, config, project, data, start="mesmer", minutes=0.001,
                                     replay=0.5, epochs=3, batch_size=2, crop_size=64)
    summary = budgeted.config["training"]
    assert budgeted.parent_id == rows["mesmer"].id and summary["epochs"] == 1  # the budget ends the first epoch
    assert summary["fine_tune"]["replay"]["share"] == 0.5 and summary["fine_tune"]["replay"]["tiles"] > 0
    assert main(["cycle", "--batch", "b1", "--minutes", "0"]) == 2
    assert "--minutes must be" in capsys.readouterr().err
    assert main(["cycle", "--batch", "b1", "--min-test-cells", "0"]) == 2
    assert "--min-test-cells must be at least 1" in capsys.readouterr().err
    with pytest.raises(LoopError, match="inference only"):
        loop.train_version(session, storage, config, project, data, start="lab-mesmer_savedmodel", epochs=1,
                           steps_per_epoch=1, batch_size=2, crop_size=64)
