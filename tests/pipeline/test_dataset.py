from __future__ import annotations

import numpy as np
import pytest

from pipeline import dataset
from pipeline.synthetic import make_tissue


def test_splits_approach_80_10_10_and_never_move():
    first = dataset.assign_splits({}, [f"a{i}" for i in range(10)])
    counts = {s: list(first.values()).count(s) for s in dataset.SPLITS}
    assert counts == {"train": 8, "val": 1, "test": 1}
    assert dataset.assign_splits({}, [f"a{i}" for i in range(10)]) == first  # deterministic
    more = dataset.assign_splits(first, [f"b{i}" for i in range(10)])
    assert set(more).isdisjoint(first)  # old tiles are not reassigned
    total = {**first, **more}
    assert {s: list(total.values()).count(s) for s in dataset.SPLITS} == {"train": 16, "val": 2, "test": 2}
    small = dataset.assign_splits({}, ["x", "y", "z"])
    assert sorted(small.values()) == ["test", "train", "train"]
    assert sorted(dataset.assign_splits(small, ["w"]).values()) == ["val"]


def test_tiles_pass_qc_only_when_covered_and_crowded():
    X, y = make_tissue((300, 260), seed=4)
    coverage = np.ones(y.shape[:2], bool)
    coverage[:20, :20] = False
    y[5:8, 200:203, 0] = 9999  # a 9-px speck: under the paper's 15-px minimum
    tiles, skipped = dataset.cut_tiles(X, y, coverage, size=128)
    corners = {(t.y0, t.x0) for t in tiles}
    assert (0, 0) not in corners and skipped["uncovered"] == 1
    assert all(t.X.shape == (128, 128, 2) and t.y.shape == (128, 128, 2) for t in tiles)
    assert all(t.n_cells >= dataset.MIN_CELLS for t in tiles)
    assert skipped["few_cells"] >= 1  # the 44-px-wide right column and 44-px-high bottom row hold few cells
    for t in tiles:
        sizes = np.bincount(t.y[..., 0].ravel())[1:]
        assert (sizes[sizes > 0] >= dataset.MIN_CELL_PIXELS).all()
        assert not (t.y[..., 0] == 9999).any()


def test_select_and_hash():
    X = np.zeros((3, 8, 8, 2), np.float32)
    y = np.zeros((3, 8, 8, 2), np.int32)
    y[1, 2:4, 2:4] = 1
    data = {"X": X, "y": y, "meta": [{"split": "train"}, {"split": "test"}, {"split": "train"}]}
    Xt, yt, meta = dataset.select(data, "test")
    assert len(Xt) == 1 and yt[0].any() and meta == [{"split": "test"}]
    assert dataset.data_hash(Xt, yt) != dataset.data_hash(*dataset.select(data, "train")[:2])


def test_partly_covered_tiles_are_kept_with_what_is_known():
    X, y = make_tissue((128, 128), seed=2)
    coverage = np.ones((128, 128), bool)
    coverage[:, 96:] = False
    assert dataset.cut_tiles(X, y, coverage, size=128, min_cells=1)[0] == []
    assert dataset.cut_tiles(X, y, coverage, size=128, min_cells=1, min_known=0.8)[0] == []  # 75% covered
    (tile,), _ = dataset.cut_tiles(X, y, coverage, size=128, min_cells=1, min_known=0.7)
    assert tile.known is not None and not tile.known[:, 96:].any()
    touching = set(np.unique(y[:, 95, 0])) - {0}
    assert touching and not np.isin(tile.y[..., 0], list(touching)).any()
    kept = set(np.unique(tile.y[..., 0])) - {0}
    assert kept and all((tile.known[tile.y[..., 0] == c]).all() for c in kept)
    # a cell wholly inside the covered part is kept as it was
    inside = [c for c in np.unique(y[:, :80, 0]) if c and not (y[:, 80:, 0] == c).any()]
    assert inside and all(c in kept for c in inside if (y[..., 0] == c).sum() >= dataset.MIN_CELL_PIXELS)
    with pytest.raises(ValueError, match="min_known"):
        dataset.cut_tiles(X, y, coverage, size=128, min_known=0)
