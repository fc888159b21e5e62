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


def encode_maps(maps: np.ndarray) -> bytes:
    maps = np.asarray(maps)
    if maps.dtype != np.uint8 or maps.ndim != 3 or maps.shape[2] != N_MAPS:
        raise ValueError(f"maps must be uint8 (H, W, {N_MAPS}), got {maps.dtype} {maps.shape}")
    # written once, read on every assist edit of a fresh worker: worth the slower, tighter level
    return encode_array(maps, level=6)


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
        maps = decode_array(storage.get(task.maps_key), dtypes=[np.uint8], shape=task.shape + (N_MAPS,))
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
