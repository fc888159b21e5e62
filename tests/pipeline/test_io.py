import io
import json
import os
import pickle
import struct
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from pipeline.io import (
    ImageReadError,
    load_dataset,
    read_image,
    read_labels,
    save_dataset,
    write_labels,
)

MIBI_MARKERS = ["HH3", "Membrane", "NaK_ATPase", "LaminAC"]


# ---- real sample data ------------------------------------------------------------------------


def test_vectra_two_channel_tiff(shared_data):
    path = shared_data / "vectra" / "image0.tif"
    image, names = read_image(path)
    raw = tifffile.imread(path)  # (2, 400, 400): membrane, nuclear
    assert image.shape == (400, 400, 2) and image.dtype == np.float32
    assert names == ["ch0", "ch1"]
    np.testing.assert_array_equal(image[..., 0], raw[0])
    np.testing.assert_array_equal(image[..., 1], raw[1])


def test_vectra_channel_selection_reorders_to_mesmer_order(shared_data):
    path = shared_data / "vectra" / "image0.tif"
    raw = tifffile.imread(path)
    image, names = read_image(path, channels=["1", 0])
    assert names == ["ch1", "ch0"]
    np.testing.assert_array_equal(image[..., 0], raw[1])
    image, names = read_image(path, ["nuclear", "membrane"], channel_names=["membrane", "nuclear"])
    assert names == ["nuclear", "membrane"]
    np.testing.assert_array_equal(image[..., 1], raw[0])


def test_unknown_channel_lists_available_names(shared_data):
    path = shared_data / "vectra" / "image0.tif"
    with pytest.raises(ImageReadError, match=r"'DAPI'.*available: ch0, ch1"):
        read_image(path, channels=["DAPI"])
    with pytest.raises(ImageReadError, match="out of range"):
        read_image(path, channels=[2])
    with pytest.raises(ImageReadError, match="3 channel names given for 2"):
        read_image(path, channel_names=["a", "b", "c"])


def test_vectra_labels(shared_data):
    labels = read_labels(shared_data / "vectra" / "image0_wholecell.tif")
    assert labels.shape == (400, 400, 2) and labels.dtype == np.int32
    assert len(np.unique(labels[..., 0])) - 1 == 259
    assert not labels[..., 1].any()


def test_mibi_one_file_per_marker(shared_data):
    folder = shared_data / "mibi_tnbc"
    image, names = read_image([folder / f"{m}.tiff" for m in MIBI_MARKERS])
    assert image.shape == (1024, 1024, 4) and image.dtype == np.uint8
    assert names == MIBI_MARKERS
    np.testing.assert_array_equal(image[..., 2], tifffile.imread(folder / "NaK_ATPase.tiff"))


def test_mibi_directory_with_selection_by_name(shared_data):
    folder = shared_data / "mibi_tnbc"
    image, names = read_image(folder, channels=["HH3", "membrane"])  # names match case-insensitively
    assert names == ["HH3", "Membrane"]
    assert image.shape == (1024, 1024, 2)
    np.testing.assert_array_equal(image[..., 0], tifffile.imread(folder / "HH3.tiff"))


def test_dsb_nuclei_image_and_mask(shared_data):
    image, names = read_image(shared_data / "dsb2018_nuclei" / "img2d.tif")
    assert image.shape == (512, 512, 1) and image.dtype == np.uint16 and names == ["ch0"]
    labels = read_labels(shared_data / "dsb2018_nuclei" / "mask2d.tif")
    assert len(np.unique(labels[..., 0])) - 1 == 125


# ---- TIFF layouts and names ----------------------------------------------------------------


def test_ome_tiff_channel_names(tmp_path):
    data = np.random.default_rng(1).random((3, 40, 50)).astype(np.float32)
    path = tmp_path / "panel.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "CD45", "Pan-Keratin"]}})
    image, names = read_image(path, channels=["Pan-Keratin", "DAPI"])
    assert names == ["Pan-Keratin", "DAPI"]
    np.testing.assert_array_equal(image[..., 0], data[2])
    np.testing.assert_array_equal(image[..., 1], data[0])


