"""The API's caches: whole answers (an LRU keyed on the request and the partitions' fingerprints), facts from
Parquet footers, and parsed day files (tiles, klines) in an LRU bounded in bytes; the last two are keyed on the
file's version, so a replaced file is read again."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any


class AnswerCache:
    """A thread-safe LRU of answer bodies, bounded by their bytes. The key must include a fingerprint of every file
    the answer read, so a new or re-materialized partition is a new key and never hidden."""

    def __init__(self, max_bytes: int = 16 * 2**20, enabled: bool = True):
        self.max_bytes = max_bytes
        self.enabled = enabled
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.stats = {"cache_hits": 0, "cache_misses": 0}

    def get(self, key: Hashable) -> bytes | None:
        if not self.enabled:
            return None
        with self._lock:
            body = self._items.get(key)
            if body is None:
                self.stats["cache_misses"] += 1
                return None
            self._items.move_to_end(key)
            self.stats["cache_hits"] += 1
            return body

    def put(self, key: Hashable, body: bytes) -> None:
        if not self.enabled:
            return
        if len(body) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            self._bytes += len(body) - (len(old) if old is not None else 0)
            self._items[key] = body
            while self._bytes > self.max_bytes:
                self._bytes -= len(self._items.popitem(last=False)[1])

    def __len__(self) -> int:
        return len(self._items)


class FooterCache:
    """Small facts read from a file (its stored config, a column's maximum), once per file version."""

    def __init__(self, limit: int = 10_000):
        self.limit = limit
        self._facts: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def get(
        self,
        path: Path,
        what: str,
        read: Callable[[Path], Any],
        default: Any = None,
        version: tuple[int, int, int] | None = None,
    ) -> Any:
        """`read(path)`, cached per file version (mtime, size, inode: a replaced file is new even with an old
        mtime) and `what`; `default` when the file is missing or unreadable. `version` is the (mtime_ns, size,
        inode) a directory listing just took (`queries.Listing.file`), which saves the `stat`."""
        if version is not None:
            key = (str(path), *version, what)
        else:
            try:
                st = path.stat()
                key = (str(path), st.st_mtime_ns, st.st_size, st.st_ino, what)
            except OSError:
                return default
        if key in self._facts:
            return self._facts[key]
        try:
            value = read(path)
        except Exception:  # a file being replaced or unreadable: answer without this fact
            value = default
        with self._lock:
            if len(self._facts) > self.limit:
                self._facts.clear()
            self._facts[key] = value
        return value


class ByteLRU:
    """A thread-safe LRU of parsed files, bounded by the bytes of what it holds (each value has `.nbytes`).

    Keys must include the file's version (path, mtime_ns, size, inode), so a replaced file is loaded again and the
    old entry ages out. Concurrent requests for the same missing key may each load it once; that costs time, never
    correctness. `stats` counts hits, loads and the bytes held."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.stats = {"hits": 0, "loads": 0, "bytes": 0, "evictions": 0}

    def get(self, key: Hashable, load: Callable[[], Any]) -> Any:
        """The value under `key`, else `load()` (outside the lock), remembered while it fits."""
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
                self.stats["hits"] += 1
                return value
        value = load()
        with self._lock:
            self.stats["loads"] += 1
            if key not in self._items and value.nbytes <= self.max_bytes:
                self._items[key] = value
                self._bytes += value.nbytes
                while self._bytes > self.max_bytes:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= old.nbytes
                    self.stats["evictions"] += 1
            self.stats["bytes"] = self._bytes
        return value

    def __len__(self) -> int:
        return len(self._items)
