"""The human-in-the-loop cycle, driven by an admin: batch → prelabel → publish → (annotate, review) → stitch →
dataset → train → evaluate → promote. Each step reads and records rows and arrays here and computes with
`pipeline/`; each is idempotent and resumable (re-running skips what is done, a crash loses at most the image in
progress). Expected failures raise `LoopError` (one line for the CLI)."""
from __future__ import annotations

import functools
import json
import secrets
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend import registry
from backend.arrays import decode_array, encode_array
from backend.models import Batch, DatasetTile, Image, Project, Revision, Task, TaskState, utcnow
from backend.projects import model_channel_indices, read_image
from backend.storage import Storage, WriteLog
from pipeline.cli import CLIError

EDIT_REVISIONS = ("edit", "undo", "redo", "replace")
UNTOUCHED = (TaskState.new, TaskState.prelabeled)


class LoopError(CLIError):
    """A loop step cannot run as asked (printed as one line by the CLI)."""


def _progress(total: int, desc: str, unit: str = "image"):
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, CI)
    return tqdm(total=total, desc=desc, unit=unit, disable=None, file=sys.stderr)


def get_batch(session: Session, project: Project | None, name: str) -> Batch:
    query = select(Batch).where(Batch.name == name)
    if project is not None:
        query = query.where(Batch.project_id == project.id)
    found = list(session.scalars(query))
    if not found:
        raise LoopError(f"no batch named {name!r}" + (f" in project {project.name!r}" if project else ""))
    if len(found) > 1:
        raise LoopError(f"several projects have a batch named {name!r}; name the project with --project")
    return found[0]


def batch_images(session: Session, batch: Batch) -> list[Image]:
    ids = select(Task.image_id).where(Task.batch_id == batch.id).distinct()
    return list(session.scalars(select(Image).where(Image.id.in_(ids)).order_by(Image.id)))


# --- batch create --------------------------------------------------------------------------------------------

def create_batch(session: Session, storage: Storage, project: Project, name: str, *,
                 images: list[Image] | None = None, all_new: bool = False, size: int = 270,
                 overlap: int = 40) -> tuple[Batch, int]:
    """Cut ``images`` (or every image not yet in a batch) into crops covering each image whole, one task per crop.
    Returns the batch and how many tasks this call made (0 when it had run to the end before)."""
    from pipeline.crop import crop_boxes

    from backend.tasks import TaskService

    if size < 32 or not 0 <= overlap < size // 2:
        raise LoopError(f"need --size >= 32 and 0 <= --overlap < size/2, got size {size}, overlap {overlap}")
    batch = session.scalar(select(Batch).where(Batch.project_id == project.id, Batch.name == name))
    if batch is not None and (batch.crop_size, batch.overlap) != (size, overlap):
        raise LoopError(f"batch {name!r} exists with size {batch.crop_size}, overlap {batch.overlap}")
    if batch is not None and batch.published_at is not None:
        chosen = set(i.id for i in (images or []))
        if chosen - {i.id for i in batch_images(session, batch)}:
            raise LoopError(f"batch {name!r} is published; make a new batch for more images")
    if images is None:
        if not all_new:
            raise LoopError("name the images (--images) or take every image not yet in a batch (--all-new)")
        in_batches = select(Task.image_id).where(Task.image_id.is_not(None)).distinct()
        images = list(session.scalars(select(Image).where(Image.project_id == project.id,
                                                         Image.id.not_in(in_batches)).order_by(Image.id)))
        if batch is not None:
            images = batch_images(session, batch) + images
    if not images:
        raise LoopError(f"project {project.name!r} has no images for a new batch")
    for image in images:
        if image.project_id != project.id:
            raise LoopError(f"image {image.name!r} is not in project {project.name!r}")
    if batch is None:
        batch = Batch(project=project, name=name, crop_size=size, overlap=overlap)
        session.add(batch)
        session.commit()
    made = 0
    bar = _progress(len(images), f"batch {name}")
    for image in images:
        if session.scalar(select(func.count(Task.id)).where(Task.batch_id == batch.id, Task.image_id == image.id)):
            bar.update(1)
            continue  # cut by an earlier run
        pixels = read_image(storage, image)
        # one image at a time: a crash leaves whole images only, and takes back the crops it had stored
        writes = WriteLog(storage)
        svc = TaskService(session, writes)
        try:
            for box in crop_boxes((image.height, image.width), size, overlap):
                y0, x0, y1, x1 = box
                task = svc.create_task(batch, box, pixels[y0:y1, x0:x1])
                task.image_id = image.id
                made += 1
            session.commit()
        except BaseException:
            session.rollback()
            writes.take_back()
            raise
        bar.update(1)
    bar.close()
    return batch, made