def test_imagej_labels_become_channel_names(tmp_path):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, np.zeros((2, 30, 30), np.uint16), imagej=True, metadata={"axes": "CYX", "Labels": ["dna", "mem"]})
    assert read_image(path)[1] == ["dna", "mem"]


@pytest.mark.parametrize(
    "shape, channel_axis",
    [
        ((3, 100, 120), 0),  # planes as pages
        ((100, 120, 5), 2),  # channels-last written by tifffile (axes come back "QYX")
        ((2, 32, 40), 0),  # small crop: the shorter end axis is the channel axis
        ((32, 40, 2), 2),
        ((100, 120), None),
    ],
)
def test_tiff_channel_axis_detection(tmp_path, shape, channel_axis):
    data = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, data, photometric="minisblack")
    image, names = read_image(path)
    expected = data[..., None] if channel_axis is None else np.moveaxis(data, channel_axis, -1)
    np.testing.assert_array_equal(image, expected)
    assert names == [f"ch{i}" for i in range(expected.shape[-1])]


def test_rgb_tiff_is_channels_last(tmp_path):
    data = np.random.default_rng(2).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", data, photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.tif")[0], data)


def test_singleton_axes_are_squeezed(tmp_path):
    data = np.ones((1, 2, 1, 30, 40), np.float32)
    tifffile.imwrite(tmp_path / "tczyx.ome.tif", data, ome=True, metadata={"axes": "TCZYX"})
    assert read_image(tmp_path / "tczyx.ome.tif")[0].shape == (30, 40, 2)


def test_4d_tiff_needs_index(tmp_path):
    data = np.arange(2 * 3 * 20 * 20, dtype=np.uint8).reshape(2, 3, 20, 20)
    path = tmp_path / "zcyx.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "ZCYX"})
    with pytest.raises(ImageReadError, match=f"{path.name}.*index="):
        read_image(path)
    image, _ = read_image(path, index=1)
    np.testing.assert_array_equal(image, np.moveaxis(data[1], 0, -1))


# ---- PNG / JPEG / NPY / NPZ ------------------------------------------------------------------


