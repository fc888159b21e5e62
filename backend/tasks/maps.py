"""A crop's model maps: what the assist tools read, kept beside the crop's prelabel.

Prelabel cuts the whole image's maps (``pipeline.model.maps``: uint8 (H, W, 4), whole-cell and nuclear inner
distance and interior probability) into each crop it writes and stores them under a fresh key named by the model
version (``projects/P/tasks/T/maps/<model>-<random>.npy.gz``); the task row records the key and the model. A crop
prelabelled without maps (baseline, none) has its maps cleared, so maps always come from the model of the crop's
first revision. Maps never change after that: edits, undo and review leave them alone.
"""
from __future__ import annotations

import re
import secrets

import numpy as np
from sqlalchemy.orm import Session

from backend.store.arrays import decode_array, encode_array
from backend.store.models import Task
from backend.store.storage import NotFound, Storage

N_MAPS = 4
NO_MAPS_REASON = ("this crop has no model maps: it was not prelabelled by a Mesmer model "
                  "(baseline, none, or before maps were kept), so the assist tools are off")
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def maps_key(task: Task, model: str) -> str:
    name = _SAFE.sub("_", model)[:80] or "model"
    return f"projects/{task.batch.project_id}/tasks/{task.id}/maps/{name}-{secrets.token_hex(4)}.npy.gz"


# values this low are noise of the network's background (every assist threshold is above 0.02): storing them as
# 0 costs nothing and compresses better
NOISE_FLOOR = 3


def encode_maps(maps: np.ndarray) -> bytes:
    """Bytes of a crop's maps: each map a plane, each row stored as differences along it (the maps are smooth,
    so the differences are small and compress well), as a gzip .npy of uint8 (4, H, W)."""
    maps = np.asarray(maps)
    if maps.dtype != np.uint8 or maps.ndim != 3 or maps.shape[2] != N_MAPS:
        raise ValueError(f"maps must be uint8 (H, W, {N_MAPS}), got {maps.dtype} {maps.shape}")
    planes = np.where(maps < NOISE_FLOOR, 0, maps).transpose(2, 0, 1)
    deltas = np.diff(planes, axis=2, prepend=np.zeros(planes.shape[:2] + (1,), np.uint8))  # wraps modulo 256
    # written once, read on every assist edit of a fresh worker: worth the slower, tighter level
    return encode_array(np.ascontiguousarray(deltas), level=9)


def decode_maps(data: bytes, shape: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 4) from ``encode_maps`` bytes, checked against the crop's ``shape`` before inflating."""
    deltas = decode_array(data, dtypes=[np.uint8], shape=(N_MAPS,) + tuple(shape))
    planes = np.cumsum(deltas, axis=2, dtype=np.uint8)  # wraps modulo 256, undoing the differences
    return np.ascontiguousarray(planes.transpose(1, 2, 0))


def keep_crop_maps(session: Session, storage: Storage, task: Task, whole_maps: np.ndarray | None,
                   model: str) -> str | None:
    """After prelabel wrote the crop's first revision with ``model``: store its cut of ``whole_maps`` (the
    image's maps, or None when the model gave none) and record it on the task. Returns the new key."""
    old = task.maps_key
    key = None
    if whole_maps is not None:
        crop = np.ascontiguousarray(whole_maps[task.y0:task.y1, task.x0:task.x1])
        key = maps_key(task, model)
        storage.put(key, encode_maps(crop))
    task.maps_key = key
    task.maps_model = model if key is not None else None
    session.commit()
    if old is not None and old != key:
        storage.delete(old)
    return key


def load_maps(storage: Storage, task: Task, cache=None) -> np.ndarray | None:
    """The crop's maps (read-only when cached), or None when it has none."""
    if task.maps_key is None:
        return None
    ck = (repr(storage), task.maps_key)
    if cache is not None:
        hit = cache.get(ck)
        if hit is not None:
            return hit
    try:
        maps = decode_maps(storage.get(task.maps_key), task.shape)
    except NotFound:
        return None
    maps.flags.writeable = False
    if cache is not None:
        cache.put(ck, maps)
    return maps


def assist_status(task: Task) -> dict:
    """What the editor's toolbar shows: whether the assist tools are on, from which model, or why not."""
    if task.maps_key is None:
        return {"available": False, "model": None, "reason": NO_MAPS_REASON}
    return {"available": True, "model": task.maps_model, "reason": None}
