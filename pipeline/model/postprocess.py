"""Deep watershed: from the network's distance and pixelwise maps to instance labels."""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.segmentation import watershed

__all__ = [
    "deep_watershed",
    "postprocess_mesmer",
    "remove_small",
    "fill_small_holes",
    "relabel_sequential",
    "match_nuclei_to_cells",
    "WHOLE_CELL_DEFAULTS",
    "NUCLEAR_DEFAULTS",
    "CALIBRATION_GRID",
    "calibrate",
    "PUBLISHED_VARIANT",
    "OUR_VARIANT",
]

# Published Mesmer defaults (deepcell 0.12): the whole-cell distance map is flatter than the
# nuclear one, hence its lower maxima threshold.
WHOLE_CELL_DEFAULTS = dict(
    maxima_threshold=0.075,
    interior_threshold=0.2,
    radius=2,
    maxima_smooth=0.0,
    interior_smooth=2.0,
    small_objects_threshold=15,
    fill_holes_threshold=15,
)
NUCLEAR_DEFAULTS = dict(
    maxima_threshold=0.1,
    interior_threshold=0.2,
    radius=2,
    maxima_smooth=0.0,
    interior_smooth=2.0,
    small_objects_threshold=15,
    fill_holes_threshold=15,
)


MAXIMA_ALGORITHMS = ("peak_local_max", "h_maxima")
FLOOD_SURFACES = ("distance", "interior")
# deepcell-toolbox 0.12's deep_watershed: h-maxima markers, flooding the interior probability.
PUBLISHED_VARIANT = dict(maxima_algorithm="h_maxima", flood="interior")
# deep_watershed's own defaults, spelled out to switch a published-variant setting back.
OUR_VARIANT = dict(maxima_algorithm="peak_local_max", flood="distance")

# What ``calibrate`` tries: the thresholds and marker spacing a trained model is most sensitive to.
CALIBRATION_GRID = dict(
    maxima_threshold=(0.075, 0.1, 0.2, 0.3),
    interior_threshold=(0.1, 0.2, 0.3),
    radius=(2, 4),
    maxima_smooth=(0.0, 1.0),
)


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Ids renumbered 1..n in order of first value, background kept at 0; int32."""
    labels = np.asarray(labels)
    ids = np.unique(labels)
    ids = ids[ids != 0]
    if ids.size == 0:
        return np.zeros(labels.shape, np.int32)
    if ids[-1] == ids.size and ids[0] == 1:
        return labels.astype(np.int32, copy=True)
    lut = np.zeros(int(ids[-1]) + 1, np.int32)
    lut[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
    return lut[labels]


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Zero every object with fewer than ``min_size`` pixels (copy)."""
    labels = np.asarray(labels)
    if min_size <= 0 or not labels.any():
        return labels.copy()
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    if not small.any():
        return labels.copy()
    return np.where(small[labels], 0, labels)


def fill_small_holes(labels: np.ndarray, max_size: int) -> np.ndarray:
    """Fill background holes smaller than ``max_size`` px that are enclosed by one single object.

    A hole is a 4-connected background component that does not touch the image edge; a gap
    bounded by two different cells is not a hole of either and stays background.
    """
    labels = np.asarray(labels)
    out = labels.copy()
    if max_size <= 0 or not labels.any():
        return out
    holes, n = ndi.label(labels == 0)
    if n == 0:
        return out
    sizes = np.bincount(holes.ravel(), minlength=n + 1)
    edge = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
    candidate = sizes < max_size
    candidate[0] = False
    candidate[edge] = False
    if not candidate.any():
        return out
    # Pair each candidate hole with the labels of its 4-neighbours; a hole is fillable when exactly one distinct
    # label surrounds it. Candidate holes are a few small specks: their pixels are found once and only their
    # neighbours are looked at (no candidate hole touches the edge, so every pixel has all four).
    flat_holes = holes.ravel()
    where = np.flatnonzero(candidate[flat_holes])
    width = labels.shape[1]
    neighbours = np.concatenate([where - width, where + width, where - 1, where + 1])
    hole_of = np.tile(flat_holes[where], 4).astype(np.int64)
    label_of = labels.ravel()[neighbours].astype(np.int64)
    keep = label_of > 0
    stride = int(labels.max()) + 1
    keys = np.unique(hole_of[keep] * stride + label_of[keep])
    if keys.size == 0:
        return out
    pair_holes, pair_labels = keys // stride, keys % stride
    hole_ids, counts = np.unique(pair_holes, return_counts=True)
    single = np.isin(pair_holes, hole_ids[counts == 1])
    fill = np.zeros(n + 1, dtype=labels.dtype)
    fill[pair_holes[single]] = pair_labels[single]
    filled = fill[holes]
    mask = filled > 0
    out[mask] = filled[mask]
    return out