def test_png_gray_rgb_rgba_and_16bit(tmp_path):
    rng = np.random.default_rng(3)
    gray = rng.integers(0, 255, (20, 30), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    image, names = read_image(tmp_path / "g.png")
    assert image.shape == (20, 30, 1) and names == ["ch0"]
    np.testing.assert_array_equal(image[..., 0], gray)

    rgba = rng.integers(0, 255, (20, 30, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "c.png")
    image, names = read_image(tmp_path / "c.png")
    assert image.shape == (20, 30, 3) and names == ["ch0", "ch1", "ch2"]
    np.testing.assert_array_equal(image, rgba[..., :3])

    deep = rng.integers(0, 65535, (20, 30), dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    image, _ = read_image(tmp_path / "d.png")
    assert image.dtype in (np.uint16, np.float32)
    np.testing.assert_array_equal(image[..., 0], deep)


def test_jpeg(tmp_path):
    Image.fromarray(np.full((16, 24, 3), 200, np.uint8)).save(tmp_path / "x.jpg")
    image, _ = read_image(tmp_path / "x.jpg")
    assert image.shape == (16, 24, 3) and image.dtype == np.uint8
    assert abs(int(image.mean()) - 200) <= 2


def test_npy_channels_last_and_fortran(tmp_path):
    data = np.asfortranarray(np.random.default_rng(4).random((70, 80, 3)).astype(np.float32))
    np.save(tmp_path / "x.npy", data)
    image, names = read_image(tmp_path / "x.npy")
    np.testing.assert_array_equal(image, data)
    assert names == ["ch0", "ch1", "ch2"]


def test_npz_tissuenet_layout_takes_one_image_or_asks_for_index(tmp_path):
    X = np.random.default_rng(5).random((3, 32, 32, 2)).astype(np.float32)
    np.savez(tmp_path / "one.npz", X=X[:1])
    np.testing.assert_array_equal(read_image(tmp_path / "one.npz")[0], X[0])
    np.testing.assert_array_equal(read_image(tmp_path / "one.npz", index=0)[0], X[0])
    with pytest.raises(ImageReadError, match="holds one image"):
        read_image(tmp_path / "one.npz", index=1)
    np.savez_compressed(tmp_path / "many.npz", X=X, y=np.zeros((3, 32, 32, 2), np.int32))
    with pytest.raises(ImageReadError, match=r"many\.npz.*3 images.*index="):
        read_image(tmp_path / "many.npz")
    np.testing.assert_array_equal(read_image(tmp_path / "many.npz", index=2)[0], X[2])
    with pytest.raises(ImageReadError, match="out of range"):
        read_image(tmp_path / "many.npz", index=3)
    np.testing.assert_array_equal(read_labels(tmp_path / "many.npz", index=1), np.zeros((32, 32, 2)))


def test_npz_without_x(tmp_path):
    np.savez(tmp_path / "a.npz", image=np.zeros((4, 4)))
    with pytest.raises(ImageReadError, match=r"no array named 'X'.*image"):
        read_image(tmp_path / "a.npz")


# ---- bad input -------------------------------------------------------------------------------


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "absent.tif")
    (tmp_path / "x.bmp").write_bytes(b"BM")
    with pytest.raises(ImageReadError, match="unsupported file type"):
        read_image(tmp_path / "x.bmp")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ImageReadError, match="no image files"):
        read_image(tmp_path / "empty_dir")


def test_text_file_named_tif(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageReadError, match=r"notes\.tif.*not a readable TIFF"):
        read_image(path)
    with pytest.raises(ImageReadError, match=r"notes\.tif"):
        read_labels(path)


@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.99])
def test_truncated_tiff(tmp_path, shared_data, fraction):
    data = (shared_data / "vectra" / "image0.tif").read_bytes()
    path = tmp_path / "cut.tif"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ImageReadError, match=r"cut\.tif"):
        read_image(path)


def test_truncated_compressed_tiff(tmp_path):
    full = tmp_path / "full.tif"
    tifffile.imwrite(full, np.random.default_rng(6).integers(0, 9, (200, 200), np.uint16), compression="zlib")
    data = full.read_bytes()
    path = tmp_path / "cut.tif"
    path.write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(ImageReadError, match=r"cut\.tif"):
        read_image(path)


def write_tiff_claiming(path, height, width):
    """A tiny valid TIFF whose ImageLength/ImageWidth tags are then patched to claim a huge size."""
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8))
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        patches = [(tags["ImageWidth"], width), (tags["ImageLength"], height), (tags["RowsPerStrip"], height)]
        spots = [(t.valueoffset, t.dtype, v) for t, v in patches]
    with open(path, "r+b") as fh:
        for offset, dtype, value in spots:
            fh.seek(offset)
            fh.write(struct.pack("<I" if dtype == 4 else "<H", value))


def test_huge_tiff_header_refused_without_allocating(tmp_path):
    path = tmp_path / "huge.tif"
    write_tiff_claiming(path, 100_000, 100_000)
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].shape == (100_000, 100_000)  # the patch worked
    tracemalloc.start()
    try:
        with pytest.raises(ImageReadError, match=r"huge\.tif.*100000x100000.*exceeds"):
            read_image(path)
        with pytest.raises(ImageReadError, match="exceeds"):
            read_labels(path)
        # In a list of channel files, the header check runs before any file is read.
        small = tmp_path / "small.tif"
        tifffile.imwrite(small, np.zeros((8, 8), np.uint8))
        with pytest.raises(ImageReadError, match=r"huge\.tif.*exceeds"):
            read_image([small, path])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 1024 * 1024


def test_pixel_limit_is_configurable(tmp_path):
    tifffile.imwrite(tmp_path / "x.tif", np.zeros((100, 100), np.uint8))
    with pytest.raises(ImageReadError, match="exceeds"):
        read_image(tmp_path / "x.tif", max_pixels=9999)
    assert read_image(tmp_path / "x.tif", max_pixels=10000)[0].shape == (100, 100, 1)


