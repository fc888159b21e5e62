"""Speed of the Mesmer model on this machine, and its accuracy against the classic baseline.

    python bench/model.py                   # all speed cases (CPU heavy: several minutes)
    python bench/model.py --quick           # small images, fewer repetitions
    python bench/model.py --case accuracy   # the shipped starter model on the held-out sets, next to the baseline
    python bench/model.py --case scratch_accuracy   # train light models from scratch on Vectra / synthetic data
    python bench/model.py --case predict@2048:light --case postprocess@1024

One JSON line per case. ``predict@SIZE:light`` runs the whole Mesmer application with the shipped
starter model (trained weights, so post-processing sees real cells) on a SIZE x SIZE 2-channel
synthetic tissue and reports megapixels per second with the pre-processing, network and
post-processing seconds separately; ``predict@SIZE:resnet50`` uses an untrained ResNet50 PanopticNet
(network time does not depend on the weights). ``predict@SIZE:light:auto`` adds the automatic scale
estimate (``image_mpp="auto"``) and reports its seconds. ``accuracy:*`` cases: see
``pipeline.model.heldout``.
Each predict case names its ``runtime`` (``pipeline.model.runtime.DEFAULT_RUNTIME`` or CELLLOOP_INFERENCE_RUNTIME;
``predict@SIZE:light:keras`` is Keras in the same run), ``network@256x8`` times the network alone on each runtime,
interleaved, and ``runtime@SIZE`` runs the starter with every runtime, with how far each one's
labels moved from Keras'. ``predict@10k`` runs ``predict_slide`` on a synthetic 10240² two-channel tiled OME-TIFF in a
child process and reports its peak RSS (``--quick``: a 4096² slide, case ``predict@4k``); ``seams@2048`` compares a
2048² image predicted in 1152 px blocks joined at the seams with the same image predicted whole.
``train_step@256x8:BACKBONE`` is the median time of one optimiser step on a batch of 8 256² crops.
``synthetic@SIZE`` times the synthetic tissue generator (the test data of the model).
``scratch_accuracy`` trains light models from scratch (the accuracy tests' recipe) and compares
whole-cell F1 on held-out images with ``pipeline.baseline.nuclear_expansion``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / ".." / "shared" / "data"


def _device() -> str:
    import keras

    backend = keras.backend.backend()
    cpu = platform.processor() or platform.machine()
    return f"cpu ({os.cpu_count()} cores, {cpu}), keras backend {backend}; no GPU lent to this task"


def _emit(record: dict) -> None:
    print(json.dumps({"bench": "model", **record, "device": DEVICE}), flush=True)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def bench_predict(size: int, backbone: str, label: str, reps: int, image_mpp=None, runtime=None) -> None:
    from pipeline import synthetic
    from pipeline.model import panoptic
    from pipeline.model.predict import Mesmer
    from pipeline.model.starter import starter_model_dir

    X, _ = synthetic.make_tissue((size, size), seed=0)
    weights = "untrained"
    if backbone == panoptic.LIGHT_BACKBONE and starter_model_dir() is not None:
        app, weights = Mesmer(starter_model_dir(), runtime=runtime), "starter"
    else:
        app = Mesmer(panoptic.build_panoptic(2, backbone), runtime=runtime)
    app.predict(X[:512, :512], image_mpp=image_mpp)  # trace the network once; not part of the timing
    totals, stages = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        labels = app.predict(X, image_mpp=image_mpp)
        totals.append(time.perf_counter() - t0)
        stages.append(dict(app.timings))
    i = int(np.argsort(totals)[len(totals) // 2])
    total = totals[i]
    _emit({
        "case": f"predict@{size}:{label}", "backbone": backbone, "n": reps,
        "median_ms": round(total * 1000, 1), "mp_per_s": round(size * size / 1e6 / total, 3),
        "preprocess_s": round(stages[i]["preprocess_s"], 2), "network_s": round(stages[i]["network_s"], 2),
        "postprocess_s": round(stages[i]["postprocess_s"], 2), "scale_s": round(stages[i].get("scale_s", 0.0), 2),
        "weights": weights, "cells": int(labels[..., 0].max()), "runtime": app.runtime,
        "tile": app.tile, "stride": app.stride, "load_avg": _load(),
    })


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def bench_runtimes(size: int) -> None:
    """The starter on one SIZE² tissue with each inference runtime: the network's MP/s and whether labels move."""
    from pipeline import agreement, synthetic
    from pipeline.model.predict import Mesmer
    from pipeline.model.runtime import RUNTIMES
    from pipeline.model.starter import starter_model_dir

    X, _ = synthetic.make_tissue((size, size), seed=0)
    reference = None
    for name in ("keras",) + tuple(r for r in RUNTIMES if r != "keras"):
        app = Mesmer(starter_model_dir(), runtime=name)
        app.predict(X[:512, :512])  # load, export or compile; not timed
        t0 = time.perf_counter()
        labels = app.predict(X)
        total = time.perf_counter() - t0
        reference = labels if reference is None else reference
        _emit({"case": f"runtime@{size}:{name}", "runtime": name, "mp_per_s": round(size * size / 1e6 / total, 3),
               "network_mp_per_s": round(size * size / 1e6 / app.timings["network_s"], 3),
               "network_s": round(app.timings["network_s"], 2), "median_ms": round(total * 1000, 1), "n": 1,
               "labels_vs_keras": agreement.changed_share(reference, labels), "load_avg": _load()})


