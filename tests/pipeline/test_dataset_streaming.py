"""Dataset tiles streamed into the .npz one by one read back as the stacked arrays, with the same split hashes."""
import numpy as np
import pytest

from pipeline import dataset, io


def test_streamed_tiles_read_back_stacked_with_the_split_hashes(tmp_path):
    rng = np.random.default_rng(0)
    X = [rng.random((40, 40, 2)).astype(np.float32) for _ in range(7)]
    y = [rng.integers(0, 9, (40, 40, 2)).astype(np.int32) for _ in range(7)]
    meta = [{"split": s, "tissue": "tonsil", "platform": "mibi"}
            for s in ["train", "test", "train", "val", "train", "test", "train"]]
    hashes = io.write_dataset_tiles(tmp_path / "d.npz", X, y, meta)
    back = io.load_dataset(tmp_path / "d.npz")
    np.testing.assert_array_equal(back["X"], np.stack(X))
    np.testing.assert_array_equal(back["y"], np.stack(y))
    assert back["meta"] == meta
    stacked = {"X": np.stack(X), "y": np.stack(y), "meta": meta}
    for split in dataset.SPLITS:
        Xs, ys, _ = dataset.select(stacked, split)
        assert hashes[split] == dataset.data_hash(Xs, ys)


def test_a_bad_tile_is_refused_and_no_file_is_left(tmp_path):
    X = [np.zeros((8, 8, 2), np.float32), np.full((8, 8, 2), np.nan, np.float32)]
    y = [np.zeros((8, 8, 2), np.int32)] * 2
    with pytest.raises(ValueError, match="NaN"):
        io.write_dataset_tiles(tmp_path / "d.npz", X, y, [{"split": "train"}] * 2)
    assert list(tmp_path.iterdir()) == []
