from __future__ import annotations

import numpy as np
import pytest

from pipeline.crop import crop_boxes


@pytest.mark.parametrize("shape", [(270, 270), (100, 50), (271, 1000), (1024, 1024), (540, 811)])
def test_boxes_cover_the_image_within_bounds_with_overlap(shape):
    boxes = crop_boxes(shape, 270, 30)
    cover = np.zeros(shape, np.int32)
    for y0, x0, y1, x1 in boxes:
        assert 0 <= y0 < y1 <= shape[0] and 0 <= x0 < x1 <= shape[1]
        assert y1 - y0 == min(270, shape[0]) and x1 - x0 == min(270, shape[1])
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1
    if shape[1] > 270:
        # neighbouring crops share at least the overlap, so a cell cut by one border is whole in the next
        xs = sorted({b[1] for b in boxes})
        ends = sorted({b[3] for b in boxes})
        assert all(e - s >= 30 for s, e in zip(xs[1:], ends[:-1]))


def test_bad_arguments():
    with pytest.raises(ValueError):
        crop_boxes((100, 100), 270, 270)
    with pytest.raises(ValueError):
        crop_boxes((0, 100))
