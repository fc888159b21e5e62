"""Images, labels and datasets on disk: TIFF / OME-TIFF, NPZ / NPY, PNG / JPEG.

Every reader learns the array's shape from the file's header (TIFF tags, the .npy header, the
PNG/JPEG size) and checks the pixel limit before reading pixel data, so a small file that claims
to be 100k x 100k fails fast instead of allocating tens of gigabytes. Pickles are never loaded.
Failures are `ImageReadError` (a ValueError) naming the file, which the CLI prints as one line.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import threading
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np

from pipeline.arrays import MAX_PIXELS_DEFAULT, ArrayError, validate_image, validate_labels

__all__ = [
    "ImageReadError",
    "MAX_PIXELS_DEFAULT",
    "IMAGE_SUFFIXES",
    "read_image",
    "read_labels",
    "write_labels",
    "load_dataset",
    "save_dataset",
]

TIFF_SUFFIXES = (".tif", ".tiff")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_SUFFIXES = TIFF_SUFFIXES + PIL_SUFFIXES + (".npy", ".npz")

# A channel axis is short; an image axis is long. Multiplexed panels reach ~60 markers.
MAX_CHANNEL_AXIS = 64
_INT32_MAX = np.iinfo(np.int32).max


class ImageReadError(ValueError):
    """A file that is missing, not an image, truncated, too large or of an unusable shape."""


# ---- raw array readers, one per format -------------------------------------------------------
#
# Each returns (array, axes_hint, names): the array as stored with length-1 axes squeezed away
# (except when that would leave fewer than 2), axes_hint "CYX" / "YXC" / None when the format
# says which axis holds channels, and channel names when the file carries them.


def _fail(path, message: str) -> ImageReadError:
    return ImageReadError(f"{path}: {message}")


def _check_pixels(path, height: int, width: int, max_pixels) -> None:
    if max_pixels is not None and height * width > max_pixels:
        raise _fail(
            path,
            f"{height}x{width} = {height * width} pixels exceeds the limit of {max_pixels} "
            "(pass a larger max_pixels to read it anyway)",
        )


def _squeeze(shape, axes=None):
    """Drop length-1 axes, keeping at least two; returns (kept_positions, shape, axes)."""
    keep = [i for i, n in enumerate(shape) if n != 1]
    while len(keep) < 2 and len(keep) < len(shape):
        # Restore the rightmost dropped axes: a (1, W) image is 1 x W, not W.
        dropped = [i for i in range(len(shape)) if i not in keep]
        keep = sorted(keep + [dropped[-1]])
    new_axes = "".join(axes[i] for i in keep) if axes else None
    return keep, tuple(shape[i] for i in keep), new_axes


def _spatial_shape(path, shape, prefer_channels_first: bool, axes=None):
    """(H, W) of a 2-D or 3-D shape, using the channel-axis rules; errors for other ranks."""
    if len(shape) == 2:
        return shape
    if len(shape) == 3:
        return shape[1:] if _channels_first(shape, axes, prefer_channels_first) else shape[:2]
    raise _fail(path, f"expected a 2-D or 3-D image, found shape {tuple(shape)}")


def _channels_first(shape, axes, prefer_channels_first: bool) -> bool:
    # Axes that name the channel axis (OME/ImageJ "CYX", RGB "YXS", Pillow "YXC") are trusted;
    # tifffile labels other stacks "QYX" even when they were written (H, W, C), so those fall
    # through to the size rule: the channel axis is the short one.
    if axes in ("CYX", "SYX"):
        return True
    if axes in ("YXC", "YXS"):
        return False
    first, last = shape[0], shape[-1]
    if first <= MAX_CHANNEL_AXIS < last:
        return True
    if last <= MAX_CHANNEL_AXIS < first:
        return False
    if first <= MAX_CHANNEL_AXIS and last <= MAX_CHANNEL_AXIS and first != last:
        return first < last  # a small crop: the shorter end axis holds the channels
    return prefer_channels_first


class _TiffWarnings(logging.Handler):
    """Collects tifffile's log warnings raised by this thread.

    tifffile recovers from some damage by logging and carrying on: a truncated file whose second
    IFD is cut off reads as a one-page image, silently losing channels. Such warnings are errors here.
    """

    _FATAL = re.compile(r"invalid page offset|corrupt|truncat|failed to read|not enough data", re.I)

    def __init__(self):
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.messages = []

    def emit(self, record):
        if record.thread == self.thread:
            message = record.getMessage()
            if self._FATAL.search(message):
                self.messages.append(message)

    def __enter__(self):
        logging.getLogger("tifffile").addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("tifffile").removeHandler(self)

    def check(self, path):
        if self.messages:
            raise _fail(path, f"damaged or truncated TIFF ({'; '.join(self.messages)})")


def _read_tiff(path, max_pixels, index=None, probe=False):
    import tifffile

    with _TiffWarnings() as problems:
        try:
            tif = tifffile.TiffFile(path)
        except Exception as exc:
            raise _fail(path, f"not a readable TIFF file ({exc})") from None
        with tif:
            try:
                series = tif.series[0]
                shape, axes = tuple(series.shape), series.axes
            except Exception as exc:
                raise _fail(path, f"cannot parse TIFF structure ({exc})") from None
            problems.check(path)
            keep, sq_shape, sq_axes = _squeeze(shape, axes)
            if len(sq_shape) == 4:
                if index is None:
                    raise _fail(path, f"contains {sq_shape[0]} images {shape} (axes {axes}); pass index= to choose one")
                if not 0 <= index < sq_shape[0]:
                    raise _fail(path, f"index {index} out of range for {sq_shape[0]} images")
            elif len(sq_shape) not in (2, 3):
                raise _fail(path, f"expected a 2-D or 3-D image, found shape {shape} (axes {axes})")
            elif index not in (None, 0):
                raise _fail(path, f"index {index} out of range: the file holds one image")
            image_shape = sq_shape[1:] if len(sq_shape) == 4 else sq_shape
            image_axes = sq_axes[1:] if len(sq_shape) == 4 else sq_axes
            h, w = _spatial_shape(path, image_shape, True, image_axes)
            _check_pixels(path, h, w, max_pixels)
            if probe:
                return h, w
            _check_tiff_extent(path, tif, series)
            try:
                data = series.asarray()
            except Exception as exc:
                raise _fail(path, f"cannot read TIFF pixel data, the file may be truncated or corrupt ({exc})") from None
            problems.check(path)
            names = _tiff_channel_names(tif)
    data = data.reshape(sq_shape)
    if len(sq_shape) == 4:
        data = data[index]
    return data, image_axes, names


def _check_tiff_extent(path, tif, series) -> None:
    # tifffile can return zero-filled pixels for strips past the end of a truncated file; the
    # strip table says how long the file must be, so check before decoding.
    size = os.path.getsize(path)
    for page in series.pages:
        if page is None:
            continue
        offsets = getattr(page, "dataoffsets", ()) or ()
        counts = getattr(page, "databytecounts", ()) or ()
        for offset, count in zip(offsets, counts):
            if count and offset + count > size:
                raise _fail(path, f"truncated TIFF: pixel data ends at byte {offset + count}, file has {size}")


def _tiff_channel_names(tif):
    if tif.is_ome and tif.ome_metadata:
        try:
            root = ET.fromstring(tif.ome_metadata)
        except ET.ParseError:
            return None
        image = next((el for el in root if el.tag.endswith("}Image") or el.tag == "Image"), None)
        if image is None:
            return None
        pixels = next((el for el in image if el.tag.endswith("Pixels")), None)
        if pixels is None:
            return None
        channels = [el for el in pixels if el.tag.endswith("}Channel") or el.tag == "Channel"]
        names = [ch.get("Name") or ch.get("Fluor") for ch in channels]
        return names if names and all(names) else None
    ij = tif.imagej_metadata
    if ij and isinstance(ij.get("Labels"), (list, tuple)):
        return [str(label) for label in ij["Labels"]]
    return None


def _read_npy_stream(fh, path, max_pixels, index, probe=False):
    """Read one .npy from an open binary stream, checking its header before its data."""
    from numpy.lib import format as npformat

    try:
        version = npformat.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = npformat.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except Exception as exc:
        raise _fail(path, f"not a valid .npy array (it may be a pickle or truncated): {exc}") from None
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise _fail(path, "holds an object array; refusing to unpickle it (save plain numeric arrays)")
    if dtype.kind not in "biuf" or dtype.names is not None or dtype.subdtype is not None:
        raise _fail(path, f"unsupported dtype {dtype}")
    shape = tuple(int(n) for n in shape)
    keep, sq_shape, _ = _squeeze(shape)
    if len(sq_shape) == 4:
        if index is None:
            raise _fail(path, f"contains {sq_shape[0]} images {shape}; pass index= to choose one")
        if not 0 <= index < sq_shape[0]:
            raise _fail(path, f"index {index} out of range for {sq_shape[0]} images")
        image_shape = sq_shape[1:]
    elif len(sq_shape) in (2, 3):
        if index not in (None, 0):
            raise _fail(path, f"index {index} out of range: the file holds one image")
        image_shape = sq_shape
    else:
        raise _fail(path, f"expected a 2-D or 3-D image (or a stack of them), found shape {shape}")
    h, w = _spatial_shape(path, image_shape, False)
    _check_pixels(path, h, w, max_pixels)
    if probe:
        return h, w
    if len(sq_shape) == 4 and not fortran:
        # Skip to the chosen image: a TissueNet split is gigabytes, one image is not.
        frame_bytes = int(np.prod(image_shape)) * dtype.itemsize
        fh.seek(fh.tell() + index * frame_bytes)
        return _read_exact(fh, path, dtype, image_shape, fortran=False)
    data = _read_exact(fh, path, dtype, shape, fortran)
    dropped = tuple(i for i in range(len(shape)) if i not in keep)
    data = np.squeeze(data, axis=dropped) if dropped else data
    if len(sq_shape) == 4:
        data = data[index]
    return np.ascontiguousarray(data)


def _read_exact(fh, path, dtype, shape, fortran):
    """Read exactly the bytes of an array of `shape` into a fresh native-order array."""
    out = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
    buf = memoryview(out.reshape(-1, order="A").view(np.uint8))
    got = 0
    while got < len(buf):
        n = fh.readinto(buf[got:])
        if not n:
            break
        got += n
    if got != len(buf):
        raise _fail(path, f"truncated array data: expected {len(buf)} bytes, got {got}")
    return out.astype(dtype.newbyteorder("="), copy=False)


def _read_npy(path, max_pixels, index=None, probe=False):
    with open(path, "rb") as fh:
        result = _read_npy_stream(fh, path, max_pixels, index, probe)
    return result if probe else (result, None, None)


def _npz_member(path, keys):
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, OSError) as exc:
        raise _fail(path, f"not a readable .npz archive ({exc})") from None
    members = {name[:-4] if name.endswith(".npy") else name: name for name in archive.namelist()}
    for key in keys:
        if key in members:
            return archive, key, members[key]
    archive.close()
    raise _fail(path, f"has no array named {' or '.join(map(repr, keys))} (found: {sorted(members)})")


def _read_npz(path, keys, max_pixels, index=None, probe=False):
    archive, key, member = _npz_member(path, keys)
    with archive:
        try:
            with archive.open(member) as fh:
                data = _read_npy_stream(fh, f"{path}[{key}]", max_pixels, index, probe)
        except ImageReadError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise _fail(path, f"corrupt or truncated .npz member {key!r} ({exc})") from None
    return data if probe else (data, None, None)


def _read_pil(path, max_pixels, probe=False):
    from PIL import Image

    try:
        img = Image.open(path)
    except FileNotFoundError:
        raise
    except Image.DecompressionBombError as exc:
        raise _fail(path, f"image too large ({exc})") from None
    except Exception as exc:
        raise _fail(path, f"not a readable PNG/JPEG image ({exc})") from None
    with img:
        width, height = img.size
        _check_pixels(path, height, width, max_pixels)
        if probe:
            return height, width
        try:
            img.load()
            if img.mode in ("P", "PA", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
                img = img.convert("RGB")
            elif img.mode in ("1", "LA"):
                img = img.convert("L")
            data = np.asarray(img)
        except Exception as exc:
            raise _fail(path, f"cannot decode image data, the file may be truncated ({exc})") from None
    return data, ("YXC" if data.ndim == 3 else None), None


def _read_raw(path, *, max_pixels, index=None, npz_keys=("X",), probe=False):
    """(array, axes, names) of one file, or only its (H, W) from the header when probe is set."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a directory, expected an image file")
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return _read_tiff(path, max_pixels, index, probe)
    if suffix == ".npz":
        return _read_npz(path, npz_keys, max_pixels, index, probe)
    if suffix == ".npy":
        return _read_npy(path, max_pixels, index, probe)
    if suffix in PIL_SUFFIXES:
        return _read_pil(path, max_pixels, probe)
    raise ImageReadError(f"{path}: unsupported file type {suffix!r} (supported: {', '.join(IMAGE_SUFFIXES)})")