# --- prelabel ------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=2)
def _mesmer(folder: str):
    from pipeline.model.predict import Mesmer

    return Mesmer(folder)


def segment_image_job(storage_url: str, image_key: str, labels_key: str, method: str, channels: list[int],
                      model: tuple[str, str] | None, cache_root: str, image_mpp: float | str | None) -> tuple[str, int]:
    """Segment one whole stored image and store its labels: the unit of work of `prelabel`, run in this process
    or on a Dask worker (it reads and writes storage itself, so only keys travel)."""
    from backend.storage import storage_from_url

    storage = storage_from_url(storage_url)
    pixels = decode_array(storage.get(image_key), max_pixels=None)
    X = np.ascontiguousarray(pixels[..., channels], dtype=np.float32)
    if method == registry.BASELINE:
        from pipeline.baseline import nuclear_expansion

        labels = nuclear_expansion(X, nuclear_channel=0)
    else:
        name, prefix = model
        folder = registry.fetch_files(storage, name, prefix, cache_root)
        labels = _mesmer(str(folder)).predict(X, image_mpp=image_mpp)
    storage.put(labels_key, encode_array(labels.astype(np.int32)))
    return labels_key, int(len(np.unique(labels[..., 0])) - 1)


def _run_jobs(jobs: list[tuple], scheduler: str | None, workers: int, desc: str) -> list:
    bar = _progress(len(jobs), desc)
    try:
        if scheduler is None and (workers <= 1 or len(jobs) <= 1):
            results = []
            for job in jobs:
                results.append(segment_image_job(*job))
                bar.update(1)
            return results
        from distributed import Client, LocalCluster, as_completed

        cluster = None
        if scheduler is None:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=40)
        client = Client(scheduler or cluster)
        try:
            futures = [client.submit(segment_image_job, *job, pure=False) for job in jobs]
            for _ in as_completed(futures):
                bar.update(1)
            return client.gather(futures)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    finally:
        bar.close()


def prelabel_batch(session: Session, storage: Storage, config, batch: Batch, model: str = "current", *,
                   scheduler: str | None = None, workers: int = 1) -> dict:
    """Segment each whole image of the batch once with ``model`` and cut the labels into its crops' first revision.
    Crops someone has opened or edited are left alone; crops already prelabelled by the same model are skipped."""
    from pipeline.stitch import relabel_crop

    project = batch.project
    try:
        choice = registry.resolve(session, storage, project, model)
    except LookupError as exc:
        raise LoopError(str(exc)) from None
    images = batch_images(session, batch)
    todo, skipped_touched = [], 0
    for image in images:
        tasks = list(session.scalars(select(Task).where(Task.batch_id == batch.id, Task.image_id == image.id)))
        pending = []
        for task in tasks:
            if task.revision != 0 or task.state not in UNTOUCHED:
                skipped_touched += 1
                continue
            first = session.scalar(select(Revision).where(Revision.task_id == task.id, Revision.number == 0))
            if (first.params or {}).get("prelabel") != choice.label:
                pending.append((task, first))
        if pending:
            todo.append((image, pending))
    jobs = []
    channels = model_channel_indices(project)
    cache_root = str(Path(config.instance_dir) / "model-cache")
    model_ref = None if choice.version is None else (choice.version.name, choice.version.path)
    # the generalist starter model estimates an unknown pixel size from the cells themselves; a project's own
    # versions were trained on its images at their native scale
    unknown_mpp = "auto" if choice.version is not None and choice.version.name == registry.STARTER_NAME else None
    for image, _ in todo:
        if choice.kind == registry.NO_MODEL:
            continue
        key = f"projects/{project.id}/images/{image.id}/prelabels/{batch.id}-{secrets.token_hex(4)}.npy.gz"
        mpp = image.pixel_size_um if image.pixel_size_um is not None else unknown_mpp
        jobs.append((config.storage_url, image.image_key, key, choice.kind, channels, model_ref, cache_root, mpp))
    results = _run_jobs(jobs, scheduler, workers, f"prelabel {batch.name} ({choice.label})") if jobs else []
    by_image = {job[1]: result for job, result in zip(jobs, results)}
    crops = 0
    for image, pending in todo:
        whole, replaced = None, []
        if image.image_key in by_image:
            whole = decode_array(storage.get(by_image[image.image_key][0]), max_pixels=None)
        for task, first in pending:
            labels = (np.zeros(task.shape + (2,), np.int32) if whole is None
                      else relabel_crop(whole[task.y0:task.y1, task.x0:task.x1]))
            key = f"projects/{project.id}/tasks/{task.id}/labels/000000-{secrets.token_hex(6)}.npy.gz"
            storage.put(key, encode_array(labels))
            # revision 0 is the crop's starting point; nobody has seen it yet (checked above), so it is replaced
            replaced.append(first.labels_key)
            first.labels_key = key
            first.action = "prelabel"
            first.params = {"prelabel": choice.label}
            task.state = TaskState.prelabeled if labels.any() else TaskState.new
            crops += 1
        session.commit()
        for key in replaced + ([by_image[image.image_key][0]] if image.image_key in by_image else []):
            storage.delete(key)
    batch.prelabel = choice.label
    batch.model_version_id = choice.version.id if choice.version is not None else None
    batch.prelabeled_at = utcnow()
    session.commit()
    return {"model": choice.label, "images": len(jobs), "crops": crops, "left_alone": skipped_touched}


