"""Crop difficulty from the model's outputs (pipeline.difficulty): crowded cells, an unsure interior probability and
cells without one clear inner-distance peak each raise the score."""
from __future__ import annotations

import numpy as np

from pipeline.difficulty import crop_difficulty, neighbour_counts


def _grid(n, size=10, gap=0):
    labels = np.zeros((n * (size + gap), n * (size + gap)), np.int32)
    for i in range(n):
        for j in range(n):
            y, x = i * (size + gap), j * (size + gap)
            labels[y:y + size, x:x + size] = i * n + j + 1
    return labels


def _maps(labels, interior=0.95, peaks=1):
    """Maps a confident model would give: interior high inside cells, one distance peak at each centre."""
    from scipy import ndimage as ndi

    maps = np.zeros(labels.shape + (4,), np.uint8)
    maps[..., 1] = np.where(labels > 0, int(255 * interior), 0)
    for cell, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        mask = labels[box] == cell
        dist = ndi.distance_transform_edt(mask)
        if peaks == 2:  # two humps: the left and right halves each have a centre
            half = mask.shape[1] // 2
            dist = np.concatenate([ndi.distance_transform_edt(mask[:, :half]),
                                   ndi.distance_transform_edt(mask[:, half:])], axis=1)
        maps[box][..., 0] = np.where(mask, (255 * dist / dist.max()).astype(np.uint8), maps[box][..., 0])
    return maps


def test_neighbours_are_counted_per_cell():
    labels = _grid(3)
    counts = neighbour_counts(labels)
    assert counts[5] == 8 and counts[1] == 3 and counts[2] == 5
    assert set(neighbour_counts(_grid(3, gap=2)).values()) == {0}


def test_touching_cells_are_harder_than_separate_ones_without_maps():
    crowded, _ = crop_difficulty(_grid(5))
    sparse, parts = crop_difficulty(_grid(5, gap=3))
    assert crowded > sparse == 0.0 and parts["score_from"] == "crowding"


def test_an_unsure_model_and_weak_peaks_raise_the_score_and_double_peaks_are_reported():
    labels = _grid(4, size=12, gap=3)
    sure, parts = crop_difficulty(labels, _maps(labels))
    assert parts["score_from"] == "maps" and parts["maxima"] == 0.0 and parts["weakness"] == 0.0
    unsure, parts_unsure = crop_difficulty(labels, _maps(labels, interior=0.55))
    assert parts_unsure["uncertainty"] > parts["uncertainty"] + 0.5 and unsure > sure
    weak_maps = _maps(labels)
    weak_maps[..., 0] //= 4  # the same peaks, a quarter as high
    weak, parts_weak = crop_difficulty(labels, weak_maps)
    assert parts_weak["weakness"] > 0.7 and weak > sure + 0.3
    assert parts_weak["maxima"] == 1.0  # every peak under WEAK_PEAK: no clear one
    _, parts_doubled = crop_difficulty(labels, _maps(labels, peaks=2))
    assert parts_doubled["maxima"] == 1.0