# ---- images ---------------------------------------------------------------------------------


def _to_hwc(path, data, axes, prefer_channels_first):
    if data.ndim == 2:
        return data[:, :, np.newaxis]
    if data.ndim == 3:
        if _channels_first(data.shape, axes, prefer_channels_first):
            return np.moveaxis(data, 0, -1)
        return data
    raise _fail(path, f"expected a 2-D or 3-D image, found shape {data.shape}")


def _read_one_image(path, max_pixels, index):
    data, axes, names = _read_raw(path, max_pixels=max_pixels, index=index)
    # Ties (both end axes short or both long) follow each format's habit: a TIFF stacks planes
    # as pages (channels first); .npy/.npz in CellLoop and TissueNet are channels-last.
    image = _to_hwc(path, data, axes, prefer_channels_first=Path(path).suffix.lower() in TIFF_SUFFIXES)
    try:
        image = validate_image(image, max_pixels=max_pixels)
    except ArrayError as exc:
        raise _fail(path, str(exc)) from None
    channels = image.shape[2]
    if names is None or len(names) != channels:
        names = [f"ch{i}" for i in range(channels)]
    return image, list(names)


def _image_files_in(directory: Path) -> list[Path]:
    files = sorted(
        p for p in directory.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise ImageReadError(f"{directory}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this directory")
    return files


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _read_channel_files(paths, max_pixels, index):
    paths = [Path(p) for p in paths]
    if not paths:
        raise ImageReadError("no image files given")
    # Check every header first so a bad or oversized file late in the list fails before the
    # earlier ones have been read into memory.
    sizes = [_read_raw(p, max_pixels=max_pixels, index=index, probe=True) for p in paths]
    for p, size in zip(paths, sizes):
        if size != sizes[0]:
            raise _fail(p, f"is {size[0]}x{size[1]}, but {paths[0]} is {sizes[0][0]}x{sizes[0][1]}")
    images, names = [], []
    for p in paths:
        image, own_names = _read_one_image(p, max_pixels, index)
        images.append(image)
        if image.shape[2] == 1:
            names.append(_stem(p))
        else:
            names.extend(f"{_stem(p)}:{n}" for n in own_names)
    dtypes = {im.dtype for im in images}
    if len(dtypes) > 1:
        # Mixed 8/16-bit/float channels: float32 holds them all exactly (up to 2**24).
        images = [im.astype(np.float32) for im in images]
    return np.concatenate(images, axis=2), names


def _select_channels(image, names, channels, source):
    if channels is None:
        return image, names
    if isinstance(channels, (str, int)):
        channels = [channels]
    picked = []
    for want in channels:
        if isinstance(want, (int, np.integer)) and not isinstance(want, bool):
            i = int(want)
        elif isinstance(want, str) and want.strip().isdigit():
            i = int(want.strip())
        elif isinstance(want, str):
            if want in names:
                i = names.index(want)
            else:
                folded = [n for n in names if n.casefold() == want.casefold()]
                if len(folded) != 1:
                    raise ImageReadError(
                        f"{source}: no channel named {want!r}; available: {', '.join(names)}"
                    )
                i = names.index(folded[0])
        else:
            raise ImageReadError(f"{source}: channel must be a name or an index, not {want!r}")
        if not 0 <= i < len(names):
            raise ImageReadError(
                f"{source}: channel index {i} out of range; there are {len(names)} channels: {', '.join(names)}"
            )
        picked.append(i)
    if not picked:
        raise ImageReadError(f"{source}: no channels selected")
    return np.ascontiguousarray(image[:, :, picked]), [names[i] for i in picked]


def read_image(
    path_or_paths,
    channels=None,
    *,
    channel_names=None,
    max_pixels: int | None = MAX_PIXELS_DEFAULT,
    index: int | None = None,
):
    """Read an image as ((H, W, C) array, channel names).

    path_or_paths: one file (.tif/.tiff/.ome.tif, .npz with "X", .npy, .png/.jpg), a list of files
    or a directory of files, each giving channels (e.g. one TIFF per MIBI marker; names are the
    file stems). channel_names overrides the names of all channels before `channels` selects and
    orders them by name or index. index picks one image from a stack (N, H, W, C), as in
    TissueNet's npz. dtype is float32, uint8 or uint16.
    """
    if isinstance(path_or_paths, (list, tuple)):
        source = f"{len(path_or_paths)} files"
        image, names = _read_channel_files(path_or_paths, max_pixels, index)
    else:
        path = Path(path_or_paths)
        source = str(path)
        if path.is_dir():
            image, names = _read_channel_files(_image_files_in(path), max_pixels, index)
        else:
            image, names = _read_one_image(path, max_pixels, index)
    if channel_names is not None:
        channel_names = [str(n) for n in channel_names]
        if len(channel_names) != image.shape[2]:
            raise ImageReadError(
                f"{source}: {len(channel_names)} channel names given for {image.shape[2]} channels"
            )
        names = channel_names
    return _select_channels(image, names, channels, source)


# ---- labels ---------------------------------------------------------------------------------


def read_labels(path, *, max_pixels: int | None = MAX_PIXELS_DEFAULT, index: int | None = None) -> np.ndarray:
    """Read labels as int32 (H, W, 2) [whole-cell, nuclear].

    A single (H, W) label image becomes whole-cell labels with an empty nuclear layer; (H, W, 2)
    and (2, H, W) are taken as they are. .npz files need an array "y" or "labels".
    """
    data, axes, _ = _read_raw(path, max_pixels=max_pixels, index=index, npz_keys=("y", "labels"))
    if data.ndim == 3:
        suffix = Path(path).suffix.lower()
        if data.shape[0] == 2 and (data.shape[-1] != 2 or suffix in TIFF_SUFFIXES):
            data = np.moveaxis(data, 0, -1)
        elif data.shape[-1] != 2:
            raise _fail(path, f"labels must be (H, W), (H, W, 2) or (2, H, W), found {data.shape}")
    elif data.ndim != 2:
        raise _fail(path, f"labels must be (H, W), (H, W, 2) or (2, H, W), found {data.shape}")
    if data.dtype.kind == "f":
        # Some tools save label images as float; accept them only when they are whole numbers.
        if not np.isfinite(data).all() or not np.array_equal(data, np.round(data)):
            raise _fail(path, "labels are floating point with non-integer values")
        if data.size and (data.min() < 0 or data.max() > _INT32_MAX):
            raise _fail(path, "label values must be between 0 and 2**31-1")
        data = data.astype(np.int64)
    elif data.dtype.kind == "b":
        data = data.astype(np.uint8)
    try:
        return validate_labels(data, allow_2d=True)
    except ArrayError as exc:
        raise _fail(path, str(exc)) from None


def _atomic_target(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def write_labels(path, labels, *, channel_names=("whole-cell", "nuclear"), pixel_size_um: float | None = None,
                 pixel_size_estimated: bool = False) -> None:
    """Write labels (H, W, 2) as OME-TIFF (2, H, W) int32 with channel names, or .npz (key "y").

    With ``pixel_size_um`` the OME-TIFF carries PhysicalSizeX/Y (the .npz a ``pixel_size_um`` entry), and an
    estimated size says so (the image's Description; ``pixel_size_estimated`` in the .npz).
    The file appears atomically (written beside it, then renamed), so a reader never sees half.
    """
    path = Path(path)
    labels = validate_labels(labels)
    names = [str(n) for n in channel_names]
    if len(names) != 2:
        raise ValueError("channel_names must name the 2 layers (whole-cell, nuclear)")
    suffix = path.suffix.lower()
    if suffix not in TIFF_SUFFIXES + (".npz",):
        raise ValueError(f"{path}: labels are written as .tif/.tiff/.ome.tif or .npz, not {suffix!r}")
    tmp = _atomic_target(path)
    try:
        physical = {}
        if pixel_size_um is not None:
            if not pixel_size_um > 0:
                raise ValueError(f"pixel size must be positive, got {pixel_size_um}")
            physical = {"PhysicalSizeX": float(pixel_size_um), "PhysicalSizeXUnit": "µm",
                        "PhysicalSizeY": float(pixel_size_um), "PhysicalSizeYUnit": "µm",
                        "Description": f"pixel size {pixel_size_um:.4g} µm "
                                       f"({'estimated from the cells, not measured' if pixel_size_estimated else 'given'})"}
        if suffix == ".npz":
            extra = {} if pixel_size_um is None else {"pixel_size_um": np.float64(pixel_size_um),
                                                      "pixel_size_estimated": np.bool_(pixel_size_estimated)}
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, y=labels, **extra)
        else:
            import tifffile

            tifffile.imwrite(
                tmp,
                np.ascontiguousarray(labels.transpose(2, 0, 1)),
                ome=True,
                metadata={"axes": "CYX", "Channel": {"Name": names}, **physical},
                compression="zlib",
                photometric="minisblack",
            )
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# ---- datasets -------------------------------------------------------------------------------


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"metadata value {value!r} of type {type(value).__name__} is not JSON-serialisable")


