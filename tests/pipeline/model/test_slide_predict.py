"""A slide predicted block by block, joined at the seams, gives the whole image's labels; the same over Dask."""
import numpy as np
import pytest
import tifffile
from distributed import Client, LocalCluster

from pipeline import agreement, synthetic
from pipeline.model import slide_predict
from pipeline.model.predict import Mesmer
from pipeline.model.starter import STARTER_DIR
from pipeline.slide import open_slide

SHAPE = (700, 640)
BLOCK = 384  # 2 x 2 blocks: one horizontal and one vertical seam through the tissue


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    X, _ = synthetic.make_tissue(SHAPE, seed=11)
    path = tmp_path_factory.mktemp("slide") / "tissue.ome.tif"
    scaled = np.round(X / X.max() * 60000).astype(np.uint16)
    tifffile.imwrite(path, np.moveaxis(scaled, -1, 0), ome=True, tile=(256, 256),
                     metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "Ecad"]}})
    return path, scaled


@pytest.fixture(scope="module")
def serial(slide, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial") / "labels.zarr"
    result = slide_predict.predict_slide(slide[0], out, model=STARTER_DIR, channels=[0, 1], runtime="onnxruntime",
                                         block=BLOCK)
    with open_slide(out) as labels:
        return result, labels.read(0, SHAPE[0], 0, SHAPE[1])


def _cells_across(labels, seam_x):
    left, right = set(np.unique(labels[:, seam_x - 1, 0])), set(np.unique(labels[:, seam_x, 0]))
    return len((left & right) - {0})


def test_blocks_joined_at_seams_match_the_untiled_prediction(slide, serial):
    result, labels = serial
    assert result.blocks == 4 and labels.shape == SHAPE + (2,)
    untiled = Mesmer(STARTER_DIR, runtime="onnxruntime").predict(slide[1].astype(np.float32))
    share = agreement.changed_share(untiled, labels)
    assert share["cells"] > 500
    assert share["changed_share"] <= 0.01, share
    # cells cut by the vertical seam carry one id on both sides, as many as in the untiled labels
    assert _cells_across(labels, BLOCK) >= 0.9 * _cells_across(untiled, BLOCK) > 5
    assert result.cells == len(np.unique(labels[..., 0])) - 1


def test_local_dask_cluster_gives_the_serial_labels_and_tiff_out_matches(slide, serial, tmp_path):
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None,
                      silence_logs=40) as cluster, Client(cluster) as client:
        result = slide_predict.predict_slide(slide[0], tmp_path / "labels.ome.tif", model=STARTER_DIR,
                                             channels=[0, 1], runtime="onnxruntime", block=BLOCK, scheduler=client)
    assert result.blocks == 4
    with tifffile.TiffFile(tmp_path / "labels.ome.tif") as tif:
        assert tif.pages[0].is_tiled
        got = np.moveaxis(tif.series[0].asarray(), 0, -1)
    np.testing.assert_array_equal(got, serial[1])


def test_bad_block_size_and_output_are_refused(slide, tmp_path):
    with pytest.raises(ValueError, match="multiple of 192"):
        slide_predict.predict_slide(slide[0], tmp_path / "x.zarr", model=STARTER_DIR, channels=[0, 1], block=500)
    with pytest.raises(ValueError, match=".zarr"):
        slide_predict.predict_slide(slide[0], tmp_path / "x.npz", model=STARTER_DIR, channels=[0, 1])


def test_predict_command_takes_a_slide_to_zarr_and_says_what_is_wrong(slide, serial, tmp_path, capsys):
    from backend import cli

    args = ["predict", str(slide[0]), "--nuclear", "DAPI", "--membrane", "Ecad", "--image-mpp", "0.5",
            "--runtime", "onnxruntime"]
    assert cli.main(args + ["--out", str(tmp_path / "l.zarr"), "--block", "500"]) == 2
    assert "--block must be a multiple of 192" in capsys.readouterr().err
    assert cli.main(args + ["--out", str(tmp_path / "l.zarr"), "--block", str(BLOCK)]) == 0
    assert "in 4 blocks" in capsys.readouterr().out
    with open_slide(tmp_path / "l.zarr") as labels:
        np.testing.assert_array_equal(labels.read(0, SHAPE[0], 0, SHAPE[1]), serial[1])