def peak_coordinates(image: np.ndarray, min_distance: int, threshold: float, exclude_border: bool = False):
    """``peak_local_max(image, min_distance=, threshold_abs=, exclude_border=)``'s coordinates, the same ones in the
    same order (highest first, ties in raster order), without its spacing pass where that pass has nothing to do.

    A candidate is a pixel equal to the maximum of its (2 min_distance + 1)² window, so two candidates closer than
    ``min_distance`` (Chebyshev) lie in each other's window and hold the same value; only then does skimage's
    spacing pass (a Python loop over every candidate: a third of the peak search at 2048²) drop one. One k-d tree
    query finds whether any such pair exists; if one does, or the image is flat, or borders are excluded, this is
    ``peak_local_max`` itself."""
    image = np.asarray(image)
    if exclude_border or min_distance < 1 or image.ndim != 2 or image.size <= 1:
        return peak_local_max(image, min_distance=min_distance, threshold_abs=threshold, exclude_border=exclude_border)
    size = 2 * min_distance + 1
    candidate = image == ndi.maximum_filter(image, footprint=np.ones((size, size), bool), mode="nearest")
    if candidate.all():
        return peak_local_max(image, min_distance=min_distance, threshold_abs=threshold, exclude_border=False)
    candidate &= image > threshold
    coords = np.nonzero(candidate)
    order = np.argsort(-image[coords], kind="stable")
    coords = np.transpose(coords)[order]
    if min_distance > 1 and len(coords) > 1:
        from scipy.spatial import cKDTree

        # integer coordinates: "closer than min_distance" is "at most min_distance - 1"
        if cKDTree(coords).query_pairs(r=min_distance - 1, p=np.inf, output_type="ndarray").size:
            return peak_local_max(image, min_distance=min_distance, threshold_abs=threshold, exclude_border=False)
    return coords


def seeds_and_mask(
    inner_distance,
    pixelwise,
    *,
    maxima_threshold: float = 0.1,
    interior_threshold: float = 0.2,
    radius: int = 2,
    maxima_smooth: float = 0.0,
    interior_smooth: float = 2.0,
    exclude_border: bool = False,
    maxima_algorithm: str = "peak_local_max",
    flood: str = "distance",
):
    """What ``deep_watershed`` floods: (smoothed distance, smoothed interior probability, foreground mask,
    markers int32), each (H, W). Split out so a diagnosis (``pipeline.model.diagnose``) can tell a cell
    the interior head missed from one that got no marker."""
    if maxima_algorithm not in MAXIMA_ALGORITHMS:
        raise ValueError(f"maxima_algorithm must be one of {', '.join(MAXIMA_ALGORITHMS)}, got {maxima_algorithm!r}")
    if flood not in FLOOD_SURFACES:
        raise ValueError(f"flood must be one of {', '.join(FLOOD_SURFACES)}, got {flood!r}")
    dist = np.asarray(inner_distance, dtype=np.float32)
    if dist.ndim == 3:
        dist = dist[..., 0]
    pw = np.asarray(pixelwise, dtype=np.float32)
    if pw.ndim == 3:
        interior = pw[..., 1] if pw.shape[-1] >= 2 else pw[..., 0]
    else:
        interior = pw
    if dist.shape != interior.shape:
        raise ValueError(f"distance {dist.shape} and pixelwise {interior.shape} maps differ in size")
    if interior_smooth and interior_smooth > 0:
        interior = ndi.gaussian_filter(interior, interior_smooth)
    if maxima_smooth and maxima_smooth > 0:
        dist = ndi.gaussian_filter(dist, maxima_smooth)
    mask = interior > interior_threshold
    if not mask.any():
        return dist, interior, mask, np.zeros(dist.shape, np.int32)
    if maxima_algorithm == "h_maxima":
        from skimage.measure import label as cc_label
        from skimage.morphology import disk, h_maxima

        peaks = h_maxima(dist, maxima_threshold, footprint=disk(max(int(radius), 1))).astype(bool)
        markers = cc_label(peaks).astype(np.int32)
    else:
        coords = peak_coordinates(dist, max(int(radius), 1), maxima_threshold, bool(exclude_border))
        markers = np.zeros(dist.shape, np.int32)
        if len(coords):
            markers[coords[:, 0], coords[:, 1]] = np.arange(1, len(coords) + 1, dtype=np.int32)
    # A marker outside the mask would seed nothing but still cost a label id.
    markers[~mask] = 0
    return dist, interior, mask, markers