def bench_network(rounds: int) -> None:
    """The starter's network alone on one batch of 8 256² tiles, each runtime in turn for ``rounds`` rounds, so a
    shared machine's changing load falls on all of them alike; median seconds per batch."""
    from pipeline.model import runtime, saving
    from pipeline.model.starter import starter_model_dir

    version = saving.load_model_version(starter_model_dir())
    batch = np.random.default_rng(0).random((8, 256, 256, 2)).astype(np.float32)
    nets = {name: runtime.network_for(version, name) for name in runtime.RUNTIMES}
    times = {name: [] for name in nets}
    for net in nets.values():
        net(batch)  # first call: graph compile / allocation
    for _ in range(rounds):
        for name, net in nets.items():
            t0 = time.perf_counter()
            net(batch)
            times[name].append(time.perf_counter() - t0)
    mp = batch.shape[0] * 256 * 256 / 1e6
    for name, ts in times.items():
        median = float(np.median(ts))
        _emit({"case": f"network@256x8:{name}", "runtime": name, "n": rounds, "median_ms": round(median * 1000, 1),
               "tile_mp_per_s": round(mp / median, 3), "load_avg": _load(),
               "note": "tile pixels through the network; a 256/192 grid passes each image pixel 1.78 times"})


def _synthetic_slide(path: Path, side: int, tile: int = 512) -> None:
    """A side x side 2-channel uint16 tiled OME-TIFF, written tile by tile from two 2048² synthetic tissues (flipped
    by position), so making it never holds the slide in memory."""
    import tifffile

    from pipeline import synthetic

    parts = []
    for seed in (0, 1):
        X, _ = synthetic.make_tissue((2048, 2048), seed=seed)
        parts.append(np.round(np.clip(X / np.percentile(X, 99.9), 0, 1) * 60000).astype(np.uint16))

    def tiles():
        for c in range(2):
            for y0 in range(0, side, tile):
                for x0 in range(0, side, tile):
                    i, j = y0 // 2048, x0 // 2048
                    part = parts[(i + j) % 2][..., c]
                    part = part[::-1] if i % 2 else part
                    part = part[:, ::-1] if j % 2 else part
                    out = np.zeros((tile, tile), np.uint16)
                    piece = part[y0 % 2048:y0 % 2048 + tile, x0 % 2048:x0 % 2048 + tile]
                    h, w = min(tile, side - y0, piece.shape[0]), min(tile, side - x0, piece.shape[1])
                    out[:h, :w] = piece[:h, :w]
                    yield out

    tifffile.imwrite(path, tiles(), shape=(2, side, side), dtype=np.uint16, tile=(tile, tile), ome=True,
                     bigtiff=True, photometric="minisblack", compression="zlib",
                     metadata={"axes": "CYX", "Channel": {"Name": ["nuclear", "membrane"]}})


def _default_runtime() -> str:
    from pipeline.model.runtime import DEFAULT_RUNTIME

    return os.environ.get("CELLLOOP_INFERENCE_RUNTIME") or DEFAULT_RUNTIME


