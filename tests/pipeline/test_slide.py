"""Lazy slide reading (OME-TIFF pyramids, tiled TIFF, OME-Zarr) and the chunked label writers."""
import tracemalloc

import numpy as np
import pytest
import tifffile
import zarr

from pipeline import io
from pipeline.slide import LabelsWriter, open_slide, zarr_to_ome_tiff


def _pyramid(path, image_cyx, names):
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(image_cyx, tile=(256, 256), subifds=1, metadata={"axes": "CYX", "Channel": {"Name": names}},
                  compression="zlib")
        tif.write(image_cyx[:, ::2, ::2], tile=(256, 256), subfiletype=1, compression="zlib")


def test_pyramidal_ome_tiff_reads_regions_of_every_level_with_names(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 60000, (3, 1000, 1300), dtype=np.uint16)
    _pyramid(tmp_path / "s.ome.tif", image, ["DAPI", "CD45", "PanCK"])
    with open_slide(tmp_path / "s.ome.tif") as slide:
        assert slide.shape == (1000, 1300, 3) and slide.dtype == np.uint16
        assert slide.levels == [(1000, 1300), (500, 650)]
        assert slide.channel_names == ["DAPI", "CD45", "PanCK"]
        region = slide.read(300, 700, 250, 1290, [slide.channel_index("PanCK"), slide.channel_index("dapi")])
        np.testing.assert_array_equal(region, np.moveaxis(image[[2, 0], 300:700, 250:1290], 0, -1))
        np.testing.assert_array_equal(slide.read(0, 500, 600, 650, [1], level=1),
                                      np.moveaxis(image[[1], ::2, ::2][:, :500, 600:650], 0, -1))
        with pytest.raises(io.ImageReadError, match="no channel named"):
            slide.channel_index("CD3")


def test_reading_a_region_decodes_only_the_chunks_it_touches(tmp_path):
    # 4096 x 4096 x 2 uint16 is 64 MiB decoded; a 300 px region must cost a few tiles, not the slide.
    tile = np.random.default_rng(1).integers(0, 4000, (256, 256, 2), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "big.tif", np.tile(tile, (16, 16, 1)), tile=(256, 256), photometric="minisblack",
                     planarconfig="contig")  # (H, W, C): samples per pixel, axes YXS
    with open_slide(tmp_path / "big.tif") as slide:
        assert slide.shape == (4096, 4096, 2)
        tracemalloc.start()
        region = slide.read(1000, 1300, 2000, 2300)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    np.testing.assert_array_equal(region, np.tile(tile, (16, 16, 1))[1000:1300, 2000:2300])
    assert peak < 4 * 2**20, f"reading a 300 px region allocated {peak / 2**20:.1f} MiB"


def test_ome_zarr_multiscales_with_channel_labels(tmp_path):
    image = np.random.default_rng(2).integers(0, 255, (1, 2, 1, 600, 500), dtype=np.uint8)  # t c z y x
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    group.create_array("0", shape=image.shape, chunks=(1, 1, 1, 128, 128), dtype="uint8")[...] = image
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": a} for a in "tczyx"], "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1, 0.65, 0.65]}]}]}]
    group.attrs["omero"] = {"channels": [{"label": "HH3"}, {"label": "Ecad"}]}
    with open_slide(tmp_path / "s.zarr") as slide:
        assert slide.shape == (600, 500, 2) and slide.channel_names == ["HH3", "Ecad"]
        assert slide.pixel_size_um == pytest.approx(0.65)
        np.testing.assert_array_equal(slide.read(100, 350, 20, 480, [1]), image[0, 1, 0, 100:350, 20:480, None])


def test_a_time_series_is_refused_and_a_missing_file_named(tmp_path):
    tifffile.imwrite(tmp_path / "movie.ome.tif", np.zeros((3, 2, 64, 64), np.uint16), ome=True, tile=(64, 64),
                     metadata={"axes": "TCYX"})
    with pytest.raises(io.ImageReadError, match="one \\(Y, X, C\\) image"):
        open_slide(tmp_path / "movie.ome.tif")
    with pytest.raises(io.ImageReadError, match="no such file"):
        open_slide(tmp_path / "absent.ome.tif")


def test_labels_written_block_by_block_read_back_as_zarr_and_tiled_ome_tiff(tmp_path):
    labels = np.random.default_rng(3).integers(0, 900, (700, 1100, 2)).astype(np.int32)
    writer = LabelsWriter(tmp_path / "l.zarr", (700, 1100), pixel_size_um=0.5)
    for y0 in range(0, 700, 300):
        for x0 in range(0, 1100, 400):
            writer.write(y0, x0, labels[y0:y0 + 300, x0:x0 + 400])
    with open_slide(tmp_path / "l.zarr") as back:
        np.testing.assert_array_equal(back.read(0, 700, 0, 1100), labels)
        assert back.channel_names == ["whole-cell", "nuclear"]
    zarr_to_ome_tiff(tmp_path / "l.zarr", tmp_path / "l.ome.tif", pixel_size_um=0.5)
    with tifffile.TiffFile(tmp_path / "l.ome.tif") as tif:
        assert tif.pages[0].is_tiled and tif.is_ome
    np.testing.assert_array_equal(io.read_labels(tmp_path / "l.ome.tif"), labels)
