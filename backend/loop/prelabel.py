"""Prelabel: segment each whole image of a batch once with the project's model, then cut the labels into its crops'
first revisions, never over a person's work."""
from __future__ import annotations

import functools
import secrets
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.loop import registry
from backend.loop.common import LoopError, batch_images, progress
from backend.store.arrays import decode_array, encode_array
from backend.store.models import Batch, Revision, Task, utcnow
from backend.store.projects import model_channel_indices
from backend.store.storage import Storage
from backend.tasks.maps import keep_crop_maps
from backend.tasks.revisions import UNTOUCHED, RevisionStore
from backend.tasks.transitions import set_columns


@functools.lru_cache(maxsize=2)
def load_mesmer(folder: str):
    from pipeline.model.predict import Mesmer

    return Mesmer(folder)


def scale_for(version, pixel_size_um: float | None) -> float | str | None:
    """The pixel size a model is run at on an image: the image's own when known; else the generalist starter model
    estimates it from the cells themselves ("auto"), while a project's own versions were trained on its images at
    their native scale (None). Prelabel and evaluation both use this, so a model is scored as it prelabels."""
    if pixel_size_um is not None:
        return pixel_size_um
    return "auto" if registry.is_starter(version) else None


def segment_image_job(storage_url: str, image_key: str, labels_key: str, method: str, channels: list[int],
                      model: tuple[str, str, str | None] | None, cache_root: str,
                      image_mpp: float | str | None) -> tuple[str, int, str | None]:
    """Segment one whole stored image and store its labels (and a model's maps): the unit of work of `prelabel`,
    run in this process or on a Dask worker (it reads and writes storage itself, so only keys travel)."""
    from backend.store.storage import storage_from_url

    storage = storage_from_url(storage_url)
    maps_key = None  # the model's maps of the whole image (assist tools), when the method has any
    pixels = decode_array(storage.get(image_key), max_pixels=None)
    X = np.ascontiguousarray(pixels[..., channels], dtype=np.float32)
    if method == registry.BASELINE:
        from pipeline.baseline import nuclear_expansion

        labels = nuclear_expansion(X, nuclear_channel=0)
    else:
        name, prefix, sha = model
        folder = registry.fetch_files(storage, name, prefix, cache_root, sha)
        mesmer = load_mesmer(str(folder))
        labels = mesmer.predict(X, image_mpp=image_mpp)
        maps_key = store_image_maps(storage, labels_key, mesmer.last_outputs, labels.shape[:2])
    storage.put(labels_key, encode_array(labels.astype(np.int32)))
    return labels_key, int(len(np.unique(labels[..., 0])) - 1), maps_key


def store_image_maps(storage: Storage, labels_key: str, outputs, shape) -> str | None:
    """Store the whole image's model maps (uint8, see pipeline.model.maps) beside its labels; their key."""
    if outputs is None:
        return None
    from pipeline.model.maps import maps_from_outputs

    key = labels_key.replace(".npy.gz", "") + ".maps.npy.gz"
    storage.put(key, encode_array(maps_from_outputs(outputs, shape), level=6))
    return key


def load_image_maps(storage: Storage, result) -> np.ndarray | None:
    """The whole image's maps from a job's result (labels key, cells, maps key), or None."""
    if len(result) < 3 or result[2] is None:
        return None
    return decode_array(storage.get(result[2]), max_pixels=None)