def bench_predict_slide(side: int, label: str) -> None:
    """``cellloop predict`` of a whole synthetic slide in a child process: its peak RSS and MP/s."""
    import resource
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(dir=REPO / "..", prefix=".bench-slide-") as tmp:
        slide = Path(tmp) / "slide.ome.tif"
        t0 = time.perf_counter()
        _synthetic_slide(slide, side)
        made = time.perf_counter() - t0
        code = ("import json, sys, time; from pipeline.model import slide_predict; from pipeline.model.starter import "
                "starter_model_dir; t0 = time.perf_counter(); r = slide_predict.predict_slide(sys.argv[1], sys.argv[2], "
                "model=starter_model_dir(), channels=[0, 1]); print(json.dumps({'predict_s': time.perf_counter() - t0, "
                "'cells': r.cells, 'blocks': r.blocks, 'contradictions': r.contradictions, **r.timings}))")
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code, str(slide), str(Path(tmp) / "labels.zarr")], cwd=REPO,
                              capture_output=True, text=True)
        total = time.perf_counter() - t0
        if done.returncode:
            _log(done.stderr[-3000:])
            raise SystemExit(f"predict@{label} failed")
        stats = json.loads(done.stdout.strip().splitlines()[-1])
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    _emit({"case": f"predict@{label}", "slide": f"{side}x{side} 2-channel uint16 tiled OME-TIFF (synthetic)",
           "n": 1, "median_ms": round(stats["predict_s"] * 1000, 1),
           "mp_per_s": round(side * side / 1e6 / stats["predict_s"], 3),
           "wall_mp_per_s": round(side * side / 1e6 / total, 3), "peak_rss_mb": round(peak_mb, 1),
           "slide_make_s": round(made, 1), "runtime": _default_runtime(), **{k: round(v, 2) for k, v in stats.items()},
           "load_avg": _load(), "note": "mp_per_s: predict_slide itself; wall_mp_per_s adds the child's start (imports, "
                                        "model load); peak_rss_mb is the child's"})


def bench_seams(size: int, block: int) -> None:
    """Tiled-with-seams against untiled on one SIZE² synthetic image: the share of cells the seams changed."""
    import tempfile

    import tifffile

    from pipeline import agreement, synthetic
    from pipeline.model import slide_predict
    from pipeline.model.predict import Mesmer
    from pipeline.model.starter import starter_model_dir
    from pipeline.slide import open_slide

    X, _ = synthetic.make_tissue((size, size), seed=3)
    X = np.round(np.clip(X / np.percentile(X, 99.9), 0, 1) * 60000).astype(np.uint16)
    untiled = Mesmer(starter_model_dir()).predict(X.astype(np.float32))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "image.ome.tif"
        tifffile.imwrite(path, np.moveaxis(X, -1, 0), ome=True, tile=(256, 256), metadata={"axes": "CYX"})
        result = slide_predict.predict_slide(path, Path(tmp) / "labels.zarr", model=starter_model_dir(),
                                             channels=[0, 1], block=block)
        with open_slide(Path(tmp) / "labels.zarr") as out:
            tiled = out.read(0, size, 0, size)
    share = agreement.changed_share(untiled, tiled)
    _emit({"case": f"seams@{size}", "block": block, "blocks": result.blocks, "cells": share["cells"],
           "changed_share": round(share["changed_share"], 5), "not_identical_share": round(share["not_identical_share"], 4),
           "changed_means": f"no cell with IoU >= {share['min_iou']} in the tiled labels (both layers)",
           "contradictions": result.contradictions, "n": 1, "load_avg": _load()})


def bench_postprocess(size: int, reps: int) -> None:
    from pipeline import synthetic
    from pipeline.model import postprocess, transforms

    _, y = synthetic.make_tissue((size, size), seed=1)
    # Perfect network maps, lightly noised so the watershed sees realistic, non-flat inputs.
    rng = np.random.default_rng(0)
    outputs = [t + rng.normal(0, 0.02, t.shape).astype(np.float32) for t in transforms.make_targets(y)]
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        labels = postprocess.postprocess_mesmer(outputs)
        times.append(time.perf_counter() - t0)
    _emit({
        "case": f"postprocess@{size}", "n": reps, "median_ms": round(float(np.median(times)) * 1000, 1),
        "p95_ms": round(float(np.percentile(times, 95)) * 1000, 1), "cells": int(labels[..., 0].max()),
        "true_cells": int(y[..., 0].max()),
    })


