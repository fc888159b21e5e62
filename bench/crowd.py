"""Crowd quality: consensus of replicas, difficulty triage and gold scoring, measured on synthetic tissue (truth known).

    python bench/crowd.py            # 12 crops of 270 px (consensus), 96 from 24 images (triage)
    python bench/crowd.py --quick    # 4 crops of 128 px (consensus), 64 from 16 images (triage)
    python bench/crowd.py --case gold

One JSON line per case:
- ``consensus@3``: each crop (baseline prelabel) published with 3 replicas and corrected through the real HTTP API
  by three middling simulated workers (``pipeline.simulate.MIDDLING``: missed cells, merged neighbours, sloppy
  borders, skipped fixes); ``f1`` is the pooled whole-cell F1 against the truth of the crops `cellloop consensus`
  merged, ``single_median_f1`` the median of the three workers' pooled F1 on the same crops.
- ``triage``: crops of domain-randomised synthetic tissue prelabelled with the shipped starter model through
  `cellloop prelabel`'s code; ``spearman`` between each crop's difficulty and 1 - F1 of its prelabel against the
  truth; ``errors_in_expert_fifth``: the share of all prelabel errors (missed + false cells) in the hardest fifth
  of the crops by difficulty; ``random_fifth``: the same share in a random fifth (mean of 2000 draws).
  Crops of one image share its look, so the ranking is mostly between images: ``spearman_90`` is the 5th-95th
  percentile of ``spearman`` over 1000 resamplings of the images (with replacement). The six and eight images this
  case used before gave intervals of -0.34..0.43 and -0.56..0.34: too few images to rank a score by.
- ``gold``: seconds to score one submitted 270-px gold task against its truth (both layers; the storage reads
  included), median and p95 of ``n`` runs.
Every case starts from nothing: a fresh SQLite instance in a temporary folder.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEVICE = f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def _emit(record: dict) -> None:
    print(json.dumps({"bench": "crowd", **record, "device": DEVICE}), flush=True)


def _instance(folder: Path):
    from backend.config import Config
    from backend.store import db as dbmod
    from backend.store.storage import storage_from_url

    config = Config.from_env(instance_dir=folder, database_url=f"sqlite:///{folder / 'db.sqlite'}",
                             storage_url=str(folder / "storage"), secret_key="bench-secret-key-" * 4)
    dbmod.upgrade(config.database_url)
    session = dbmod.make_sessionmaker(dbmod.make_engine(config.database_url))()
    return config, session, storage_from_url(config.storage_url)


def _project_with_images(session, storage, images: list[np.ndarray]):
    from backend.store.projects import add_image, create_project

    project = create_project(session, name="bench", channel_names=["DAPI", "CD45"])
    for i, X in enumerate(images):
        add_image(session, storage, project, X, name=f"im{i}", pixel_size_um=0.5)
    session.commit()
    return project


def case_consensus(quick: bool) -> dict:
    from sqlalchemy import select

    from backend import loop
    from backend.loop import crowd
    from backend.store.models import Task
    from backend.tasks import TaskService
    from backend.web.app import create_app
    from backend.web.localserver import serving
    from pipeline import metrics, simulate
    from pipeline.synthetic import make_tissue

    size, grid = (128, 2) if quick else (270, 3)
    n_images = 1 if quick else 12 // (grid * grid) + 1
    with tempfile.TemporaryDirectory() as tmp:
        config, session, storage = _instance(Path(tmp))
        images, truths = [], {}
        for i in range(n_images):
            X, y = make_tissue((size * grid, size * grid), seed=500 + i)
            images.append(X)
            truths[f"im{i}"] = y
        project = _project_with_images(session, storage, images)
        batch, _ = loop.create_batch(session, storage, project, "b", all_new=True, size=size, overlap=0)
        loop.prelabel_batch(session, storage, config, batch, "baseline")
        out = io.StringIO()
        crowd.publish_crowd(session, storage, config, batch, out, "http://x", replicas=3)
        rows = list(csv.DictReader(io.StringIO(out.getvalue())))
        by_crop: dict = {}
        for row in rows:
            by_crop.setdefault((row["image"], row["y0"], row["x0"]), []).append(row)
        crops = sorted(by_crop)[:4 if quick else 12]
        started = time.perf_counter()
        with serving(create_app(config)) as url:
            for key in crops:
                for k, row in enumerate(by_crop[key]):
                    y0, x0, y1, x1 = (int(row[c]) for c in ("y0", "x0", "y1", "x1"))
                    simulate.annotate_with_skill(url, row["url"].rsplit("/task/", 1)[1],
                                                 truths[row["image"]][y0:y1, x0:x1], simulate.MIDDLING,
                                                 seed=int(row["task_id"]), worker=f"w{k}")
        annotate_s = time.perf_counter() - started
        summary = crowd.run_consensus(session, storage, batch, threshold=0.0)
        svc = TaskService(session, storage)
        merged_true, merged_pred, singles = [], [], {}
        for t in session.scalars(select(Task).where(Task.crowd_role == "consensus").order_by(Task.id)):
            truth = truths[t.source_image.name][t.y0:t.y1, t.x0:t.x1, 0]
            merged_true.append(truth)
            merged_pred.append(svc.labels(t)[..., 0])
            for r in session.scalars(select(Task).where(Task.crop_group == t.crop_group, Task.crowd_role == "replica")):
                singles.setdefault(r.assignee_ref, ([], []))
                singles[r.assignee_ref][0].append(truth)
                singles[r.assignee_ref][1].append(svc.labels(r)[..., 0])
        f1 = metrics.evaluate(merged_true, merged_pred)["pooled"]["f1"]
        single = sorted(metrics.evaluate(a, b)["pooled"]["f1"] for a, b in singles.values())
        session.close()
    return {"case": "consensus@3", "f1": round(f1, 4), "single_median_f1": round(float(np.median(single)), 4),
            "single_f1": [round(s, 4) for s in single], "crops": len(merged_true), "crop_px": size,
            "cells": int(sum(len(np.unique(t)) - 1 for t in merged_true)),
            "mean_agreement": round(float(np.mean(summary["agreements"])), 4), "annotate_s": round(annotate_s, 1),
            "starts_from": "baseline prelabel; three MIDDLING simulated workers through the HTTP API"}


def case_triage(quick: bool) -> dict:
    from scipy.stats import spearmanr
    from sqlalchemy import select

    from backend import loop
    from backend.store.models import Task
    from backend.tasks import TaskService
    from pipeline import metrics
    from pipeline.synthetic import make_varied_tissue

    # many small images rather than a few big ones: crops of one image share its look, so the spread is between images
    size, grid, n_images = (128, 2, 16) if quick else (270, 2, 24)
    with tempfile.TemporaryDirectory() as tmp:
        config, session, storage = _instance(Path(tmp))
        images, truths = [], {}
        for i in range(n_images):
            # the model's own scale (cells ~10-40 px at 0.5 um/px) with every other knob drawn at random
            X, y, _ = make_varied_tissue((size * grid, size * grid), seed=900 + i, cell_diameter=(14.0, 36.0),
                                         value_range="float", channel_fault=None)
            images.append(X[..., :2].astype(np.float32))
            truths[f"im{i}"] = y
        project = _project_with_images(session, storage, images)
        batch, _ = loop.create_batch(session, storage, project, "b", all_new=True, size=size, overlap=0)
        started = time.perf_counter()
        result = loop.prelabel_batch(session, storage, config, batch, "current")
        prelabel_s = time.perf_counter() - started
        svc = TaskService(session, storage)
        difficulty, error, mistakes, image_of = [], [], [], []
        for t in session.scalars(select(Task).where(Task.batch_id == batch.id).order_by(Task.id)):
            truth = truths[t.source_image.name][t.y0:t.y1, t.x0:t.x1, 0]
            r = metrics.object_accuracy(truth, svc.labels_at(t, 0)[..., 0])
            difficulty.append(t.difficulty)
            image_of.append(t.source_image.name)
            error.append(1.0 - r["f1"])
            mistakes.append((r["n_true"] - r["correct"]) + (r["n_pred"] - r["correct"]))
        session.close()
    difficulty, mistakes = np.asarray(difficulty), np.asarray(mistakes, float)
    fifth = max(1, int(round(len(difficulty) / 5)))
    hardest = np.argsort(-difficulty, kind="stable")[:fifth]
    rng = np.random.default_rng(0)
    random_share = np.mean([mistakes[rng.choice(len(mistakes), fifth, replace=False)].sum() / mistakes.sum()
                            for _ in range(2000)])
    rho = spearmanr(difficulty, error).statistic
    error, image_of = np.asarray(error), np.asarray(image_of)
    names = np.unique(image_of)
    resampled = []
    for _ in range(1000):
        pick = np.concatenate([np.flatnonzero(image_of == n) for n in rng.choice(names, len(names))])
        resampled.append(spearmanr(difficulty[pick], error[pick]).statistic)
    low, high = np.nanpercentile(resampled, [5, 95])
    return {"case": "triage", "spearman": round(float(rho), 4), "spearman_90": [round(low, 3), round(high, 3)],
            "images": len(names),
            "errors_in_expert_fifth": round(float(mistakes[hardest].sum() / mistakes.sum()), 4),
            "random_fifth": round(float(random_share), 4), "crops": len(difficulty), "crop_px": size,
            "prelabel_errors": int(mistakes.sum()), "mean_prelabel_f1": round(1 - float(np.mean(error)), 4),
            "model": result["model"], "prelabel_s": round(prelabel_s, 1),
            "starts_from": "domain-randomised synthetic tissue, the shipped starter model"}


def case_gold(quick: bool) -> dict:
    from sqlalchemy import select

    from backend import loop
    from backend.loop import crowd
    from backend.store.models import Review, Task, TaskState
    from backend.tasks import TaskService
    from backend.tasks import crowd as task_crowd
    from backend.tasks.transitions import set_columns
    from pipeline import simulate
    from pipeline.synthetic import make_tissue

    with tempfile.TemporaryDirectory() as tmp:
        config, session, storage = _instance(Path(tmp))
        X, y = make_tissue((270, 540), seed=77)
        project = _project_with_images(session, storage, [X])
        batch, _ = loop.create_batch(session, storage, project, "g", all_new=True, size=270, overlap=0)
        loop.prelabel_batch(session, storage, config, batch, "baseline")
        svc = TaskService(session, storage)
        source, other = session.scalars(select(Task).where(Task.batch_id == batch.id).order_by(Task.id)).all()
        # the expert's truth: the true labels of the crop, approved
        from backend.tasks.transitions import Actor

        svc.replace_labels(source, Actor(ref="expert"), 0, y[0:270, 0:270].astype(np.int32))
        set_columns(session, source, state=TaskState.approved)
        from backend.cli.admin_commands import create_user

        expert = create_user(session, "expert", "bench-password", "reviewer")
        session.add(Review(task_id=source.id, reviewer_id=expert.id, verdict="approved", comment="", revision=1))
        session.commit()
        crowd.add_gold(session, storage, batch)
        gold = session.scalars(select(task_crowd.GoldTruth)).one()
        task = task_crowd.gold_task(svc, batch, gold)
        session.commit()
        # a middling worker's answer as the submitted labels
        answer = y[0:270, 0:270].copy()
        answer[..., 0] = simulate.corrupt_truth(answer[..., 0], simulate.MIDDLING, seed=1)
        svc.replace_labels(task, Actor(ref="worker:w"), 0, answer.astype(np.int32))
        session.commit()
        times = []
        for _ in range(5 if quick else 20):
            t0 = time.perf_counter()
            row = task_crowd.score_gold_submit(TaskService(session, storage), task, "worker:w")
            times.append(time.perf_counter() - t0)
            session.rollback()
        cells = int(len(np.unique(y[0:270, 0:270, 0])) - 1)
        session.close()
    return {"case": "gold", "median_s": round(float(np.median(times)), 4),
            "p95_s": round(float(np.percentile(times, 95)), 4), "n": len(times), "crop_px": 270, "cells": cells,
            "f1": round(row.f1, 4), "starts_from": "one 270-px synthetic crop, a middling worker's answer"}


CASES = {"consensus@3": case_consensus, "triage": case_triage, "gold": case_gold}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer and smaller crops")
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="run only these cases")
    args = parser.parse_args(argv)
    for name in args.case or list(CASES):
        _emit(CASES[name](args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
