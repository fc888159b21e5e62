"""How the shipped starter model is made: a light PanopticNet trained from scratch on broad synthetic
tissue plus the few real annotations CellLoop ships with.

    python -m pipeline.model.starter_recipe train --out runs/starter --minutes 40
    python -m pipeline.model.starter_recipe finish --run runs/starter --out pipeline/model/starter

``train`` checkpoints the best model (lowest validation loss) into ``RUN/checkpoint`` whenever it
improves, so a run stopped early still leaves a usable model; ``finish`` fits the post-processing,
measures the model and writes the shipped version (float16 weights) with its recipe, data hashes and
metrics in ``config.json``.

Data (``REAL_DATA``; never the MIBI field of view, the cross-platform check, nor any of Vectra image0, the
held-out real image and the loop's real image: ``HELD_OUT``):
- synthetic tissue from ``pipeline.synthetic.make_varied_tissue``, cell diameters 8-50 px;
- Vectra ``image1`` and ``image2`` with their partial whole-cell labels (104 and 84 traced cells): loss only
  on the traced cells and a 1-px band around them (``pipeline.dataset.partial_label_mask``), untraced
  pixels unknown; nuclear heads masked out;
- the DSB 2018 nuclei (nuclear labels; whole-cell heads masked out).

The shipped starter (``pipeline/model/starter``) was made by the previous recipe, which trained on the top
half of image0; its config says so. The next run of ``train`` + ``finish`` replaces it with one that never
saw image0, and ``finish`` then scores all of image0 (``HELD_OUT_SETS``).
"""
from __future__ import annotations

import argparse
import json
import math
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
    n_synthetic=1200,
    n_validation=12,
    synthetic_seed=20261130,
    validation_seed=777000,
    batch_size=8,
    crop_size=128,
    lr=1e-3,
    lr_decay=0.96,
    steps_per_epoch=100,
    max_epochs=400,
    share_vectra=0.15,
    share_dsb=0.10,
    seed=0,
    partial_band_px=1,  # pipeline.dataset.PARTIAL_BAND_PX: known = traced cells grown by this many px
)
# The real annotated images the recipe trains on (paths under the shared data folder). ``channels`` picks
# [nuclear, membrane] from the stored planes; ``layer`` is the labelled layer (the other head is masked out);
# ``partial`` labels carry a mask of where they are known.
REAL_DATA = (
    dict(kind="vectra", image="vectra/image1.tif", labels="vectra/image1_wholecell_partial.tif", channels=(1, 0),
         layer="whole-cell", partial=True),
    dict(kind="vectra", image="vectra/image2.tif", labels="vectra/image2_wholecell_partial.tif", channels=(1, 0),
         layer="whole-cell", partial=True),
    dict(kind="dsb", image="dsb2018_nuclei/img2d.tif", labels="dsb2018_nuclei/mask2d.tif", channels=None,
         layer="nuclear", partial=False),
)
# Never trained on, never used to fit post-processing or scale: what the starter is judged on.
HELD_OUT = ("vectra/image0.tif", "vectra/image0_wholecell.tif", "mibi_tnbc/")
# The held-out sets ``finish`` scores (pipeline.model.heldout): all of image0, which this recipe never sees.
HELD_OUT_SETS = ("vectra_image0", "mibi", "dsb", "synthetic")


