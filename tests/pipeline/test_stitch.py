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


# --- the three reproduced cases: the stitched labels themselves are checked -----------------------------------

def _two_crops_one_cell_deleted():
    """A 560 px cell (rows 10-30, cols 30-58) that the left crop kept and the right crop (overlap cols 40-60)
    left background: the right crop lies deeper on cols 50-59."""
    truth = np.zeros((60, 100), np.int32)
    truth[10:30, 30:58] = 1
    left = relabel_crop(truth[:, :60])
    right = np.zeros((60, 60), np.int32)
    right[40:50, 30:45] = 1  # some other cell of the right crop, outside the zone
    return truth, [((0, 0, 60, 60), left), ((0, 40, 60, 100), right)]


def test_a_cell_kept_by_one_crop_and_deleted_by_its_neighbour_is_kept_whole_and_listed():
    truth, crops = _two_crops_one_cell_deleted()
    result = stitch_crops(truth.shape, crops)
    cell = result.labels[15, 35, 0]
    assert cell > 0 and (result.labels[..., 0] == cell).sum() == 560  # whole: never the silent 400 px cut
    assert np.array_equal(result.labels[..., 0] == cell, truth == 1)
    assert (result.labels[40:50, 70:85, 0] > 0).all() and result.labels.max() == 2
    listed = [c for c in result.conflicts if c["kind"] == "kept-vs-deleted"]
    assert len(listed) == 1 and listed[0]["outcome"] == "kept" and listed[0]["crops"] == [0, 1]
    assert listed[0]["regained_pixels"] == 160


def test_newer_work_deleting_a_cell_wins_on_its_pixels_and_the_cut_is_listed():
    truth, crops = _two_crops_one_cell_deleted()
    result = stitch_crops(truth.shape, crops, priority=[0, 1])  # the right crop is newer work
    cell = result.labels[15, 35, 0]
    assert np.array_equal(result.labels[..., 0] == cell, np.pad(np.ones((20, 10), bool), ((10, 30), (30, 60))))
    listed = [c for c in result.conflicts if c["kind"] == "kept-vs-deleted"]
    assert len(listed) == 1 and listed[0]["outcome"] == "cut by newer work" and listed[0]["kept_pixels"] == 200


def test_a_contradiction_is_listed_and_its_cells_stay_separate():
    """Three crops: crop A has two cells p and q; B's cell joins p, C's cell joins q, and B's and C's cells join
    each other in their shared zone, which would make p and q one cell."""
    A = np.zeros((60, 60), np.int32)
    A[10:30, 42:58] = 1  # p, in A's zone with B
    A[42:58, 10:30] = 2  # q, in A's zone with C
    B = np.zeros((60, 60), np.int32)  # box (0, 40, 60, 100): image cols 40-100
    B[10:58, 2:18] = 1  # p extended down into the zone B shares with C
    C = np.zeros((60, 60), np.int32)  # box (40, 0, 100, 60): image rows 40-100
    C[2:18, 10:58] = 1  # q extended right into the zone C shares with B
    result = stitch_crops((100, 100), [((0, 0, 60, 60), A), ((0, 40, 60, 100), B), ((40, 0, 100, 60), C)])
    labels = result.labels[..., 0]
    p, q = labels[20, 50], labels[50, 20]
    assert p > 0 and q > 0 and p != q
    assert set(np.unique(labels).tolist()) == {0, p, q}
    assert (labels[10:30, 42:58] == p).all() and (labels[42:58, 10:30] == q).all()
    contradictions = [c for c in result.conflicts if c["kind"] == "contradiction"]
    assert contradictions and contradictions[0]["crops"] == [0] and contradictions[0]["cells"] == [1, 2]


def test_newer_approved_work_wins_on_the_same_pixels():
    old = np.zeros((60, 60), np.int32)
    old[10:30, 10:30] = 1
    old[40:50, 40:50] = 2
    new = np.zeros((60, 60), np.int32)
    new[10:20, 10:30] = 1  # re-annotated smaller,
    new[22:30, 10:30] = 2  # the rest is another cell,
    new[5:8, 50:58] = 3  # a cell added, cell 2 of the old crop deleted
    box = (0, 0, 60, 60)
    for crops, priority in (([(box, old), (box, new)], [1, 2]), ([(box, new), (box, old)], [2, 1])):
        result = stitch_crops((60, 60), crops, priority=priority)
        assert same_partition(result.labels[..., 0], new), priority
        assert not [c for c in result.conflicts if c["kind"] == "kept-vs-deleted"]
    # partial overlap: the newer crop owns the shared pixels even where the older crop lies deeper
    wide = np.zeros((60, 100), np.int32)
    wide[10:30, 20:70] = 1
    older = relabel_crop(wide[:, :70])
    newer = relabel_crop(wide[:, 30:100]).copy()
    newer[10:30, 30:40] = 0  # the newer annotator trimmed the cell at image cols 60-70
    result = stitch_crops((60, 100), [((0, 0, 60, 70), older), ((0, 30, 60, 100), newer)], priority=[0, 1])
    expected = np.zeros((60, 100), bool)
    expected[10:30, 20:60] = True
    assert np.array_equal(result.labels[..., 0] > 0, expected) and result.labels.max() == 1
