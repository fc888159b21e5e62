"""Synthetic two-channel multiplexed tissue with dense ground truth, for tests and demos.

The generator is geometric rather than simulated: seeds on a jittered hexagonal lattice (some
removed, so neighbours grow into the gaps and sizes vary), each pixel assigned to its nearest
seed in a smoothly warped coordinate frame (irregular, touching cells), cells and nuclei cut out
as noisy ellipses around their seed. Everything is whole-array numpy, so a 2048² tissue takes a
few seconds. Scale assumes 0.5 µm/px: nuclei ~10-20 px across, cells ~1.5-2.5x that.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label as cc_label

__all__ = ["make_tissue", "make_dataset", "make_varied_tissue", "random_settings", "contact_sheet", "KNOBS"]


def _upsampler(n_fine, n_coarse, scale):
    # Gaussian-weighted interpolation matrix: the coarse-to-fine upsampling becomes two small
    # matrix products (BLAS), ~50x faster than ndimage.zoom with splines at 2048².
    pos = (np.arange(n_fine) + 0.5) / scale + 1.0
    d = pos[:, None] - np.arange(n_coarse)[None, :]
    m = np.exp(-0.5 * (d / 0.6) ** 2)
    return (m / m.sum(1, keepdims=True)).astype(np.float32)


def _smooth_noise(rng, shape, scale):
    """Zero-mean, unit-variance noise varying over ~``scale`` px (coarse grid, upsampled)."""
    h, w = shape
    if scale < 8:
        # Fine grain: a direct small-kernel blur is cheaper than the dense upsampling matrices.
        fine = ndi.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), 0.5 * scale)
        std = fine.std()
        return (fine - fine.mean()) / (std if std > 0 else 1.0)
    gh, gw = int(np.ceil(h / scale)) + 3, int(np.ceil(w / scale)) + 3
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    fine = _upsampler(h, gh, scale) @ coarse @ _upsampler(w, gw, scale).T
    std = fine.std()
    return (fine - fine.mean()) / (std if std > 0 else 1.0)


def _keep_largest_piece(labels):
    """Per id keep only its largest 4-connected piece; warping can leave small detached shards."""
    pieces = cc_label(labels, background=0, connectivity=1)
    n = int(pieces.max())
    if n == 0:
        return labels
    owner = np.zeros(n + 1, labels.dtype)
    owner[pieces.ravel()] = labels.ravel()
    size = np.bincount(pieces.ravel(), minlength=n + 1)
    ids = np.arange(1, n + 1)
    order = np.lexsort((-size[ids], owner[ids]))  # by owner, biggest first
    sorted_ids = ids[order]
    first = np.ones(len(sorted_ids), bool)
    first[1:] = owner[sorted_ids][1:] != owner[sorted_ids][:-1]
    keep = np.zeros(n + 1, bool)
    keep[sorted_ids[first]] = True
    return np.where(keep[pieces], labels, 0)


def _interior(labels):
    inner = labels > 0
    c = labels[1:-1, 1:-1]
    inner[0, :] = inner[-1, :] = inner[:, 0] = inner[:, -1] = False
    inner[1:-1, 1:-1] &= (
        (labels[:-2, 1:-1] == c) & (labels[2:, 1:-1] == c) & (labels[1:-1, :-2] == c) & (labels[1:-1, 2:] == c)
    )
    return inner


def _boundary(labels):
    p = np.pad(labels, 1, mode="edge")
    c = p[1:-1, 1:-1]
    return ((p[:-2, 1:-1] != c) | (p[2:, 1:-1] != c) | (p[1:-1, :-2] != c) | (p[1:-1, 2:] != c)) & (labels > 0)


def _layout(rng, fx, shape, density, nucleus_diameter, cell_scale, irregularity, nucleus_offset):
    """Raw cell ids and nucleus mask on a ``shape`` frame (before clean-up)."""
    h, w = shape
    spacing = float(nucleus_diameter) * float(cell_scale)
    margin = int(np.ceil(1.5 * spacing))
    H, W = h + 2 * margin, w + 2 * margin
    # Hexagonal lattice with jitter; random removal at rate 1 - density opens gaps that
    # neighbours grow into, which is what makes cell sizes vary like real tissue.
    dy = spacing * np.sqrt(3) / 2
    rows = np.arange(0, H, dy)
    pts = []
    for i, r in enumerate(rows):
        cols = np.arange((spacing / 2) * (i % 2), W, spacing)
        pts.append(np.stack([np.full_like(cols, r), cols], 1))
    pts = np.concatenate(pts)
    pts += rng.uniform(-0.22, 0.22, pts.shape) * spacing
    pts = pts[rng.random(len(pts)) < density]
    pts = np.clip(np.round(pts), 0, [H - 1, W - 1]).astype(np.int64)
    pts = np.unique(pts, axis=0)
    n = len(pts)
    seed_img = np.ones((H, W), bool)
    seed_img[pts[:, 0], pts[:, 1]] = False
    seed_id = np.zeros((H, W), np.int32)
    seed_id[pts[:, 0], pts[:, 1]] = np.arange(1, n + 1)
    near = ndi.distance_transform_edt(seed_img, return_distances=False, return_indices=True)

    amp = irregularity * spacing * 0.18
    wy = _smooth_noise(rng, (H, W), spacing * 0.6) * amp
    wx = _smooth_noise(rng, (H, W), spacing * 0.6) * amp
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    qy, qx = yy + wy, xx + wx
    iy = np.clip(np.rint(qy), 0, H - 1).astype(np.intp)
    ix = np.clip(np.rint(qx), 0, W - 1).astype(np.intp)
    sy, sx = near[0][iy, ix], near[1][iy, ix]
    ids = seed_id[sy, sx]
    del near, iy, ix

    # Per-cell shape parameters, looked up per pixel through the id. The radius limits scale with
    # the nominal nucleus size so tiny and huge cells keep the same spread as the 14 px default.
    size = float(nucleus_diameter) / 14.0
    nuc_r = np.clip(rng.normal(nucleus_diameter / 2, nucleus_diameter * 0.12, n + 1),
                    4.5 * min(1.0, size), 10.5 * max(1.0, size))
    cell_r = nuc_r * rng.uniform(1.5, 2.5, n + 1) * cell_scale / 2.0
    theta = rng.uniform(0, np.pi, n + 1)
    nuc_aspect = rng.uniform(1.0, 1.45, n + 1)
    cell_aspect = rng.uniform(1.0, 1.3, n + 1)
    ddy, ddx = qy - sy, qx - sx
    ct, st = np.cos(theta)[ids], np.sin(theta)[ids]
    u = ddy * ct + ddx * st
    v = -ddy * st + ddx * ct
    ca = cell_aspect[ids]
    rho_cell = np.sqrt((u / ca) ** 2 + (v * ca) ** 2)
    if nucleus_offset > 0:
        # Nuclei pushed off the cell's centre (polarised cells, oblique sections).
        shift = fx.uniform(0, nucleus_offset, n + 1) * cell_r
        angle = fx.uniform(0, 2 * np.pi, n + 1)
        u = u - (shift * np.cos(angle))[ids]
        v = v - (shift * np.sin(angle))[ids]
    na = nuc_aspect[ids]
    rho_nuc = np.sqrt((u / na) ** 2 + (v * na) ** 2)
    fine = _smooth_noise(rng, (H, W), 5.0)
    cell = np.where(rho_cell < cell_r[ids] * (1 + 0.12 * irregularity * fine), ids, 0).astype(np.int32)
    nuc_noise = _smooth_noise(rng, (H, W), 4.0)
    nuc_mask = rho_nuc < nuc_r[ids] * (1 + 0.08 * irregularity * nuc_noise)
    sl = (slice(margin, margin + h), slice(margin, margin + w))
    return np.ascontiguousarray(cell[sl]), nuc_mask[sl]


def _stretch(fx, shape, elongation, layout):
    """Elongated tissue: lay cells out on a frame squeezed by ``elongation`` along one axis, then map
    it back stretched along a random direction (nearest lookup, so ids stay ids)."""
    h, w = shape
    angle = fx.uniform(0, np.pi)
    side = int(np.ceil(np.hypot(h, w))) + 2
    src_h, src_w = side, int(np.ceil(side / elongation)) + 2
    cell, nuc_mask = layout((src_h, src_w))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy -= (h - 1) / 2.0
    xx -= (w - 1) / 2.0
    ca, sa = np.cos(angle), np.sin(angle)
    iy = np.clip(np.rint(yy * ca + xx * sa + (src_h - 1) / 2.0), 0, src_h - 1).astype(np.intp)
    ix = np.clip(np.rint((-yy * sa + xx * ca) / elongation + (src_w - 1) / 2.0), 0, src_w - 1).astype(np.intp)
    return np.ascontiguousarray(cell[iy, ix]), nuc_mask[iy, ix]


def _labels(rng, shape, density, nucleus_diameter, cell_scale, irregularity, *, fx=None, elongation=1.0,
            nucleus_offset=0.0, missing_nuclei=0.0):
    fx = fx if fx is not None else np.random.default_rng(0)

    def layout(frame):
        return _layout(rng, fx, frame, density, nucleus_diameter, cell_scale, irregularity, nucleus_offset)

    if elongation > 1.0:
        cell, nuc_mask = _stretch(fx, shape, float(elongation), layout)
    else:
        cell, nuc_mask = layout(shape)
    cell = _keep_largest_piece(cell)
    sizes = np.bincount(cell.ravel())
    cell = np.where(sizes[cell] < 15, 0, cell)
    # A nucleus sits inside its cell with at least a one-pixel rim of cytoplasm/membrane.
    nuc = np.where(nuc_mask & _interior(cell), cell, 0)
    nuc = _keep_largest_piece(nuc)
    # Tiny nuclei (cells a few px across) may be smaller than the usual 15 px floor.
    nuc_min = int(min(15, max(4, 0.3 * np.pi * (nucleus_diameter / 2) ** 2)))
    nsz = np.bincount(nuc.ravel(), minlength=cell.max() + 1)
    nuc = np.where(nsz[nuc] < nuc_min, 0, nuc)
    # Cells cut by the image edge may lose their nucleus, as in real crops; keep them only if
    # a real share of the cell is inside the frame.
    nsz = np.bincount(nuc.ravel(), minlength=cell.max() + 1)
    csz = np.bincount(cell.ravel(), minlength=cell.max() + 1)
    nominal_area = np.pi * (nucleus_diameter * cell_scale / 2) ** 2
    drop = (nsz == 0) & (csz < min(60, 0.25 * nominal_area))
    drop[0] = False
    cell = np.where(drop[cell], 0, cell)
    ids_present = np.unique(cell)
    ids_present = ids_present[ids_present > 0]
    lut = np.zeros(int(cell.max()) + 1, np.int32)
    lut[ids_present] = np.arange(1, len(ids_present) + 1, dtype=np.int32)
    cell, nuc = lut[cell], lut[nuc]
    if missing_nuclei > 0 and cell.any():
        # Nuclei outside the section: the cell is there, its nucleus is neither seen nor labelled.
        gone = fx.random(int(cell.max()) + 1) < missing_nuclei
        gone[0] = False
        nuc = np.where(gone[nuc], 0, nuc)
    return cell, nuc


def _artefacts(fx, shape, count):
    """Bright things that are not cells: fibres (thin curved streaks) and large smudges."""
    h, w = shape
    out = np.zeros((h, w), np.float32)
    k = fx.poisson(count * h * w / 65536.0)
    for _ in range(int(k)):
        if fx.random() < 0.6:
            # A fibre: a random walk of a few dozen px, 1-2 px wide after the blur.
            n = int(fx.integers(20, 120))
            heading = fx.uniform(0, 2 * np.pi) + np.cumsum(fx.normal(0, 0.08, n))
            ys = fx.uniform(0, h) + np.cumsum(np.sin(heading))
            xs = fx.uniform(0, w) + np.cumsum(np.cos(heading))
            keep = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
            out[ys[keep].astype(np.intp), xs[keep].astype(np.intp)] += fx.uniform(2.0, 6.0)
        else:
            out[int(fx.integers(0, h)), int(fx.integers(0, w))] += fx.uniform(200.0, 800.0)
    if k:
        out = ndi.gaussian_filter(out, 1.0) + ndi.gaussian_filter(out, 6.0) * 0.3
    return out


def _render(rng, cell, nuc, *, noise, blur, debris, background, fx=None, dim_nuclei=0.0, cytoplasm=0.0,
            bleed=0.0, illumination=0.0, speckle=0.0, artefacts=0.0):
    fx = fx if fx is not None else np.random.default_rng(0)
    h, w = cell.shape
    n = int(cell.max())
    # Membrane: the cells' borders (two pixels thick where two cells touch), intensity varying
    # per cell and along the border, with gaps where the modulation dips low.
    border = _boundary(cell)
    mem_cell = rng.lognormal(0.0, 0.35, n + 1).astype(np.float32)
    along = _smooth_noise(rng, (h, w), 6.0)
    mod = np.clip(0.75 + 0.45 * along, 0.0, None)
    mod[along < -1.3] = 0.0
    membrane = border * mem_cell[cell] * mod
    cyto = ((cell > 0) & (nuc == 0)) * 0.08 * mem_cell[cell]
    membrane = membrane + cyto
    if cytoplasm > 0:
        # Cytoplasmic stains (Pan-Keratin, CD45 in some panels) fill the cell, fainter over the
        # nucleus and grainy, instead of outlining it.
        grain = np.clip(1.0 + 0.3 * _smooth_noise(fx, (h, w), 3.0), 0.2, None)
        fill = (cell > 0) * mem_cell[cell] * grain * np.where(nuc > 0, 0.35, 0.8)
        membrane = (1.0 - cytoplasm) * membrane + cytoplasm * fill

    # Nuclei: per-cell brightness, chromatin texture, a few bright spots, dimmer rim.
    nuc_int = rng.lognormal(0.0, 0.3, n + 1).astype(np.float32)
    texture = 1.0 + 0.25 * _smooth_noise(rng, (h, w), 2.0)
    spots = ndi.gaussian_filter((rng.random((h, w)) < 0.01).astype(np.float32), 1.0) * 6.0
    nuc_inner = _interior(nuc)
    nuclear = (nuc > 0) * nuc_int[nuc] * (texture + spots) * np.where(nuc_inner, 1.0, 0.7)
    if dim_nuclei > 0:
        # Nuclei out of the focal plane: still labelled, but faint and soft.
        dim = fx.random(n + 1) < dim_nuclei
        dim[0] = False
        if dim.any():
            faint = ndi.gaussian_filter(np.where(dim[nuc], nuclear, 0.0), 2.0) * fx.uniform(0.15, 0.4)
            nuclear = np.where(dim[nuc], 0.0, nuclear) + faint

    if debris > 0:
        # Small bright blobs outside the ground truth: what Mesmer users report as false nuclei.
        k = rng.poisson(debris * h * w / 65536.0)
        if k:
            ys, xs = rng.integers(0, h, k), rng.integers(0, w, k)
            d = np.zeros((h, w), np.float32)
            d[ys, xs] = rng.uniform(8.0, 30.0, k)
            d = ndi.gaussian_filter(d, rng.uniform(1.0, 2.0))
            nuclear = nuclear + d
            membrane = membrane + 0.3 * d
    if artefacts > 0:
        a = _artefacts(fx, (h, w), artefacts)
        share = fx.uniform(0.0, 1.0)
        nuclear = nuclear + share * a
        membrane = membrane + (1.0 - share) * a
    if bleed > 0:
        # Spectral bleed-through: each channel picks up a share of the other.
        nuclear, membrane = (nuclear + bleed * fx.uniform(0.2, 1.0) * membrane,
                             membrane + bleed * fx.uniform(0.2, 1.0) * nuclear)

    bg = background * (1.0 + 0.5 * _smooth_noise(rng, (h, w), 64.0)).clip(0.2, None)
    X = np.stack([nuclear + bg, membrane + 0.8 * bg], axis=-1).astype(np.float32)
    if illumination > 0:
        # Uneven illumination: a smooth multiplicative field plus a tilt across the frame.
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        a = fx.uniform(0, 2 * np.pi)
        tilt = (np.cos(a) * yy + np.sin(a) * xx) / max(h, w)
        field = 1.0 + illumination * (0.5 * _smooth_noise(fx, (h, w), max(h, w) / 2.0) + tilt - tilt.mean())
        X *= np.clip(field, 0.1, None)[..., None]
    if blur > 0:
        X = ndi.gaussian_filter(X, sigma=(blur, blur, 0))
    if speckle > 0:
        k = 1.0 / (speckle * speckle)
        X *= ndi.gaussian_filter(fx.gamma(k, 1.0 / k, X.shape).astype(np.float32), (0.7, 0.7, 0))
    if noise > 0:
        # Shot noise at ~noise⁻² photons for a signal of 1, plus Gaussian read noise.
        photons = 1.0 / (noise * noise)
        X = rng.poisson(np.clip(X, 0, None) * photons).astype(np.float32) / photons
        X += rng.normal(0.0, noise * 0.3, X.shape).astype(np.float32)
    X = np.clip(X, 0.0, None)
    top = np.percentile(X.reshape(-1, 2), 99.5, axis=0)
    X /= np.where(top > 0, top, 1.0)
    return X.astype(np.float32)


VALUE_RANGES = ("unit", "uint8", "uint16", "float")
CHANNEL_FAULTS = (None, "empty-nuclear", "empty-membrane", "saturated-nuclear", "saturated-membrane")


def _detector(fx, X, value_range, channel_fault):
    """What the instrument writes: a faulty channel, then the file's value range."""
    if channel_fault is not None:
        kind, which = channel_fault.split("-")
        c = 0 if which == "nuclear" else 1
        if kind == "empty":
            # A channel that did not stain: read noise on a flat offset.
            X[..., c] = np.abs(fx.normal(0.02, 0.01, X.shape[:2]))
        else:
            # Gain set too high: most of the signal clips at the detector's ceiling.
            X[..., c] = np.minimum(X[..., c], np.percentile(X[..., c], fx.uniform(40, 80)))
    if value_range == "unit":
        return X.astype(np.float32)
    if value_range == "uint8":
        gain = fx.uniform(80, 400)  # above ~255 the brightest pixels saturate, as on real 8-bit scans
        return np.clip(np.rint(X * gain), 0, 255).astype(np.uint8)
    if value_range == "uint16":
        gain = 2.0 ** fx.uniform(7, 15)
        offset = fx.uniform(0, 200)
        return np.clip(np.rint(X * gain + offset), 0, 65535).astype(np.uint16)
    # Arbitrary float units (unmixed or background-subtracted exports), per channel.
    return (X * fx.lognormal(0, 2, 2) + fx.normal(0, 0.05, 2)).astype(np.float32)


