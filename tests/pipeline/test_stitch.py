from __future__ import annotations

import numpy as np
import pytest
import tifffile

from pipeline.crop import crop_boxes
from pipeline.stitch import cut_crops, relabel_crop, same_partition, stitch_crops
from pipeline.synthetic import make_tissue


@pytest.fixture(scope="module")
def vectra_truth(shared_data):
    return tifffile.imread(shared_data / "vectra" / "image0_wholecell.tif").astype(np.int32)


@pytest.mark.parametrize("overlap", [0, 20, 40])
@pytest.mark.parametrize("shape", [(397, 383), (400, 400), (101, 257)])
def test_cropping_real_labels_and_stitching_gives_the_same_partition(vectra_truth, overlap, shape):
    truth = vectra_truth[:shape[0], :shape[1]]
    crops = cut_crops(truth, crop_boxes(truth.shape, 100, overlap))
    result = stitch_crops(truth.shape, crops)
    assert result.coverage.all()
    if overlap:
        assert same_partition(result.labels[..., 0], truth)
        assert result.conflicts == []
    else:
        # Crops that only touch are joined by the two facing pixel rows. Where those rows cannot tell a cut cell
        # from two touching ones (a tie), nothing is guessed: the cell may stay in pieces, and it is reported.
        broken = _cells_not_kept_whole(truth, result.labels[..., 0])
        assert len(broken) <= len([c for c in result.conflicts if c["kind"] in ("tie", "disagreement")])
        assert len(broken) <= 0.01 * truth.max()


def _cells_not_kept_whole(truth, stitched):
    pairs = np.unique(np.stack([truth.ravel(), stitched.ravel()]), axis=1)
    pairs = pairs[:, (pairs[0] > 0) | (pairs[1] > 0)]
    ids, counts = np.unique(pairs[0], return_counts=True)
    merged = {int(t) for s in np.unique(pairs[1]) if s and (pairs[0][pairs[1] == s] > 0).sum() > 1
              for t in pairs[0][pairs[1] == s]}
    return set(ids[counts > 1].tolist()) | merged


@pytest.mark.parametrize("overlap", [0, 20, 40])
def test_both_layers_keep_one_id_per_cell(overlap):
    _, truth = make_tissue((301, 333), seed=3)
    result = stitch_crops(truth.shape[:2], cut_crops(truth, crop_boxes(truth.shape[:2], 128, overlap)))
    for layer in (0, 1):
        assert same_partition(result.labels[..., layer], truth[..., layer])
    nuclei = truth[..., 1] > 0
    assert np.array_equal(result.labels[..., 0][nuclei], result.labels[..., 1][nuclei])


def test_partial_cover_and_disagreeing_crops_are_reported():
    truth = np.zeros((60, 100), np.int32)
    truth[10:30, 30:70] = 1  # one cell across the two crops' shared zone
    left = relabel_crop(truth[:, :60])
    right = relabel_crop(truth[:, 40:90]).copy()
    right[:, :10][right[:, :10] == 1] = 0
    right[10:30, 0:10] = np.where(np.arange(10) < 5, 2, 3)[None, :]  # the right crop split it in the zone
    result = stitch_crops(truth.shape, [((0, 0, 60, 60), left), ((0, 40, 60, 90), right)])
    assert not result.coverage[:, 90:].any() and result.coverage[:, :90].all()
    kinds = {c["kind"] for c in result.conflicts}
    assert kinds & {"tie", "disagreement"}, result.conflicts
    assert all(0 <= c["x"] < 100 for c in result.conflicts if c["x"] >= 0)


def test_bad_crops_are_refused():
    with pytest.raises(ValueError, match="not inside"):
        stitch_crops((10, 10), [((0, 0, 11, 10), np.zeros((11, 10), np.int32))])
    with pytest.raises(ValueError, match="do not fit"):
        stitch_crops((10, 10), [((0, 0, 10, 10), np.zeros((9, 10), np.int32))])
    with pytest.raises(ValueError, match="integer"):
        stitch_crops((10, 10), [((0, 0, 10, 10), np.zeros((10, 10), np.float32))])


def test_same_partition_detects_a_merge():
    a = np.array([[1, 1, 2, 2]])
    assert same_partition(a, a * 7)
    assert not same_partition(a, np.array([[1, 1, 1, 1]]))
    assert not same_partition(a, np.array([[1, 1, 2, 0]]))
