"""A per-process LRU of decoded arrays, so an edit costs what the touched area costs, not a whole decode.

Entries are keyed by (storage, key) where every key names an immutable object: a task's image, or the labels of
one committed revision (keys carry a random suffix and are never rewritten). A stale entry therefore cannot
exist, and gunicorn workers need not share anything: a worker that misses rebuilds from storage.

Labels are *taken* out of the cache for an edit (the edit mutates them in place) and put back under the new
revision only once it has committed, so a request that loses a race never leaves a half-edited array behind.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np


def _nbytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, tuple):
        return sum(_nbytes(v) for v in value)
    return 0


class ArrayCache:
    """Thread-safe LRU bounded by the bytes of the arrays it holds (``max_bytes`` 0 disables it)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: tuple):
        """The value, left in the cache (callers must not mutate it), or None."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def take(self, key: tuple):
        """The value, removed from the cache (the caller owns it now), or None."""
        with self._lock:
            item = self._items.pop(key, None)
            if item is None:
                self.misses += 1
                return None
            self._bytes -= item[1]
            self.hits += 1
            return item[0]

    def put(self, key: tuple, value) -> None:
        size = _nbytes(value)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, evicted) = self._items.popitem(last=False)
                self._bytes -= evicted