def make_tissue(
    shape=(256, 256),
    *,
    density: float = 0.85,
    seed: int = 0,
    nucleus_diameter: float = 14.0,
    cell_scale: float = 1.8,
    irregularity: float = 1.0,
    noise: float = 0.08,
    blur: float = 1.2,
    debris: float = 3.0,
    background: float = 0.06,
    elongation: float = 1.0,
    nucleus_offset: float = 0.0,
    missing_nuclei: float = 0.0,
    dim_nuclei: float = 0.0,
    cytoplasm: float = 0.0,
    bleed: float = 0.0,
    illumination: float = 0.0,
    speckle: float = 0.0,
    artefacts: float = 0.0,
    value_range: str = "unit",
    channel_fault: str | None = None,
):
    """One synthetic tissue: ``X`` (H, W, 2) [nuclear, membrane] and ``y`` (H, W, 2) int32.

    ``y`` is [whole-cell, nuclear] with the same id for a cell and its nucleus, ids 1..n dense,
    no cell under 15 px, every nucleus inside its cell. ``density`` is the share of lattice sites
    that hold a cell (1 packs cells edge to edge); ``nucleus_diameter`` in px (0.5 µm/px);
    ``cell_scale`` is the mean cell/nucleus diameter ratio; ``noise`` the relative shot noise of a
    unit signal; ``debris`` the expected count of unlabelled bright specks per 256² tile.

    Domain-randomisation knobs (all off by default; ``KNOBS`` lists them with their ranges in
    ``random_settings``): ``elongation`` stretches the tissue along a random direction;
    ``nucleus_offset`` moves nuclei off-centre by up to that share of the cell radius;
    ``missing_nuclei`` / ``dim_nuclei`` are the shares of cells whose nucleus is out of the section
    (unlabelled, unseen) or out of focus (labelled, faint); ``cytoplasm`` blends the membrane channel
    from an outline (0) to a cytoplasmic fill (1); ``bleed`` is channel bleed-through;
    ``illumination`` the amplitude of uneven illumination; ``speckle`` multiplicative speckle;
    ``artefacts`` the expected count of fibres and smudges per 256² tile; ``value_range`` "unit"
    (float32, 99.5th percentile 1 per channel), "uint8", "uint16" or "float" (arbitrary units);
    ``channel_fault`` one of ``CHANNEL_FAULTS`` (an empty or saturated channel).
    """
    shape = (int(shape[0]), int(shape[1]))
    if value_range not in VALUE_RANGES:
        raise ValueError(f"value_range must be one of {', '.join(VALUE_RANGES)}, got {value_range!r}")
    if channel_fault not in CHANNEL_FAULTS:
        raise ValueError(f"channel_fault must be one of {CHANNEL_FAULTS}, got {channel_fault!r}")
    if not elongation >= 1.0:
        raise ValueError(f"elongation must be at least 1, got {elongation}")
    rng = np.random.default_rng(seed)
    # The randomisation knobs draw from their own stream, so the default tissue of a seed never changes.
    fx = np.random.default_rng([int(seed), 1])
    cell, nuc = _labels(rng, shape, float(density), float(nucleus_diameter), float(cell_scale), float(irregularity),
                        fx=fx, elongation=float(elongation), nucleus_offset=float(nucleus_offset),
                        missing_nuclei=float(missing_nuclei))
    X = _render(rng, cell, nuc, noise=noise, blur=blur, debris=debris, background=background, fx=fx,
                dim_nuclei=float(dim_nuclei), cytoplasm=float(cytoplasm), bleed=float(bleed),
                illumination=float(illumination), speckle=float(speckle), artefacts=float(artefacts))
    X = _detector(fx, X, value_range, channel_fault)
    return X, np.stack([cell, nuc], axis=-1).astype(np.int32)