def test_huge_png_header_refused(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    # IHDR starts at byte 8: length(4) type(4) width(4) height(4) ... crc(4) after 13 data bytes.
    data[16:24] = struct.pack(">II", 100_000, 100_000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    (tmp_path / "huge.png").write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match=r"huge\.png.*(exceeds|too large)"):
        read_image(tmp_path / "huge.png")


def test_truncated_png(tmp_path):
    Image.fromarray(np.random.default_rng(7).integers(0, 255, (64, 64), np.uint8)).save(tmp_path / "x.png")
    data = (tmp_path / "x.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.png"):
        read_image(tmp_path / "cut.png")


def test_huge_npy_header_refused_without_allocating(tmp_path):
    path = tmp_path / "huge.npy"
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (100_000, 100_000)})
    tracemalloc.start()
    try:
        with pytest.raises(ImageReadError, match=r"huge\.npy.*exceeds"):
            read_image(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 1024 * 1024


@pytest.mark.parametrize("shape", [(10,), (2, 2, 2, 2, 2), (3, 4, 40, 40, 2)])
def test_wrong_dims(tmp_path, shape):
    np.save(tmp_path / "bad.npy", np.zeros(shape, np.float32))
    with pytest.raises(ImageReadError, match=r"bad\.npy"):
        read_image(tmp_path / "bad.npy")


def test_truncated_npy_and_npz(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((50, 50), np.float32))
    data = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:-100])
    with pytest.raises(ImageReadError, match=r"cut\.npy.*truncated"):
        read_image(tmp_path / "cut.npy")
    np.savez_compressed(tmp_path / "x.npz", X=np.random.default_rng(8).random((50, 50)))
    data = (tmp_path / "x.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.npz"):
        read_image(tmp_path / "cut.npz")


def test_object_array_npz_is_refused(tmp_path):
    np.savez(tmp_path / "obj.npz", X=np.array([np.zeros((4, 4)), "x"], dtype=object))
    with pytest.raises(ImageReadError, match=r"obj\.npz.*object"):
        read_image(tmp_path / "obj.npz")
    np.savez(tmp_path / "objds.npz", X=np.zeros((1, 4, 4, 1)), y=np.array([None], dtype=object))
    with pytest.raises(ImageReadError, match=r"objds\.npz.*(pickle|object)"):
        load_dataset(tmp_path / "objds.npz")


class _Boom:
    def __reduce__(self):
        return (pytest.fail, ("a pickle was loaded",))


def test_pickle_inside_npz_is_not_loaded(tmp_path):
    path = tmp_path / "evil.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("X.npy", pickle.dumps(_Boom()))
        zf.writestr("y.npy", pickle.dumps(_Boom()))
    with pytest.raises(ImageReadError, match=r"evil\.npz"):
        read_image(path)
    with pytest.raises(ImageReadError, match=r"evil\.npz"):
        read_labels(path)
    with pytest.raises(ImageReadError, match=r"evil\.npz"):
        load_dataset(path)


def test_nan_image_refused(tmp_path):
    data = np.zeros((2, 20, 20), np.float32)
    data[1, 5, 5] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", data)
    with pytest.raises(ImageReadError, match=r"nan\.tif.*NaN"):
        read_image(tmp_path / "nan.tif")


def test_channel_files_must_share_a_size(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((10, 10), np.uint8))
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((10, 12), np.uint8))
    with pytest.raises(ImageReadError, match=r"b\.tif.*10x12"):
        read_image([tmp_path / "a.tif", tmp_path / "b.tif"])


def test_channel_files_of_mixed_dtypes_become_float32(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.full((10, 10), 200, np.uint8))
    tifffile.imwrite(tmp_path / "b.tif", np.full((10, 10), 60000, np.uint16))
    image, names = read_image([tmp_path / "a.tif", tmp_path / "b.tif"])
    assert image.dtype == np.float32 and names == ["a", "b"]
    assert image[0, 0].tolist() == [200.0, 60000.0]


