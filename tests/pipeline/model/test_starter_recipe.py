"""The starter recipe's data: image1/image2 partial labels and DSB nuclei, never Vectra image0 (held out)."""
import numpy as np
import pytest

from pipeline import io
from pipeline.model import starter_recipe


@pytest.fixture
def reads(monkeypatch):
    """Every file the recipe's data functions open."""
    seen = []
    real_read_image, real_read_plane = io.read_image, starter_recipe._read_plane

    def read_image(path, *a, **kw):
        seen.append(str(path))
        return real_read_image(path, *a, **kw)

    def read_plane(path):
        seen.append(str(path))
        return real_read_plane(path)

    monkeypatch.setattr(io, "read_image", read_image)
    monkeypatch.setattr(starter_recipe, "_read_plane", read_plane)
    return seen


def test_recipe_lists_no_held_out_image():
    named = [e[k] for e in starter_recipe.REAL_DATA for k in ("image", "labels")]
    assert "vectra/image1_wholecell_partial.tif" in named and "vectra/image2_wholecell_partial.tif" in named
    assert not any("image0" in n or n.startswith("mibi_tnbc/") for n in named)
    assert "vectra_image0" in starter_recipe.HELD_OUT_SETS


def test_training_and_calibration_data_never_read_image0(shared_data, reads):
    items, sources = starter_recipe.real_training_data(shared_data)
    calib = starter_recipe.calibration_images(shared_data, {**starter_recipe.RECIPE, "n_validation": 1}, 1)
    assert reads and not any("image0" in p or "mibi" in p for p in reads)
    assert {s["name"] for s in sources} == {e["image"] for e in starter_recipe.REAL_DATA}
    partial = [s for s in sources if s["partial"]]
    assert [s["cells"] for s in partial] == [104, 84]  # the traced cells of image1 and image2
    assert all(0.05 < s["known_fraction"] < 0.3 and s["tiles"] > 0 for s in partial)
    for x, y, weights, kind, known in items:
        assert x.shape[:2] == y.shape[:2] == known.shape == (starter_recipe.TILE, starter_recipe.TILE)
        if kind == "vectra":  # whole-cell labels only, known on the traced cells (and their band) alone
            assert weights == (1.0, 0.0) and not known.all() and known[y[..., 0] > 0].all()
        else:
            assert kind == "dsb" and weights == (0.0, 1.0) and known.all()
    assert [c[3] for c in calib] == ["vectra", "vectra", "dsb", "synthetic"]
    assert calib[0][4] is not None and calib[0][4].mean() < 0.3 and calib[2][4] is None


def test_held_out_files_are_refused(shared_data):
    with pytest.raises(ValueError, match="held out"):
        starter_recipe.check_not_held_out(shared_data, shared_data / "vectra" / "image0.tif")
    with pytest.raises(ValueError, match="held out"):
        starter_recipe.read_real_image(shared_data, {**starter_recipe.REAL_DATA[0], "image": "vectra/image0.tif"})
    starter_recipe.check_not_held_out(shared_data, shared_data / "vectra" / "image1.tif")


def test_the_training_set_carries_the_mask_into_training(shared_data, monkeypatch):
    def fake_synthetic(n, seed, shape=(starter_recipe.TILE, starter_recipe.TILE)):
        return (np.zeros((n, *shape, 2), np.float32), np.zeros((n, *shape, 2), np.int32), [{}] * n)

    monkeypatch.setattr(starter_recipe, "synthetic_data", fake_synthetic)
    X, y, weights, sampling, sources, mask = starter_recipe.build_training_set(
        shared_data, {**starter_recipe.RECIPE, "n_synthetic": 4})
    assert mask.shape == X.shape[:3] and mask[:4].all() and not mask[4:].all()
    assert sampling.sum() == pytest.approx(1.0)
