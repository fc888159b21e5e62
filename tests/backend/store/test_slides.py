"""A whole slide through the loop: `cellloop ingest-slide` stores it in chunks, `batch create` cuts crops chunk by
chunk, `prelabel` predicts it in blocks (with the inference runtime) and cuts the labels into the crops."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
from sqlalchemy import select

from backend import loop
from backend.cli import main
from backend.cli.admin_commands import _session
from backend.config import Config
from backend.store import slides
from backend.store.models import Image, Task
from backend.store.storage import storage_from_url
from backend.tasks import TaskService
from pipeline.synthetic import make_tissue


@pytest.fixture
def slide_instance(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLLOOP_INSTANCE_DIR", str(tmp_path / "instance"))
    monkeypatch.delenv("CELLLOOP_DATABASE_URL", raising=False)
    monkeypatch.delenv("CELLLOOP_STORAGE_URL", raising=False)
    monkeypatch.setattr(slides, "CHUNK", 256)
    assert main(["db", "upgrade"]) == 0
    X, _ = make_tissue((600, 700), seed=21)
    pixels = np.round(X / X.max() * 60000).astype(np.uint16)
    extra = (pixels[..., :1] // 2)  # a third marker the model does not read
    image = np.concatenate([extra, pixels], axis=-1)
    with tifffile.TiffWriter(tmp_path / "slide.ome.tif", ome=True) as tif:
        tif.write(np.moveaxis(image, -1, 0), tile=(128, 128), subifds=1, compression="zlib",
                  metadata={"axes": "CYX", "Channel": {"Name": ["CD3", "DAPI", "Ecad"]},
                            "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
        tif.write(np.moveaxis(image, -1, 0)[:, ::2, ::2], tile=(128, 128), subfiletype=1)
    return tmp_path, image


def test_ingest_stores_chunks_and_batch_create_cuts_crops_from_them(slide_instance, capsys):
    folder, image = slide_instance
    assert main(["ingest-slide", str(folder / "slide.ome.tif"), "--project", "slides",
                 "--model-channels", "DAPI,Ecad"]) == 0
    assert "stored in 9 chunks of 256 px" in capsys.readouterr().out
    config = Config.from_env()
    session, storage = _session(config), storage_from_url(config.storage_url)
    row = session.scalar(select(Image))
    assert (row.height, row.width, row.chunk_size, row.pixel_size_um) == (600, 700, 256, 0.5)
    assert row.levels == [[600, 700], [300, 350]]
    assert len(storage.list(row.image_key)) == 9 and row.image_key.endswith("/chunks/")
    stored = slides.StoredSlide.of(config.storage_url, row)
    np.testing.assert_array_equal(stored.read(100, 550, 200, 690, [2, 0]), image[100:550, 200:690][..., [2, 0]])

    fetched = []
    real_get = storage.get
    storage.get = lambda key: fetched.append(key) or real_get(key)
    batch, made = loop.create_batch(session, storage, row.project, "b1", all_new=True, size=270, overlap=30)
    del storage.get
    assert made == 9
    # chunk by chunk: each chunk fetched and decoded once, never a whole-image object
    assert sorted(fetched) == sorted(storage.list(row.image_key))
    svc = TaskService(session, storage)
    for task in session.scalars(select(Task).where(Task.batch_id == batch.id)):
        np.testing.assert_array_equal(svc.image(task), image[task.y0:task.y1, task.x0:task.x1])

    assert main(["ingest-slide", str(folder / "slide.ome.tif"), "--project", "slides", "--name", "again",
                 "--channels", "DAPI,CD9"]) == 2
    assert "no channel named 'CD9'" in capsys.readouterr().err
    assert len(storage.list(f"projects/{row.project_id}/images/")) == 9  # the failed ingest stored nothing


def test_prelabel_of_a_slide_predicts_in_blocks_and_fills_each_crop(slide_instance):
    # the default runtime (Keras); the exported runtimes' agreement is tests/pipeline/model/test_runtime.py's
    folder, _ = slide_instance
    assert main(["ingest-slide", str(folder / "slide.ome.tif"), "--project", "slides",
                 "--model-channels", "DAPI,Ecad"]) == 0
    config = Config.from_env()
    session, storage = _session(config), storage_from_url(config.storage_url)
    row = session.scalar(select(Image))
    batch, _ = loop.create_batch(session, storage, row.project, "b1", all_new=True, size=270, overlap=30)
    result = loop.prelabel_batch(session, storage, config, batch, "current")
    assert result["images"] == 1 and result["crops"] == 9
    svc = TaskService(session, storage)
    counts = [len(np.unique(svc.labels(t)[..., 0])) - 1 for t in session.scalars(select(Task))]
    assert min(counts) > 20  # every crop holds cells of the synthetic tissue
    with pytest.raises(loop.LoopError, match="baseline cannot prelabel a whole slide"):
        loop.prelabel_batch(session, storage, config, batch, "baseline")
