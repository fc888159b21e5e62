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