def _tiles(X, y, tile=TILE, mask=None):
    """Overlapping ``tile`` squares covering (H, W, C) ``X``, its labels and its known-label mask."""
    from pipeline.model.tiling import tile_starts

    h, w = X.shape[:2]
    mask = np.ones((h, w), bool) if mask is None else mask
    out = []
    for r in tile_starts(h, tile, tile * 3 // 4):
        for c in tile_starts(w, tile, tile * 3 // 4):
            out.append((X[r:r + tile, c:c + tile], y[r:r + tile, c:c + tile], mask[r:r + tile, c:c + tile]))
    return out


def check_not_held_out(data_dir: Path, path: Path) -> None:
    """Refuse a file under ``data_dir`` that ``HELD_OUT`` names (a file, or a folder ending in "/")."""
    try:
        rel = Path(path).resolve().relative_to(Path(data_dir).resolve()).as_posix()
    except ValueError:
        return
    for held in HELD_OUT:
        if rel == held or (held.endswith("/") and rel.startswith(held)):
            raise ValueError(f"{path} is held out from the starter's training ({held})")


def read_real_image(data_dir: Path, entry: dict, band: int = 1):
    """One ``REAL_DATA`` entry as (X (H, W, 2) [nuclear, membrane], y (H, W, 2), known (H, W) or None)."""
    from pipeline import dataset, io

    image_path, labels_path = Path(data_dir) / entry["image"], Path(data_dir) / entry["labels"]
    for path in (image_path, labels_path):
        check_not_held_out(data_dir, path)
    if entry["channels"] is None:  # a nuclear-only image: blank membrane channel
        img = _read_plane(image_path).astype(np.float32)
        X = np.stack([img, np.zeros_like(img)], -1)
    else:
        X, _ = io.read_image(image_path, channels=list(entry["channels"]))
        X = X.astype(np.float32)
    cells = _read_plane(labels_path).astype(np.int32)
    if cells.shape != X.shape[:2]:
        raise ValueError(f"{labels_path}: labels {cells.shape} do not match the image {X.shape[:2]}")
    blank = np.zeros_like(cells)
    y = np.stack([cells, blank] if entry["layer"] == "whole-cell" else [cells, cells], -1)
    known = dataset.partial_label_mask(cells, band) if entry["partial"] else None
    return X, y, known


def real_training_data(data_dir: Path, band: int = RECIPE["partial_band_px"]):
    """The ``REAL_DATA`` images as (X, y, layer weights, kind, known mask) tiles, and their sources. Tiles of a
    partially labelled image with no known pixel teach nothing and are left out."""
    from pipeline.model import saving

    data_dir = Path(data_dir)
    items, sources = [], []
    for entry in REAL_DATA:
        X, y, known = read_real_image(data_dir, entry, band)
        weights = (1.0, 0.0) if entry["layer"] == "whole-cell" else (0.0, 1.0)
        kept = 0
        for x, yt, m in _tiles(X, y, mask=known):
            if entry["partial"] and not (m & (yt[..., 0] > 0)).any():
                continue
            items.append((x, yt, weights, entry["kind"], m))
            kept += 1
        n_cells = int(len(np.unique(y[..., 0 if entry["layer"] == "whole-cell" else 1])) - 1)
        sources.append({"name": entry["image"], "labels": entry["labels"], "layer": entry["layer"],
                        "partial": bool(entry["partial"]), "cells": n_cells, "tiles": kept,
                        "known_fraction": None if known is None else round(float(known.mean()), 4),
                        "band_px": int(band) if entry["partial"] else None,
                        "sha256": saving.sha256_file(data_dir / entry["image"]),
                        "labels_sha256": saving.sha256_file(data_dir / entry["labels"])})
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
    """X, y, layer weights, sampling, sources and the known-label mask of the whole training set."""
    syn_X, syn_y, _ = synthetic_data(recipe["n_synthetic"], recipe["synthetic_seed"])
    real, sources = real_training_data(data_dir, recipe.get("partial_band_px", 1))
    X = np.concatenate([syn_X, np.stack([r[0] for r in real]).astype(np.float32)])
    y = np.concatenate([syn_y, np.stack([r[1] for r in real])])
    mask = np.concatenate([np.ones(syn_X.shape[:3], bool), np.stack([r[4] for r in real])])
    weights = np.concatenate([np.ones((len(syn_X), 2), np.float32), np.array([r[2] for r in real], np.float32)])
    kinds = ["synthetic"] * len(syn_X) + [r[3] for r in real]
    share = {"vectra": recipe["share_vectra"], "dsb": recipe["share_dsb"]}
    share["synthetic"] = 1.0 - share["vectra"] - share["dsb"]
    counts = {k: kinds.count(k) for k in share}
    sampling = np.array([share[k] / counts[k] for k in kinds])
    return X, y, weights, sampling, sources, mask


def cmd_train(args) -> int:
    from pipeline.model import train

    recipe = dict(RECIPE)
    run = Path(args.out)
    run.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    X, y, weights, sampling, sources, mask = build_training_set(Path(args.data), recipe)
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
        layer_weights=weights, sampling=sampling, mask=mask, max_seconds=args.minutes * 60,
        checkpoint=run / "checkpoint", log_csv=run / "history.csv", calibrate=False,
        out=run / "final", overwrite=True,
    )
    print(f"trained {len(result.history)} epochs in {result.config['training']['seconds']:.0f}s", flush=True)
    return 0


def calibration_images(data_dir: Path, recipe: dict, n_synthetic: int = 12):
    """Labelled images the finishing step may tune on: the training images' real data at full size and
    the synthetic validation tissues. Returns a list of (X, y (H, W, 2), layers annotated, kind, known
    mask or None); partially labelled images are scored only on predicted cells that lie mostly where
    their labels are known (``pipeline.dataset.keep_known_cells``)."""
    items = []
    for entry in REAL_DATA:
        X, y, known = read_real_image(Path(data_dir), entry, recipe.get("partial_band_px", 1))
        items.append((X, y, (0,) if entry["layer"] == "whole-cell" else (1,), entry["kind"], known))
    Xv, yv, _ = synthetic_data(recipe["n_validation"], recipe["validation_seed"])
    items.extend((x, y, (0, 1), "synthetic", None) for x, y in zip(Xv[:n_synthetic], yv[:n_synthetic]))
    return items


# The finishing step's post-processing search: wider than ``postprocess.CALIBRATION_GRID`` (a model
# trained for minutes predicts soft, wide interiors, so the interior threshold that fits it best can
# sit above that grid's 0.3), affordable here because it runs once per shipped model.
FINISH_GRID = dict(
    maxima_threshold=(0.1, 0.2, 0.3, 0.4, 0.5),
    interior_threshold=(0.2, 0.3, 0.4, 0.5),
    radius=(2, 4),
    maxima_smooth=(1.0,),  # chosen in every search of the full grid with (0.0, 1.0): dropped to halve the cost
)
PUBLISHED_MARGIN = 0.01  # F1 by which the slower published post-processing must win to be kept
# Multiples of the measured cell diameter the scale search tries as the automatic-scale target.
SCALE_MULTIPLES = (0.7, 0.8, 0.9, 1.0, 1.12, 1.25, 1.4)


def auto_maps(app, items, layer_filter=None):
    """Each calibration item as prediction sees it at default settings: its pixel size estimated by
    automatic scale (with ``app.config``'s targets and post-processing), the network maps at that
    scale, and the truth resampled onto the maps' grid. Returns [(outputs, truth, layers, kind)]."""
    from pipeline.model import autoscale, preprocess

    found = []
    for item in items:
        X, y, layers, kind = item[:4]
        known = item[4] if len(item) > 4 else None
        if layer_filter is not None and layer_filter not in layers:
            continue
        estimate = autoscale.estimate_image_mpp(app, X)
        outs = app.predict_outputs(X, estimate.image_mpp)
        truth = preprocess.resample_labels(y, outs[0].shape[-3:-1])
        if known is not None:
            known = preprocess.resample_labels(known, outs[0].shape[-3:-1])
        found.append((outs, truth, layers, kind, known))
    return found


def _kind_scores(maps, k, kwargs) -> dict:
    """Whole-cell (``k`` 0) or nuclear F1 of ``kwargs`` on ``maps``, pooled (as the accuracy bench
    scores) within each kind of image: {kind: F1}."""
    from pipeline import metrics
    from pipeline.dataset import keep_known_cells
    from pipeline.model import postprocess

    by_kind = {}
    for item in maps:
        outs, truth, layers, kind = item[:4]
        known = item[4] if len(item) > 4 else None
        if k not in layers:
            continue
        pred = postprocess.deep_watershed(outs[2 * k], outs[2 * k + 1], **kwargs)
        if known is not None:
            pred = keep_known_cells(pred, known)
        truths, preds = by_kind.setdefault(kind, ([], []))
        truths.append(truth[..., k])
        preds.append(pred)
    return {kind: float(metrics.evaluate(t, p)["pooled"]["f1"]) for kind, (t, p) in by_kind.items()}


def _layer_score(maps, k, kwargs):
    """The mean over kinds of ``_kind_scores``, so ~150 real Vectra cells weigh as much as thousands of
    synthetic ones."""
    scores = _kind_scores(maps, k, kwargs)
    return float(np.mean(list(scores.values()))) if scores else 0.0


def calibrate_both_variants(maps, current: dict):
    """Deep-watershed parameters per layer, searched over ``FINISH_GRID`` for the model's own and the
    published variant on ``maps`` (from ``auto_maps``); ours is kept unless the published one beats it by
    more than ``PUBLISHED_MARGIN``; both are reported."""
    import itertools

    from pipeline.model import postprocess

    chosen, report = {}, {}
    for key, k, defaults in (("whole_cell_kwargs", 0, postprocess.WHOLE_CELL_DEFAULTS),
                             ("nuclear_kwargs", 1, postprocess.NUCLEAR_DEFAULTS)):
        found = {}
        start = {**defaults, **(current.get(key) or {})}
        for variant, extra in (("ours", postprocess.OUR_VARIANT),
                               ("published", postprocess.PUBLISHED_VARIANT)):
            base = {**start, **extra}
            best_kwargs, best = base, _layer_score(maps, k, base)
            default_f1 = best
            for values in itertools.product(*FINISH_GRID.values()):
                kwargs = {**base, **dict(zip(FINISH_GRID, values))}
                f1 = _layer_score(maps, k, kwargs)
                if f1 > best:
                    best, best_kwargs = f1, kwargs
            found[variant] = {"kwargs": best_kwargs, "f1": best, "default_f1": default_f1}
            print(f"  {key} {variant}: F1 {best:.3f} (from {default_f1:.3f})", flush=True)
        # The published variant's h-maxima markers cost ~10x our post-processing time at 2048²: it is
        # kept only when it is clearly better.
        kept = "published" if found["published"]["f1"] > found["ours"]["f1"] + PUBLISHED_MARGIN else "ours"
        chosen[key] = found[kept]["kwargs"]
        report[key] = {"kept": kept, "n_images": sum(k in m[2] for m in maps),
                       **{v: {"f1": round(f["f1"], 4), "default_f1": round(f["default_f1"], 4), "kwargs": f["kwargs"]}
                          for v, f in found.items()}}
    return chosen, report


def scale_targets(app, items):
    """The cell and nucleus diameters the model itself measures on its real training images (Vectra
    whole cells, DSB nuclei) at the scale they were trained at: the starting point of the scale search."""
    from pipeline.model import autoscale

    vectra = next(it for it in items if it[3] == "vectra")
    dsb = next(it for it in items if it[3] == "dsb")
    cell, _ = autoscale._measure(app, vectra[0], 1.0, 0)
    nucleus, _ = autoscale._measure(app, dsb[0], 1.0, 1)
    return float(cell), float(nucleus)


def search_scale(app, items, measured: float):
    """The whole-cell diameter automatic scale should aim for. The model's own measurement is biased (a
    model measures the cells it finds, not the true ones), so instead of trusting it the search runs the
    default pipeline end to end on the calibration images (scale estimated, then segmented with the
    current post-processing) for targets around ``measured``. One target serves every kind of tissue, so
    it is the one whose worst kind (real Vectra, synthetic) scores best: a starter model should not fit
    one kind at another's expense. Returns (diameter, [{multiple, diameter, f1 per kind}])."""
    tried = []
    for m in SCALE_MULTIPLES:
        app.config["cell_diameter"] = measured * m
        maps = auto_maps(app, items, layer_filter=0)
        scores = _kind_scores(maps, 0, app.config["postprocess"]["whole_cell_kwargs"])
        tried.append({"multiple": m, "diameter": round(measured * m, 2), **{k: round(v, 4) for k, v in scores.items()},
                      "worst": round(min(scores.values()), 4)})
        print(f"  scale target {measured * m:.1f} px: whole-cell F1 "
              + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()), flush=True)
    best = max(tried, key=lambda t: (t["worst"], -abs(math.log(t["multiple"]))))
    return measured * best["multiple"], tried


