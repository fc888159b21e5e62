"""Consensus of replicas (pipeline.consensus) and the simulated workers' mistakes (pipeline.simulate.Skill): cells
a majority drew are kept with their majority extent, cells one of three drew are dropped, and a worker's skill shows
in what they believe the cells are."""
from __future__ import annotations

import numpy as np

from pipeline import metrics, simulate
from pipeline.consensus import mean_agreement, merge_layer, merge_replicas, pairwise_agreement
from pipeline.synthetic import make_tissue


def _square(labels, cell, y, x, size=10):
    labels[y:y + size, x:x + size] = cell


def test_a_cell_a_majority_drew_is_kept_and_one_only_one_drew_is_dropped():
    a, b, c = (np.zeros((40, 60), np.int32) for _ in range(3))
    _square(a, 1, 5, 5), _square(b, 7, 5, 5), _square(c, 3, 5, 6)      # all three, c one px off
    _square(a, 2, 5, 30), _square(b, 2, 5, 30)                          # two of three
    _square(c, 9, 25, 40)                                              # only c
    merged = merge_layer([a, b, c])
    assert len(np.unique(merged)) - 1 == 2
    assert merged[25:35, 40:50].max() == 0
    # extent by pixel-wise majority: the column only c covers is out, the one a and b cover is in
    first = merged[10, 10]
    assert (merged == first).sum() == 100 and merged[10, 5] == first and merged[10, 15] == 0
    assert (merged[5:15, 30:40] > 0).all()


def test_contested_pixels_go_to_the_cell_more_replicas_drew_and_layers_merge_on_their_own():
    a, b, c = (np.zeros((30, 30, 2), np.int32) for _ in range(3))
    for r in (a, b, c):
        _square(r[..., 0], 1, 5, 5, 12)
    _square(a[..., 1], 4, 8, 8, 5)
    _square(b[..., 1], 4, 8, 8, 5)
    merged = merge_replicas([a, b, c])
    assert merged.shape == (30, 30, 2)
    assert (merged[..., 0] > 0).sum() == 144 and (merged[..., 1] > 0).sum() == 25


def test_agreement_is_the_project_f1_between_replicas():
    _, y = make_tissue((128, 128), seed=5)
    truth = y[..., 0]
    worse = simulate.corrupt_truth(truth, simulate.CARELESS, seed=1)
    pairs = pairwise_agreement([truth, truth, worse])
    assert [(i, j) for i, j, _ in pairs] == [(0, 1), (0, 2), (1, 2)]
    assert pairs[0][2] == 1.0 and pairs[1][2] == metrics.object_accuracy(truth, worse)["f1"] < 0.8
    assert mean_agreement(pairs) == np.mean([p[2] for p in pairs])


def test_consensus_of_three_middling_believers_beats_each_of_them():
    _, y = make_tissue((192, 192), seed=11)
    truth = y[..., 0]
    replicas = [simulate.corrupt_truth(truth, simulate.MIDDLING, seed=s) for s in range(3)]
    singles = sorted(metrics.object_accuracy(truth, r)["f1"] for r in replicas)
    merged = metrics.object_accuracy(truth, merge_layer(replicas))["f1"]
    assert merged > singles[-1], (merged, singles)


def test_a_workers_skill_shows_in_what_they_believe():
    _, y = make_tissue((160, 160), seed=2)
    truth = y[..., 0]
    n = len(np.unique(truth)) - 1
    assert np.array_equal(simulate.corrupt_truth(truth, simulate.CAREFUL), truth)
    missed = simulate.corrupt_truth(truth, simulate.Skill(miss=0.5), seed=3)
    assert 0.3 * n < len(np.unique(missed)) - 1 < 0.7 * n
    merged = simulate.corrupt_truth(truth, simulate.Skill(merge=1.0), seed=3)
    assert len(np.unique(merged)) - 1 < 0.75 * n
    sloppy = simulate.corrupt_truth(truth, simulate.Skill(border_px=2), seed=3)
    assert len(np.unique(sloppy)) - 1 >= n - 2 and (sloppy != truth).mean() > 0.05
    f1 = {name: metrics.object_accuracy(truth, simulate.corrupt_truth(truth, skill, seed=4))["f1"]
          for name, skill in (("careful", simulate.CAREFUL), ("middling", simulate.MIDDLING),
                              ("careless", simulate.CARELESS))}
    assert f1["careful"] > f1["middling"] > f1["careless"]
