"""Whole slides, read and written lazily: OME-TIFF (pyramidal or not), tiled TIFF and OME-Zarr.

A ``Slide`` is a view onto the file: opening it reads only the header (TIFF tags, zarr metadata); ``read`` decodes the
chunks a region touches, nothing else, so a 40k x 40k x 60-channel slide costs what the region costs. TIFFs are read
through tifffile's zarr store (``tifffile.imread(..., aszarr=True)``), OME-Zarr through zarr itself. Every level of a
pyramid is listed (``levels``), full resolution first.

Labels go out the same way: ``LabelsWriter`` takes (H, W, 2) blocks and writes them chunk by chunk into an OME-Zarr
(``.zarr``), from which ``zarr_to_ome_tiff`` writes a tiled OME-TIFF tile by tile.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.io import ImageReadError, _channels_first, _tiff_channel_names

__all__ = ["Slide", "open_slide", "is_slide_path", "LabelsWriter", "zarr_to_ome_tiff", "LABEL_CHUNK"]

LABEL_CHUNK = 512
ZARR_SUFFIXES = (".zarr",)


def is_slide_path(path) -> bool:
    """True for an OME-Zarr folder or a TIFF whose pixels are tiled (files meant to be read region by region)."""
    path = Path(path)
    if path.suffix.lower() in ZARR_SUFFIXES or (path.is_dir() and _zarr_metadata(path) is not None):
        return True
    if path.suffix.lower() not in (".tif", ".tiff") or not path.is_file():
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return bool(tif.pages[0].is_tiled)
    except Exception:
        return False


def _zarr_metadata(path: Path):
    for name in ("zarr.json", ".zattrs", ".zarray"):
        if (path / name).is_file():
            return name
    return None


@dataclass
class Level:
    array: object  # a zarr array (or anything sliceable with a shape)
    axes: str  # one letter per axis of ``array``: Y, X, C, and length-1 others


class Slide:
    """An image (H, W, C) on disk, read region by region. ``levels`` holds each pyramid level's (H, W)."""

    def __init__(self, path, levels: list[Level], channel_names: list[str] | None, pixel_size_um=None, closer=None):
        self.path = Path(path)
        self._levels = levels
        base = levels[0]
        self.height = int(base.array.shape[base.axes.index("Y")])
        self.width = int(base.array.shape[base.axes.index("X")])
        self.n_channels = int(base.array.shape[base.axes.index("C")]) if "C" in base.axes else 1
        self.dtype = np.dtype(base.array.dtype)
        names = list(channel_names or [])
        self.channel_names = names if len(names) == self.n_channels else [f"channel_{i}" for i in range(self.n_channels)]
        self.pixel_size_um = pixel_size_um
        self._closer = closer

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.height, self.width, self.n_channels

    @property
    def levels(self) -> list[tuple[int, int]]:
        return [(int(lv.array.shape[lv.axes.index("Y")]), int(lv.array.shape[lv.axes.index("X")]))
                for lv in self._levels]

    def channel_index(self, want) -> int:
        if isinstance(want, (int, np.integer)) or (isinstance(want, str) and want.strip().isdigit()):
            i = int(want)
        else:
            folded = [n for n in self.channel_names if n.casefold() == str(want).casefold()]
            if len(folded) != 1:
                raise ImageReadError(f"{self.path}: no channel named {want!r}; available: {', '.join(self.channel_names)}")
            i = self.channel_names.index(folded[0])
        if not 0 <= i < self.n_channels:
            raise ImageReadError(f"{self.path}: channel index {i} out of range; there are {self.n_channels} channels")
        return i

    def read(self, y0: int, y1: int, x0: int, x1: int, channels=None, level: int = 0) -> np.ndarray:
        """Pixels (y1-y0, x1-x0, len(channels)) of the region at ``level`` (its own pixel grid), in the file's dtype.
        Only the chunks the region touches are decoded."""
        lv = self._levels[level]
        h, w = self.levels[level]
        y0, y1, x0, x1 = max(0, int(y0)), min(h, int(y1)), max(0, int(x0)), min(w, int(x1))
        if y1 <= y0 or x1 <= x0:
            raise ValueError(f"empty region {(y0, y1, x0, x1)} of a {h}x{w} level")
        channels = list(range(self.n_channels)) if channels is None else [int(c) for c in channels]
        index = []
        for axis in lv.axes:
            if axis == "Y":
                index.append(slice(y0, y1))
            elif axis == "X":
                index.append(slice(x0, x1))
            elif axis == "C":
                # one contiguous run of channels decodes each chunk once; the pick happens in memory
                lo, hi = min(channels), max(channels) + 1
                index.append(slice(lo, hi))
            else:
                index.append(0)
        data = np.asarray(lv.array[tuple(index)])
        kept = [a for a in lv.axes if a in "YXC"]
        if "C" not in kept:
            data, kept = data[..., None], kept + ["C"]
            lo = 0
        data = np.moveaxis(data, [kept.index("Y"), kept.index("X"), kept.index("C")], [0, 1, 2])
        return np.ascontiguousarray(data[:, :, [c - lo for c in channels]])

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _tiff_axes(path, shape, axes: str) -> str:
    """The series' axes as Y, X, C and length-1 others. tifffile names a plain (H, W, C) stack "QYX" (Q the rows):
    for those the io module's rule decides which end holds the channels, as ``read_image`` does."""
    if len(shape) == 3 and axes[0] in "QI":
        return "CYX" if _channels_first(shape, None, True) else "YXC"
    letters = ["C" if a in "SC" else a for a in axes]
    others = [i for i, (a, n) in enumerate(zip(letters, shape)) if a not in "YXC" and n > 1]
    if others and "C" not in letters and len(others) == 1:
        letters[others[0]] = "C"
    elif others:
        raise ImageReadError(f"{path}: axes {axes} of shape {tuple(shape)}; a slide is one (Y, X, C) image")
    if letters.count("Y") != 1 or letters.count("X") != 1 or letters.count("C") > 1:
        raise ImageReadError(f"{path}: cannot tell the image axes from {axes} {tuple(shape)}")
    return "".join(letters)


