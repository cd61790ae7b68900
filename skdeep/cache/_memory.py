"""The memory layer of the embedding cache: an LRU dictionary bounded by bytes, shared by threads."""

from __future__ import annotations

import collections
import threading

# Rough per-entry cost beyond the vector's bytes: ndarray header, key, dict slot.
_ENTRY_OVERHEAD = 200


class MemoryLayer:
    """Read-only float32 vectors by key, least recently used first out once over ``limit`` bytes.

    Each entry also remembers the disk access stamp this process last knew or set for the key,
    so that memory hits can refresh old stamps on disk (see :mod:`skdeep.cache._store`).

    Parameters
    ----------
    limit : int
        Byte budget (vector bytes plus ``len(key) + _ENTRY_OVERHEAD`` per entry); 0 keeps nothing.
    """

    def __init__(self, limit):
        self.limit = limit
        self.lock = threading.RLock()
        # Two plain mappings rather than key -> [vector, stamp]: no per-entry container object
        # for the garbage collector to walk, which matters at 10^5-10^6 entries.
        self.vectors = collections.OrderedDict()  # key -> read-only float32 vector, LRU order
        self.stamps = {}  # key -> disk access time this process last knew or set
        self.used = 0

    def get(self, keys, out, *, now, stale_before):
        """Fill ``out[i]`` for the keys held; return (indices of misses, keys due for a stamp refresh).

        Refreshed keys get ``now`` as their stamp here; the caller writes it to disk.
        """
        if not self.limit:
            return list(range(len(keys))), []
        missing = []
        stale = []
        vectors, stamps = self.vectors, self.stamps
        with self.lock:
            for i, key in enumerate(keys):
                vector = vectors.get(key)
                if vector is None:
                    missing.append(i)
                    continue
                vectors.move_to_end(key)
                out[i] = vector
                if stamps[key] < stale_before:
                    stamps[key] = now
                    stale.append(key)
        return missing, stale

    def put(self, items, stamp):
        """Insert (key, read-only float32 vector) pairs, then evict least recently used ones."""
        if not self.limit:
            return
        limit = self.limit
        vectors, stamps = self.vectors, self.stamps
        with self.lock:
            used = self.used
            for key, vector in items:
                old = vectors.pop(key, None)
                if old is not None:
                    used -= old.nbytes + len(key) + _ENTRY_OVERHEAD
                size = vector.nbytes + len(key) + _ENTRY_OVERHEAD
                if size > limit:  # bigger than the whole budget: not kept, and flushes nothing
                    stamps.pop(key, None)
                    continue
                vectors[key] = vector
                stamps[key] = stamp
                used += size
            while used > limit:
                key, vector = vectors.popitem(last=False)
                del stamps[key]
                used -= vector.nbytes + len(key) + _ENTRY_OVERHEAD
            self.used = used

    def clear(self):
        with self.lock:
            self.vectors.clear()
            self.stamps.clear()
            self.used = 0

    def size(self):
        """(entries, bytes used)."""
        with self.lock:
            return len(self.vectors), self.used
