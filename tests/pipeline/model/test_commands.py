import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from backend import cli
from pipeline import io, synthetic

REPO = Path(__file__).resolve().parents[3]


def test_importing_commands_loads_no_deep_learning_library():
    code = (
        "import sys; import backend.cli; cli = backend.cli.build_parser(); "
        "bad = [m for m in ('tensorflow', 'keras', 'jax') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    from pipeline.model import panoptic, saving

    folder = tmp_path_factory.mktemp("models") / "v0"
    saving.save_model_version(panoptic.build_panoptic(2, panoptic.LIGHT_BACKBONE), folder, {"backbone": "mobilenetv2"})
    return folder


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    X, _ = synthetic.make_tissue((160, 200), seed=11)
    path = tmp_path_factory.mktemp("img") / "tissue.ome.tif"
    # Membrane first, as in the Vectra sample: the channel flags must put it in Mesmer's order.
    tifffile.imwrite(path, np.stack([X[..., 1], X[..., 0]]), ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": ["CD45", "DAPI"]}})
    return path


def test_predict_writes_both_layers(version, image_file, tmp_path, capsys):
    out = tmp_path / "labels.tif"
    rc = cli.main(["predict", str(image_file), "--model", str(version), "--nuclear", "DAPI", "--membrane", "0",
                   "--out", str(out)])
    assert rc == 0
    labels = io.read_labels(out)
    assert labels.shape == (160, 200, 2)
    assert "labels.tif" in capsys.readouterr().out
    # the estimated pixel size goes into the OME-XML, marked as estimated
    import ome_types

    with tifffile.TiffFile(out) as tif:
        ome = ome_types.from_xml(tif.ome_metadata, validate=True)
    assert ome.images[0].pixels.physical_size_x > 0 and "estimated" in ome.images[0].description
    rc = cli.main(["predict", str(image_file), "--model", str(version), "--nuclear", "1", "--membrane", "0",
                   "--image-mpp", "0.25", "--out", str(tmp_path / "labels.npz")])
    assert rc == 0
    with np.load(tmp_path / "labels.npz") as z:
        assert z["y"].shape == (160, 200, 2)
        assert float(z["pixel_size_um"]) == 0.25 and not bool(z["pixel_size_estimated"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--nuclear", "Hoechst", "--membrane", "0"], "Hoechst"),
        (["--membrane", "0"], "--nuclear"),
        (["--nuclear", "1", "--membrane", "0", "--image-mpp", "-1"], "image-mpp"),
    ],
)
def test_predict_bad_input_is_one_line(version, image_file, tmp_path, capsys, extra, message):
    rc = cli.main(["predict", str(image_file), "--model", str(version), *extra, "--out", str(tmp_path / "l.tif")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1


def test_predict_missing_model_and_bad_suffix(image_file, tmp_path, capsys):
    rc = cli.main(["predict", str(image_file), "--model", str(tmp_path / "nope"), "--nuclear", "1",
                   "--membrane", "0", "--out", str(tmp_path / "l.tif")])
    assert rc == 2 and "not found" in capsys.readouterr().err
    rc = cli.main(["predict", str(image_file), "--model", str(tmp_path), "--nuclear", "1", "--membrane", "0",
                   "--out", str(tmp_path / "l.png")])
    assert rc == 2 and ".npz" in capsys.readouterr().err


def test_evaluate_saved_predictions_and_model(version, tmp_path, capsys):
    X, y = synthetic.make_dataset(2, (96, 96), seed=12)
    io.save_dataset(tmp_path / "test.npz", X, y)
    # Ground truth scored against itself is perfect; with one image's cells dropped, recall halves-ish.
    np.savez(tmp_path / "pred.npz", y=y)
    rc = cli.main(["evaluate", "--data", str(tmp_path / "test.npz"), "--pred", str(tmp_path / "pred.npz"),
                   "--json", str(tmp_path / "m.json")])
    assert rc == 0
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["whole-cell"]["pooled"]["f1"] == 1.0 and report["nuclear"]["pooled"]["f1"] == 1.0
    assert "pooled" in capsys.readouterr().out
    partial = y.copy()
    partial[1] = 0
    np.savez(tmp_path / "pred2.npz", y=partial)
    cli.main(["evaluate", "--data", str(tmp_path / "test.npz"), "--pred", str(tmp_path / "pred2.npz"),
              "--json", str(tmp_path / "m2.json")])
    pooled = json.loads((tmp_path / "m2.json").read_text())["whole-cell"]["pooled"]
    assert pooled["precision"] == 1.0 and 0.3 < pooled["recall"] < 0.7

    rc = cli.main(["evaluate", "--data", str(tmp_path / "test.npz"), "--model", str(version),
                   "--json", str(tmp_path / "m3.json")])
    assert rc == 0
    assert json.loads((tmp_path / "m3.json").read_text())["n_images"] == 2


def test_train_bad_arguments(tmp_path, capsys):
    X, y = synthetic.make_dataset(2, (64, 64), seed=13)
    np.savez(tmp_path / "train.npz", X=X, y=y)
    rc = cli.main(["train", "--data", str(tmp_path / "train.npz"), "--out", str(tmp_path / "v"), "--backbone", "vgg"])
    assert rc == 2 and "unknown backbone" in capsys.readouterr().err
    rc = cli.main(["train", "--data", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "v")])
    assert rc == 2 and "not found" in capsys.readouterr().err
    rc = cli.main(["train", "--data", str(tmp_path / "train.npz"), "--out", str(tmp_path / "v"),
                   "--from", str(tmp_path), "--heads", "fast"])
    assert rc == 2 and "come from the --from model version" in capsys.readouterr().err
    assert not (tmp_path / "v").exists()


@pytest.mark.slow
def test_train_then_fine_tune_from_the_command_line(tmp_path, capsys):
    X, y = synthetic.make_dataset(3, (64, 64), seed=14)
    io.save_dataset(tmp_path / "train.npz", X, y)
    base = ["train", "--data", str(tmp_path / "train.npz"), "--epochs", "1", "--steps-per-epoch", "1",
            "--batch-size", "2", "--crop-size", "64", "--lr", "1e-3"]
    assert cli.main([*base, "--out", str(tmp_path / "v1"), "--backbone", "mobilenetv2", "--heads", "mesmer"]) == 0
    assert "with fitted post-processing" in capsys.readouterr().out
    assert cli.main([*base, "--out", str(tmp_path / "v2"), "--from", str(tmp_path / "v1"), "--no-calibrate"]) == 0
    cfg = json.loads((tmp_path / "v2" / "config.json").read_text())
    assert cfg["parent"] == str(tmp_path / "v1") and cfg["backbone"] == "mobilenetv2" and cfg["heads"] == "mesmer"
    assert cfg["training"]["postprocess_calibration"] is None
    assert cli.main([*base, "--out", str(tmp_path / "v2")]) == 2
    assert "not empty" in capsys.readouterr().err


def test_predict_nuclear_only_and_a_tiny_image(version, image_file, tmp_path, capsys):
    rc = cli.main(["predict", str(image_file), "--model", str(version), "--nuclear", "DAPI", "--image-mpp", "0.5",
                   "--out", str(tmp_path / "nuc.tif")])
    assert rc == 0, capsys.readouterr().err
    assert "whole cells from nuclear channel 'DAPI' only" in capsys.readouterr().out
    assert io.read_labels(tmp_path / "nuc.tif").shape == (160, 200, 2)
    tiny = tmp_path / "tiny.ome.tif"
    tifffile.imwrite(tiny, np.ones((2, 5, 5), np.uint16), ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "CD45"]}})
    rc = cli.main(["predict", str(tiny), "--model", str(version), "--nuclear", "DAPI", "--membrane", "CD45",
                   "--out", str(tmp_path / "t.tif")])
    err = capsys.readouterr().err
    assert rc == 2 and "5x5 px: too small to segment" in err and not (tmp_path / "t.tif").exists()
