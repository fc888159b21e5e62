"""A big task's arrays in chunks: what the editor reads piece by piece, and what an edit rewrites piece by piece.

The image is immutable: besides its whole object it is stored once as chunks of every level (``store.chunks``),
which the chunk routes hand out as stored. Labels snapshots of a chunked task are manifests: a small JSON object
naming one stored chunk per (level, row, col). A new snapshot writes only the chunks that changed since the
snapshot before it and names the older chunks for the rest (chunk keys carry a random suffix and are never
rewritten, so sharing them is safe), so an edit on an 8192² task writes its patch and, every SNAPSHOT_EVERY
revisions, the few chunks the edits since the last snapshot touched, never the whole labels.
"""
from __future__ import annotations

import json
import secrets

import numpy as np

from backend.edits import Patch
from backend.store.arrays import decode_array, encode_array, validate_labels
from backend.store.chunks import ChunkGrid, apply_patch_at_level
from backend.store.storage import NotFound, Storage

MANIFEST_SUFFIX = ".chunks.json"
MANIFEST_FORMAT = "cellloop-chunks/1"
# tasks whose longer side is above this are stored and served in chunks; smaller ones load whole at once
CHUNKED_ABOVE = 1024


def is_manifest(key: str | None) -> bool:
    return key is not None and key.endswith(MANIFEST_SUFFIX)


def image_chunk_key(image_key: str, level: int, row: int, col: int) -> str:
    base = image_key[:-len(".npy.gz")] if image_key.endswith(".npy.gz") else image_key
    return f"{base}/chunks/{level}/{row}-{col}.npy.gz"


def image_channel_chunk_key(image_key: str, level: int, row: int, col: int, channel: int) -> str:
    return image_chunk_key(image_key, level, row, col)[:-len(".npy.gz")] + f"/c{channel}.npy.gz"


# levels from which each channel is also stored alone: those an editor's first view reads (level 0 only for a
# task that fits the window at full size; storing it per channel too would more than double the writing)
CHANNEL_CHUNKS_FROM_LEVEL = 1


def write_image_chunks(storage: Storage, image_key: str, image: np.ndarray, grid: ChunkGrid) -> None:
    """Every chunk of every level, all channels together, and at the coarse levels each channel alone too,
    (h, w, 1): an editor's first view asks for the channels its display shows, and a stored one-channel chunk is
    served as it is, where cutting it out of the whole chunk costs ~35 ms of CPU (decode 8 channels, encode one).
    Costs: for a 2048² task of 8 uint16 channels 2.6 s of CPU instead of 1.8, a quarter more bytes stored."""
    for level in range(grid.levels):
        for i, j in grid.chunks(level):
            chunk = grid.cut(image, level, i, j)
            storage.put(image_chunk_key(image_key, level, i, j), encode_array(chunk))
            if level >= CHANNEL_CHUNKS_FROM_LEVEL and chunk.ndim == 3 and chunk.shape[2] > 1:
                for c in range(chunk.shape[2]):
                    storage.put(image_channel_chunk_key(image_key, level, i, j, c),
                                encode_array(np.ascontiguousarray(chunk[:, :, c:c + 1])))


class ChannelsOutOfRange(ValueError):
    pass


def image_channels_bytes(storage: Storage, image_key: str, level: int, row: int, col: int,
                         channels: list[int]) -> bytes:
    """The image chunk at (level, row, col) holding only ``channels``, in that order (gzip .npy, (h, w, k)): one
    channel is its stored chunk as it is (no CPU); several, or an image stored before channels had chunks of their
    own, are cut out of the whole chunk."""
    if len(channels) == 1:
        try:
            return storage.get(image_channel_chunk_key(image_key, level, row, col, channels[0]))
        except NotFound:
            pass  # a channel that does not exist, a one-channel image, or chunks written before these
    return select_channels(storage.get(image_chunk_key(image_key, level, row, col)), channels)


def select_channels(data: bytes, channels: list[int]) -> bytes:
    """A stored image chunk (gzip .npy, (h, w, C)) cut down to ``channels``, in that order, values as stored.
    Decoding the chunk and encoding the slice costs ~20 + ~14 ms of CPU for a 512² chunk of 8 uint16 channels,
    ~10 ms more for each further channel kept."""
    chunk = decode_array(data, ndim=3)
    count = chunk.shape[2]
    bad = [c for c in channels if c >= count]
    if bad:
        raise ChannelsOutOfRange(f"channel {bad[0]} does not exist: this task has {count} channels (0-{count - 1})")
    return encode_array(np.ascontiguousarray(chunk[:, :, channels]))