# --- publish / status ----------------------------------------------------------------------------------------

def publish_batch(session: Session, config, batch: Batch, out=None, base_url: str | None = None) -> int:
    """Task links as CSV (one row per task with its iframe URL), the format crowd platforms import."""
    from backend.app import create_app
    from backend.auth import make_task_token

    if batch.prelabel is None:
        raise LoopError(f"batch {batch.name!r} is not prelabelled yet: run `cellloop prelabel --batch "
                        f"{batch.name}` (use --model none for empty crops)")
    tasks = list(session.scalars(select(Task).where(Task.batch_id == batch.id).order_by(Task.id)))
    names = {i.id: i.name for i in batch_images(session, batch)}
    base = (base_url or config.base_url).rstrip("/")
    app = create_app(config)
    with app.app_context():
        print("task_id,image,y0,x0,y1,x1,state,url", file=out or sys.stdout)
        for t in tasks:
            print(f"{t.id},{names.get(t.image_id, '')},{t.y0},{t.x0},{t.y1},{t.x1},{t.state.value},"
                  f"{base}/task/{make_task_token(t)}", file=out or sys.stdout)
    if batch.published_at is None:
        batch.published_at = utcnow()
        session.commit()
    return len(tasks)


def _cells(labels: np.ndarray) -> int:
    return int(len(np.unique(labels[..., 0])) - 1)


def batch_status(session: Session, storage: Storage, batch: Batch) -> dict:
    """Counts per state; edits, seconds and cells of the submitted work; throughput."""
    from backend.tasks import TaskService

    tasks = list(session.scalars(select(Task).where(Task.batch_id == batch.id)))
    states = Counter(t.state.value for t in tasks)
    done = [t for t in tasks if t.state in (TaskState.submitted, TaskState.in_review, TaskState.approved)]
    svc = TaskService(session, storage)
    cells = sum(_cells(svc.labels(t)) for t in done)
    edits = session.scalar(select(func.count(Revision.id)).where(
        Revision.task_id.in_([t.id for t in done]), Revision.action.in_(EDIT_REVISIONS))) if done else 0
    seconds = float(sum(t.time_open_s or 0.0 for t in done))
    starts = [t.assigned_at for t in done if t.assigned_at] or [t.created_at for t in done]
    ends = [t.submitted_at for t in done if t.submitted_at]
    hours = ((max(ends) - min(starts)).total_seconds() / 3600) if ends and starts else 0.0
    return {
        "batch": batch.name, "project": batch.project.name, "prelabel": batch.prelabel, "tasks": len(tasks),
        "states": dict(sorted(states.items())), "submitted_cells": cells, "edits": int(edits or 0),
        "seconds": round(seconds, 1),
        "edits_per_cell": round(edits / cells, 3) if cells else None,
        "seconds_per_cell": round(seconds / cells, 2) if cells else None,
        "tasks_per_hour": round(len(done) / hours, 1) if hours > 0 else None,
    }