def bench_synthetic(size: int, reps: int) -> None:
    from pipeline import synthetic

    synthetic.make_tissue((256, 256), seed=0)
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        _, y = synthetic.make_tissue((size, size), seed=i)
        times.append(time.perf_counter() - t0)
    _emit({"case": f"synthetic@{size}", "n": reps, "median_ms": round(float(np.median(times)) * 1000, 1),
           "p95_ms": round(float(np.percentile(times, 95)) * 1000, 1), "cells": int(y[..., 0].max())})


def bench_train_step(backbone: str, label: str, reps: int, size: int = 256, batch: int = 8) -> None:
    import keras

    from pipeline import synthetic
    from pipeline.model import losses, panoptic, transforms

    X, y = synthetic.make_dataset(batch, (size, size), seed=2)
    targets = transforms.make_targets(y)
    model = panoptic.build_panoptic(2, backbone)
    fns, weights = losses.mesmer_losses()
    model.compile(optimizer=keras.optimizers.Adam(1e-4, clipnorm=1e-3), loss=fns, loss_weights=weights)
    model.train_on_batch(X, targets)  # compile the step
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        model.train_on_batch(X, targets)
        times.append(time.perf_counter() - t0)
    _emit({
        "case": f"train_step@{size}x{batch}:{label}", "backbone": backbone, "n": reps,
        "median_ms": round(float(np.median(times)) * 1000, 1),
        "p95_ms": round(float(np.percentile(times, 95)) * 1000, 1),
    })


def load_vectra():
    """Vectra image0 as X (400, 400, 2) [nuclear, membrane] and whole-cell labels (400, 400), or None."""
    from pipeline import io

    folder = DATA / "vectra"
    if not (folder / "image0.tif").exists():
        return None
    # The file stores membrane first; Mesmer wants nuclear first (read as in tests/.../test_accuracy.py).
    X, _ = io.read_image(folder / "image0.tif", channels=[1, 0])
    y = io.read_labels(folder / "image0_wholecell.tif")[..., 0]
    return X.astype(np.float32, copy=False), y


def _score(model, X, truth):
    from pipeline import baseline, metrics
    from pipeline.model.predict import Mesmer

    pred = Mesmer(model).predict(X)
    base = baseline.nuclear_expansion(X)
    return (metrics.evaluate(truth, pred, layer=0)["pooled"]["f1"],
            metrics.evaluate(truth, base, layer=0)["pooled"]["f1"])


def bench_starter_accuracy(quick: bool) -> None:
    from pipeline.model import heldout, saving
    from pipeline.model.starter import starter_model_dir

    folder = starter_model_dir()
    if folder is None:
        _log("no starter model in pipeline/model/starter: skipping accuracy")
        return
    version = saving.load_model_version(folder)
    for name in heldout.SETS:
        row = heldout.evaluate(version, name, DATA, quick=quick)
        if row is None:
            _log(f"shared data for {name} not found: skipping accuracy:{name}")
            continue
        _emit({**row, "model": "starter", "training_s": version.config.get("training", {}).get("seconds")})


