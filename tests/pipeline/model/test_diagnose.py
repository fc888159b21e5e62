"""The miss diagnosis puts each unmatched true cell down to the step that lost it."""
import numpy as np
import pytest

from pipeline.model import diagnose, postprocess


def _square(a, value, r0, c0, size=10):
    a[r0:r0 + size, c0:c0 + size] = value


def test_each_cause_is_told_apart():
    truth = np.zeros((60, 80), np.int32)
    pred = np.zeros_like(truth)
    mask = np.zeros(truth.shape, bool)
    markers = np.zeros_like(truth)
    # 1: found exactly.
    _square(truth, 1, 2, 2); _square(pred, 1, 2, 2); _square(mask, True, 2, 2); markers[6, 6] = 1
    # 2: the interior head left it out.
    _square(truth, 2, 2, 20)
    # 3: in the mask, but no marker seeded it.
    _square(truth, 3, 2, 40); _square(mask, True, 2, 40)
    # 4 and 5: two touching cells, one predicted cell over both, seeded only in 4: 5 lacked a marker (the
    # merge's cause), 4 is the merged one.
    _square(truth, 4, 30, 2); _square(truth, 5, 30, 12)
    pred[30:40, 2:22] = 2; mask[30:40, 2:22] = True; markers[35, 10] = 2
    # 6: cut in two halves.
    _square(truth, 6, 30, 40); pred[30:40, 40:45] = 3; pred[30:40, 45:50] = 4
    mask[30:40, 40:50] = True; markers[35, 42] = 3; markers[35, 47] = 4
    # 7: one predicted cell, too small an outline (IoU 0.4).
    _square(truth, 7, 30, 60); pred[30:34, 60:70] = 5; mask[30:40, 60:70] = True; markers[32, 65] = 5
    counts = diagnose.classify_true_cells(truth, pred, mask, markers)
    assert counts == {"n_true": 7, "matched": 1, "no_mask": 1, "no_marker": 2, "merged": 1, "split": 1,
                      "extent": 1}


def test_shapes_must_agree():
    a = np.zeros((8, 8), np.int32)
    with pytest.raises(ValueError, match="one shape"):
        diagnose.classify_true_cells(a, a, np.zeros((8, 9), bool), a)


def test_seeds_and_mask_are_what_deep_watershed_floods():
    rng = np.random.default_rng(0)
    dist = np.zeros((64, 64), np.float32)
    interior = np.zeros((64, 64), np.float32)
    for r, c in ((16, 16), (16, 44), (44, 30)):
        yy, xx = np.ogrid[:64, :64]
        d2 = (yy - r) ** 2 + (xx - c) ** 2
        dist = np.maximum(dist, np.clip(1 - d2 / 100.0, 0, None))
        interior = np.maximum(interior, (d2 < 100).astype(np.float32))
    interior += rng.normal(0, 0.01, interior.shape).astype(np.float32)
    kwargs = dict(maxima_threshold=0.3, interior_threshold=0.3, radius=2)
    _, _, mask, markers = postprocess.seeds_and_mask(dist, interior, **kwargs)
    labels = postprocess.deep_watershed(dist, interior, **kwargs)
    assert len(np.unique(markers[markers > 0])) == 3 == labels.max()
    # Every labelled pixel lies in the mask, and every marker in a labelled cell.
    assert not (labels > 0)[~mask].any()
    assert (labels[markers > 0] > 0).all()
