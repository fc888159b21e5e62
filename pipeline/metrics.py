"""Object-level segmentation accuracy in the style of deepcell's ObjectAccuracy.

Cells are matched one-to-one by linear assignment on 1 - IoU; a match needs IoU > 1 - cutoff1.
Cells left over are linked by weaker overlap (IoU > cutoff2, or at least half of the smaller
one covered) and each connected group is one error: split, merge, catastrophe, or a plain
false negative / false positive. Overlaps are counted sparsely from pixel pairs, so the cost is
that of a few passes over the image whatever the number of cells.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["object_accuracy", "evaluate", "nc_ratio_agreement", "format_table", "overlaps"]

_COUNTS = ("n_true", "n_pred", "correct", "false_positive", "false_negative", "split", "merge", "catastrophe")


def _compact(labels):
    """(compact labels 0..n, original ids of 1..n)."""
    ids, inv = np.unique(labels, return_inverse=True)
    inv = inv.reshape(labels.shape)
    if ids.size and ids[0] == 0:
        return inv, ids[1:]
    return inv + 1, ids


def overlaps(y_true2d, y_pred2d):
    """Sparse overlap table between two label images.

    Returns (true_ids, pred_ids, area_true, area_pred, pairs) where ``pairs`` is an (M, 3) array
    of (true index, pred index, intersection) over index pairs that share pixels; indices are
    0-based positions into ``true_ids`` / ``pred_ids``.
    """
    t = np.asarray(y_true2d)
    p = np.asarray(y_pred2d)
    if t.shape != p.shape:
        raise ValueError(f"label images differ in shape: {t.shape} vs {p.shape}")
    tc, tids = _compact(t)
    pc, pids = _compact(p)
    nt, np_ = len(tids), len(pids)
    area_t = np.bincount(tc.ravel(), minlength=nt + 1)[1:]
    area_p = np.bincount(pc.ravel(), minlength=np_ + 1)[1:]
    both = (tc > 0) & (pc > 0)
    key = (tc[both].astype(np.int64) - 1) * max(np_, 1) + (pc[both].astype(np.int64) - 1)
    keys, inter = np.unique(key, return_counts=True)
    pairs = np.stack([keys // max(np_, 1), keys % max(np_, 1), inter], axis=1) if keys.size else np.zeros((0, 3), np.int64)
    return tids, pids, area_t, area_p, pairs


def _ratio(num, den, *, empty):
    return float(num) / float(den) if den else empty


def object_accuracy(y_true2d, y_pred2d, *, cutoff1: float = 0.4, cutoff2: float = 0.1) -> dict:
    """Compare one predicted label image to ground truth.

    Returns counts (``n_true``, ``n_pred``, ``correct``, ``false_positive``, ``false_negative``,
    ``split``, ``merge``, ``catastrophe``), ``precision`` = correct / n_pred, ``recall`` =
    correct / n_true, ``f1``, ``jaccard`` = IoU of the foreground pixels (cell vs background,
    ignoring ids), ``mean_iou`` = mean IoU of the matched pairs, and ``matches``: a list of
    (true_id, pred_id, iou). Each split / merge / catastrophe counts once per connected group. A
    true and a predicted cell that are linked only to each other but overlap too little to match
    count as one false negative and one false positive. Ratios with an empty denominator are 1.0
    when both images are empty and 0.0 otherwise, so results never hold NaN.
    """
    t = np.asarray(y_true2d)
    p = np.asarray(y_pred2d)
    tids, pids, area_t, area_p, pairs = overlaps(t, p)
    nt, np_ = len(tids), len(pids)
    ti, pi, inter = pairs[:, 0], pairs[:, 1], pairs[:, 2].astype(np.float64)
    iou = inter / (area_t[ti] + area_p[pi] - inter) if pairs.size else np.zeros(0)

    # One-to-one matching among candidate pairs. With the default cutoff (IoU > 0.6) the
    # candidates are already one-to-one, but a looser cutoff1 can make them compete.
    cand = iou > (1.0 - cutoff1)
    matched_t = np.zeros(nt, bool)
    matched_p = np.zeros(np_, bool)
    matches = []
    if cand.any():
        ct, cp, ciou = ti[cand], pi[cand], iou[cand]
        ut, rt = np.unique(ct, return_inverse=True)
        up, rp = np.unique(cp, return_inverse=True)
        cost = np.full((len(ut), len(up)), 2.0)
        cost[rt, rp] = 1.0 - ciou
        rows, cols = linear_sum_assignment(cost)
        ok = cost[rows, cols] <= cutoff1
        rows, cols = rows[ok], cols[ok]
        matched_t[ut[rows]] = True
        matched_p[up[cols]] = True
        for r, c in zip(rows, cols):
            matches.append((int(tids[ut[r]]), int(pids[up[c]]), float(1.0 - cost[r, c])))
    correct = len(matches)

    # Error groups among the leftovers.
    counts = dict(false_positive=0, false_negative=0, split=0, merge=0, catastrophe=0)
    rest_t = np.flatnonzero(~matched_t)
    rest_p = np.flatnonzero(~matched_p)
    if rest_t.size or rest_p.size:
        smaller = np.minimum(area_t[ti], area_p[pi]) if pairs.size else np.zeros(0)
        link = (iou > cutoff2) | (inter >= 0.5 * smaller)
        link &= ~matched_t[ti] & ~matched_p[pi]
        n_nodes = nt + np_
        g = coo_matrix((np.ones(int(link.sum())), (ti[link], nt + pi[link])), shape=(n_nodes, n_nodes))
        _, comp = connected_components(g, directed=False)
        nodes = np.concatenate([rest_t, nt + rest_p])
        is_true = np.concatenate([np.ones(rest_t.size, bool), np.zeros(rest_p.size, bool)])
        c = comp[nodes]
        n_t_in = np.bincount(c[is_true], minlength=n_nodes)
        n_p_in = np.bincount(c[~is_true], minlength=n_nodes)
        groups = np.unique(c)
        gt, gp = n_t_in[groups], n_p_in[groups]
        counts["false_negative"] = int(np.sum((gt == 1) & (gp <= 1)))
        counts["false_positive"] = int(np.sum((gp == 1) & (gt <= 1)))
        counts["split"] = int(np.sum((gt == 1) & (gp >= 2)))
        counts["merge"] = int(np.sum((gt >= 2) & (gp == 1)))
        counts["catastrophe"] = int(np.sum((gt >= 2) & (gp >= 2)))
        # Lone leftovers (no link at all) are their own groups and land in FN / FP above.

    empty = 1.0 if nt == 0 and np_ == 0 else 0.0
    precision = _ratio(correct, np_, empty=empty)
    recall = _ratio(correct, nt, empty=empty)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else empty
    fg_t, fg_p = t > 0, p > 0
    union = int(np.count_nonzero(fg_t | fg_p))
    jaccard = _ratio(np.count_nonzero(fg_t & fg_p), union, empty=1.0)
    mean_iou = float(np.mean([m[2] for m in matches])) if matches else 0.0
    return dict(
        n_true=nt,
        n_pred=np_,
        correct=correct,
        **counts,
        precision=precision,
        recall=recall,
        f1=f1,
        jaccard=jaccard,
        mean_iou=mean_iou,
        matches=matches,
        _fg_inter=int(np.count_nonzero(fg_t & fg_p)),
        _fg_union=union,
    )


def _as_images(Y, layer):
    if isinstance(Y, (list, tuple)):
        imgs = [np.asarray(a) for a in Y]
    else:
        Y = np.asarray(Y)
        if Y.ndim == 2:
            imgs = [Y]
        elif Y.ndim == 3 and layer is not None:
            imgs = [Y]  # a single (H, W, K) image
        else:
            imgs = list(Y)
    out = []
    for a in imgs:
        if layer is not None and a.ndim == 3:
            a = a[..., layer]
        elif a.ndim == 3:
            if a.shape[-1] != 1:
                raise ValueError(
                    f"labels with {a.shape[-1]} layers: pass layer=0 (whole-cell) or layer=1 (nuclear)"
                )
            a = a[..., 0]
        out.append(a)
    return out


def evaluate(Y_true, Y_pred, *, layer: int | None = None, cutoff1: float = 0.4, cutoff2: float = 0.1) -> dict:
    """Object accuracy over a set of images.

    ``Y_true`` / ``Y_pred``: (N, H, W), (N, H, W, K) with ``layer`` picking K, a single (H, W)
    or (H, W, K) image, or lists of such images; 2-D images are taken as they are, so a plain
    ground-truth mask can be compared with one layer of a two-layer prediction. With ``layer``
    set, a 3-D array means one (H, W, K) image; pass a stack of 2-D images as a list. Returns ``{"per_image": [...], "pooled": {...}}`` where pooled
    precision / recall are Σcorrect / Σpred and Σcorrect / Σtrue, ``f1`` their harmonic mean
    (not the mean of per-image F1), ``jaccard`` the foreground IoU over all pixels, and error
    counts summed.
    """
    ts, ps = _as_images(Y_true, layer), _as_images(Y_pred, layer)
    if len(ts) != len(ps):
        raise ValueError(f"{len(ts)} true images but {len(ps)} predictions")
    per = [object_accuracy(a, b, cutoff1=cutoff1, cutoff2=cutoff2) for a, b in zip(ts, ps)]
    pooled = {k: int(sum(r[k] for r in per)) for k in _COUNTS}
    empty = 1.0 if pooled["n_true"] == 0 and pooled["n_pred"] == 0 else 0.0
    prec = _ratio(pooled["correct"], pooled["n_pred"], empty=empty)
    rec = _ratio(pooled["correct"], pooled["n_true"], empty=empty)
    pooled["precision"] = prec
    pooled["recall"] = rec
    pooled["f1"] = 2 * prec * rec / (prec + rec) if prec + rec > 0 else empty
    pooled["jaccard"] = _ratio(sum(r["_fg_inter"] for r in per), sum(r["_fg_union"] for r in per), empty=1.0)
    ious = [m[2] for r in per for m in r["matches"]]
    pooled["mean_iou"] = float(np.mean(ious)) if ious else 0.0
    pooled["n_images"] = len(per)
    return {"per_image": per, "pooled": pooled}


def _nc_ratios(y, ids):
    cell, nuc = y[..., 0], y[..., 1]
    n = int(cell.max()) + 1
    cell_area = np.bincount(cell.ravel(), minlength=n)
    # Nuclear pixels inside each cell, whatever their nuclear id: predicted layers need not
    # share ids with the cells.
    nuc_area = np.bincount(cell[nuc > 0].ravel(), minlength=n)
    ids = np.asarray(ids, dtype=np.int64)
    return nuc_area[ids] / np.maximum(cell_area[ids], 1)


def nc_ratio_agreement(y_true, y_pred, *, cutoff1: float = 0.4) -> dict:
    """Pearson r between true and predicted nuclear/cell area ratios of matched whole cells.

    ``y_true`` / ``y_pred``: (H, W, 2) [whole-cell, nuclear]. Cells are matched on the
    whole-cell layer as in ``object_accuracy``; the ratio is the share of a cell's pixels that
    are nuclear. Returns ``{"r": float, "n": matched cells}``; ``r`` is NaN when fewer than three
    cells match or a side has no variance (a correlation does not exist there).
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    res = object_accuracy(y_true[..., 0], y_pred[..., 0], cutoff1=cutoff1)
    if len(res["matches"]) < 3:
        return {"r": float("nan"), "n": len(res["matches"])}
    tid = [m[0] for m in res["matches"]]
    pid = [m[1] for m in res["matches"]]
    a, b = _nc_ratios(y_true, tid), _nc_ratios(y_pred, pid)
    if a.std() == 0 or b.std() == 0:
        return {"r": float("nan"), "n": len(tid)}
    return {"r": float(np.corrcoef(a, b)[0, 1]), "n": len(tid)}


def format_table(result: dict) -> str:
    """Plain-text table of an ``object_accuracy`` or ``evaluate`` result."""
    if "pooled" in result:
        rows = [(f"image {i}", r) for i, r in enumerate(result["per_image"])] + [("pooled", result["pooled"])]
    else:
        rows = [("image", result)]
    cols = ["n_true", "n_pred", "correct", "false_negative", "false_positive", "split", "merge", "catastrophe"]
    heads = ["true", "pred", "correct", "FN", "FP", "split", "merge", "catastr."]
    fcols = ["precision", "recall", "f1", "jaccard"]
    name_w = max(len(r[0]) for r in rows)
    header = " ".join([" " * name_w] + [f"{h:>8}" for h in heads] + [f"{c:>9}" for c in fcols])
    lines = [header, "-" * len(header)]
    for name, r in rows:
        lines.append(
            " ".join([f"{name:<{name_w}}"] + [f"{int(r[c]):>8d}" for c in cols] + [f"{r[c]:>9.3f}" for c in fcols])
        )
    return "\n".join(lines)