def calibrate(app, items, rounds: int = 1):
    """Post-processing and the automatic-scale targets, fitted together on the calibration images as
    the default pipeline sees them (``auto_maps``): post-processing at the current target, then the
    target with that post-processing, ``rounds`` times. Sets them in ``app.config``; returns a report."""
    cell, nucleus = scale_targets(app, items)
    print(f"measured: cells {cell:.1f} px, nuclei {nucleus:.1f} px", flush=True)
    app.config["cell_diameter"], app.config["nuclear_diameter"] = cell, nucleus
    report = {"measured_cell_diameter": round(cell, 2), "measured_nuclear_diameter": round(nucleus, 2), "rounds": []}
    for r in range(rounds):
        pp, pp_report = calibrate_both_variants(auto_maps(app, items), app.config.get("postprocess") or {})
        app.config["postprocess"] = pp
        diameter, tried = search_scale(app, items, cell)
        app.config["cell_diameter"] = diameter
        report["rounds"].append({"postprocess": pp_report, "scale": tried, "cell_diameter": round(diameter, 2)})
    # The last post-processing search ran before the last scale search: run it once more at the final scale.
    pp, pp_report = calibrate_both_variants(auto_maps(app, items), app.config["postprocess"])
    app.config["postprocess"] = pp
    report["final_postprocess"] = pp_report
    return report


