"""Whole slides in storage: an image kept as square chunks (each a gzipped .npy under the image's key prefix), copied
in from a lazily read file one chunk at a time and read back region by region, so neither ingest, nor cutting crops,
nor prelabelling ever holds the slide. Images ingested whole (one .npy.gz) read through the same ``read_region``."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.store.arrays import decode_array, encode_array
from backend.store.models import Image, Project
from backend.store.storage import Storage

CHUNK = 1024  # px a side: 2 channels of uint16 are 4 MiB decoded, a 60-channel panel 120 MiB
# Crops are cut row by row: two rows of chunks kept decoded make each chunk decode once, within this many bytes.
CACHE_BYTES = 1 << 30


def chunk_key(prefix: str, row: int, col: int) -> str:
    return f"{prefix}{row}-{col}.npy.gz"


def add_slide(session: Session, storage: Storage, project: Project, slide, channels: list[int], *, name: str,
              pixel_size_um: float | None = None, tissue: str | None = None, platform: str | None = None,
              source_path: str | None = None, chunk: int | None = None, progress=None) -> Image:
    """Copy ``slide`` (a ``pipeline.slide.Slide``), its ``channels`` in the project's order, into storage chunk by
    chunk as a new image of ``project``; records its shape and the file's pyramid levels."""
    chunk = int(chunk or CHUNK)
    if len(channels) != len(project.channel_names):
        raise ValueError(f"{len(channels)} channels picked, project {project.name!r} has {len(project.channel_names)} "
                         f"({', '.join(project.channel_names)})")
    if slide.dtype.kind not in "uif" or slide.dtype.itemsize > 4:
        raise ValueError(f"slide pixels of type {slide.dtype} are not supported (8/16/32-bit integers or float32)")
    if pixel_size_um is not None and not pixel_size_um > 0:
        raise ValueError(f"pixel size must be positive, got {pixel_size_um}")
    if session.scalar(select(Image).where(Image.project_id == project.id, Image.name == name)) is not None:
        raise ValueError(f"project {project.name!r} already has an image named {name!r}")
    row = Image(project=project, name=name, image_key="", height=slide.height, width=slide.width,
                pixel_size_um=pixel_size_um, tissue=tissue, platform=platform, source_path=source_path,
                chunk_size=int(chunk), levels=[list(level) for level in slide.levels])
    session.add(row)
    session.flush()
    row.image_key = f"projects/{project.id}/images/{row.id}/chunks/"
    rows, cols = -(-slide.height // chunk), -(-slide.width // chunk)
    for r in range(rows):
        for c in range(cols):
            pixels = slide.read(r * chunk, (r + 1) * chunk, c * chunk, (c + 1) * chunk, channels)
            storage.put(chunk_key(row.image_key, r, c), encode_array(np.ascontiguousarray(pixels)))
            if progress is not None:
                progress(r * cols + c + 1, rows * cols)
    return row


class StoredSlide:
    """An image in storage read region by region; picklable (storage URL and key, not the storage), so a Dask
    worker can read it too. Decoded chunks are kept in a small LRU."""

    def __init__(self, storage_url: str, image_key: str, height: int, width: int, n_channels: int,
                 chunk: int | None, storage: Storage | None = None):
        self.storage_url, self.image_key = storage_url, image_key
        self.height, self.width, self.n_channels, self.chunk = int(height), int(width), int(n_channels), chunk
        self._storage = storage
        self._cache: OrderedDict = OrderedDict()

    @classmethod
    def of(cls, storage_url: str, row: Image, storage: Storage | None = None) -> "StoredSlide":
        return cls(storage_url, row.image_key, row.height, row.width, len(row.project.channel_names),
                   row.chunk_size, storage)

    def __getstate__(self):
        return {**self.__dict__, "_storage": None, "_cache": OrderedDict()}

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            from backend.store.storage import storage_from_url

            self._storage = storage_from_url(self.storage_url)
        return self._storage

    def _piece(self, r: int, c: int) -> np.ndarray:
        key = (r, c)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        if self.chunk is None:
            piece = decode_array(self.storage.get(self.image_key), max_pixels=None)
        else:
            piece = decode_array(self.storage.get(chunk_key(self.image_key, r, c)), max_pixels=None, max_bytes=None)
        self._cache[key] = piece
        while len(self._cache) > 1 and sum(p.nbytes for p in self._cache.values()) > CACHE_BYTES:
            self._cache.popitem(last=False)
        return piece

    def read(self, y0: int, y1: int, x0: int, x1: int, channels=None) -> np.ndarray:
        """Pixels (y1-y0, x1-x0, len(channels)) of the region, decoding only the chunks it touches."""
        y0, y1, x0, x1 = max(0, int(y0)), min(self.height, int(y1)), max(0, int(x0)), min(self.width, int(x1))
        channels = list(range(self.n_channels)) if channels is None else [int(c) for c in channels]
        if self.chunk is None:
            return np.ascontiguousarray(self._piece(0, 0)[y0:y1, x0:x1][..., channels])
        size = self.chunk
        out = None
        for r in range(y0 // size, -(-y1 // size)):
            for c in range(x0 // size, -(-x1 // size)):
                piece = self._piece(r, c)
                if out is None:
                    out = np.zeros((y1 - y0, x1 - x0, len(channels)), piece.dtype)
                ty0, tx0 = max(y0, r * size), max(x0, c * size)
                ty1, tx1 = min(y1, (r + 1) * size), min(x1, (c + 1) * size)
                out[ty0 - y0:ty1 - y0, tx0 - x0:tx1 - x0] = piece[ty0 - r * size:ty1 - r * size,
                                                                  tx0 - c * size:tx1 - c * size][..., channels]
        return out