def deep_watershed(
    inner_distance,
    pixelwise,
    *,
    small_objects_threshold: int = 15,
    fill_holes_threshold: int = 15,
    **seed_options,
) -> np.ndarray:
    """Instance labels int32 (H, W) from an inner-distance map and a pixelwise map. The markers and the mask, and
    the keywords that set them (``seed_options``: thresholds, radius, smoothing, variant), are ``seeds_and_mask``'s.

    ``inner_distance`` (H, W) or (H, W, 1); ``pixelwise`` (H, W, 3) [border, interior,
    background] or (H, W) / (H, W, 1) already holding the interior probability. Markers are
    local maxima (``peak_local_max`` with ``min_distance=radius``) of the optionally smoothed
    distance above ``maxima_threshold`` (the reference code uses h-maxima; this is about 5x faster
    at 2048² with similar output). The mask is the interior probability, Gaussian-smoothed with
    ``interior_smooth``, above ``interior_threshold``. Flooding is on the negative distance, so
    touching cells split along the valley between their distance peaks. Then objects under
    ``small_objects_threshold`` px are dropped and single-object holes under
    ``fill_holes_threshold`` px filled; ids are renumbered 1..n.

    ``maxima_algorithm="h_maxima"`` and ``flood="interior"`` give the published deepcell-toolbox
    variant (``PUBLISHED_VARIANT``): markers are the connected regional maxima at least
    ``maxima_threshold`` high (``h_maxima`` with a disk of ``radius``, then ``label``, so touching
    peaks make one seed) and the flood runs on the negative smoothed interior probability.
    """
    dist, interior, mask, markers = seeds_and_mask(inner_distance, pixelwise, **seed_options)
    if not markers.any():
        return np.zeros(dist.shape, np.int32)
    flood = seed_options.get("flood", seeds_and_mask.__kwdefaults__["flood"])
    labels = watershed(-(interior if flood == "interior" else dist), markers, mask=mask)
    labels = remove_small(labels, small_objects_threshold)
    labels = fill_small_holes(labels, fill_holes_threshold)
    return relabel_sequential(labels)