def _log_uniform(rng, lo, hi):
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


# Each knob of ``make_tissue`` that ``random_settings`` draws, with how it is drawn.
KNOBS = {
    "nucleus_diameter": "cell diameter log-uniform in cell_diameter (default 6-60 px) / cell_scale",
    "cell_scale": "uniform 1.3-2.6",
    "density": "uniform 0.5-1.0",
    "irregularity": "uniform 0.3-1.4",
    "elongation": "1 (60%), else uniform 1.2-2.6",
    "nucleus_offset": "uniform 0-0.5",
    "missing_nuclei": "0 (60%), else uniform 0-0.3",
    "dim_nuclei": "0 (50%), else uniform 0-0.3",
    "cytoplasm": "0 (45%), 1 (30%), else uniform 0-1",
    "bleed": "0 (50%), else uniform 0-0.3",
    "illumination": "uniform 0-0.7",
    "speckle": "0 (50%), else uniform 0-0.4",
    "noise": "log-uniform 0.02-0.35",
    "blur": "uniform 0.3-2.5",
    "debris": "log-uniform 0.3-15",
    "artefacts": "0 (50%), else uniform 0-2",
    "background": "log-uniform 0.01-0.3",
    "value_range": "unit / uint8 / uint16 / float, equally likely",
    "channel_fault": "none (92%), else one of the four faults",
}


