"""Segment a whole slide in bounded memory: blocks with a halo, deep watershed per block, cells joined across the
seams by maximum overlap, labels written chunk by chunk.

1. Normalisation ranges (per channel: minimum and 99.9th percentile of nonzero pixels) come from a strided sample of
   the whole slide, read chunk by chunk, so every block is normalised alike.
2. Each block's core (``block`` px) is predicted with a halo around it (``HALO_BEFORE`` above/left, ``HALO_AFTER``
   below/right) and its labels, ids local to the block, go to a scratch zarr. Block origins sit on the network's
   256/192 tile grid and the halo spans a whole tile, so inside a core the network sees the same tiles, blended the
   same way, as it would on the whole image. Blocks are independent: serial here or one Dask task each.
3. Where two blocks' predicted regions overlap, their cells are matched by the loop's own stitch rule
   (``pipeline.stitch.mutual_best_matches``: mutual maximum overlap, no ties, never two cells of one block into one).
4. Each core is written through its block's id map into the output OME-Zarr (then a tiled OME-TIFF, when asked).

Memory is one block's prediction (about 2 GB at the default 2304 px core) plus the sample, whatever the slide's size.
"""
from __future__ import annotations

import contextlib
import functools
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.model import predict as _predict

BLOCK = 12 * _predict.STRIDE  # 2304 px cores
# Above/left a block reaches one tile stride back (origins stay on the tile grid); below/right one whole tile, so the
# last tile covering a core pixel is a grid tile too, never one flushed against the block's end.
HALO_BEFORE = _predict.STRIDE
HALO_AFTER = _predict.TILE
SAMPLE_PIXELS = 16_000_000  # per channel: below this the ranges are exact, above it a stride samples the slide
SCRATCH_CHUNK = 256


@dataclass
class SlideResult:
    path: Path
    shape: tuple[int, int]
    blocks: int
    cells: int
    nuclei: int
    contradictions: int
    timings: dict = field(default_factory=dict)
    image_mpp: float | None = None


def block_boxes(height: int, width: int, block: int, halo_before: int = HALO_BEFORE, halo_after: int = HALO_AFTER):
    """[(core box, predicted box)] with boxes (y0, x0, y1, x1), cores tiling the image row by row."""
    boxes = []
    for y0 in range(0, height, block):
        for x0 in range(0, width, block):
            y1, x1 = min(height, y0 + block), min(width, x0 + block)
            ext = (max(0, y0 - halo_before), max(0, x0 - halo_before), min(height, y1 + halo_after),
                   min(width, x1 + halo_after))
            boxes.append(((y0, x0, y1, x1), ext))
    return boxes


