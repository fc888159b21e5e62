"""How the shipped starter model is made: a light PanopticNet trained from scratch on broad synthetic
tissue plus the few real annotations CellLoop ships with.

    python -m pipeline.model.starter_recipe train --out runs/starter --minutes 40
    python -m pipeline.model.starter_recipe finish --run runs/starter --out pipeline/model/starter

``train`` checkpoints the best model (lowest validation loss) into ``RUN/checkpoint`` whenever it
improves, so a run stopped early still leaves a usable model; ``finish`` fits the post-processing,
measures the model and writes the shipped version (float16 weights) with its recipe, data hashes and
metrics in ``config.json``.

Data (never the MIBI field of view, the cross-platform check, nor the bottom half of Vectra image0, the
held-out real evaluation):
- synthetic tissue from ``pipeline.synthetic.make_varied_tissue``, cell diameters 8-50 px;
- the top half of Vectra ``image0`` (whole-cell labels; nuclear heads masked out);
- the DSB 2018 nuclei (nuclear labels; whole-cell heads masked out).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

TILE = 192  # every training image is cut to this square so they stack into one array
SYNTHETIC_DIAMETERS = (8.0, 50.0)
RECIPE = dict(
    backbone="mobilenetv2",
    heads="fast",
    # A slimmer pyramid and heads than Mesmer's (see panoptic.build_panoptic) and no coordinate channels,
    # so the model trained on 128 px crops predicts the same wherever a tile is cut.
    architecture=dict(pyramid_filters=128, head_filters=32, location=False),
    n_synthetic=600,
    n_validation=12,
    synthetic_seed=20261130,
    validation_seed=777000,
    batch_size=8,
    crop_size=128,
    lr=1e-3,
    lr_decay=0.97,
    steps_per_epoch=60,
    max_epochs=100,
    share_vectra=0.15,
    share_dsb=0.10,
    seed=0,
)


def _tiles(X, y, tile=TILE):
    """Overlapping ``tile`` squares covering (H, W, C) ``X`` and its labels."""
    from pipeline.model.tiling import tile_starts

    h, w = X.shape[:2]
    out = []
    for r in tile_starts(h, tile, tile * 3 // 4):
        for c in tile_starts(w, tile, tile * 3 // 4):
            out.append((X[r:r + tile, c:c + tile], y[r:r + tile, c:c + tile]))
    return out


def real_training_data(data_dir: Path):
    """Vectra top half (whole-cell) and DSB nuclei (nuclear) as (X, y, layer weights, source) tiles."""
    from pipeline import io
    from pipeline.model import saving

    items, sources = [], []
    vectra = data_dir / "vectra"
    X, _ = io.read_image(vectra / "image0.tif", channels=[1, 0])  # stored membrane first
    cells = io.read_labels(vectra / "image0_wholecell.tif")[..., 0]
    top = X.shape[0] // 2
    Xv = X[:top].astype(np.float32)
    yv = np.stack([cells[:top], np.zeros_like(cells[:top])], -1).astype(np.int32)
    for x, y in _tiles(Xv, yv):
        items.append((x, y, (1.0, 0.0), "vectra"))
    sources.append({"name": "vectra image0, top half (rows 0-%d)" % top,
                    "sha256": saving.sha256_file(vectra / "image0.tif"),
                    "labels_sha256": saving.sha256_file(vectra / "image0_wholecell.tif")})

    dsb = data_dir / "dsb2018_nuclei"
    img = _read_plane(dsb / "img2d.tif").astype(np.float32)
    nuclei = _read_plane(dsb / "mask2d.tif").astype(np.int32)
    Xd = np.stack([img, np.zeros_like(img)], -1)
    yd = np.stack([nuclei, nuclei], -1)
    for x, y in _tiles(Xd, yd):
        items.append((x, y, (0.0, 1.0), "dsb"))
    sources.append({"name": "dsb2018 nuclei (StarDist sample)", "sha256": saving.sha256_file(dsb / "img2d.tif"),
                    "labels_sha256": saving.sha256_file(dsb / "mask2d.tif")})
    return items, sources


def _read_plane(path):
    import tifffile

    a = np.asarray(tifffile.imread(path))
    return np.squeeze(a)


def synthetic_data(n: int, seed: int, shape=(TILE, TILE)):
    """``n`` domain-randomised tissues, float32 X (values as drawn), y, and their settings."""
    from pipeline import synthetic

    X = np.empty((n, *shape, 2), np.float32)
    y = np.empty((n, *shape, 2), np.int32)
    settings = []
    for i in range(n):
        x, lab, st = synthetic.make_varied_tissue(shape, seed=seed + i, cell_diameter=SYNTHETIC_DIAMETERS)
        X[i], y[i] = x.astype(np.float32), lab
        settings.append(st)
    return X, y, settings


def build_training_set(data_dir: Path, recipe: dict):
    syn_X, syn_y, _ = synthetic_data(recipe["n_synthetic"], recipe["synthetic_seed"])
    real, sources = real_training_data(data_dir)
    X = np.concatenate([syn_X, np.stack([r[0] for r in real]).astype(np.float32)])
    y = np.concatenate([syn_y, np.stack([r[1] for r in real])])
    weights = np.concatenate([np.ones((len(syn_X), 2), np.float32), np.array([r[2] for r in real], np.float32)])
    kinds = ["synthetic"] * len(syn_X) + [r[3] for r in real]
    share = {"vectra": recipe["share_vectra"], "dsb": recipe["share_dsb"]}
    share["synthetic"] = 1.0 - share["vectra"] - share["dsb"]
    counts = {k: kinds.count(k) for k in share}
    sampling = np.array([share[k] / counts[k] for k in kinds])
    return X, y, weights, sampling, sources


def cmd_train(args) -> int:
    from pipeline.model import train

    recipe = dict(RECIPE)
    run = Path(args.out)
    run.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    X, y, weights, sampling, sources = build_training_set(Path(args.data), recipe)
    Xv, yv, _ = synthetic_data(recipe["n_validation"], recipe["validation_seed"])
    print(f"data: {len(X)} training tiles, {len(Xv)} validation, {time.perf_counter() - t0:.0f}s", flush=True)
    (run / "recipe.json").write_text(json.dumps({"recipe": recipe, "sources": sources,
                                                 "minutes": args.minutes}, indent=1) + "\n")
    result = train.train(
        X, y, val=(Xv, yv), backbone=recipe["backbone"], heads=recipe["heads"],
        architecture=recipe["architecture"],
        epochs=recipe["max_epochs"], steps_per_epoch=recipe["steps_per_epoch"],
        batch_size=recipe["batch_size"], crop_size=recipe["crop_size"], lr=recipe["lr"],
        lr_decay=recipe["lr_decay"], nuclear_weight=1.0, seed=recipe["seed"], verbose=2,
        layer_weights=weights, sampling=sampling, max_seconds=args.minutes * 60,
        checkpoint=run / "checkpoint", log_csv=run / "history.csv", calibrate=False,
        out=run / "final", overwrite=True,
    )
    print(f"trained {len(result.history)} epochs in {result.config['training']['seconds']:.0f}s", flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.model.starter_recipe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    t = sub.add_parser("train", help="train from scratch, checkpointing the best model")
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument("--minutes", type=float, default=40.0, help="wall-clock budget of the training loop")
    t.add_argument("--data", default="../shared/data", help="the shared sample data folder")
    t.set_defaults(func=cmd_train)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