# --- stitch --------------------------------------------------------------------------------------------------

def stitch_batch(session: Session, storage: Storage, batch: Batch) -> list[dict]:
    """Approved crops back into whole-image labels, for every image of the batch (approved crops of earlier
    batches of the same image included); the conflict list goes beside the labels for expert QC."""
    from pipeline.stitch import stitch_crops

    from backend.tasks import TaskService

    svc = TaskService(session, storage)
    summary = []
    for image in batch_images(session, batch):
        in_batch = session.scalar(select(func.count(Task.id)).where(Task.batch_id == batch.id,
                                                                    Task.image_id == image.id))
        approved = list(session.scalars(select(Task).where(Task.image_id == image.id,
                                                           Task.state == TaskState.approved)
                                        .order_by(Task.batch_id, Task.id)))
        if not approved:
            summary.append({"image": image.name, "approved": 0, "crops": in_batch, "cells": 0, "conflicts": 0})
            continue
        result = stitch_crops((image.height, image.width), [(t.box, svc.labels(t)) for t in approved])
        base = f"projects/{image.project_id}/images/{image.id}"
        token = secrets.token_hex(4)
        labels_key = f"{base}/labels/{batch.id}-{token}.npy.gz"
        coverage_key = f"{base}/coverage/{batch.id}-{token}.npy.gz"
        conflicts_key = f"{base}/stitch/{batch.id}-{token}-conflicts.json"
        storage.put(labels_key, encode_array(result.labels))
        storage.put(coverage_key, encode_array(result.coverage.astype(np.uint8)))
        storage.put(conflicts_key, json.dumps(result.conflicts, indent=1).encode())
        image.labels_key, image.coverage_key, image.stitched_at = labels_key, coverage_key, utcnow()
        session.commit()
        summary.append({"image": image.name, "approved": sum(t.batch_id == batch.id for t in approved),
                        "crops": in_batch, "cells": _cells(result.labels), "coverage": float(result.coverage.mean()),
                        "conflicts": len(result.conflicts), "conflicts_key": conflicts_key,
                        "conflict_list": result.conflicts})
    batch.stitched_at = utcnow()
    session.commit()
    return summary


def stitched_labels(storage: Storage, image: Image) -> tuple[np.ndarray, np.ndarray]:
    labels = decode_array(storage.get(image.labels_key), max_pixels=None)
    coverage = decode_array(storage.get(image.coverage_key), max_pixels=None).astype(bool)
    return labels, coverage


# --- dataset -------------------------------------------------------------------------------------------------

def build_dataset(session: Session, storage: Storage, project: Project, out, *, tile: int = 256,
                  seed: int = 0) -> dict:
    """The project's stitched images as a QC'd, tiled dataset .npz with a frozen split in each tile's meta."""
    from pipeline import dataset, io

    channels = model_channel_indices(project)
    images = [i for i in project.images if i.labels_key]
    if not images:
        raise LoopError(f"project {project.name!r} has no stitched labels yet: run `cellloop stitch` first")
    candidates, skipped = [], Counter()
    for image in images:
        labels, coverage = stitched_labels(storage, image)
        pixels = read_image(storage, image)[..., channels]
        tiles, left_out = dataset.cut_tiles(pixels, labels, coverage, size=tile)
        skipped.update(left_out)
        candidates.extend((image, t) for t in tiles)
    if not candidates:
        raise LoopError(f"no {tile}-px tile passes QC (fully annotated, at least {dataset.MIN_CELLS} cells): "
                        f"{dict(skipped)}")
    frozen = {(r.image_id, r.y0, r.x0): r.split for r in session.scalars(
        select(DatasetTile).where(DatasetTile.image_id.in_([i.id for i in images]), DatasetTile.size == tile))}
    keys = [(image.id, t.y0, t.x0) for image, t in candidates]
    new = dataset.assign_splits(frozen, [k for k in keys if k not in frozen], seed=seed)
    for (image_id, y0, x0), split in new.items():
        session.add(DatasetTile(image_id=image_id, y0=y0, x0=x0, size=tile, split=split))
    session.commit()
    splits = {**frozen, **new}
    meta = []
    for image, t in candidates:
        meta.append({"image": image.name, "image_id": image.id, "project": project.name, "source": image.source_path,
                     "box": [t.y0, t.x0, min(t.y0 + tile, image.height), min(t.x0 + tile, image.width)],
                     "tissue": image.tissue or "unknown", "platform": image.platform or "unknown",
                     "pixel_size_um": image.pixel_size_um, "split": splits[(image.id, t.y0, t.x0)],
                     "n_cells": t.n_cells})
    X = np.stack([t.X for _, t in candidates])
    y = np.stack([t.y for _, t in candidates])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    io.save_dataset(out, X, y, meta)
    data = {"X": X, "y": y, "meta": meta}
    summary = {"path": str(out), "tiles": len(candidates), "skipped": dict(skipped), "splits": {}, "sha256": {}}
    for split in dataset.SPLITS:
        Xs, ys, _ = dataset.select(data, split)
        summary["splits"][split] = int(len(Xs))
        summary["sha256"][split] = dataset.data_hash(Xs, ys) if len(Xs) else None
    return summary


