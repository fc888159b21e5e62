"""What a new lab trips over, each fixed and checked: naming a plain TIFF's channels, one rule choosing the model's
channels (IMC names included) said at ingest, the instance a command works on, the base URL kept once given, a
report that says what to run, and model commands without TensorFlow's start-up screen."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from backend.cli import main
from pipeline.channels import choose_model_channels

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def bare(tmp_path, monkeypatch):
    """A shell in an empty folder with no CellLoop variables set."""
    for name in ("CELLLOOP_INSTANCE_DIR", "CELLLOOP_DATABASE_URL", "CELLLOOP_STORAGE_URL", "CELLLOOP_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _plain_tiff(path, shape=(2, 96, 96)):
    rng = np.random.default_rng(0)
    tifffile.imwrite(path, rng.integers(0, 1000, shape).astype(np.uint16))  # no OME, no names: ch0, ch1
    return path


def test_ingest_names_a_plain_tiffs_channels_and_says_which_feed_the_model(bare, capsys):
    assert main(["db", "upgrade"]) == 0
    image = _plain_tiff(bare / "image3.tif")
    assert main(["ingest", str(image), "--project", "p", "--channels", "membrane,nuclear"]) == 2
    assert "no channel named 'membrane'; available: ch0, ch1" in capsys.readouterr().err
    assert main(["ingest", str(image), "--project", "p", "--channel-names", "nuclear,membrane",
                 "--channels", "membrane,nuclear"]) == 0
    out = capsys.readouterr().out
    assert "channels membrane, nuclear" in out
    assert "model input: nuclear 'nuclear', membrane 'membrane' -> channels [1, 0]" in out
    named = bare / "named.ome.tif"
    tifffile.imwrite(named, np.zeros((2, 64, 64), np.uint16), ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "CD45"]}})
    assert main(["ingest", str(named), "--project", "q", "--channel-names", "a,b"]) == 2
    assert "already names its channels (DAPI, CD45)" in capsys.readouterr().err
    assert main(["ingest", str(image), "--project", "r", "--channel-names", "a,a"]) == 2
    capsys.readouterr()
    # IMC names: DNA1 feeds the model, CD45 is the membrane, and ingest says so
    imc = bare / "imc.ome.tif"
    tifffile.imwrite(imc, np.zeros((4, 64, 64), np.uint16), ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": ["CD3", "191Ir_DNA1", "193Ir_DNA2", "CD45"]}})
    assert main(["ingest", str(imc), "--project", "imc"]) == 0
    assert "model input: nuclear '191Ir_DNA1', membrane 'CD3' -> channels [1, 0]" in capsys.readouterr().out


@pytest.mark.parametrize("names, nuclear, membrane", [
    (["DNA1", "DNA2", "CD45", "Vimentin"], 0, 2),
    (["Ir191", "Ir193", "E-cadherin"], 0, 2),
    (["CD20", "Histone H3", "Pan-Keratin"], 1, 0),
    (["CD45", "DAPI", "panCK"], 1, 0),
    (["HH3", "Membrane"], 0, 1),
    (["ch0", "ch1"], 0, 1),
    (["Hoechst 33342"], 0, None),
])
def test_one_rule_chooses_the_model_channels_for_ingest_prelabel_and_predict(names, nuclear, membrane):
    from backend.store.models import Project
    from backend.store.projects import model_channel_indices
    from pipeline.model.starter import pick_channels

    choice = choose_model_channels(names)
    assert (choice.nuclear, choice.membrane) == (nuclear, membrane)
    both = [nuclear, nuclear if membrane is None else membrane]
    assert model_channel_indices(Project(name="x", channel_names=names, model_channels=None)) == both  # prelabel
    assert list(pick_channels(names)) == both  # predict's default (the starter model)


def test_no_second_instance_outside_demo_and_db_upgrade(bare, capsys):
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert "no CellLoop instance here" in err and "cellloop db upgrade" in err
    assert not (bare / "cellloop-data").exists()
    assert main(["db", "upgrade"]) == 0
    sub = bare / "images" / "day1"
    sub.mkdir(parents=True)
    os.chdir(sub)
    assert main(["status"]) == 0
    captured = capsys.readouterr()
    assert f"using the instance {bare / 'cellloop-data'}" in captured.err
    assert not (sub / "cellloop-data").exists()
    assert main(["settings"]) == 0
    assert f"instance {bare / 'cellloop-data'} (a folder above this one)" in capsys.readouterr().out


def test_the_base_url_is_kept_once_given_and_report_says_what_to_run(bare, capsys, monkeypatch):
    assert main(["db", "upgrade"]) == 0
    assert main(["ingest", str(_plain_tiff(bare / "a.tif")), "--project", "p", "--channel-names", "CD45,DAPI"]) == 0
    assert main(["report", "--project", "p"]) == 0
    assert "no batches yet" in capsys.readouterr().out
    assert main(["batch", "create", "b1", "--project", "p", "--all-new", "--size", "64", "--overlap", "16"]) == 0
    assert main(["prelabel", "--batch", "b1", "--model", "none"]) == 0
    capsys.readouterr()
    assert main(["report", "--project", "p"]) == 0
    assert "no cycle has run yet" in capsys.readouterr().out
    assert main(["publish", "--batch", "b1", "--base-url", "ftp://nope"]) == 2
    capsys.readouterr()
    assert main(["publish", "--batch", "b1", "--base-url", "https://cells.example.org/"]) == 0
    first = capsys.readouterr()
    assert "kept in the instance's settings" in first.err
    assert main(["publish", "--batch", "b1"]) == 0  # a new shell: no flag, no variable
    rows = capsys.readouterr().out.strip().splitlines()[1:]
    assert rows and all(",https://cells.example.org/task/" in r for r in rows)
    assert main(["links", "--project", "p"]) == 0
    assert ",https://cells.example.org/task/" in capsys.readouterr().out
    assert main(["settings"]) == 0
    assert "base URL https://cells.example.org (settings)" in capsys.readouterr().out
    monkeypatch.setenv("CELLLOOP_BASE_URL", "https://other.example.org")  # the variable still wins
    assert main(["links", "--project", "p"]) == 0
    assert ",https://other.example.org/task/" in capsys.readouterr().out
    # the task JSON names the channels' roles, so the editor colours DAPI as nuclear wherever it sits
    from backend.config import Config
    from backend.web.app import create_app

    token = rows[0].rsplit("/task/", 1)[1]
    client = create_app(Config.from_env(instance_dir=bare / "cellloop-data")).test_client()
    info = client.get(f"/api/task/{token}").get_json()
    assert info["channels"] == ["CD45", "DAPI"] and info["roles"] == {"nuclear": 1, "membrane": 0}


def test_model_commands_print_no_tensorflow_start_up_lines_and_refuse_a_tiny_image(tmp_path):
    tiny = tmp_path / "tiny.ome.tif"
    tifffile.imwrite(tiny, np.ones((2, 5, 5), np.uint16), ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "CD45"]}})
    proc = subprocess.run([sys.executable, "-m", "backend", "predict", str(tiny), "--nuclear", "DAPI",
                           "--out", str(tmp_path / "t.tif")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["cellloop predict: error: the image (%s) is 5x5 px: too small to segment (cells are 10-30 px "
                     "across; each side needs at least 32 px)" % tiny], proc.stderr