def random_settings(seed, *, cell_diameter=(6.0, 60.0)) -> dict:
    """A draw of every ``KNOBS`` entry for ``make_tissue`` (a dict of keyword arguments), seeded.

    ``cell_diameter`` bounds the typical cell diameter in px, drawn log-uniformly.
    """
    rng = np.random.default_rng([int(seed), 7])

    def sometimes(p_zero, lo, hi):
        return 0.0 if rng.random() < p_zero else float(rng.uniform(lo, hi))

    cell_scale = float(rng.uniform(1.3, 2.6))
    r = rng.random()
    return {
        "nucleus_diameter": _log_uniform(rng, *cell_diameter) / cell_scale,
        "cell_scale": cell_scale,
        "density": float(rng.uniform(0.5, 1.0)),
        "irregularity": float(rng.uniform(0.3, 1.4)),
        "elongation": 1.0 if rng.random() < 0.6 else float(rng.uniform(1.2, 2.6)),
        "nucleus_offset": float(rng.uniform(0, 0.5)),
        "missing_nuclei": sometimes(0.6, 0, 0.3),
        "dim_nuclei": sometimes(0.5, 0, 0.3),
        "cytoplasm": 0.0 if r < 0.45 else (1.0 if r < 0.75 else float(rng.uniform(0, 1))),
        "bleed": sometimes(0.5, 0, 0.3),
        "illumination": float(rng.uniform(0, 0.7)),
        "speckle": sometimes(0.5, 0, 0.4),
        "noise": _log_uniform(rng, 0.02, 0.35),
        "blur": float(rng.uniform(0.3, 2.5)),
        "debris": _log_uniform(rng, 0.3, 15.0),
        "artefacts": sometimes(0.5, 0, 2.0),
        "background": _log_uniform(rng, 0.01, 0.3),
        "value_range": VALUE_RANGES[int(rng.integers(len(VALUE_RANGES)))],
        "channel_fault": None if rng.random() < 0.92 else CHANNEL_FAULTS[1 + int(rng.integers(4))],
    }