def match_nuclei_to_cells(whole_cell: np.ndarray, nuclear: np.ndarray) -> np.ndarray:
    """Renumber nuclei so a nucleus carries the id of the cell it overlaps most.

    Each cell gives its id to at most one nucleus (the one with the largest overlap); other
    nuclei, and nuclei outside every cell, get fresh ids above the largest cell id. This makes
    the two layers follow the project's convention that one id is one cell in both.
    """
    whole_cell = np.asarray(whole_cell)
    nuclear = np.asarray(nuclear)
    out = np.zeros(nuclear.shape, np.int32)
    if not nuclear.any():
        return out
    nuc = relabel_sequential(nuclear)
    n_nuc = int(nuc.max())
    both = (nuc > 0) & (whole_cell > 0)
    # One int64 key per (nucleus, cell) pair: a 1-D unique is several times faster than unique(axis=1)
    # and gives the same pairs in the same order.
    stride = int(whole_cell.max()) + 1
    keys, counts = np.unique(nuc[both].astype(np.int64) * stride + whole_cell[both], return_counts=True)
    pairs = np.stack([keys // stride, keys % stride])
    order = np.argsort(-counts, kind="stable")
    lut = np.zeros(n_nuc + 1, np.int64)
    taken: set[int] = set()
    for k in order:
        n_id, c_id = int(pairs[0, k]), int(pairs[1, k])
        if lut[n_id] == 0 and c_id not in taken:
            lut[n_id] = c_id
            taken.add(c_id)
    nxt = int(whole_cell.max()) + 1
    for n_id in range(1, n_nuc + 1):
        if lut[n_id] == 0:
            lut[n_id] = nxt
            nxt += 1
    return lut[nuc].astype(np.int32)


def _squeeze(a):
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 4:
        if a.shape[0] != 1:
            raise ValueError(f"postprocess_mesmer handles one image at a time, got batch of {a.shape[0]}")
        a = a[0]
    if a.ndim == 2:
        a = a[..., None]
    return a


def postprocess_mesmer(
    outputs,
    compartment: str = "both",
    whole_cell_kwargs: dict | None = None,
    nuclear_kwargs: dict | None = None,
    match_ids: bool = True,
) -> np.ndarray:
    """Labels from the four Mesmer outputs [wc distance, wc pixelwise, nuc distance, nuc pixelwise].

    Each output is (H, W, k) or (1, H, W, k). Returns int32 (H, W, 2) [whole-cell, nuclear] for
    ``"both"``, else (H, W, 1). With ``match_ids`` (default) a nucleus takes the id of the cell it
    overlaps most (see ``match_nuclei_to_cells``); the published code leaves the ids unrelated.
    """
    if len(outputs) != 4:
        raise ValueError(f"expected the 4 Mesmer outputs, got {len(outputs)}")
    wc_d, wc_p, nuc_d, nuc_p = (_squeeze(o) for o in outputs)
    wc_kw = {**WHOLE_CELL_DEFAULTS, **(whole_cell_kwargs or {})}
    nuc_kw = {**NUCLEAR_DEFAULTS, **(nuclear_kwargs or {})}
    if compartment == "whole-cell":
        return deep_watershed(wc_d, wc_p, **wc_kw)[..., None]
    if compartment == "nuclear":
        return deep_watershed(nuc_d, nuc_p, **nuc_kw)[..., None]
    if compartment != "both":
        raise ValueError(f"compartment must be 'both', 'whole-cell' or 'nuclear', got {compartment!r}")
    # The two layers are independent and the heavy steps (filters, flooding) release the GIL, so
    # two threads use two cores; the labels are the same as one after the other.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        wc_job = pool.submit(deep_watershed, wc_d, wc_p, **wc_kw)
        nuc = deep_watershed(nuc_d, nuc_p, **nuc_kw)
        wc = wc_job.result()
    if match_ids:
        nuc = match_nuclei_to_cells(wc, nuc)
    return np.stack([wc, nuc], axis=-1).astype(np.int32)


def calibrate(distances, pixelwise, truths, defaults: dict, grid: dict | None = None, known=None) -> dict:
    """The deep-watershed parameters with the best pooled F1 against ``truths``, searched over ``grid``.

    ``distances``/``pixelwise``/``truths`` are per-image lists (one layer's network maps and true
    labels). Meant for images the model was fitted to choose its epoch on (validation), or trained on
    when there are none: never for the images it is scored on. Returns ``{"kwargs": best params
    (``defaults`` updated), "f1": best F1, "default_f1": F1 with ``defaults``, "tried": n}``; on a tie
    the defaults win, then the earlier grid point. ``known``: per-image masks of where partial truths are
    known (None: everywhere); predicted cells mostly outside them are left out of the score
    (``pipeline.dataset.keep_known_cells``).
    """
    import itertools

    from pipeline import metrics
    from pipeline.dataset import keep_known_cells

    grid = CALIBRATION_GRID if grid is None else grid
    names = list(grid)

    def score(kwargs):
        preds = [deep_watershed(d, p, **kwargs) for d, p in zip(distances, pixelwise)]
        if known is not None:
            preds = [p if k is None else keep_known_cells(p, k) for p, k in zip(preds, known)]
        return metrics.evaluate(list(truths), preds)["pooled"]["f1"]

    best_kwargs, best = dict(defaults), score(defaults)
    default_f1 = best
    tried = 1
    for values in itertools.product(*(grid[n] for n in names)):
        kwargs = {**defaults, **dict(zip(names, values))}
        if kwargs == defaults:
            continue
        f1 = score(kwargs)
        tried += 1
        if f1 > best:
            best, best_kwargs = f1, kwargs
    return {"kwargs": best_kwargs, "f1": float(best), "default_f1": float(default_f1), "tried": tried}
