"""Benchmarks of the human-in-the-loop cycle; prints one JSON object per line (DESIGN.md's format).

  python bench/loop.py [--quick] [--case crop_stitch|loop|vectra|assist|all] [--cycles N]
  python bench/loop.py --case real [--image PATH --truth PATH --nuclear I --membrane J] [--minutes M]

- ``crop_stitch@SIZE``: cut a SIZE² label image into 270-px crops (overlap 40) and stitch them back by maximum
  overlap (``median_ms`` over the repeats; ``same_partition`` checks the result).
- ``scratch``, ``cycle1``, ``cycle2``, ``cycle3``: the loop on synthetic tissue with the light model on CPU. Each
  case is one batch of new images: prelabelled with the project's current model (``scratch``: no prelabel at all,
  the annotator starts from empty crops; later cases: the current model, which is the shipped starter until a
  version is promoted), corrected by the simulated annotator through the HTTP API on both layers (whole-cell and
  nuclear, so no head trains on uncorrected prelabels), approved, then stitched, added to the dataset, used to
  fine-tune the current model (``trained_from``: the shipped starter, or the last promoted version; no case here
  trains from scratch) and promoted by `cycle`'s rule (strictly better on at least 100 test cells).
  ``ops_per_100_cells``: operations per 100 distinct true objects of the images (cells and nuclei, each counted
  once however many overlapping crops show it); ``ops_per_100_crop_cells``: the same per crop (overlaps counted
  again). ``f1`` is the whole-cell F1 of the model that prelabelled the batch, scored at the end on the final frozen
  test split (so the cases compare on the same tiles); null for ``scratch``.
- ``vectra``: real data, trained from scratch: the top half of ``../shared/data/vectra/image0.tif`` is prelabelled
  with the baseline, corrected (whole-cell layer only: the sample has no nuclear truth, so the nuclear layer stays
  the baseline's uncorrected nuclei, ``nuclear_layer`` says so) towards ``image0_wholecell.tif``, stitched and
  used to train a light model from nothing (not from the starter, which trained on this very half); ``f1`` is
  that model's whole-cell F1 on the held-back bottom half (``baseline_f1``: the nuclear-expansion baseline on the
  same half). ``image3.tif`` (unlabelled) is then prelabelled with the new model.
- ``cycle1`` … ``cycle3`` and ``cycle1+assist`` … (``--case assist``): each cycle's new synthetic images are cut
  into two batches prelabelled by the current model (the shipped starter model at cycle 1, so the crops have its
  maps); the simulated annotator corrects one with the hand tools and the other with the assist tools first
  (``simulate.annotate_assisted``: click -> cell, box -> re-segment where its preview reaches the target IoU), on
  the same crops. ``painted_px`` counts hand-painted pixels; ``model_px`` those the assist tools drew; then the
  hand-corrected batch trains the next cycle's model as in ``loop``.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _fresh_instance(case: str, project_name: str, channel_names: list[str]):
    """A migrated SQLite instance in a temporary folder with a reviewer and an empty project:
    (config, session, storage, project). The secret key is random and long enough for the hardened config."""
    from backend.store import db
    from backend.cli.admin_commands import create_user
    from backend.config import Config
    from backend.store.projects import create_project
    from backend.store.storage import storage_from_url

    work = Path(tempfile.mkdtemp(prefix=f"cellloop-bench-{case}-"))
    config = Config.from_env(instance_dir=work, database_url=f"sqlite:///{work / 'db.sqlite'}",
                             storage_url=str(work / "storage"), secret_key=secrets.token_urlsafe(32))
    db.upgrade(config.database_url)
    session = db.make_sessionmaker(db.make_engine(config.database_url))()
    storage = storage_from_url(config.storage_url)
    create_user(session, "rev", "bench-password-1", "reviewer")
    project = create_project(session, name=project_name, channel_names=channel_names)
    return config, session, storage, project


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def crop_stitch_case(size: int, repeats: int) -> dict:
    from pipeline.crop import crop_boxes
    from pipeline.stitch import cut_crops, same_partition, stitch_crops
    from pipeline.synthetic import make_tissue

    _, tile = make_tissue((512, 512), seed=5)
    reps = -(-size // 512)
    # distinct ids per copy, so the stitched partition can be checked against the whole image
    labels = np.concatenate([np.concatenate([tile[..., 0] + (i * reps + j) * 10_000 * (tile[..., 0] > 0)
                                             for j in range(reps)], axis=1) for i in range(reps)], axis=0)
    labels = labels[:size, :size].astype(np.int32)
    times, crop_times = [], []
    ok = True
    for _ in range(repeats):
        t0 = time.perf_counter()
        boxes = crop_boxes(labels.shape, 270, 40)
        crops = cut_crops(labels, boxes)
        t1 = time.perf_counter()
        result = stitch_crops(labels.shape, crops)
        t2 = time.perf_counter()
        times.append((t2 - t0) * 1000)
        crop_times.append((t1 - t0) * 1000)
        ok = ok and same_partition(result.labels[..., 0], labels)
    return {"bench": "loop", "case": f"crop_stitch@{size}", "median_ms": round(statistics.median(times), 1),
            "crop_median_ms": round(statistics.median(crop_times), 1), "n": repeats, "crops": len(boxes),
            "same_partition": bool(ok)}


def loop_cases(quick: bool) -> list[dict]:
    from backend import loop
    from backend.loop import registry
    from backend.web.app import create_app
    from backend.web.localserver import serving
    from backend.store.projects import add_image
    from pipeline import simulate
    from pipeline.synthetic import make_tissue

    shape = (256, 256) if quick else (384, 384)
    per_batch = 2 if quick else 3
    train_options = dict(epochs=2 if quick else 4, steps_per_epoch=10 if quick else 25, batch_size=4,
                         crop_size=128, seed=0)
    config, session, storage, project = _fresh_instance("loop", "bench", ["DAPI", "CD45"])
    truths, records, datasets = {}, [], []
    cases = ["scratch", "cycle1", "cycle2", "cycle3"]
    with serving(create_app(config)) as url:
        for n, case in enumerate(cases):
            images = []
            for i in range(per_batch):
                name = f"{case}-{i}"
                X, y = make_tissue(shape, seed=1000 + 10 * n + i)
                truths[name] = y
                images.append(add_image(session, storage, project, X, name=name, pixel_size_um=0.5,
                                        tissue="synthetic", platform="simulated"))
            session.commit()
            batch, _ = loop.create_batch(session, storage, project, case, images=images, size=160, overlap=32)
            prelabel = "none" if case == "scratch" else "current"
            t0 = time.perf_counter()
            chosen = loop.prelabel_batch(session, storage, config, batch, prelabel)["model"]
            prelabel_s = time.perf_counter() - t0
            out = io.StringIO()
            loop.publish_batch(session, config, batch, out, base_url=url)
            rows = list(csv.DictReader(io.StringIO(out.getvalue())))
            t0 = time.perf_counter()
            effort = simulate.annotate_batch(url, rows, truths, layers=(0, 1))
            annotate_s = time.perf_counter() - t0
            simulate.Reviewer(url, "rev", "bench-password-1").approve_all()
            session.expire_all()
            t0 = time.perf_counter()
            cycle = loop.run_cycle(session, storage, config, batch, tile=128, log=lambda *_: None, include_unreviewed=True,
                                   **train_options)
            datasets.append(cycle["dataset"])
            records.append({"bench": "loop", "case": case, "prelabel": chosen, "cells": effort.cells,
                            "ops": effort.n_ops, "ops_per_100_cells": effort.as_dict()["ops_per_100_cells"],
                            "crop_cells": effort.crop_cells,
                            "ops_per_100_crop_cells": effort.as_dict()["ops_per_100_crop_cells"],
                            "layers_corrected": "whole-cell and nuclear",
                            "trained_from": cycle["current"] if cycle["current"] != registry.BASELINE else "scratch",
                            "test_cells": cycle.get("test_cells"), "promotion": cycle.get("reason"),
                            "by_tool": dict(effort.ops), "painted_px": effort.painted_px,
                            "annotate_s": round(annotate_s, 1), "prelabel_s": round(prelabel_s, 1),
                            "cycle_s": round(time.perf_counter() - t0, 1), "trained": cycle["candidate"],
                            "promoted": cycle["promoted"], "device": "cpu"})
    final = datasets[-1]
    for record in records:
        choice = (registry.ModelChoice(registry.NO_MODEL) if record["prelabel"] == "none" else
                  registry.resolve(session, storage, project, record["prelabel"]))
        if choice.kind == registry.NO_MODEL:
            record["f1"] = None
        else:
            result = loop.evaluate_choice(session, storage, config, project, choice, final)
            record["f1"] = result["f1"]
            record["test_tiles"] = result["n_images"]
    baseline = loop.evaluate_choice(session, storage, config, project, registry.ModelChoice(registry.BASELINE), final)
    for record in records:
        record["baseline_f1"] = baseline["f1"]
    return records


def vectra_case(quick: bool) -> dict:
    import tifffile

    from backend import loop
    from backend.loop import registry
    from backend.web.app import create_app
    from backend.web.localserver import serving
    from backend.store.projects import add_image
    from pipeline import metrics, simulate
    from pipeline.baseline import nuclear_expansion

    data = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "vectra"
    # the sample is (2, H, W) [membrane, nuclear]; the project keeps Mesmer's order [nuclear, membrane]
    image0 = np.moveaxis(tifffile.imread(data / "image0.tif"), 0, -1)[..., ::-1].astype(np.float32)
    image3 = np.moveaxis(tifffile.imread(data / "image3.tif"), 0, -1)[..., ::-1].astype(np.float32)
    truth = tifffile.imread(data / "image0_wholecell.tif").astype(np.int32)
    half = image0.shape[0] // 2
    config, session, storage, project = _fresh_instance("vectra", "vectra", ["nuclear", "membrane"])
    top = add_image(session, storage, project, image0[:half], name="image0-top", tissue="unknown", platform="vectra")
    session.commit()
    batch, _ = loop.create_batch(session, storage, project, "b1", images=[top], size=128, overlap=32)
    loop.prelabel_batch(session, storage, config, batch, "baseline")
    out = io.StringIO()
    with serving(create_app(config)) as url:
        loop.publish_batch(session, config, batch, out, base_url=url)
        rows = list(csv.DictReader(io.StringIO(out.getvalue())))
        effort = simulate.annotate_batch(url, rows, {"image0-top": truth[:half, :, None]})
        simulate.Reviewer(url, "rev", "bench-password-1").approve_all()
    session.expire_all()
    t0 = time.perf_counter()
    # the steps of `cycle`, training from nothing (start "baseline"): the starter trained on this very half
    loop.stitch_batch(session, storage, batch)
    built = loop.build_dataset(session, storage, project, Path(config.instance_dir) / "vectra.npz", tile=128,
                               include_unreviewed=True)
    version, _ = loop.train_version(session, storage, config, project, built["path"], start="baseline",
                                    epochs=4 if quick else 10, steps_per_epoch=20 if quick else 40, batch_size=4,
                                    crop_size=128, seed=0)
    cycle = {"candidate": version.name, "splits": built["splits"]}
    train_s = time.perf_counter() - t0
    folder = registry.local_folder(storage, version, Path(config.instance_dir) / "model-cache")
    pred = loop.load_mesmer(str(folder)).predict(image0[half:], image_mpp=None)
    f1 = metrics.evaluate(truth[half:], pred[..., 0])["pooled"]["f1"]
    base = metrics.evaluate(truth[half:], nuclear_expansion(image0[half:], nuclear_channel=0)[..., 0])["pooled"]["f1"]
    unlabelled = add_image(session, storage, project, image3, name="image3", platform="vectra")
    session.commit()
    batch2, _ = loop.create_batch(session, storage, project, "b2", images=[unlabelled], size=270, overlap=40)
    prelabel = loop.prelabel_batch(session, storage, config, batch2, cycle["candidate"])
    return {"bench": "loop", "case": "vectra", "f1": round(float(f1), 4), "baseline_f1": round(float(base), 4),
            "held_back": f"image0 rows {half}-{image0.shape[0]}", "ops_per_100_cells":
            effort.as_dict()["ops_per_100_cells"], "cells": effort.cells, "crop_cells": effort.crop_cells,
            "ops_per_100_crop_cells": effort.as_dict()["ops_per_100_crop_cells"], "trained_from": "scratch",
            "nuclear_layer": "uncorrected baseline prelabel (no nuclear truth in the sample)",
            "train_tiles": cycle["splits"]["train"],
            "cycle_s": round(train_s, 1), "image3_crops_prelabelled": prelabel["crops"], "device": "cpu"}


def assist_cases(quick: bool, cycles: int = 3) -> list[dict]:
    from backend import loop
    from backend.store.projects import add_image
    from backend.web.app import create_app
    from backend.web.localserver import serving
    from pipeline import simulate
    from pipeline.synthetic import make_tissue

    shape = (256, 256) if quick else (384, 384)
    per_batch = 2 if quick else 3
    train_options = dict(epochs=2 if quick else 4, steps_per_epoch=10 if quick else 25, batch_size=4,
                         crop_size=128, seed=0)
    config, session, storage, project = _fresh_instance("assist", "bench", ["DAPI", "CD45"])
    truths, records = {}, []
    with serving(create_app(config)) as url:
        for n in range(1, cycles + 1):
            images = []
            for i in range(per_batch):
                name = f"cycle{n}-{i}"
                X, y = make_tissue(shape, seed=2000 + 10 * n + i)
                truths[name] = y
                images.append(add_image(session, storage, project, X, name=name, pixel_size_um=0.5,
                                        tissue="synthetic", platform="simulated"))
            session.commit()
            efforts = {}
            for case in (f"cycle{n}", f"cycle{n}+assist"):
                batch, _ = loop.create_batch(session, storage, project, case, images=images, size=160, overlap=32)
                chosen = loop.prelabel_batch(session, storage, config, batch, "current")["model"]
                out = io.StringIO()
                loop.publish_batch(session, config, batch, out, base_url=url)
                rows = list(csv.DictReader(io.StringIO(out.getvalue())))
                t0 = time.perf_counter()
                annotate = simulate.annotate_batch_assisted if case.endswith("+assist") else simulate.annotate_batch
                effort = annotate(url, rows, truths)
                efforts[case] = (batch, effort, chosen, time.perf_counter() - t0)
            simulate.Reviewer(url, "rev", "bench-password-1").approve_all()
            session.expire_all()
            plain = efforts[f"cycle{n}"][1]
            for case, (batch, effort, chosen, seconds) in efforts.items():
                record = {"bench": "loop", "case": case, "prelabel": chosen, "cells": effort.cells,
                          "ops": effort.n_ops, "ops_per_100_cells": effort.as_dict()["ops_per_100_cells"],
                          "by_tool": dict(effort.ops), "painted_px": effort.painted_px,
                          "annotate_s": round(seconds, 1), "device": "cpu"}
                if case.endswith("+assist"):
                    record.update(model_px=effort.model_px, previews=effort.previews,
                                  ops_ratio=round(plain.n_ops / max(effort.n_ops, 1), 2),
                                  painted_ratio=round(plain.painted_px / max(effort.painted_px, 1), 1))
                records.append(record)
                emit(record)
            if n < cycles:  # the hand-corrected batch trains the next cycle's model
                loop.run_cycle(session, storage, config, efforts[f"cycle{n}"][0], tile=128, log=lambda *_: None,
                               **train_options)
    return records


def _score_version(session, storage, config, name, X, truth) -> float:
    """Whole-cell F1 of a registered version on (X, truth), at the scale prelabel would use for an image of unknown
    pixel size (estimated for the starter, the model's own grid otherwise)."""
    from backend import loop
    from backend.loop import registry
    from pipeline import metrics

    version = registry.get_version(session, name)
    folder = registry.local_folder(storage, version, Path(config.instance_dir) / "model-cache")
    mpp = "auto" if registry.is_starter(version) else None
    pred = loop.load_mesmer(str(folder)).predict(X, image_mpp=mpp)
    return round(float(metrics.evaluate(truth, pred[..., 0])["pooled"]["f1"]), 4)


# A 400² image is small for the loop's defaults: 128-px dataset tiles in 128-px split blocks (the default 512-px
# block would put each strip wholly in one split), tiles covered in part kept with the rest unknown, and promotion
# allowed on the loop's own test split from 20 cells (the CLI's default is 100; the JSON says which was used).
REAL_BLOCK = 128
REAL_PARTIAL = 0.5
REAL_MIN_TEST_CELLS = 20


def real_cases(image_path, truth_path, nuclear: int, membrane: int, minutes: float) -> None:
    """The loop on a densely labelled real image (``--case real``): its top three quarters cut into three strips
    (one batch each, 128-px crops), the bottom quarter frozen as the test the bench scores on. ``real:scratch``
    annotates the same strips with no prelabel; ``real:cycleN`` prelabels strip N with the current model, corrects
    it with the simulated annotator, and runs `cycle` with a ``minutes`` budget (promotion by the loop's rule). Each
    case prints as soon as it is measured."""
    from backend import loop
    from backend.store.projects import add_image
    from backend.web.app import create_app
    from backend.web.localserver import serving
    from pipeline import io as pio
    from pipeline import simulate

    X, _ = pio.read_image(image_path, channels=[nuclear, membrane])
    X = X.astype(np.float32)
    truth = pio.read_labels(truth_path)[..., 0].astype(np.int32)
    test_from = X.shape[0] * 3 // 4
    cols = np.linspace(0, X.shape[1], 4).astype(int)
    strips = [(X[:test_from, a:b], truth[:test_from, a:b]) for a, b in zip(cols[:-1], cols[1:])]
    X_test, y_test = X[test_from:], truth[test_from:]

    def annotate(config, session, storage, project, n, prelabel):
        image = add_image(session, storage, project, strips[n][0], name=f"strip{n}", platform="real")
        session.commit()
        batch, _ = loop.create_batch(session, storage, project, f"b{n}", images=[image], size=128, overlap=32)
        chosen = loop.prelabel_batch(session, storage, config, batch, prelabel)["model"]
        out = io.StringIO()
        with serving(create_app(config)) as url:
            loop.publish_batch(session, config, batch, out, base_url=url)
            rows = list(csv.DictReader(io.StringIO(out.getvalue())))
            effort = simulate.annotate_batch(url, rows, {f"strip{n}": strips[n][1][..., None]})
            simulate.Reviewer(url, "rev", "bench-password-1").approve_all()
        session.expire_all()
        return batch, chosen, effort

    config, session, storage, project = _fresh_instance("real-scratch", "scratch", ["nuclear", "membrane"])
    cells = ops = 0
    for n in range(3):
        _, _, effort = annotate(config, session, storage, project, n, "none")
        cells, ops = cells + effort.cells, ops + effort.n_ops
    emit({"bench": "loop", "case": "real:scratch", "prelabel": "none", "cells": cells, "ops": ops,
                    "ops_per_100_cells": round(100.0 * ops / max(cells, 1), 1), "f1": None, "device": "cpu"})

    config, session, storage, project = _fresh_instance("real", "real", ["nuclear", "membrane"])
    for n in range(3):
        batch, chosen, effort = annotate(config, session, storage, project, n, "current")
        t0 = time.perf_counter()
        cycle = loop.run_cycle(session, storage, config, batch, tile=128, block=REAL_BLOCK, partial=REAL_PARTIAL,
                               min_test_cells=REAL_MIN_TEST_CELLS, include_unreviewed=True, log=lambda *_: None,
                               minutes=minutes,
                               batch_size=4, crop_size=128, seed=0)
        cycle_s = time.perf_counter() - t0
        emit({"bench": "loop", "case": f"real:cycle{n + 1}", "prelabel": chosen, "cells": effort.cells,
                        "ops": effort.n_ops, "ops_per_100_cells": effort.as_dict()["ops_per_100_cells"],
                        "f1": _score_version(session, storage, config, chosen, X_test, y_test),
                        "trained": cycle["candidate"], "promoted": cycle["promoted"],
                        "trained_f1": _score_version(session, storage, config, cycle["candidate"], X_test, y_test),
                        "cycle_s": round(cycle_s, 1), "minutes": minutes, "splits": cycle["splits"],
                        "loop_test_cells": cycle.get("test_cells"), "min_test_cells": REAL_MIN_TEST_CELLS,
                        "reason": cycle.get("reason"),
                        "test": f"{Path(image_path).name} rows {test_from}-{X.shape[0]}",
                        "qc": "no expert QC in the bench: cycles train on the stitched crops (include_unreviewed)",
                        "device": "cpu"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small images, short training, one repeat")
    parser.add_argument("--case", choices=("all", "crop_stitch", "loop", "vectra", "assist", "real"), default="all")
    parser.add_argument("--cycles", type=int, default=3, help="cycles of the assist case")
    data = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "vectra"
    parser.add_argument("--image", default=str(data / "image0.tif"), help="--case real: a densely labelled image")
    parser.add_argument("--truth", default=str(data / "image0_wholecell.tif"), help="--case real: its whole-cell labels")
    parser.add_argument("--nuclear", type=int, default=1, help="--case real: the nuclear channel's index")
    parser.add_argument("--membrane", type=int, default=0, help="--case real: the membrane channel's index")
    parser.add_argument("--minutes", type=float, default=10.0, help="--case real: training budget per cycle")
    args = parser.parse_args()
    if args.case in ("all", "crop_stitch"):
        emit(crop_stitch_case(4096, 1 if args.quick else 3))
    if args.case in ("all", "loop"):
        for record in loop_cases(args.quick):
            emit(record)
    if args.case in ("all", "vectra"):
        emit(vectra_case(args.quick))
    if args.case in ("all", "assist"):
        assist_cases(args.quick, args.cycles)  # prints each case as it is measured
    if args.case == "real":  # not part of "all": three budgeted cycles take half an hour by default
        real_cases(args.image, args.truth, args.nuclear, args.membrane, args.minutes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