# ---- labels ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["labels.ome.tif", "labels.tif", "labels.tiff", "labels.npz"])
def test_write_then_read_labels(tmp_path, name):
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 300, (40, 50, 2)).astype(np.int32)
    labels[0, 0, 0] = 2**31 - 1
    write_labels(tmp_path / name, labels)
    out = read_labels(tmp_path / name)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, labels)
    assert os.listdir(tmp_path) == [name]  # the temp file was renamed, not left behind


def test_written_tiff_labels_carry_ome_channel_names(tmp_path):
    labels = np.zeros((20, 30, 2), np.int32)
    write_labels(tmp_path / "l.ome.tif", labels, channel_names=("cell", "nucleus"))
    with tifffile.TiffFile(tmp_path / "l.ome.tif") as tif:
        assert tif.is_ome and tif.series[0].shape == (2, 20, 30)
    assert read_image(tmp_path / "l.ome.tif")[1] == ["cell", "nucleus"]


def test_write_labels_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError):
        write_labels(tmp_path / "l.tif", np.zeros((4, 4, 3), np.int32))
    with pytest.raises(ValueError):
        write_labels(tmp_path / "l.png", np.zeros((4, 4, 2), np.int32))
    with pytest.raises(ValueError):
        write_labels(tmp_path / "l.tif", np.full((4, 4, 2), -1, np.int32))
    assert os.listdir(tmp_path) == []


def test_read_labels_layouts(tmp_path):
    whole = np.arange(20, dtype=np.uint16).reshape(4, 5)
    nuc = whole // 2
    tifffile.imwrite(tmp_path / "chw.tif", np.stack([whole, nuc]), photometric="minisblack")
    np.testing.assert_array_equal(read_labels(tmp_path / "chw.tif"), np.stack([whole, nuc], -1))
    np.savez(tmp_path / "hwc.npz", labels=np.stack([whole, nuc], -1)[None])
    np.testing.assert_array_equal(read_labels(tmp_path / "hwc.npz"), np.stack([whole, nuc], -1))
    tifffile.imwrite(tmp_path / "float.tif", whole.astype(np.float32))
    np.testing.assert_array_equal(read_labels(tmp_path / "float.tif")[..., 0], whole)


@pytest.mark.parametrize(
    "data, message",
    [
        (np.full((4, 4), -3, np.int16), ">= 0"),
        (np.full((4, 4), 1.5, np.float32), "non-integer"),
        (np.zeros((3, 4, 4), np.int32), "labels must be"),
    ],
)
def test_read_labels_refuses_bad_values(tmp_path, data, message):
    tifffile.imwrite(tmp_path / "bad.tif", data, photometric="minisblack")
    with pytest.raises(ImageReadError, match=rf"bad\.tif.*{message}"):
        read_labels(tmp_path / "bad.tif")


# ---- datasets --------------------------------------------------------------------------------


def test_dataset_round_trip_with_meta(tmp_path):
    rng = np.random.default_rng(10)
    X = rng.random((3, 16, 16, 2))  # float64 in, float32 stored
    y = rng.integers(0, 20, (3, 16, 16, 2)).astype(np.uint16)
    meta = [
        {"tissue": "breast", "platform": "mibi", "source": "a.tif", "crop": np.array([0, 0, 16, 16])},
        {"tissue": "lung", "platform": "vectra", "source": "b.tif", "crop": [16, 0, 32, 16]},
        {"tissue": "skin", "platform": "codex", "source": "c.tif", "crop": (np.int64(0), 16, 16, 32)},
    ]
    save_dataset(tmp_path / "ds.npz", X, y, meta)
    ds = load_dataset(tmp_path / "ds.npz")
    assert ds["X"].dtype == np.float32 and ds["y"].dtype == np.int32
    np.testing.assert_allclose(ds["X"], X.astype(np.float32))
    np.testing.assert_array_equal(ds["y"], y)
    assert ds["meta"][0]["crop"] == [0, 0, 16, 16] and ds["meta"][2]["crop"] == [0, 16, 16, 32]
    assert [m["tissue"] for m in ds["meta"]] == ["breast", "lung", "skin"]
    # No pickles inside, and TissueNet's lists are there for TissueNet tooling.
    with np.load(tmp_path / "ds.npz", allow_pickle=False) as raw:
        assert raw["tissue_list"].tolist() == ["breast", "lung", "skin"]
        assert json.loads(raw["meta"][1])["platform"] == "vectra"
    assert os.listdir(tmp_path) == ["ds.npz"]