def save_dataset(path, X, y, meta=None, mask=None) -> None:
    """Write a dataset .npz: X (N, H, W, C) float32, y (N, H, W, 2) int32, meta as JSON strings.

    ``mask`` (N, H, W), optional: True where the labels are known (partial labels: the traced cells and
    a band around them, see ``pipeline.dataset.partial_label_mask``), False where they are unknown, not
    background. Stored as uint8 ``mask``; without one every pixel is known.

    When every image's meta names its tissue and platform, TissueNet's tissue_list and
    platform_list are written too, so TissueNet tooling can read the file.
    """
    path = Path(path)
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim == 3:
        X = X[..., np.newaxis]
    if X.ndim != 4 or X.shape[-1] < 1:
        raise ValueError(f"X must be (N, H, W, C), got {X.shape}")
    if X.dtype.kind not in "biuf":
        raise ValueError(f"X must be numeric, got {X.dtype}")
    X = X.astype(np.float32, copy=False)
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or infinite values")
    if y.ndim != 4 or y.shape[-1] != 2:
        raise ValueError(f"y must be (N, H, W, 2), got {y.shape}")
    if y.shape[:3] != X.shape[:3]:
        raise ValueError(f"X {X.shape} and y {y.shape} disagree on (N, H, W)")
    y = _checked_dataset_labels(y, path)
    n = X.shape[0]
    meta = [{} for _ in range(n)] if meta is None else [dict(m) for m in meta]
    if len(meta) != n:
        raise ValueError(f"meta has {len(meta)} entries for {n} images")
    arrays = {
        "X": X,
        "y": y,
        "meta": np.array([json.dumps(m, default=_json_default, sort_keys=True) for m in meta], dtype=str),
    }
    if mask is not None:
        arrays["mask"] = _checked_mask(mask, X.shape[:3], path).astype(np.uint8)
    if n and all("tissue" in m and "platform" in m for m in meta):
        arrays["tissue_list"] = np.array([str(m["tissue"]) for m in meta], dtype=str)
        arrays["platform_list"] = np.array([str(m["platform"]) for m in meta], dtype=str)
    tmp = _atomic_target(path)
    try:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_dataset_tiles(path, X_tiles, y_tiles, meta) -> dict:
    """``save_dataset`` for tiles held one by one: X (N, h, w, C) float32 and y (N, h, w, 2) int32 are streamed into
    the .npz tile after tile, never stacked, so building a dataset holds its tiles once, not twice. Returns
    ``{split: sha256}`` of each split's stacked (X, y) as ``pipeline.dataset.data_hash`` computes them, hashed while
    writing (meta's "split"). The file reads back with ``load_dataset``; it appears atomically."""
    import hashlib

    path = Path(path)
    n = len(X_tiles)
    if len(y_tiles) != n or len(meta) != n or n == 0:
        raise ValueError(f"{n} X tiles, {len(y_tiles)} y tiles and {len(meta)} meta entries: need as many of each, > 0")
    shape_x, shape_y = np.asarray(X_tiles[0]).shape, np.asarray(y_tiles[0]).shape
    if len(shape_x) != 3 or shape_y != shape_x[:2] + (2,):
        raise ValueError(f"tiles must be X (h, w, C) and y (h, w, 2), got {shape_x} and {shape_y}")
    splits: dict = {}
    for i, m in enumerate(meta):
        splits.setdefault(m.get("split"), []).append(i)
    # data_hash digests X's (dtype, shape) and bytes, then y's, in one sha256: X is written whole before y, so one
    # digest per split fed in writing order gives the same value
    digests = {s: hashlib.sha256() for s in splits}
    arrays = {
        "meta": np.array([json.dumps(m, default=_json_default, sort_keys=True) for m in meta], dtype=str),
    }
    if all("tissue" in m and "platform" in m for m in meta):
        arrays["tissue_list"] = np.array([str(m["tissue"]) for m in meta], dtype=str)
        arrays["platform_list"] = np.array([str(m["platform"]) for m in meta], dtype=str)
    tmp = _atomic_target(path)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
            for name, tiles, dtype, shape in (("X", X_tiles, np.float32, shape_x), ("y", y_tiles, np.int32, shape_y)):
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                          "shape": (n,) + shape}
                for s, idx in splits.items():
                    digests[s].update(str((np.dtype(dtype).str, (len(idx),) + shape)).encode())
                split_of = {i: s for s, idx in splits.items() for i in idx}
                with archive.open(f"{name}.npy", "w", force_zip64=True) as fh:
                    np.lib.format.write_array_header_2_0(fh, header)
                    for i, tile in enumerate(tiles):
                        tile = np.asarray(tile)
                        if tile.shape != shape:
                            raise ValueError(f"{name} tile {i} has shape {tile.shape}, the first {shape}")
                        if name == "X" and not np.isfinite(tile).all():
                            raise ValueError(f"X tile {i} contains NaN or infinite values")
                        data = np.ascontiguousarray(tile.astype(dtype, copy=False)).tobytes()
                        fh.write(data)
                        digests[split_of[i]].update(data)
            for name, value in arrays.items():
                with archive.open(f"{name}.npy", "w") as fh:
                    np.lib.format.write_array(fh, value, allow_pickle=False)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {s: d.hexdigest() for s, d in digests.items()}


