"""The simulated annotator's decisions, applied with the real edit engine (no HTTP): it reaches the truth with a
bounded number of operations, and reads the server's binary patches correctly."""
from __future__ import annotations

import numpy as np

from backend.edits import apply_edit
from pipeline import metrics, simulate
from pipeline.baseline import nuclear_expansion
from pipeline.stitch import relabel_crop
from pipeline.synthetic import make_tissue


def _correct(labels, truth, image):
    ops, skip = 0, set()
    budget = 12 * (int(truth.max()) + 5)
    while ops < budget:
        fix = simulate.next_fix(labels[..., 0], truth, skip=frozenset(skip))
        if fix is None:
            return ops
        key, tool, params = fix
        skip.add(key)
        before = labels.copy()
        patch = apply_edit(labels, image, tool, {**params, "layer": 0})
        simulate.apply_patch(labels, patch.to_bytes())  # the client's reading of the wire format
        ops += 1
        if (before != labels).any() and key[0] in ("grow", "grow-rim", "trim"):
            skip.discard(key)
    raise AssertionError("the annotator did not converge within its budget")


def test_corrects_a_baseline_prelabel_to_the_truth():
    X, y = make_tissue((160, 160), seed=1011)
    labels = relabel_crop(nuclear_expansion(X, nuclear_channel=0))
    truth = y[..., 0]
    before = metrics.object_accuracy(truth, labels[..., 0])["f1"]
    ops = _correct(labels, truth, X)
    after = metrics.object_accuracy(truth, labels[..., 0])
    assert before < 0.8 and after["f1"] >= 0.95 and after["mean_iou"] >= 0.8
    assert ops < 4 * truth.max()


def test_paints_every_cell_from_nothing():
    X, y = make_tissue((128, 128), seed=3)
    labels = np.zeros(y.shape, np.int32)
    ops = _correct(labels, y[..., 0], X)
    result = metrics.object_accuracy(y[..., 0], labels[..., 0])
    assert result["f1"] >= 0.95 and ops >= y[..., 0].max()


def test_the_annotator_stops_merging_or_splitting_a_cell_that_oscillates():
    """A merge whose result the next split undoes, or a split retried on each new part it makes, would repeat until
    the budget ran out (1,000+ operations on two crops were seen): merges and splits are capped per true cell and
    pass, other fixes never are."""
    from collections import Counter

    from pipeline.simulate import MAX_TOPOLOGY_FIXES_PER_CELL, _oscillating

    truth = np.zeros((20, 20), np.int32)
    truth[:, :10], truth[:, 10:] = 7, 8
    counts = Counter()
    verdicts = [_oscillating(("merge", 7, 100 + i), {}, truth, counts) for i in range(MAX_TOPOLOGY_FIXES_PER_CELL + 2)]
    assert verdicts == [False] * MAX_TOPOLOGY_FIXES_PER_CELL + [True, True]
    assert not _oscillating(("merge", 8, 1), {}, truth, counts)  # another true cell has its own count
    # splits count by the true cells their seeds are in, whatever the (ever new) predicted label
    splits = [_oscillating(("split", 50 + i), {"seeds": [[5, 2], [5, 15]], "label": 50 + i}, truth, counts)
              for i in range(MAX_TOPOLOGY_FIXES_PER_CELL + 1)]
    assert splits == [False] * MAX_TOPOLOGY_FIXES_PER_CELL + [True]
    assert not any(_oscillating(("grow", 7), {}, truth, counts) for _ in range(10))