def _open_tiff(path: Path) -> Slide:
    import tifffile
    import zarr

    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:
        raise ImageReadError(f"{path}: not a readable TIFF file ({exc})") from None
    try:
        series = tif.series[0]
        axes = _tiff_axes(path, series.shape, series.axes)
        names = _tiff_channel_names(tif)
        mpp = _ome_pixel_size(tif)
        levels = []
        for i, level in enumerate(series.levels):
            store = level.aszarr()
            array = zarr.open(store, mode="r")
            if hasattr(array, "keys"):  # some stores open as a group holding the level
                array = array[sorted(array.keys())[0]]
            if len(array.shape) != len(axes):
                raise ImageReadError(f"{path}: level {i} has shape {array.shape}, level 0 axes {axes}")
            levels.append(Level(array, axes))
    except ImageReadError:
        tif.close()
        raise
    except Exception as exc:
        tif.close()
        raise ImageReadError(f"{path}: cannot read the TIFF's structure lazily ({exc})") from None
    return Slide(path, levels, names, mpp, closer=tif.close)


def _ome_pixel_size(tif):
    if not (tif.is_ome and tif.ome_metadata):
        return None
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(tif.ome_metadata)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag.endswith("Pixels") and el.get("PhysicalSizeX"):
            try:
                value = float(el.get("PhysicalSizeX"))
            except ValueError:
                return None
            unit = el.get("PhysicalSizeXUnit", "µm")
            return value if unit in ("µm", "um", "micron") and value > 0 else None
    return None


def _open_zarr(path: Path) -> Slide:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise ImageReadError(f"{path}: not a readable zarr store ({exc})") from None
    if not hasattr(node, "keys"):
        shape = node.shape
        axes = {2: "YX", 3: "CYX" if _channels_first(shape, None, True) else "YXC"}.get(len(shape))
        if axes is None:
            raise ImageReadError(f"{path}: a zarr array of shape {shape} is not an image")
        return Slide(path, [Level(node, axes)], None)
    attrs = dict(node.attrs)
    ome = attrs.get("ome", attrs)  # OME-Zarr 0.5 nests its metadata under "ome"
    multiscales = ome.get("multiscales")
    if not multiscales:
        raise ImageReadError(f"{path}: a zarr group without OME-Zarr multiscales metadata")
    scale = multiscales[0]
    axes_meta = scale.get("axes") or [{"name": n} for n in "tczyx"]
    letters = "".join((a["name"] if isinstance(a, dict) else str(a)).upper()[0] for a in axes_meta)
    levels = []
    for dataset in scale["datasets"]:
        array = node[dataset["path"]]
        if len(array.shape) != len(letters):
            raise ImageReadError(f"{path}: dataset {dataset['path']} has shape {array.shape}, axes {letters}")
        for a, n in zip(letters, array.shape):
            if a not in "YXC" and n != 1:
                raise ImageReadError(f"{path}: axis {a} of length {n}; a slide is one (Y, X, C) image")
        levels.append(Level(array, letters))
    names = [c.get("label") for c in (ome.get("omero") or {}).get("channels", [])] or None
    mpp = None
    try:
        transforms = scale["datasets"][0]["coordinateTransformations"]
        values = next(t["scale"] for t in transforms if t.get("type") == "scale")
        mpp = float(values[letters.index("X")]) or None
    except (KeyError, StopIteration, ValueError, TypeError, IndexError):
        pass
    return Slide(path, levels, names if names and all(names) else None, mpp)


