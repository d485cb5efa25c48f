"""A least-recently-used cache of encoded bytes, bounded by their total size (so memory stays
flat however many tiles and thumbnails are asked for)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable


class ByteCache:
    """`get_or_make(key, make)`: the cached bytes, or `make()`'s, kept while they fit.

    Example:
        >>> cache = ByteCache(max_bytes=10)
        >>> cache.get_or_make("a", lambda: b"12345")
        b'12345'
        >>> cache.get_or_make("b", lambda: b"123456") and "a" in cache
        False
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    @property
    def size(self) -> int:
        """Bytes held now."""
        return self._size

    def get_or_make(self, key: Hashable, make: Callable[[], bytes]) -> bytes:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return found
            self.misses += 1
        data = make()  # outside the lock: tiles are made in parallel
        if len(data) <= self.max_bytes:
            with self._lock:
                if key not in self._items:
                    self._items[key] = data
                    self._size += len(data)
                while self._size > self.max_bytes and self._items:
                    _, old = self._items.popitem(last=False)
                    self._size -= len(old)
        return data
