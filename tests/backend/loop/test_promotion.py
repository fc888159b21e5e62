"""Promotion compares like with like: every model is scored as prelabel runs it (the whole source image, the same
scale rule), and a tie keeps the current model."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import select

from backend import loop
from backend.loop import registry, training
from backend.store.arrays import encode_array
from backend.store.models import ModelVersion
from backend.store.projects import add_image, create_project
from pipeline.synthetic import make_tissue


class RecordingModel:
    """Stands in for a Mesmer model: the truth when given the whole image, nothing otherwise (as a model that
    suffers at tile edges would), and a record of each call's shape and pixel size."""

    def __init__(self, truth):
        self.truth, self.calls = truth, []

    def predict(self, X, image_mpp=None):
        self.calls.append((X.shape, image_mpp))
        if X.shape[:2] == self.truth.shape[:2]:
            return self.truth.copy()
        return np.zeros(X.shape[:2] + (2,), np.int32)


@pytest.fixture
def scored(instance, tmp_path, monkeypatch):
    config, session, storage = instance
    project = create_project(session, name="p", channel_names=["DAPI", "CD45"])
    X, y = make_tissue((300, 300), seed=21)
    image = add_image(session, storage, project, X, name="im")  # no pixel size known
    session.flush()
    image.labels_key, image.coverage_key = "t/labels.npy.gz", "t/coverage.npy.gz"
    storage.put(image.labels_key, encode_array(y.astype(np.int32)))
    storage.put(image.coverage_key, encode_array(np.ones((300, 300), np.uint8)))
    session.commit()
    data = tmp_path / "d.npz"
    summary = loop.build_dataset(session, storage, project, data, tile=128, block=128, include_unreviewed=True)
    assert summary["splits"]["test"] >= 1
    model = RecordingModel(y.astype(np.int32))
    monkeypatch.setattr(training, "load_mesmer", lambda folder: model)
    folder = tmp_path / "fake"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({}))
    (folder / "model.keras").write_bytes(b"weights")
    return config, session, storage, project, data, model, folder


def test_each_model_is_scored_on_the_whole_image_at_prelabel_scale(scored):
    config, session, storage, project, data, model, folder = scored
    starter = registry.register(session, storage, None, folder, name="starter", parent=None)
    result = loop.evaluate_choice(session, storage, config, project, registry.ModelChoice("version", starter), data)
    # one call on the whole image, at the starter's estimated scale ("auto"), as prelabel does
    assert model.calls == [((300, 300, 2), "auto")]
    assert result["f1"] > 0.95  # (tile QC drops cut cells under 15 px from the truth, not from the prediction)
    own = registry.register(session, storage, project, folder, parent=starter)
    model.calls.clear()
    loop.evaluate_choice(session, storage, config, project, registry.ModelChoice("version", own), data)
    assert model.calls == [((300, 300, 2), None)]  # a project's own version: its images' native scale


def test_a_tie_keeps_the_current_model(scored):
    config, session, storage, project, data, model, folder = scored
    v1 = registry.register(session, storage, project, folder, parent=None)
    assert not loop.promote_if_not_worse(session, project, v1, 0.8, 0.8)
    assert not session.scalar(select(ModelVersion).where(ModelVersion.id == v1.id)).promoted
    assert loop.promote_if_not_worse(session, project, v1, 0.81, 0.8)
    assert registry.promoted_version(session, project).id == v1.id
