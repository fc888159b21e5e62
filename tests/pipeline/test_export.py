"""The export writers and the QC merge: OME-TIFF that validates against the OME schema (uint32 where ids need it,
an estimated pixel size said to be one), and the expert's edits kept over a new stitch."""
from __future__ import annotations

import numpy as np
import ome_types
import pytest
import tifffile

from pipeline import export
from pipeline.qc import keep_expert_edits


def test_ome_tiff_takes_uint32_for_many_cells_and_marks_an_estimated_pixel_size(tmp_path):
    labels = np.zeros((30, 40, 2), np.int32)
    labels[2:8, 3:9, 0] = 70_000
    labels[3:6, 4:7, 1] = 70_000
    export.write_ome_tiff(tmp_path / "a.ome.tif", labels, pixel_size_um=0.31, pixel_size_estimated=True)
    with tifffile.TiffFile(tmp_path / "a.ome.tif") as tif:
        ome = ome_types.from_xml(tif.ome_metadata, validate=True)
        data = tif.series[0].asarray()
    assert data.dtype == np.uint32 and (np.moveaxis(data, 0, -1) == labels).all()
    assert ome.images[0].pixels.physical_size_x == pytest.approx(0.31)
    assert "estimated" in ome.images[0].description
    # unknown pixel size: no physical size at all rather than a made-up one
    export.write_ome_tiff(tmp_path / "b.ome.tif", labels % 100)
    with tifffile.TiffFile(tmp_path / "b.ome.tif") as tif:
        ome = ome_types.from_xml(tif.ome_metadata, validate=True)
        assert tif.series[0].dtype == np.uint16
    assert ome.images[0].pixels.physical_size_x is None and "unknown" in ome.images[0].description


def test_expert_edits_win_and_new_cells_with_clashing_ids_move_aside():
    base = np.zeros((20, 20, 2), np.int32)
    base[0:5, 0:5, 0] = 1
    current = base.copy()
    current[10:14, 10:14, 0] = 2  # the expert's new cell 2
    current[0:5, 0:5, 0] = 0  # and deleted cell 1
    new = base.copy()
    new[15:20, 0:5, 0] = 2  # the crowd's new cell, also numbered 2
    merged, kept = keep_expert_edits(new, base, current)
    assert (merged[10:14, 10:14, 0] == 2).all() and kept == 16 + 25
    assert (merged[0:5, 0:5, 0] == 0).all()  # the deletion stands
    moved = merged[15:20, 0:5, 0]
    assert len(np.unique(moved)) == 1 and moved[0, 0] not in (0, 2)
    untouched, kept = keep_expert_edits(new, base, base)
    assert kept == 0 and (untouched == new).all()
