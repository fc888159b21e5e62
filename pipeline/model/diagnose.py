"""Why a model misses cells: every true cell it does not match, put down to the step that lost it.

    python -m pipeline.model.diagnose --model pipeline/model/starter --set vectra_image0

A true cell is matched when a predicted cell covers it with IoU > 0.6 (``pipeline.metrics``). An unmatched
one is, checked in this order:
- ``no_mask``: the interior head left most of it (over half its pixels) out of the foreground mask;
- ``no_marker``: inside the mask, but no distance maximum above the threshold seeded it;
- ``merged``: its main predicted cell is also the main predicted cell of another true cell;
- ``split``: two or more predicted cells each hold at least a fifth of it;
- ``extent``: one predicted cell on it, with the wrong outline (IoU ≤ 0.6).

Then one-at-a-time sweeps on the same network outputs (the maxima threshold, the interior threshold) and a
scale sweep (the automatic pixel-size estimate times a multiple: >1 shows the network bigger cells) say which
setting, if any, would recover them. Everything prints as JSON lines. This measures on whatever set it is
given: run it on the images a model is tuned on to choose settings, and on held-out images only to report.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

CAUSES = ("no_mask", "no_marker", "merged", "split", "extent")
MAXIMA_SWEEP = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
INTERIOR_SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5)
RADIUS_SWEEP = (1, 2, 3, 4)
SMOOTH_SWEEP = (0.0, 0.5, 1.0, 2.0)
SCALE_MULTIPLES = (0.8, 0.9, 1.0, 1.12, 1.25, 1.4, 1.6)


def classify_true_cells(truth: np.ndarray, pred: np.ndarray, mask: np.ndarray, markers: np.ndarray) -> dict:
    """Counts of matched true cells and of missed ones by cause (``CAUSES``), for one image. ``mask`` and
    ``markers`` are what the deep watershed flooded (``postprocess.seeds_and_mask``) on the same grid."""
    from pipeline import metrics

    truth, pred = np.asarray(truth), np.asarray(pred)
    if not (truth.shape == pred.shape == np.shape(mask) == np.shape(markers)):
        raise ValueError(f"truth {truth.shape}, prediction {pred.shape}, mask {np.shape(mask)} and markers "
                         f"{np.shape(markers)} must have one shape")
    result = metrics.object_accuracy(truth, pred)
    matched = {t for t, _, _ in result["matches"]}
    counts = {"n_true": int(result["n_true"]), "matched": len(matched), **{c: 0 for c in CAUSES}}
    ids = np.unique(truth)
    ids = ids[ids > 0]
    # The main predicted cell (most pixels) of every true cell, to find merges.
    main = {}
    for t in ids:
        under = pred[truth == t]
        under = under[under > 0]
        main[int(t)] = int(np.bincount(under).argmax()) if under.size else 0
    owners = {}
    for t, p in main.items():
        if p:
            owners.setdefault(p, []).append(t)
    for t in ids:
        t = int(t)
        if t in matched:
            continue
        inside = truth == t
        area = int(inside.sum())
        if np.count_nonzero(np.asarray(mask)[inside]) * 2 < area:
            counts["no_mask"] += 1
        elif not np.asarray(markers)[inside & np.asarray(mask, bool)].any():
            counts["no_marker"] += 1
        elif main[t] and len(owners.get(main[t], ())) > 1:
            counts["merged"] += 1
        elif np.count_nonzero(np.bincount(pred[inside])[1:] >= 0.2 * area) >= 2:
            counts["split"] += 1
        else:
            counts["extent"] += 1
    return counts


def _scores(truths, preds) -> dict:
    from pipeline import metrics

    pooled = metrics.evaluate(list(truths), list(preds))["pooled"]
    return {"f1": round(float(pooled["f1"]), 4), "recall": round(float(pooled["recall"]), 4),
            "precision": round(float(pooled["precision"]), 4), "cells_found": int(pooled["n_pred"]),
            "cells_true": int(pooled["n_true"])}


def _on_image_grid(labels2d: np.ndarray, shape) -> np.ndarray:
    from pipeline.model import preprocess

    if labels2d.shape == tuple(shape):
        return labels2d
    return preprocess.resample_labels(labels2d[..., None], tuple(shape))[..., 0]


def diagnose(app, images, truths, layer: int, name: str = "", scale: bool = True) -> list[dict]:
    """JSON-able rows: the misses by cause, the threshold sweeps and the scale sweep, for ``app`` (a
    ``predict.Mesmer``) on ``images`` with ``truths`` (layer 0 whole-cell, 1 nuclear)."""
    from pipeline.model import postprocess

    key = "whole_cell_kwargs" if layer == 0 else "nuclear_kwargs"
    defaults = postprocess.WHOLE_CELL_DEFAULTS if layer == 0 else postprocess.NUCLEAR_DEFAULTS
    kwargs = {**defaults, **((app.config.get("postprocess") or {}).get(key) or {})}
    seed_keys = set(postprocess.seeds_and_mask.__kwdefaults__)
    rows = []
    maps, estimates = [], []
    totals = {"n_true": 0, "matched": 0, **{c: 0 for c in CAUSES}}
    for X, truth in zip(images, truths):
        app.predict(X, image_mpp="auto", compartment="whole-cell" if layer == 0 else "nuclear")
        estimate = app.scale_estimates[0]
        estimates.append(estimate)
        outputs = app.last_outputs
        dist, pix = outputs[2 * layer], outputs[2 * layer + 1]
        maps.append((dist, pix))
        # Judge on the network's grid: the truth resampled there, so mask and markers need no resampling.
        grid_truth = _on_image_grid(np.asarray(truth), np.squeeze(dist).shape[:2])
        pred = postprocess.deep_watershed(dist, pix, **kwargs)
        _, _, mask, markers = postprocess.seeds_and_mask(dist, pix, **{k: v for k, v in kwargs.items()
                                                                         if k in seed_keys})
        for k, v in classify_true_cells(grid_truth, pred, mask, markers).items():
            totals[k] += v
    rows.append({"diagnose": "misses", "set": name, **totals,
                 "estimated_mpp": [round(e.image_mpp, 3) for e in estimates][:8],
                 "postprocess": {k: kwargs[k] for k in ("maxima_threshold", "interior_threshold", "radius")}})

    def predictions(over):
        out = []
        for (dist, pix), truth in zip(maps, truths):
            lab = postprocess.deep_watershed(dist, pix, **{**kwargs, **over})
            out.append(_on_image_grid(lab, np.asarray(truth).shape))
        return out

    sweeps = (("maxima_threshold", MAXIMA_SWEEP), ("interior_threshold", INTERIOR_SWEEP),
              ("radius", RADIUS_SWEEP), ("maxima_smooth", SMOOTH_SWEEP))
    for param, values in sweeps:
        for value in values:
            rows.append({"diagnose": "threshold", "set": name, "param": param, "value": value,
                         "current": bool(np.isclose(kwargs.get(param, np.nan), value)), **_scores(truths, predictions({param: value}))})
    for multiple in SCALE_MULTIPLES if scale else ():
        preds = [app.predict(X, image_mpp=e.image_mpp * multiple)[..., layer] for X, e in zip(images, estimates)]
        rows.append({"diagnose": "scale", "set": name, "multiple": multiple, **_scores(truths, preds)})
    return rows


def main(argv=None) -> int:
    from pipeline.model import heldout
    from pipeline.model.predict import Mesmer

    parser = argparse.ArgumentParser(prog="python -m pipeline.model.diagnose", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pipeline/model/starter", help="model version folder")
    parser.add_argument("--set", action="append", choices=heldout.ALL_SETS, help="held-out set (repeatable)")
    parser.add_argument("--data", default="../shared/data", help="the shared sample data folder")
    parser.add_argument("--quick", action="store_true", help="fewer synthetic images")
    parser.add_argument("--no-scale", action="store_true", help="skip the scale sweep (one prediction per multiple)")
    args = parser.parse_args(argv)
    if not Path(args.model).exists():
        print(f"error: no model version at {args.model}", file=sys.stderr)
        return 2
    app = Mesmer(args.model)
    for name in args.set or ["vectra_image0"]:
        loaded = heldout.load_set(name, Path(args.data), args.quick)
        if loaded is None:
            print(f"error: the data of set {name!r} is not under {args.data}", file=sys.stderr)
            return 2
        images, truths, layer, _ = loaded
        for row in diagnose(app, images, truths, layer, name, scale=not args.no_scale):
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