def sample_ranges(slide, channels, percentile: float = 99.9, max_pixels: int = SAMPLE_PIXELS) -> list[tuple]:
    """Per channel (low, high) for ``normalize(ranges=...)``: from every pixel when the slide has at most
    ``max_pixels``, else from a regular stride over it (read a band of rows at a time)."""
    from pipeline.model.preprocess import channel_range

    step = max(1, int(np.ceil(np.sqrt(slide.height * slide.width / max_pixels))))
    band = max(step, (2048 // step) * step)
    parts = []
    for y0 in range(0, slide.height, band):
        rows = slide.read(y0, min(slide.height, y0 + band), 0, slide.width, channels)
        parts.append(rows[::step, ::step].astype(np.float32))
    sample = np.concatenate(parts, axis=0)
    return [channel_range(sample[..., c], percentile) for c in range(sample.shape[-1])]


@functools.lru_cache(maxsize=2)
def _mesmer(model: str, runtime: str | None):
    return _predict.Mesmer(model, runtime=runtime)


@functools.lru_cache(maxsize=4)
def _slide(path: str):
    from pipeline.slide import open_slide

    return open_slide(path)


def predict_block(job: dict) -> dict:
    """Predict one block and store its labels (ids local to the block) in the scratch zarr: one Dask task.
    Everything it needs travels in ``job`` (paths, not arrays), so a worker process can run it."""
    import zarr

    slide = _slide(job["slide"]) if isinstance(job["slide"], str) else job["slide"]
    mesmer = _mesmer(job["model"], job["runtime"])
    y0, x0, y1, x1 = job["ext"]
    X = slide.read(y0, y1, x0, x1, job["channels"]).astype(np.float32)
    if job["nuclear_only"]:
        X = np.concatenate([X, np.zeros_like(X)], axis=-1)
    labels = mesmer.predict(X, image_mpp=job["image_mpp"], compartment=job["compartment"],
                            batch_size=job["batch_size"], ranges=job["ranges"])
    store = zarr.open_array(job["scratch"], mode="w", shape=labels.shape, dtype="int32",
                            chunks=(SCRATCH_CHUNK, SCRATCH_CHUNK, 2), fill_value=0)
    store[...] = labels
    return {"index": job["index"], "max_id": int(labels.max(initial=0)), "timings": dict(mesmer.timings)}


def _run(jobs, scheduler, workers, progress):
    if scheduler is None and workers <= 1:
        results = []
        for job in jobs:
            results.append(predict_block(job))
            if progress:
                progress(len(results), len(jobs))
        return results
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if isinstance(scheduler, Client):
        client, own_client = scheduler, False
    else:
        if scheduler is None:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                                   silence_logs=40)
        client, own_client = Client(scheduler or cluster), True
    try:
        futures = [client.submit(predict_block, job, pure=False) for job in jobs]
        done = 0
        for _ in as_completed(futures):
            done += 1
            if progress:
                progress(done, len(jobs))
        return client.gather(futures)
    finally:
        if own_client:
            client.close()
        if cluster is not None:
            cluster.close()


def _overlap(a, b):
    y0, x0 = max(a[0], b[0]), max(a[1], b[1])
    y1, x1 = min(a[2], b[2]), min(a[3], b[3])
    return (y0, x0, y1, x1) if y1 > y0 and x1 > x0 else None


def predict_slide(slide_path, out, *, model, channels, image_mpp=None, compartment: str = "both",
                  runtime: str | None = None, block: int = BLOCK, batch_size: int = 8, scheduler=None,
                  workers: int = 1, scratch=None, nuclear_only: bool = False, progress=None) -> SlideResult:
    """Segment the slide at ``slide_path`` (a file, or any picklable object with ``height``, ``width`` and
    ``read(y0, y1, x0, x1, channels)``, such as the backend's stored slides) and write labels (H, W, 2) to ``out``
    (``.zarr`` folder, OME-Zarr; or ``.ome.tif``/``.tif``, tiled OME-TIFF). ``channels``: the slide's channel indices in the model's order.
    ``image_mpp``: µm per pixel, None for the model's own, "auto" to estimate it from a window in the slide's middle.
    ``scheduler``: a Dask scheduler address or Client to run the blocks on; ``workers`` > 1 starts a local cluster.
    ``scratch``: a folder every worker can reach for the blocks' labels (default: beside ``out``)."""
    from pipeline import stitch
    from pipeline.slide import LabelsWriter, open_slide, zarr_to_ome_tiff

    out = Path(out)
    if out.suffix.lower() not in (".zarr", ".tif", ".tiff"):
        raise ValueError(f"slide labels are written as .zarr (OME-Zarr) or .ome.tif (tiled OME-TIFF), not {out.name!r}")
    if block < HALO_AFTER or block % _predict.STRIDE:
        raise ValueError(f"block must be a multiple of {_predict.STRIDE} px (the tile grid), got {block}")
    timings = {"ranges_s": 0.0, "scale_s": 0.0, "preprocess_s": 0.0, "network_s": 0.0, "postprocess_s": 0.0,
               "join_s": 0.0, "write_s": 0.0}
    out.parent.mkdir(parents=True, exist_ok=True)
    opened = isinstance(slide_path, (str, Path))
    with (open_slide(slide_path) if opened else contextlib.nullcontext(slide_path)) as slide:
        height, width = slide.height, slide.width
        t0 = time.perf_counter()
        ranges = sample_ranges(slide, channels)
        if nuclear_only:
            ranges = ranges + [(0.0, 0.0)]
        timings["ranges_s"] = time.perf_counter() - t0
        if image_mpp == "auto":
            from pipeline.model import autoscale

            t0 = time.perf_counter()
            side = 1024
            cy, cx = max(0, height // 2 - side // 2), max(0, width // 2 - side // 2)
            window = slide.read(cy, cy + side, cx, cx + side, channels).astype(np.float32)
            if nuclear_only:
                window = np.concatenate([window, np.zeros_like(window)], axis=-1)
            image_mpp = float(autoscale.estimate_image_mpp(_mesmer(str(model), runtime), window).image_mpp)
            timings["scale_s"] = time.perf_counter() - t0
    # Halos are in model pixels; an image at another pixel size is resampled block by block, so its halos (and core)
    # scale with it, and the tile grid is then only approximately shared between blocks.
    ratio = 1.0 if image_mpp is None else _predict.preprocess.MODEL_MPP / float(image_mpp)
    if ratio == 1.0:
        boxes = block_boxes(height, width, block)
    else:
        boxes = block_boxes(height, width, max(64, int(round(block * ratio))), int(np.ceil(HALO_BEFORE * ratio)),
                            int(np.ceil(HALO_AFTER * ratio)))
    own_scratch = scratch is None
    scratch_root = Path(tempfile.mkdtemp(prefix=f".{out.name}.blocks.", dir=out.parent if own_scratch else scratch))
    try:
        source = str(Path(slide_path).resolve()) if opened else slide_path
        jobs = [{"index": i, "slide": source, "channels": list(channels), "ext": ext,
                 "model": str(model), "runtime": runtime, "image_mpp": image_mpp, "compartment": compartment,
                 "batch_size": batch_size, "ranges": ranges, "nuclear_only": nuclear_only,
                 "scratch": str(scratch_root / f"block-{i}.zarr")} for i, (_, ext) in enumerate(boxes)]
        results = sorted(_run(jobs, scheduler, workers, progress), key=lambda r: r["index"])
        for r in results:
            for key in ("preprocess_s", "network_s", "postprocess_s"):
                timings[key] += r["timings"].get(key, 0.0)

        import zarr

        t0 = time.perf_counter()
        stores = [zarr.open_array(job["scratch"], mode="r") for job in jobs]
        offsets = [0]
        for r in results:
            offsets.append(offsets[-1] + r["max_id"] + 1)
        joins = []
        for k in range(len(boxes)):
            for j in range(k + 1, len(boxes)):
                zone = _overlap(boxes[k][1], boxes[j][1])
                if zone is None:
                    continue
                a = _window(stores[k], boxes[k][1], zone)
                b = _window(stores[j], boxes[j][1], zone)
                where = {"zone": "block seam", "y": (zone[0] + zone[2]) // 2, "x": (zone[1] + zone[3]) // 2}
                joins.extend((n, offsets[k] + ca, offsets[j] + cb, where)
                             for ca, cb, n in stitch.mutual_best_matches(a, b))
        component, contradictions = stitch.join_cells(offsets[-1], offsets, joins)
        timings["join_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        target = out if out.suffix.lower() == ".zarr" else scratch_root / "labels.zarr"
        writer = LabelsWriter(target, (height, width), pixel_size_um=image_mpp if image_mpp != "auto" else None)
        cells, nuclei = set(), set()
        for k, (core, ext) in enumerate(boxes):
            lookup = (component[offsets[k]:offsets[k + 1]] + 1).astype(np.int32)
            lookup[0] = 0
            labels = lookup[_window(stores[k], ext, core)]
            writer.write(core[0], core[1], labels)
            cells.update(np.unique(labels[..., 0]).tolist())
            nuclei.update(np.unique(labels[..., 1]).tolist())
        if target != out:
            zarr_to_ome_tiff(target, out, pixel_size_um=image_mpp)
        timings["write_s"] = time.perf_counter() - t0
    finally:
        shutil.rmtree(scratch_root, ignore_errors=True)
    return SlideResult(path=out, shape=(height, width), blocks=len(boxes), cells=len(cells - {0}),
                       nuclei=len(nuclei - {0}), contradictions=len(contradictions),
                       timings={k: round(v, 3) for k, v in timings.items()},
                       image_mpp=None if image_mpp is None else float(image_mpp))


def _window(store, box, zone) -> np.ndarray:
    """The part ``zone`` (image coordinates) of a block's labels stored for ``box``."""
    return np.asarray(store[zone[0] - box[0]:zone[2] - box[0], zone[1] - box[1]:zone[3] - box[1]])