class Manifest:
    """One chunked labels snapshot: the stored key of each chunk, level by level."""

    def __init__(self, shape, size: int, keys: list[list[list[str]]]):
        self.grid = ChunkGrid(shape, size)
        self.keys = keys

    def key(self, level: int, row: int, col: int) -> str:
        return self.keys[level][row][col]

    def all_keys(self) -> list[str]:
        return [k for level in self.keys for row in level for k in row]

    def to_bytes(self) -> bytes:
        return json.dumps({"format": MANIFEST_FORMAT, "shape": [self.grid.height, self.grid.width],
                           "size": self.grid.size, "keys": self.keys}).encode()

    @classmethod
    def from_bytes(cls, data: bytes, shape) -> "Manifest":
        try:
            doc = json.loads(data)
            if doc.get("format") != MANIFEST_FORMAT or tuple(doc["shape"]) != tuple(shape):
                raise ValueError(f"manifest of {doc.get('format')} {doc.get('shape')}, expected shape {tuple(shape)}")
            manifest = cls(doc["shape"], int(doc["size"]), doc["keys"])
            grid = manifest.grid
            if len(manifest.keys) != grid.levels or any(
                    [len(r) for r in manifest.keys[k]] != [grid.grid(k)[1]] * grid.grid(k)[0]
                    for k in range(grid.levels)):
                raise ValueError("manifest does not list one key per chunk")
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"bad labels manifest: {exc}") from None
        return manifest


def write_labels_snapshot(storage: Storage, key: str, labels: np.ndarray, size: int,
                          previous: Manifest | None = None, dirty: set | None = None, cut=None) -> list[str]:
    """Store ``labels`` as the manifest ``key`` (ending in MANIFEST_SUFFIX). With a ``previous`` manifest and the
    level-0 chunks ``dirty`` since it, only those chunks (and the coarse chunks over them) are written; the rest
    are the previous manifest's. ``cut(level, row, col)`` makes a chunk (default: from ``labels``; labels holding
    only some chunks pass one that builds a chunk from the previous snapshot and the patches since). Returns every
    key written (the caller deletes them if its revision loses)."""
    grid = ChunkGrid(labels.shape, size)
    cut = cut or (lambda level, i, j: grid.cut(labels, level, i, j))
    base = key[:-len(MANIFEST_SUFFIX)]
    written: list[str] = []
    keys = []
    for level in range(grid.levels):
        changed = None if previous is None or dirty is None else ChunkGrid.at_level(dirty, level)
        rows, cols = grid.grid(level)
        level_keys = []
        for i in range(rows):
            row_keys = []
            for j in range(cols):
                if changed is not None and (i, j) not in changed:
                    row_keys.append(previous.key(level, i, j))
                    continue
                chunk_key = f"{base}/{level}/{i}-{j}-{secrets.token_hex(4)}.npy.gz"
                storage.put(chunk_key, encode_array(cut(level, i, j)))
                written.append(chunk_key)
                row_keys.append(chunk_key)
            level_keys.append(row_keys)
        keys.append(level_keys)
    storage.put(key, Manifest(labels.shape[:2], size, keys).to_bytes())
    written.append(key)
    return written


def read_manifest(storage: Storage, key: str, shape) -> Manifest:
    return Manifest.from_bytes(storage.get(key), shape)


def read_chunk(storage: Storage, manifest: Manifest, level: int, row: int, col: int) -> np.ndarray:
    grid = manifest.grid
    h, w = grid.level_shape(level)
    s = grid.size
    expected = (min(s, h - row * s), min(s, w - col * s), 2)
    return validate_labels(decode_array(storage.get(manifest.key(level, row, col)), shape=expected),
                           shape=expected[:2])


def read_labels(storage: Storage, manifest: Manifest) -> np.ndarray:
    """The whole labels of a snapshot, from its level-0 chunks."""
    grid = manifest.grid
    labels = np.empty((grid.height, grid.width, 2), np.int32)
    s = grid.size
    for i, j in grid.chunks(0):
        labels[i * s:(i + 1) * s, j * s:(j + 1) * s] = read_chunk(storage, manifest, 0, i, j)
    return labels


class PartialLabels:
    """Labels of which only some level-0 chunks were read (the rest are zeros and must not be looked at): what a
    worker without the task in memory builds for a stroke, from a snapshot and the patches after it."""

    def __init__(self, storage: Storage, manifest: Manifest, patches: list[Patch], chunks: set, read=None):
        self.storage, self.manifest, self.patches, self.read = storage, manifest, patches, read
        grid = manifest.grid
        self.labels = np.zeros((grid.height, grid.width, 2), np.int32)  # pages never written cost no memory
        s = grid.size
        for i, j in chunks:
            self.labels[i * s:(i + 1) * s, j * s:(j + 1) * s] = chunk_at_revision(storage, manifest, 0, i, j, patches,
                                                                                 read)

    def chunk_after(self, patch: Patch):
        """cut(level, row, col) for write_labels_snapshot: a chunk of the labels once ``patch`` is applied."""
        return lambda level, i, j: chunk_at_revision(self.storage, self.manifest, level, i, j, self.patches + [patch],
                                                     self.read)


def chunk_at_revision(storage: Storage, manifest: Manifest, level: int, row: int, col: int,
                      patches: list[Patch], read=None) -> np.ndarray:
    """One chunk of the labels a snapshot plus the patches after it make (applied in order). ``read(manifest,
    level, row, col)``: a fresh copy of the stored chunk (default: read_chunk; the server passes a cached one)."""
    chunk = (read or (lambda m, *a: read_chunk(storage, m, *a)))(manifest, level, row, col)
    for patch in patches:
        apply_patch_at_level(chunk, manifest.grid, level, row, col, patch)
    return chunk