# --- train / evaluate / promote -------------------------------------------------------------------------------

def _load_split(path, split):
    from pipeline import dataset, io

    data = io.load_dataset(path)
    if not any("split" in m for m in data["meta"]):
        raise LoopError(f"{path} has no split in its meta; make it with `cellloop dataset`")
    return dataset.select(data, split)


def train_version(session: Session, storage: Storage, config, project: Project, data, *, start: str = "current",
                  epochs: int = 4, steps_per_epoch: int | None = None, batch_size: int = 8, crop_size: int = 256,
                  backbone: str | None = None, lr: float = 1e-4, seed: int = 0) -> tuple:
    """Fine-tune ``start`` (a version, or from scratch when it is the baseline) on the dataset's train split,
    validating on its val split; register the result with its parent and data hashes. Returns (row, parent)."""
    from pipeline import dataset
    from pipeline.model import panoptic, train

    Xt, yt, _ = _load_split(data, "train")
    Xv, yv, meta_v = _load_split(data, "val")
    if len(Xt) == 0:
        raise LoopError(f"{data} has no training tiles")
    try:
        choice = registry.resolve(session, storage, project, start)
    except LookupError as exc:
        raise LoopError(str(exc)) from None
    cache_root = Path(config.instance_dir) / "model-cache"
    parent = choice.version
    from_folder = registry.local_folder(storage, parent, cache_root) if parent is not None else None
    name = registry.next_name(session, project)
    out = Path(config.instance_dir) / "model-cache" / f"{name}.training-{secrets.token_hex(3)}"
    sizes = {i.pixel_size_um for i in project.images if i.labels_key}
    result = train.train(
        Xt, yt, val=(Xv, yv) if len(Xv) else None, val_split=0.0 if len(Xv) or len(Xt) < 2 else 0.1,
        from_version=from_folder, backbone=backbone or panoptic.LIGHT_BACKBONE, epochs=epochs,
        steps_per_epoch=steps_per_epoch, batch_size=batch_size, crop_size=crop_size, lr=lr, seed=seed,
        mpp=(sizes.pop() if len(sizes) == 1 and None not in sizes else None) if from_folder is None else None,
        out=out, verbose=0)
    hashes = {"path": str(data), "train": dataset.data_hash(Xt, yt),
              "val": dataset.data_hash(Xv, yv) if len(Xv) else None}
    row = registry.register(session, storage, project, result.path, name=name, parent=parent, dataset=hashes)
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    return row, parent


