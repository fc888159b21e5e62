import numpy as np
import pytest

from pipeline.metrics import evaluate, format_table, nc_ratio_agreement, object_accuracy


def _blank():
    return np.zeros((40, 40), np.int32)


def _counts(r):
    keys = ("correct", "false_negative", "false_positive", "split", "merge", "catastrophe")
    return tuple(r[k] for k in keys)


def test_perfect_match_with_different_ids():
    t = _blank()
    t[2:10, 2:10] = 1
    t[20:30, 20:30] = 2
    p = np.where(t == 1, 7, np.where(t == 2, 3, 0))
    r = object_accuracy(t, p)
    assert _counts(r) == (2, 0, 0, 0, 0, 0)
    assert r["precision"] == r["recall"] == r["f1"] == r["jaccard"] == 1.0
    assert sorted(r["matches"]) == [(1, 7, 1.0), (2, 3, 1.0)]


def test_false_negative_and_false_positive():
    t = _blank()
    t[2:10, 2:10] = 1
    t[20:30, 20:30] = 2
    p = _blank()
    p[2:10, 2:10] = 1
    p[30:38, 2:10] = 2
    r = object_accuracy(t, p)
    assert _counts(r) == (1, 1, 1, 0, 0, 0)
    assert r["precision"] == 0.5 and r["recall"] == 0.5 and r["f1"] == 0.5


def test_split():
    t = _blank()
    t[5:25, 5:25] = 1
    p = _blank()
    p[5:25, 5:15] = 1
    p[5:25, 15:25] = 2
    r = object_accuracy(t, p)
    assert _counts(r) == (0, 0, 0, 1, 0, 0)
    assert r["f1"] == 0.0


def test_merge():
    t = _blank()
    t[5:25, 5:15] = 1
    t[5:25, 15:25] = 2
    p = _blank()
    p[5:25, 5:25] = 4
    r = object_accuracy(t, p)
    assert _counts(r) == (0, 0, 0, 0, 1, 0)


def test_catastrophe():
    t = _blank()
    t[5:25, 5:15] = 1
    t[5:25, 15:25] = 2
    p = _blank()
    p[5:15, 5:25] = 1
    p[15:25, 5:25] = 2
    r = object_accuracy(t, p)
    assert _counts(r) == (0, 0, 0, 0, 0, 1)


def test_iou_threshold_boundary():
    # IoU of a 10x10 cell against a shifted 10x10 prediction is 10*k / (200 - 10*k).
    t = _blank()
    t[10:20, 10:20] = 1
    for shift, expect in [(2, 1), (3, 0)]:
        p = _blank()
        p[10 + shift : 20 + shift, 10:20] = 1
        iou = (10 - shift) * 10 / (200 - (10 - shift) * 10)
        r = object_accuracy(t, p)
        assert (iou > 0.6) == bool(expect)
        assert r["correct"] == expect
        if not expect:
            # Linked by weak overlap but too poor to match: one miss on each side.
            assert r["false_negative"] == 1 and r["false_positive"] == 1
    # Exactly 0.6 does not match (strict inequality, as in ObjectAccuracy).
    t3 = np.zeros((1, 10), np.int32)
    t3[0, :8] = 1
    p3 = np.zeros((1, 10), np.int32)
    p3[0, 2:10] = 1  # inter 6, union 10 -> exactly 0.6
    assert object_accuracy(t3, p3)["correct"] == 0
    assert object_accuracy(t3, p3, cutoff1=0.5)["correct"] == 1


def test_small_prediction_inside_a_large_cell_links_by_containment():
    t = _blank()
    t[0:30, 0:30] = 1
    p = _blank()
    p[0:30, 0:15] = 1  # IoU 0.5: linked, not matched
    p[5:8, 25:28] = 2  # IoU with the cell < 0.1 but fully inside it
    r = object_accuracy(t, p)
    assert r["correct"] == 0 and r["split"] == 1


def test_empty_images_give_finite_scores():
    z = _blank()
    r = object_accuracy(z, z)
    assert r["f1"] == 1.0 and r["n_true"] == 0
    t = _blank()
    t[2:8, 2:8] = 1
    r = object_accuracy(t, z)
    assert r["f1"] == 0.0 and r["recall"] == 0.0 and r["precision"] == 0.0 and r["false_negative"] == 1
    r = object_accuracy(z, t)
    assert r["false_positive"] == 1 and r["f1"] == 0.0