def test_dataset_without_meta(tmp_path):
    save_dataset(tmp_path / "ds.npz", np.zeros((2, 8, 8, 1)), np.zeros((2, 8, 8, 2), np.int32))
    ds = load_dataset(tmp_path / "ds.npz")
    assert ds["meta"] == [{}, {}]
    with np.load(tmp_path / "ds.npz") as raw:
        assert "tissue_list" not in raw.files


def test_tissuenet_npz_loads_as_is(tmp_path):
    rng = np.random.default_rng(11)
    X = rng.random((2, 16, 16, 2)).astype(np.float32)
    y = rng.integers(0, 9, (2, 16, 16, 2)).astype(np.int32)
    np.savez_compressed(
        tmp_path / "tissuenet_v1.1_val.npz",
        X=X, y=y, tissue_list=np.array(["pancreas", "lymph node"]), platform_list=np.array(["codex", "mibi"]),
    )
    ds = load_dataset(tmp_path / "tissuenet_v1.1_val.npz")
    np.testing.assert_array_equal(ds["X"], X)
    np.testing.assert_array_equal(ds["y"], y)
    assert ds["meta"] == [{"tissue": "pancreas", "platform": "codex"}, {"tissue": "lymph node", "platform": "mibi"}]


@pytest.mark.parametrize(
    "X, y, meta",
    [
        (np.zeros((2, 8, 8, 1)), np.zeros((2, 8, 8, 1), np.int32), None),
        (np.zeros((2, 8, 8, 1)), np.zeros((3, 8, 8, 2), np.int32), None),
        (np.zeros((2, 8, 8, 1)), np.zeros((2, 8, 8, 2), np.float32), None),
        (np.full((2, 8, 8, 1), np.nan), np.zeros((2, 8, 8, 2), np.int32), None),
        (np.zeros((2, 8, 8, 1)), np.zeros((2, 8, 8, 2), np.int32), [{}]),
        (np.zeros((2, 8, 8, 1)), np.zeros((2, 8, 8, 2), np.int32), [{"f": object()}, {}]),
    ],
)
def test_save_dataset_refuses_inconsistent_input(tmp_path, X, y, meta):
    with pytest.raises((ValueError, TypeError)):
        save_dataset(tmp_path / "ds.npz", X, y, meta)
    assert os.listdir(tmp_path) == []


def test_load_dataset_refuses_bad_files(tmp_path):
    np.savez(tmp_path / "noy.npz", X=np.zeros((1, 4, 4, 1)))
    with pytest.raises(ImageReadError, match=r"noy\.npz.*lacks \['y'\]"):
        load_dataset(tmp_path / "noy.npz")
    np.savez(tmp_path / "neg.npz", X=np.zeros((1, 4, 4, 1)), y=np.full((1, 4, 4, 2), -1))
    with pytest.raises(ImageReadError, match="between 0"):
        load_dataset(tmp_path / "neg.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ImageReadError, match=r"junk\.npz"):
        load_dataset(tmp_path / "junk.npz")
    with pytest.raises(ImageReadError, match="no such file"):
        load_dataset(tmp_path / "absent.npz")


def test_planar_rgb_tiff_is_channels_first_on_disk(tmp_path):
    data = np.random.default_rng(12).integers(0, 255, (3, 20, 30), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", data, photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tif")[0], np.moveaxis(data, 0, -1))
