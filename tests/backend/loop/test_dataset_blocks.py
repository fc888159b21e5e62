"""Dataset splits by spatial block: no region of an image is in two splits, and the test area stays the same when a
later dataset uses another tile size."""
from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from backend import loop
from backend.store.arrays import encode_array
from backend.store.models import DatasetBlock
from backend.store.projects import add_image, create_project
from pipeline import io
from pipeline.synthetic import make_tissue


@pytest.fixture
def stitched_project(instance):
    config, session, storage = instance
    project = create_project(session, name="p", channel_names=["DAPI", "CD45"])
    for i, shape in enumerate([(512, 768), (384, 512)]):
        X, y = make_tissue(shape, seed=10 + i)
        image = add_image(session, storage, project, X, name=f"im{i}")
        session.flush()
        # stand-in for `stitch`: whole-image labels and full coverage in storage
        image.labels_key = f"test/labels-{image.id}.npy.gz"
        image.coverage_key = f"test/coverage-{image.id}.npy.gz"
        storage.put(image.labels_key, encode_array(y.astype(np.int32)))
        storage.put(image.coverage_key, encode_array(np.ones(shape, np.uint8)))
    session.commit()
    return session, storage, project


def _tiles(path):
    data = io.load_dataset(path)
    return [(m["image_id"], tuple(m["box"]), m["split"]) for m in data["meta"]]


def _split_mask(project, tiles):
    """Per image: for each pixel, the set of splits whose tiles cover it."""
    masks = {i.id: {s: np.zeros((i.height, i.width), bool) for s in ("train", "val", "test")} for i in project.images}
    for image_id, (y0, x0, y1, x1), split in tiles:
        masks[image_id][split][y0:y1, x0:x1] = True
    return masks


def test_blocks_keep_regions_in_one_split_and_the_test_area_frozen_across_tile_sizes(stitched_project, tmp_path):
    session, storage, project = stitched_project
    first = loop.build_dataset(session, storage, project, tmp_path / "a.npz", tile=128, block=256, include_unreviewed=True)
    tiles = _tiles(tmp_path / "a.npz")
    assert first["splits"]["test"] >= 1 and first["splits"]["train"] >= 4
    blocks = {(b.image_id, b.y0, b.x0): b.split for b in session.scalars(select(DatasetBlock))}
    assert {b.size for b in session.scalars(select(DatasetBlock))} == {256}
    for image_id, (y0, x0, y1, x1), split in tiles:
        # every tile lies in one block here (128 divides 256) and has that block's split
        assert blocks[(image_id, y0 // 256 * 256, x0 // 256 * 256)] == split
    # a block's tiles all share its split: neighbours across a split boundary are whole blocks apart
    for masks in _split_mask(project, tiles).values():
        assert not (masks["train"] & masks["test"]).any() and not (masks["val"] & masks["test"]).any()

    # another tile size later: the blocks (and so the test area) stay; tiles across blocks of two splits are out
    second = loop.build_dataset(session, storage, project, tmp_path / "b.npz", tile=96, block=512, include_unreviewed=True)
    assert {(b.image_id, b.y0, b.x0): b.split for b in session.scalars(select(DatasetBlock))} == blocks
    tiles2 = _tiles(tmp_path / "b.npz")
    test_area = {i.id: np.zeros((i.height, i.width), bool) for i in project.images}
    for (image_id, by, bx), split in blocks.items():
        if split == "test":
            test_area[image_id][by:by + 256, bx:bx + 256] = True
    for image_id, (y0, x0, y1, x1), split in tiles2:
        inside = test_area[image_id][y0:y1, x0:x1]
        assert inside.all() if split == "test" else not inside.any(), (image_id, (y0, x0), split)
    assert second["splits"]["test"] >= 1 and second["skipped"].get("straddles_splits", 0) > 0
    assert sum(second["splits"].values()) == second["tiles"]
    with pytest.raises(loop.LoopError, match="at least 16"):
        loop.build_dataset(session, storage, project, tmp_path / "c.npz", tile=8, include_unreviewed=True)


def test_partly_reviewed_images_give_masked_tiles_that_training_and_scoring_respect(instance, tmp_path):
    """A crop an annotator left unreviewed: with --partial-tiles its tiles still teach, with that part unknown."""
    config, session, storage = instance
    project = create_project(session, name="part", channel_names=["DAPI", "CD45"])
    X, y = make_tissue((256, 512), seed=4)
    image = add_image(session, storage, project, X, name="half")
    session.flush()
    coverage = np.zeros((256, 512), np.uint8)
    coverage[:, :192] = 1  # approved crops cover the left three quarters of the first tile only
    coverage[:, 256:] = 1  # and all of the second
    stitched = np.where(coverage[..., None] > 0, y, 0).astype(np.int32)
    image.labels_key, image.coverage_key = "test/labels.npy.gz", "test/coverage.npy.gz"
    storage.put(image.labels_key, encode_array(stitched))
    storage.put(image.coverage_key, encode_array(coverage))
    session.commit()

    whole = loop.build_dataset(session, storage, project, tmp_path / "whole.npz", tile=256, include_unreviewed=True)
    assert whole["tiles"] == 1 and whole["skipped"]["uncovered"] == 1 and whole["partial_tiles"] == 0
    assert io.load_dataset(tmp_path / "whole.npz")["mask"] is None
    with pytest.raises(loop.LoopError, match="partial-tiles"):
        loop.build_dataset(session, storage, project, tmp_path / "bad.npz", tile=256, partial=1.5,
                           include_unreviewed=True)

    part = loop.build_dataset(session, storage, project, tmp_path / "part.npz", tile=256, include_unreviewed=True,
                              partial=0.5)
    assert part["tiles"] == 2 and part["partial_tiles"] == 1
    data = io.load_dataset(tmp_path / "part.npz")
    first = [i for i, m in enumerate(data["meta"]) if m["box"][1] == 0][0]
    known, labels = data["mask"][first], data["y"][first, ..., 0]
    assert not known[:, 192:].any() and known[:, :150].mean() > 0.8
    # no known pixel belongs to a cell that the unreviewed side cuts, and the cut cells' labels are gone
    cut = np.unique(stitched[:, 191, 0])
    cut = cut[cut > 0]
    assert cut.size and not np.isin(labels, cut).any()
    assert 0 < data["meta"][first]["known_fraction"] < 0.75
    assert data["mask"][1 - first].all()

    # training reads the mask: the version's config records the partly known tile (a two-step run)
    from backend.loop import training

    assert data["meta"][first]["split"] == "train"  # a project's first two tiles both train
    _, _, _, split_mask = training._load_split(tmp_path / "part.npz", "train")
    assert split_mask is not None and not split_mask.all()
    row, _ = loop.train_version(session, storage, config, project, tmp_path / "part.npz", start="baseline",
                                epochs=1, steps_per_epoch=1, batch_size=1, crop_size=64)
    assert row.config["training"]["label_mask"]["images"] == 1