def _run_jobs(jobs: list[tuple], scheduler: str | None, workers: int, desc: str) -> list:
    bar = progress(len(jobs), desc)
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
                   scheduler: str | None = None, workers: int = 1, force: bool = False) -> dict:
    """Segment each whole image of the batch once with ``model`` and cut the labels into its crops' first revision.
    Crops someone has opened or edited are left alone (checked again in the write itself, so one touched while the
    model ran is left alone too) and listed in ``touched``; crops already prelabelled by the same model are
    skipped. A batch whose links are published is refused unless ``force`` (which still never touches an opened
    or edited crop)."""
    from pipeline.stitch import relabel_crop

    if batch.published_at is not None and not force:
        raise LoopError(f"batch {batch.name!r} is published: annotators may be working on it; re-prelabel it only "
                        f"with --force (crops someone opened or edited are still left alone)")
    project = batch.project
    try:
        choice = registry.resolve(session, storage, project, model)
    except LookupError as exc:
        raise LoopError(str(exc)) from None
    images = batch_images(session, batch)
    todo, touched = [], []
    for image in images:
        tasks = list(session.scalars(select(Task).where(Task.batch_id == batch.id, Task.image_id == image.id)))
        pending = []
        for task in tasks:
            if task.revision != 0 or task.state not in UNTOUCHED or task.opened_at is not None:
                touched.append(task.id)
                continue
            first = session.scalar(select(Revision).where(Revision.task_id == task.id, Revision.number == 0))
            if (first.params or {}).get("prelabel") != choice.label:
                pending.append((task, first))
        if pending:
            todo.append((image, pending))
    jobs = []
    channels = model_channel_indices(project)
    cache_root = str(Path(config.instance_dir) / "model-cache")
    model_ref = None if choice.version is None else (choice.version.name, choice.version.path,
                                                     choice.version.files_sha256)
    slides = [(image, pending) for image, pending in todo if image.chunk_size and choice.kind != registry.NO_MODEL]
    if slides and choice.kind == registry.BASELINE:
        raise LoopError("the baseline cannot prelabel a whole slide (it segments whole images in memory); "
                        "prelabel it with a model")
    for image, _ in todo:
        if choice.kind == registry.NO_MODEL or image.chunk_size:
            continue
        key = f"projects/{project.id}/images/{image.id}/prelabels/{batch.id}-{secrets.token_hex(4)}.npy.gz"
        mpp = scale_for(choice.version, image.pixel_size_um)
        jobs.append((config.storage_url, image.image_key, key, choice.kind, channels, model_ref, cache_root, mpp))
    results = _run_jobs(jobs, scheduler, workers, f"prelabel {batch.name} ({choice.label})") if jobs else []
    by_image = {job[1]: result for job, result in zip(jobs, results)}
    crops = 0
    svc = RevisionStore(session, storage)
    for image, pending in slides:
        crops += _prelabel_slide(session, storage, config, svc, choice, image, pending, channels, model_ref,
                                 cache_root, scheduler, workers, touched)
    for image, pending in todo:
        if image.id in {s_image.id for s_image, _ in slides}:
            continue
        whole = whole_maps = None
        if image.image_key in by_image:
            whole = decode_array(storage.get(by_image[image.image_key][0]), max_pixels=None)
            whole_maps = load_image_maps(storage, by_image[image.image_key])
        for task, _ in pending:
            labels = (np.zeros(task.shape + (2,), np.int32) if whole is None
                      else relabel_crop(whole[task.y0:task.y1, task.x0:task.x1]))
            # revision 0 is the crop's starting point: replaced only if nobody opened or edited the crop meanwhile
            if svc.write_prelabel(task, labels, choice.label):
                crops += 1
                keep_crop_maps(session, storage, task, whole_maps, choice.label)
                keep_difficulty(session, task, labels, None if whole_maps is None
                                else whole_maps[task.y0:task.y1, task.x0:task.x1])
            else:
                touched.append(task.id)
        if image.image_key in by_image:
            for key in by_image[image.image_key][::2]:  # labels, maps
                if key is not None:
                    storage.delete(key)
    batch.prelabel = choice.label
    batch.model_version_id = choice.version.id if choice.version is not None else None
    batch.prelabeled_at = utcnow()
    session.commit()
    return {"model": choice.label, "images": len(jobs) + len(slides), "crops": crops, "left_alone": len(touched),
            "touched": sorted(touched)}


def keep_difficulty(session: Session, task: Task, labels: np.ndarray, maps: np.ndarray | None) -> None:
    """The crop's difficulty from the model's outputs (``pipeline.difficulty``), kept on the task for triage."""
    from pipeline.difficulty import crop_difficulty

    score, parts = crop_difficulty(labels, maps)
    set_columns(session, task, difficulty=score, difficulty_detail=parts)
    session.commit()


def _prelabel_slide(session, storage, config, svc, choice, image, pending, channels, model_ref, cache_root,
                    scheduler, workers, touched) -> int:
    """Prelabel a slide stored in chunks: predicted block by block (``pipeline.model.slide_predict``, on Dask with a
    scheduler or workers), labels into a local OME-Zarr, each crop's cut read back from it. No assist maps: they
    would be the slide's size again."""
    import shutil
    import tempfile

    from pipeline.model.slide_predict import predict_slide
    from pipeline.slide import LabelsWriter
    from pipeline.stitch import relabel_crop

    from backend.store.slides import StoredSlide

    name, prefix, sha = model_ref
    folder = registry.fetch_files(storage, name, prefix, cache_root, sha)
    work = Path(config.instance_dir) / "slide-work"
    work.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"image-{image.id}-", dir=work))
    try:
        mpp = scale_for(choice.version, image.pixel_size_um)
        predict_slide(StoredSlide.of(config.storage_url, image), tmp / "labels.zarr", model=str(folder),
                      channels=channels, image_mpp=mpp, scheduler=scheduler, workers=workers)
        labels = LabelsWriter(tmp / "labels.zarr", (image.height, image.width), mode="r+")
        made = 0
        for task, _ in pending:
            crop = relabel_crop(labels.read(task.y0, task.y1, task.x0, task.x1))
            if svc.write_prelabel(task, crop, choice.label):
                made += 1
                keep_crop_maps(session, storage, task, None, choice.label)
            else:
                touched.append(task.id)
        return made
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