def open_slide(path) -> Slide:
    """A lazy view of the slide at ``path`` (OME-TIFF / tiled TIFF / OME-Zarr folder)."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if path.is_dir() or path.suffix.lower() in ZARR_SUFFIXES:
        return _open_zarr(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        return _open_tiff(path)
    raise ImageReadError(f"{path}: a slide is an OME-TIFF, a tiled TIFF or an OME-Zarr folder, not {path.suffix!r}")


class LabelsWriter:
    """Labels (H, W, 2) int32 written block by block into an OME-Zarr group (array "0" of (2, H, W), axes c, y, x).
    Blocks must not straddle chunks two writers share when written concurrently: aligned to ``LABEL_CHUNK``."""

    def __init__(self, path, shape_hw, *, chunk: int = LABEL_CHUNK, mode: str = "w", pixel_size_um=None):
        import zarr

        self.path = Path(path)
        self.shape = (int(shape_hw[0]), int(shape_hw[1]))
        if mode == "w":
            if self.path.exists():
                shutil.rmtree(self.path)
            group = zarr.open_group(str(self.path), mode="w")
            self.array = group.create_array("0", shape=(2,) + self.shape, chunks=(1, chunk, chunk), dtype="int32",
                                            fill_value=0)
            scale = float(pixel_size_um) if pixel_size_um else 1.0
            group.attrs["multiscales"] = [{
                "version": "0.4", "name": "labels",
                "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
                         {"name": "x", "type": "space", "unit": "micrometer"}],
                "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, scale, scale]}]}],
            }]
            group.attrs["omero"] = {"channels": [{"label": "whole-cell"}, {"label": "nuclear"}]}
        else:
            self.array = zarr.open_group(str(self.path), mode="r+")["0"]

    def write(self, y0: int, x0: int, labels: np.ndarray) -> None:
        labels = np.asarray(labels, dtype=np.int32)
        h, w = labels.shape[:2]
        self.array[:, y0:y0 + h, x0:x0 + w] = np.moveaxis(labels, -1, 0)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return np.moveaxis(np.asarray(self.array[:, y0:y1, x0:x1]), 0, -1)


def zarr_to_ome_tiff(zarr_path, tiff_path, *, tile: int = 256, pixel_size_um=None) -> None:
    """Copy labels from a ``LabelsWriter`` store into a tiled, zlib-compressed OME-TIFF (2, H, W), one row of
    tiles in memory at a time. The file appears atomically."""
    import tifffile
    import zarr

    array = zarr.open_group(str(zarr_path), mode="r")["0"]
    layers, height, width = array.shape

    def tiles():
        for layer in range(layers):
            for y0 in range(0, height, tile):
                row = np.asarray(array[layer, y0:y0 + tile, :])
                for x0 in range(0, width, tile):
                    out = np.zeros((tile, tile), np.int32)
                    part = row[:, x0:x0 + tile]
                    out[:part.shape[0], :part.shape[1]] = part
                    yield out

    physical = {}
    if pixel_size_um:
        physical = {"PhysicalSizeX": float(pixel_size_um), "PhysicalSizeXUnit": "µm",
                    "PhysicalSizeY": float(pixel_size_um), "PhysicalSizeYUnit": "µm"}
    tiff_path = Path(tiff_path)
    tmp = tiff_path.with_name(f".{tiff_path.name}.{os.getpid()}.tmp")
    try:
        tifffile.imwrite(tmp, tiles(), shape=(layers, height, width), dtype=np.int32, tile=(tile, tile), ome=True,
                         photometric="minisblack", compression="zlib", bigtiff=True,
                         metadata={"axes": "CYX", "Channel": {"Name": ["whole-cell", "nuclear"]}, **physical})
        os.replace(tmp, tiff_path)
    finally:
        if tmp.exists():
            tmp.unlink()

