"""Stage ② text: a thread-safe LRU cache of prompt features between the text encoder and the UNet.

Keys are content hashes of everything that determines the features: the encoder's identity (model, backend,
dtype), the full template string (so the task is in it) and the edit source's VLM pixels. Values are the
features after the template tokens were dropped, ``(L, D)`` float32, stored read-only.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Protocol

import numpy as np
from numpy.typing import NDArray


class FeatureCache(Protocol):
    """What the pipeline needs from a feature cache."""

    def get(self, key: str) -> NDArray[np.float32] | None:
        """The cached features, or None."""
        ...

    def put(self, key: str, value: NDArray[np.float32]) -> None:
        """Store features."""
        ...


def feature_key(encoder_id: str, template: str, drop_idx: int, image: NDArray[np.uint8] | None) -> str:
    """The cache key of one text-encoder call."""
    digest = hashlib.sha256()
    digest.update(encoder_id.encode())
    digest.update(b"\0")
    digest.update(template.encode())
    digest.update(f"\0{drop_idx}\0".encode())
    if image is not None:
        digest.update(str(image.shape).encode())
        digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


class LRUFeatureCache:
    """A bounded LRU map with hit/miss counters.

    Args:
        max_entries: Entries kept (0 disables caching).
    """

    def __init__(self, max_entries: int = 1024) -> None:
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._data: OrderedDict[str, NDArray[np.float32]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> NDArray[np.float32] | None:
        """Look up and count a hit or a miss."""
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: str, value: NDArray[np.float32]) -> None:
        """Insert, evicting the least recently used entry when full."""
        if self.max_entries <= 0:
            return
        stored = np.array(value, dtype=np.float32, copy=True)
        stored.setflags(write=False)
        with self._lock:
            self._data[key] = stored
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)