def test_pooled_f1_is_harmonic_mean_of_pooled_rates():
    a_t = _blank()
    a_t[2:10, 2:10] = 1
    a_p = a_t.copy()  # 1/1 correct
    b_t = _blank()
    for i in range(4):
        b_t[2 + 9 * i : 9 + 9 * i, 2:9] = i + 1
    b_p = _blank()
    b_p[2:9, 2:9] = 1  # 1 of 4 found
    b_p[30:38, 30:38] = 9  # plus a false positive
    res = evaluate([a_t, b_t], [a_p, b_p])
    pooled = res["pooled"]
    assert pooled["n_true"] == 5 and pooled["n_pred"] == 3 and pooled["correct"] == 2
    prec, rec = 2 / 3, 2 / 5
    assert pooled["precision"] == pytest.approx(prec)
    assert pooled["recall"] == pytest.approx(rec)
    assert pooled["f1"] == pytest.approx(2 * prec * rec / (prec + rec))
    mean_f1 = np.mean([r["f1"] for r in res["per_image"]])
    assert pooled["f1"] != pytest.approx(mean_f1)
    assert pooled["false_negative"] == 3 and pooled["false_positive"] == 1


def test_evaluate_layers_and_shapes():
    y = np.zeros((2, 30, 30, 2), np.int32)
    y[:, 2:12, 2:12, 0] = 1
    y[:, 4:9, 4:9, 1] = 1
    assert evaluate(y, y, layer=1)["pooled"]["correct"] == 2
    assert evaluate(y[..., :1], y[..., :1])["pooled"]["correct"] == 2
    assert evaluate(y[0, ..., 0], y[0], layer=0)["pooled"]["correct"] == 1
    with pytest.raises(ValueError):
        evaluate(y, y)
    with pytest.raises(ValueError):
        evaluate(y, y[:1], layer=0)


def test_nc_ratio_agreement():
    rng = np.random.default_rng(0)
    y = np.zeros((60, 60, 2), np.int32)
    for i in range(5):
        for j in range(5):
            lab = i * 5 + j + 1
            y[i * 12 : i * 12 + 11, j * 12 : j * 12 + 11, 0] = lab
            k = int(rng.integers(1, 5))
            y[i * 12 + 5 - k : i * 12 + 6 + k, j * 12 + 5 - k : j * 12 + 6 + k, 1] = lab
    r = nc_ratio_agreement(y, y)
    assert r["n"] == 25 and r["r"] == pytest.approx(1.0)
    # Predicted nuclei with unrelated ids still count inside their cell.
    p = y.copy()
    p[..., 1] = np.where(p[..., 1] > 0, 1, 0)
    assert nc_ratio_agreement(y, p)["r"] == pytest.approx(1.0)
    shuffled = y.copy()
    shuffled[..., 1] = 0
    assert np.isnan(nc_ratio_agreement(y, shuffled)["r"])


def test_format_table_lists_images_and_pooled():
    t = _blank()
    t[2:10, 2:10] = 1
    text = format_table(evaluate([t, t], [t, t]))
    lines = text.splitlines()
    assert "f1" in lines[0] and "split" in lines[0]
    assert lines[-1].startswith("pooled") and "1.000" in lines[-1]
    assert len(lines) == 2 + 3
    assert "image" in format_table(object_accuracy(t, t))


def test_many_cells_fast_and_consistent():
    from pipeline.synthetic import make_tissue

    _, y = make_tissue((512, 512), seed=2)
    t = y[..., 0]
    # Shift every prediction by one pixel: all cells still match, nothing else is reported.
    p = np.roll(t, 1, axis=1)
    r = object_accuracy(t, p)
    assert r["n_true"] == r["n_pred"] == t.max()
    assert r["correct"] >= 0.95 * r["n_true"]
    missed = r["n_true"] - r["correct"]
    assert r["false_negative"] + r["split"] + r["merge"] + r["catastrophe"] <= missed
    assert r["jaccard"] < 1.0