def bench_accuracy(quick: bool) -> None:
    from pipeline import synthetic
    from pipeline.model import train

    # Vectra gets the longer run: one 200x400 training half of real tissue is harder than synthetic.
    vectra_epochs, vectra_steps = (4, 20) if quick else (60, 20)  # as tests/.../test_accuracy.py
    epochs, steps = (4, 20) if quick else (15, 20)  # the synthetic budget of tests/.../test_accuracy.py
    common = dict(backbone="mobilenetv2", batch_size=4, crop_size=128, lr=1e-3, verbose=0, bn_batches=8)

    vectra = load_vectra()
    if vectra is None:
        _log("shared/data/vectra not found: skipping accuracy:vectra")
    else:
        X, y = vectra
        # Train on the top half, score on the bottom half; no nuclear labels exist, so the nuclear
        # heads train with weight 0 (train() sees an empty nuclear layer and switches them off).
        Y = np.stack([y, np.zeros_like(y)], axis=-1)
        t0 = time.perf_counter()
        result = train.train(X[None, :200], Y[None, :200], val_split=0, epochs=vectra_epochs,
                             steps_per_epoch=vectra_steps, **common)
        seconds = time.perf_counter() - t0
        f1, base = _score(result.version, X[200:], y[200:])
        _emit({"case": "accuracy:vectra", "f1": round(f1, 4), "baseline_f1": round(base, 4),
               "train_s": round(seconds, 1), "steps": vectra_epochs * vectra_steps, "batch_size": 4, "crop": 128,
               "held_out": "bottom half of image0 (200x400)"})

    Xs, ys = synthetic.make_dataset(16, (256, 256), seed=1)
    Xt, yt = synthetic.make_dataset(4, (256, 256), seed=99)
    t0 = time.perf_counter()
    result = train.train(Xs, ys, val=(Xt[:1], yt[:1]), epochs=epochs, steps_per_epoch=steps, **common)
    seconds = time.perf_counter() - t0
    f1, base = _score(result.version, Xt[1:], yt[1:])
    _emit({"case": "accuracy:synthetic", "f1": round(f1, 4), "baseline_f1": round(base, 4),
           "train_s": round(seconds, 1), "steps": epochs * steps, "batch_size": 4, "crop": 128,
           "held_out": "3 synthetic 256x256 tissues (seed 99), never seen in training or validation"})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small images and few repetitions")
    parser.add_argument("--case", action="append", default=None,
                        help="run only cases whose name starts with this (repeatable); 'accuracy' is opt-in")
    args = parser.parse_args(argv)

    size = 512 if args.quick else 2048
    reps = 1  # a 2048² prediction takes minutes on 2 cores; one timed run after a warm-up tile
    cases = {
        f"predict@{size}:resnet50": lambda: bench_predict(size, "resnet50", "resnet50", reps),
        f"predict@{size}:light": lambda: bench_predict(size, "mobilenetv2", "light", reps),
        f"postprocess@{256 if args.quick else 1024}": lambda: bench_postprocess(256 if args.quick else 1024,
                                                                               3 if args.quick else 7),
        f"synthetic@{size}": lambda: bench_synthetic(size, 3),
        "train_step@256x8:resnet50": lambda: bench_train_step("resnet50", "resnet50", 2 if args.quick else 3),
        "train_step@256x8:light": lambda: bench_train_step("mobilenetv2", "light", 2 if args.quick else 3),
        f"predict@{size}:light:auto": lambda: bench_predict(size, "mobilenetv2", "light:auto", reps, "auto"),
        f"predict@{size}:light:keras": lambda: bench_predict(size, "mobilenetv2", "light:keras", reps, None, "keras"),
        f"runtime@{size}": lambda: bench_runtimes(size),
        # --quick: a 4096² slide instead of 10k² (the case name says which ran)
        ("predict@4k" if args.quick else "predict@10k"): lambda: bench_predict_slide(4096 if args.quick else 10240,
                                                                                  "4k" if args.quick else "10k"),
        "seams@2048": lambda: bench_seams(2048, 1152),
        "network@256x8": lambda: bench_network(5 if args.quick else 15),
        "accuracy": lambda: bench_starter_accuracy(args.quick),
        "scratch_accuracy": lambda: bench_accuracy(args.quick),
    }
    # a size named explicitly runs at that size even with --quick (one 2048² prediction is seconds, not minutes)
    import re

    for wanted_name in args.case or []:
        match = re.fullmatch(r"(predict|runtime)@(\d+)(:light(:keras)?)?", wanted_name)
        if match and wanted_name not in cases:
            n = int(match.group(2))
            if match.group(1) == "runtime":
                cases[wanted_name] = lambda n=n: bench_runtimes(n)
            elif match.group(3):
                runtime = "keras" if match.group(4) else None
                cases[wanted_name] = lambda n=n, r=runtime, name=wanted_name: bench_predict(
                    n, "mobilenetv2", name.split(":", 1)[1], reps, None, r)
    opt_in = ("accuracy", "scratch_accuracy")
    wanted = args.case or [name for name in cases if name not in opt_in]
    ran = 0
    for name, fn in cases.items():
        # An exact case name runs that case only; any other string runs the cases it begins.
        if any(name == w or (w not in cases and name.startswith(w) and name not in opt_in) for w in wanted):
            _log(f"running {name}")
            fn()
            ran += 1
    if not ran:
        parser.error(f"no case matches {wanted}; cases: {', '.join(cases)}")
    return 0


DEVICE = _device()

if __name__ == "__main__":
    sys.exit(main())