def cmd_finish(args) -> int:
    import csv

    from pipeline.model import heldout, saving
    from pipeline.model.predict import Mesmer

    run, data_dir, out = Path(args.run), Path(args.data), Path(args.out)
    meta = json.loads((run / "recipe.json").read_text())
    recipe = meta["recipe"]
    version = saving.load_model_version(run / "checkpoint")
    app = Mesmer(version)
    items = calibration_images(data_dir, recipe)
    t0 = time.perf_counter()
    calibration = calibrate(app, items)
    diameter, nuclear_diameter = app.config["cell_diameter"], app.config["nuclear_diameter"]
    pp = app.config["postprocess"]
    print(f"cell diameter target: {diameter:.1f} px, nuclei {nuclear_diameter:.1f} px", flush=True)
    with open(run / "history.csv") as f:
        history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    config = dict(version.config)
    config.update(
        name="starter",
        cell_diameter=diameter,
        nuclear_diameter=nuclear_diameter,
        postprocess=pp,
        parent=None,
        created=None,
        training={
            "recipe": recipe,
            "command": "python -m pipeline.model.starter_recipe train --out RUN --minutes %g" % meta["minutes"],
            "data": meta["sources"] + [{"name": "synthetic: pipeline.synthetic.make_varied_tissue",
                                        "seeds": [recipe["synthetic_seed"], recipe["synthetic_seed"] + recipe["n_synthetic"] - 1],
                                        "cell_diameter_px": list(SYNTHETIC_DIAMETERS)}],
            "validation": {"synthetic_seeds": [recipe["validation_seed"], recipe["validation_seed"] + recipe["n_validation"] - 1]},
            "not_used": ["mibi_tnbc (the cross-platform check)",
                         "vectra image0, all of it (held out: the loop's real image)",
                         "ImageNet weights (not obtainable here: trained from scratch)"],
            "best_epoch": version.config.get("training", {}).get("checkpoint_epoch"),
            "best_val_loss": version.config.get("training", {}).get("checkpoint_loss"),
            "steps": (int(version.config.get("training", {}).get("checkpoint_epoch", 0)) + 1) * recipe["steps_per_epoch"],
            "epochs_run": len(history),
            "history": history,
            "postprocess_calibration": calibration["final_postprocess"],
            "calibration": calibration,
        },
    )
    # Saved through a fresh load so the optimizer state of training is not shipped.
    saving.save_model_version(version.model, out, config, overwrite=True)
    finished = saving.load_model_version(out)
    rows = []
    for name in HELD_OUT_SETS:
        row = heldout.evaluate(finished, name, data_dir)
        if row is not None:
            print(json.dumps(row), flush=True)
            rows.append(row)
    config["metrics"] = {r["case"].split(":", 1)[1]: {k: v for k, v in r.items() if k != "case"} for r in rows}
    saving.save_model_version(finished.model, out, config, overwrite=True)
    size = (out / saving.MODEL_FILE).stat().st_size
    print(f"{out}: {size / 1e6:.1f} MB, finished in {time.perf_counter() - t0:.0f}s", flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.model.starter_recipe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    t = sub.add_parser("train", help="train from scratch, checkpointing the best model")
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument("--minutes", type=float, default=40.0, help="wall-clock budget of the training loop")
    t.add_argument("--data", default="../shared/data", help="the shared sample data folder")
    t.set_defaults(func=cmd_train)
    f = sub.add_parser("finish", help="fit scale and post-processing, measure, write the shipped model version")
    f.add_argument("--run", required=True, help="run folder of a train step")
    f.add_argument("--out", required=True, help="model version folder to write (e.g. pipeline/model/starter)")
    f.add_argument("--data", default="../shared/data", help="the shared sample data folder")
    f.set_defaults(func=cmd_finish)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
