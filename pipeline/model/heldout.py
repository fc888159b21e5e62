"""The held-out sets a generalist model is judged on, each scored next to the nuclear-expansion baseline.

(a) ``vectra_image0``: all of Vectra image0 (259 cells), whole-cell F1; the starter recipe never reads it
    (``starter_recipe.HELD_OUT``). ``vectra``, its bottom half only, is kept for models that trained on its top
    half (the starter before this recipe);
(b) ``mibi``: the MIBI-TOF field of view, whole-cell agreement with the published Mesmer model's output
    (a reference prediction, not ground truth);
(c) ``dsb``: the DSB 2018 nuclei, nuclear F1 (the starter trains on this image: a fit check only);
(d) ``synthetic``: domain-randomised tissue with seeds (and so settings) never used in training.

Everything runs at default settings: no pixel size given (``image_mpp="auto"``). Each set is scored
with the model's post-processing and with the other deep-watershed variant (ours: peak markers flooding
the distance map; published: deepcell-toolbox's h-maxima markers flooding the interior) on the same
network outputs. Object matching is ``pipeline.metrics`` (IoU > 0.6), pooled F1.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

SYNTHETIC_SEED = 990_000
SETS = ("vectra_image0", "mibi", "dsb", "synthetic")
# Also known to ``load_set``: "vectra", the bottom half of image0, for a model that trained on its top half.
ALL_SETS = SETS + ("vectra",)


def _read_plane(path):
    import tifffile

    return np.squeeze(np.asarray(tifffile.imread(path)))


def load_set(name: str, data_dir: Path, quick: bool = False):
    """(images (H, W, 2) [nuclear, membrane], truths (H, W), layer scored, description) or None."""
    from pipeline import io, synthetic

    data_dir = Path(data_dir)
    if name == "vectra":
        folder = data_dir / "vectra"
        if not (folder / "image0.tif").exists():
            return None
        X, _ = io.read_image(folder / "image0.tif", channels=[1, 0])  # stored membrane first
        y = io.read_labels(folder / "image0_wholecell.tif")[..., 0]
        half = X.shape[0] // 2
        return [X[half:].astype(np.float32)], [y[half:]], 0, "Vectra image0 bottom half (200x400), whole-cell F1"
    if name == "vectra_image0":
        folder = data_dir / "vectra"
        if not (folder / "image0.tif").exists():
            return None
        X, _ = io.read_image(folder / "image0.tif", channels=[1, 0])
        y = io.read_labels(folder / "image0_wholecell.tif")[..., 0]
        return [X.astype(np.float32)], [y], 0, "Vectra image0, all of it (400x400, 259 cells), whole-cell F1"
    if name == "mibi":
        folder = data_dir / "mibi_tnbc"
        if not (folder / "HH3.tiff").exists():
            return None
        X = np.stack([_read_plane(folder / "HH3.tiff"), _read_plane(folder / "Membrane.tiff")], -1).astype(np.float32)
        ref = _read_plane(folder / "fov8_feature_0.tiff").astype(np.int32)
        return [X], [ref], 0, "MIBI-TOF TNBC fov8 (1024x1024; HH3, Membrane), whole-cell agreement with Mesmer's output"
    if name == "dsb":
        folder = data_dir / "dsb2018_nuclei"
        if not (folder / "img2d.tif").exists():
            return None
        img = _read_plane(folder / "img2d.tif").astype(np.float32)
        X = np.stack([img, np.zeros_like(img)], -1)
        return [X], [_read_plane(folder / "mask2d.tif").astype(np.int32)], 1, \
            "DSB 2018 nuclei (512x512, nuclear channel only), nuclear F1 (a training image)"
    if name == "synthetic":
        n = 3 if quick else 8
        images, truths = [], []
        for i in range(n):
            X, y, _ = synthetic.make_varied_tissue((256, 256), seed=SYNTHETIC_SEED + i)
            images.append(X.astype(np.float32))
            truths.append(y[..., 0])
        return images, truths, 0, f"{n} domain-randomised synthetic 256x256 tissues, unseen seeds, whole-cell F1"
    raise ValueError(f"unknown held-out set {name!r}; choose from {', '.join(ALL_SETS)}")


def _variant(kwargs: dict) -> str:
    return "published" if kwargs.get("flood") == "interior" else "ours"


def other_postprocess(config: dict) -> tuple[str, dict]:
    """The deep-watershed variant the model does not use, with its calibrated parameters when the
    model's config records them (``training.postprocess_calibration``), else the model's own with only
    the variant switched."""
    from pipeline.model import postprocess

    pp = config.get("postprocess") or {}
    calibration = (config.get("training") or {}).get("postprocess_calibration") or {}
    kept = _variant(pp.get("whole_cell_kwargs") or {})
    other = "ours" if kept == "published" else "published"
    switch = postprocess.PUBLISHED_VARIANT if other == "published" else postprocess.OUR_VARIANT
    kwargs = {}
    for key in ("whole_cell_kwargs", "nuclear_kwargs"):
        found = (calibration.get(key) or {}).get(other, {}).get("kwargs")
        kwargs[key] = dict(found) if found else {**(pp.get(key) or {}), **switch}
    return other, kwargs


def evaluate(version, name: str, data_dir: Path, quick: bool = False) -> dict | None:
    """One JSON-able row: F1 of ``version`` (a ModelVersion or folder), of the other post-processing
    variant, and of the baseline on held-out set ``name``; None when its data is missing."""
    from pipeline import baseline, metrics
    from pipeline.model.predict import Mesmer

    loaded = load_set(name, data_dir, quick)
    if loaded is None:
        return None
    images, truths, layer, what = loaded
    app = Mesmer(version)
    t0 = time.perf_counter()
    other, other_kwargs = other_postprocess(app.config)
    preds, alternative, estimates = [], [], []
    for X in images:
        preds.append(app.predict(X, image_mpp="auto")[..., layer])
        estimates.append(app.scale_estimates[0])
        # Same network maps and scale, the other deep-watershed variant.
        alt = app.predict(X, image_mpp=estimates[-1].image_mpp, postprocess_kwargs=other_kwargs)
        alternative.append(alt[..., layer])
    seconds = time.perf_counter() - t0
    base = [baseline.nuclear_expansion(X)[..., layer] for X in images]

    def f1(pred):
        return round(float(metrics.evaluate(list(truths), pred)["pooled"]["f1"]), 4)

    return {
        "case": f"accuracy:{name}", "f1": f1(preds),
        "postprocess": _variant((app.config.get("postprocess") or {}).get("whole_cell_kwargs") or {}),
        f"f1_{other}_postprocess": f1(alternative),
        "baseline_f1": f1(base), "layer": "whole-cell" if layer == 0 else "nuclear", "n_images": len(images),
        "cells_true": int(sum(len(np.unique(t)) - 1 for t in truths)),
        "cells_found": int(sum(len(np.unique(p)) - 1 for p in preds)),
        "estimated_mpp": [round(e.image_mpp, 3) for e in estimates][:8],
        "predict_s": round(seconds, 1), "held_out": what,
    }