def _checked_dataset_labels(y, path):
    if y.dtype.kind not in "iu":
        raise ImageReadError(f"{path}: y must hold integer labels, found {y.dtype}")
    if y.size and (int(y.min()) < 0 or int(y.max()) > _INT32_MAX):
        raise ImageReadError(f"{path}: label values must be between 0 and 2**31-1")
    return y.astype(np.int32, copy=False)


def _checked_mask(mask, shape, path):
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise ImageReadError(f"{path}: mask must be (N, H, W) = {tuple(shape)}, found {mask.shape}")
    if mask.dtype.kind not in "biu" or (mask.size and (int(mask.min()) < 0 or int(mask.max()) > 1)):
        raise ImageReadError(f"{path}: mask must hold 0 (unknown) and 1 (known) only")
    return mask.astype(bool, copy=False)


def load_dataset(path) -> dict:
    """Load a CellLoop or TissueNet dataset .npz as dict(X=float32, y=int32, meta=list of dicts, mask=bool
    (N, H, W) where labels are known, or None when the file has no mask: every pixel known)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ImageReadError(f"{path}: not a readable .npz dataset ({exc})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ImageReadError(f"{path}: expected an .npz archive with X and y")
    with npz:
        missing = {"X", "y"} - set(npz.files)
        if missing:
            raise ImageReadError(f"{path}: dataset lacks {sorted(missing)} (has {sorted(npz.files)})")
        try:
            X, y = npz["X"], npz["y"]
            meta_raw = npz["meta"] if "meta" in npz.files else None
            mask = npz["mask"] if "mask" in npz.files else None
            tissues = npz["tissue_list"] if "tissue_list" in npz.files else None
            platforms = npz["platform_list"] if "platform_list" in npz.files else None
        except ValueError as exc:
            # Object arrays (allow_pickle=False) land here.
            raise ImageReadError(f"{path}: refusing to load pickled/object arrays ({exc})") from None
        except Exception as exc:
            raise ImageReadError(f"{path}: corrupt or truncated dataset ({exc})") from None
    for name, value in (("X", X), ("y", y), ("meta", meta_raw), ("mask", mask), ("tissue_list", tissues), ("platform_list", platforms)):
        # NpzFile hands back raw bytes for a member that is not a .npy array (a pickle, say).
        if value is not None and not isinstance(value, np.ndarray):
            raise ImageReadError(f"{path}: member {name!r} is not a .npy array")
    if X.ndim == 3:
        X = X[..., np.newaxis]
    if X.ndim != 4:
        raise ImageReadError(f"{path}: X must be (N, H, W, C), found {X.shape}")
    if X.dtype.kind not in "biuf":
        raise ImageReadError(f"{path}: X must be numeric, found {X.dtype}")
    if y.ndim != 4 or y.shape[-1] != 2 or y.shape[:3] != X.shape[:3]:
        raise ImageReadError(f"{path}: y must be (N, H, W, 2) matching X {X.shape}, found {y.shape}")
    X = X.astype(np.float32, copy=False)
    if not np.isfinite(X).all():
        raise ImageReadError(f"{path}: X contains NaN or infinite values")
    y = _checked_dataset_labels(y, path)
    n = X.shape[0]
    if meta_raw is not None:
        try:
            meta = [json.loads(str(s)) for s in np.asarray(meta_raw).reshape(-1)]
        except json.JSONDecodeError as exc:
            raise ImageReadError(f"{path}: meta is not a JSON string array ({exc})") from None
    elif tissues is not None or platforms is not None:
        meta = [{} for _ in range(n)]
        for key, values in (("tissue", tissues), ("platform", platforms)):
            if values is not None:
                values = np.asarray(values).reshape(-1)
                if len(values) != n:
                    raise ImageReadError(f"{path}: {key}_list has {len(values)} entries for {n} images")
                for m, v in zip(meta, values):
                    m[key] = str(v)
    else:
        meta = [{} for _ in range(n)]
    if len(meta) != n or not all(isinstance(m, dict) for m in meta):
        raise ImageReadError(f"{path}: meta must be one JSON object per image ({len(meta)} for {n})")
    if mask is not None:
        mask = _checked_mask(mask, X.shape[:3], path)
    return {"X": X, "y": y, "meta": meta, "mask": mask}