def make_varied_tissue(shape=(256, 256), *, seed: int = 0, cell_diameter=(6.0, 60.0), **overrides):
    """Domain-randomised tissue: ``make_tissue`` with ``random_settings(seed)`` (``overrides`` win).

    Returns ``X``, ``y`` and the settings used. ``X`` keeps the drawn value range (float32, uint8 or
    uint16).
    """
    settings = {**random_settings(seed, cell_diameter=cell_diameter), **overrides}
    X, y = make_tissue(shape, seed=seed, **settings)
    return X, y, settings


def contact_sheet(samples, path, *, tile: int = 192) -> None:
    """Write a PNG of synthetic samples for a person to judge: one row per sample, showing the
    nuclear channel, the membrane channel, a colour composite and the whole-cell outlines."""
    from PIL import Image

    rows = []
    for X, y in samples:
        Xf = np.asarray(X, np.float32)[:tile, :tile]
        chans = []
        for c in range(2):
            ch = Xf[..., c]
            lo, hi = np.percentile(ch, 1), np.percentile(ch, 99.5)
            chans.append(np.clip((ch - lo) / (hi - lo if hi > lo else 1.0), 0, 1))
        nuc, mem = chans
        composite = np.stack([mem, np.zeros_like(nuc), nuc], -1)
        outline = np.repeat(0.6 * mem[..., None], 3, -1)
        outline[_boundary(y[:tile, :tile, 0])] = (1.0, 1.0, 0.0)
        outline[_boundary(y[:tile, :tile, 1])] = (0.0, 1.0, 1.0)
        row = np.concatenate([np.repeat(nuc[..., None], 3, -1), np.repeat(mem[..., None], 3, -1), composite, outline], 1)
        rows.append(np.pad(row, ((2, 2), (0, 0), (0, 0)), constant_values=1.0))
    sheet = (np.concatenate(rows, 0) * 255).astype(np.uint8)
    Image.fromarray(sheet).save(path)


def make_dataset(n: int, shape=(256, 256), *, seed: int = 0, **kw):
    """``n`` tissues stacked: X (N, H, W, 2) float32, y (N, H, W, 2) int32; image i uses seed (seed, i)."""
    Xs = np.empty((n, shape[0], shape[1], 2), np.float32)
    ys = np.empty((n, shape[0], shape[1], 2), np.int32)
    for i in range(n):
        s = np.random.SeedSequence([int(seed), i]).generate_state(1)[0]
        Xs[i], ys[i] = make_tissue(shape, seed=int(s), **kw)
    return Xs, ys