def evaluate_choice(session: Session, storage: Storage, config, project: Project, choice, data,
                    split: str = "test") -> dict:
    """Whole-cell object accuracy of a model (or the baseline) on one split of a `cellloop dataset` file;
    a version's result is recorded in its metrics under the split's data hash."""
    from pipeline import dataset, metrics

    X, y, meta = _load_split(data, split)
    if len(X) == 0:
        raise LoopError(f"{data} has no {split} tiles (the project needs more annotated tiles)")
    data_hash = dataset.data_hash(X, y)
    key = f"{split}:{data_hash[:16]}"
    if choice.version is not None and key in (choice.version.metrics or {}):
        return choice.version.metrics[key]
    if choice.kind == registry.BASELINE:
        from pipeline.baseline import nuclear_expansion

        pred = nuclear_expansion(X, nuclear_channel=0)
    elif choice.version is not None:
        folder = registry.local_folder(storage, choice.version, Path(config.instance_dir) / "model-cache")
        mesmer = _mesmer(str(folder))
        pred = np.stack([mesmer.predict(x, image_mpp=m.get("pixel_size_um")) for x, m in zip(X, meta)])
    else:
        raise LoopError("nothing to evaluate: choose a model version or the baseline")
    pooled = metrics.evaluate(y, pred, layer=0)["pooled"]
    result = {"model": choice.label, "split": split, "data_sha256": data_hash, "n_images": int(len(X)),
              **{k: (round(float(pooled[k]), 4) if isinstance(pooled[k], float) else pooled[k])
                 for k in ("f1", "precision", "recall", "jaccard", "n_true", "n_pred", "correct")}}
    if choice.version is not None:
        registry.record_metrics(session, choice.version, key, result)
    return result


def promote_if_not_worse(session: Session, project: Project, candidate, candidate_f1: float,
                         current_f1: float | None) -> bool:
    """Never promote blind: the candidate must do at least as well as the current model on the same frozen
    test split."""
    if current_f1 is not None and candidate_f1 < current_f1:
        return False
    registry.promote(session, project, candidate)
    return True


# --- cycle / report ------------------------------------------------------------------------------------------

def run_cycle(session: Session, storage: Storage, config, batch: Batch, *, out=None, log=print, tile: int = 256,
              **train_options) -> dict:
    """stitch → dataset → train from the current model → evaluate both on the frozen test split → promote if
    not worse; the outcome is recorded on the batch (shown by `cellloop report`)."""
    project = batch.project
    stitched = stitch_batch(session, storage, batch)
    cells = sum(s["cells"] for s in stitched)
    if not any(s["approved"] for s in stitched):
        raise LoopError(f"batch {batch.name!r} has no approved crops to learn from")
    log(f"stitched {sum(s['approved'] for s in stitched)} approved crops into {len(stitched)} images "
        f"({cells} cells, {sum(s['conflicts'] for s in stitched)} conflicts for QC)")
    out = Path(out) if out else Path(config.instance_dir) / "datasets" / project.name / f"{batch.name}.npz"
    data = build_dataset(session, storage, project, out, tile=tile)
    log(f"dataset {data['path']}: {data['splits']} tiles")
    status = batch_status(session, storage, batch)
    current = registry.current_model(session, storage, project)
    candidate, parent = train_version(session, storage, config, project, out, start="current", **train_options)
    log(f"trained {candidate.name} from {parent.name if parent else 'scratch'}")
    record = {"dataset": data["path"], "sha256": data["sha256"], "splits": data["splits"], "cells": cells,
              "edits_per_cell": status["edits_per_cell"], "seconds_per_cell": status["seconds_per_cell"],
              "prelabel": batch.prelabel, "current": current.label, "candidate": candidate.name}
    if data["splits"]["test"] == 0:
        record.update(promoted=False, reason="no test tiles yet")
    else:
        cur = evaluate_choice(session, storage, config, project, current, out)
        cand = evaluate_choice(session, storage, config, project, registry.ModelChoice("version", candidate), out)
        promoted = promote_if_not_worse(session, project, candidate, cand["f1"], cur["f1"])
        record.update(current_f1=cur["f1"], candidate_f1=cand["f1"], promoted=promoted,
                      reason="not worse on the frozen test split" if promoted else "worse on the frozen test split")
        log(f"test F1: {current.label} {cur['f1']:.3f}, {candidate.name} {cand['f1']:.3f} -> "
            f"{'promoted' if promoted else 'kept ' + current.label}")
    batch.cycle = record
    session.commit()
    return record


def report(session: Session, project: Project) -> list[dict]:
    rows = []
    for batch in sorted(project.batches, key=lambda b: b.id):
        c = batch.cycle or {}
        rows.append({"batch": batch.name, "prelabel": batch.prelabel or "-", "prelabel_f1": c.get("current_f1"),
                     "cells": c.get("cells"), "edits_per_cell": c.get("edits_per_cell"),
                     "seconds_per_cell": c.get("seconds_per_cell"), "trained": c.get("candidate"),
                     "trained_f1": c.get("candidate_f1"), "promoted": c.get("promoted"),
                     "test_tiles": (c.get("splits") or {}).get("test")})
    return rows
