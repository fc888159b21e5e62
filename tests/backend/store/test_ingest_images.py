"""`cellloop ingest` adds many images to one project: one file per image, one file per channel, TissueNet's
stacked .npz; later images are matched to the project's channels by name, and a mismatch is one error line."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
from sqlalchemy import select

from backend.cli import main
from backend.cli.admin_commands import _session
from backend.config import Config
from backend.store.models import Image, Project
from pipeline.synthetic import make_dataset


@pytest.fixture
def instance(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLLOOP_INSTANCE_DIR", str(tmp_path / "instance"))
    monkeypatch.delenv("CELLLOOP_DATABASE_URL", raising=False)
    monkeypatch.delenv("CELLLOOP_STORAGE_URL", raising=False)
    assert main(["db", "upgrade"]) == 0
    return tmp_path


def _ome(path, X, names):
    tifffile.imwrite(path, np.moveaxis(X, -1, 0), ome=True, metadata={"axes": "CYX", "Channel": {"Name": names}})


def test_many_images_per_project(instance, capsys):
    X, y = make_dataset(4, (64, 72), seed=2)
    _ome(instance / "a.ome.tif", X[0], ["DAPI", "CD45"])
    _ome(instance / "b.ome.tif", X[1], ["DAPI", "CD45"])
    _ome(instance / "c.ome.tif", X[2][..., ::-1], ["CD45", "DAPI"])  # other order: matched by name
    _ome(instance / "d.ome.tif", X[3], ["HH3", "PanCK"])
    tifffile.imwrite(instance / "e_DAPI.tif", X[0][..., 0])
    tifffile.imwrite(instance / "e_CD45.tif", X[0][..., 1])
    np.savez(instance / "tn.npz", X=X[:3], y=y[:3], tissue_list=np.array(["breast", "lung", "colon"]),
             platform_list=np.array(["mibi", "mibi", "codex"]))

    assert main(["ingest", str(instance / "a.ome.tif"), str(instance / "b.ome.tif"), "--project", "p",
                 "--pixel-size", "0.5", "--tissue", "tonsil"]) == 0
    assert main(["ingest", str(instance / "c.ome.tif"), "--project", "p"]) == 0
    capsys.readouterr()
    assert main(["ingest", str(instance / "d.ome.tif"), "--project", "p"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "DAPI, CD45" in err and "--channels" in err
    assert main(["ingest", str(instance / "d.ome.tif"), "--project", "p", "--channels", "HH3,PanCK"]) == 0
    assert main(["ingest", str(instance / "e_DAPI.tif"), str(instance / "e_CD45.tif"), "--per-channel",
                 "--project", "p", "--channels", "0,1", "--name", "e"]) == 0
    assert main(["ingest", str(instance / "tn.npz"), "--project", "tissuenet"]) == 0
    assert main(["ingest", str(instance / "a.ome.tif"), "--project", "p"]) == 2  # the name is taken
    assert "already has an image named 'a'" in capsys.readouterr().err

    session = _session(Config.from_env())
    project = session.scalar(select(Project).where(Project.name == "p"))
    images = {i.name: i for i in project.images}
    assert list(images) == ["a", "b", "c", "d", "e"] and project.channel_names == ["DAPI", "CD45"]
    assert images["a"].tissue == "tonsil" and images["a"].pixel_size_um == 0.5 and images["c"].tissue is None
    from backend.store.projects import read_image
    from backend.store.storage import storage_from_url

    storage = storage_from_url(Config.from_env().storage_url)
    assert np.allclose(read_image(storage, images["c"]), X[2])  # put back into the project's channel order
    assert np.allclose(read_image(storage, images["e"]), X[0])
    stacked = session.scalars(select(Image).join(Project).where(Project.name == "tissuenet").order_by(Image.id)).all()
    assert [(i.name, i.tissue, i.platform) for i in stacked] == [
        ("tn-0", "breast", "mibi"), ("tn-1", "lung", "mibi"), ("tn-2", "colon", "codex")]
