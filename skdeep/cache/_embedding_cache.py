"""The public embedding cache: a ``bytes`` key -> vector store over a memory and a disk layer."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._claims import ComputeClaims
from ._memory import MemoryLayer
from ._sqlite import _FLOAT32, STORAGE_DTYPES, CacheWarning, _as_keys, _to_storage
from ._store import _TOUCH_INTERVAL_S, DiskStore

#: Name of the SQLite file inside a cache directory.
DB_FILENAME = "embeddings.sqlite3"
_DEFAULTS = {"memory_bytes": 256 * 2**20, "max_disk_bytes": None, "storage_dtype": "float32"}


def _now():
    """Seconds since the epoch as an int (a function so tests can move the clock)."""
    return int(time.time())


@dataclasses.dataclass(frozen=True)
class CacheStats:
    """A snapshot of an :class:`EmbeddingCache`'s counters and sizes.

    Counters (``hits``, ``misses``, ``writes``, ``errors``) count what this process did since the
    cache was created or :meth:`EmbeddingCache.reset_stats` was called. Read it from
    :attr:`EmbeddingCache.stats`; each field below is also an attribute.

    Parameters
    ----------
    hits : int
        Keys found, in memory or on disk.
    misses : int
        Keys not found (including rows dropped as corrupt).
    writes : int
        Vectors stored by ``put_many``.
    errors : int
        Faults seen: corrupt rows discarded, database errors survived.
    memory_items : int
        Entries in the memory layer.
    memory_bytes : int
        Approximate bytes held by the memory layer (vectors plus a fixed per-entry overhead).
    disk_items : int or None
        Rows in the disk layer; None when there is no usable disk layer.
    disk_bytes : int or None
        Bytes of the database's live pages (free pages and the write-ahead log excluded);
        None when there is no usable disk layer.
    """

    hits: int
    misses: int
    writes: int
    errors: int
    memory_items: int
    memory_bytes: int
    disk_items: int | None
    disk_bytes: int | None

    @property
    def hit_rate(self):
        """Fraction of looked-up keys that were found (0.0 before any lookup)."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def __str__(self):
        disk = (
            "no disk layer"
            if self.disk_items is None
            else f"disk {self.disk_items} items / {self.disk_bytes / 2**20:.1f} MiB"
        )
        return (
            f"hits={self.hits} misses={self.misses} hit_rate={self.hit_rate:.1%} "
            f"writes={self.writes} errors={self.errors}; memory {self.memory_items} items / "
            f"{self.memory_bytes / 2**20:.1f} MiB; {disk}"
        )


# Caches alive in this process by token, so that unpickling or deep-copying a cache inside the
# process that owns it gives back the same object (one shared memory layer), not an empty twin.
_LIVE_CACHES = weakref.WeakValueDictionary()
_LIVE_LOCK = threading.Lock()


def _restore_cache(directory, memory_bytes, max_disk_bytes, storage_dtype, token):
    """Unpickle an :class:`EmbeddingCache`: the live one with this token, else a new one."""
    with _LIVE_LOCK:
        cache = _LIVE_CACHES.get(token)
        if cache is None:
            cache = EmbeddingCache(
                directory, memory_bytes=memory_bytes, max_disk_bytes=max_disk_bytes, storage_dtype=storage_dtype
            )
            cache._token = token
            _LIVE_CACHES[token] = cache
    return cache


class EmbeddingCache:
    """A key -> vector store with an LRU memory layer and an optional SQLite disk layer.

    Keys are opaque ``bytes`` (skdeep uses 16-byte content digests); values are 1-D float
    vectors, returned as read-only ``float32`` arrays. Lookups check memory first, then the
    disk in one query per chunk of keys, and promote disk hits to memory. Writes go to both
    layers, the disk in one transaction.

    Nothing is opened in ``__init__``: the database is created (with ``mkdir -p``) on first use,
    and re-opened in a child process after ``fork``. Pickling and copying are by reference:
    the pickle holds the directory and settings, never the vectors; within one process it
    resolves to the same cache object.

    Parameters
    ----------
    directory : str, os.PathLike or None, default=None
        Folder of the disk layer, holding ``embeddings.sqlite3``. None keeps vectors in memory
        only. Several processes may share one directory.
    memory_bytes : int, default=256 MiB
        Byte budget of the in-memory LRU layer (vectors plus about 200 bytes per entry);
        0 disables the memory layer.
    max_disk_bytes : int or None, default=None
        Size limit of the database's live pages. When a write takes it over the limit, the
        least recently accessed rows are deleted until it is under 90 % of it. Access times are
        approximate: a row's time is refreshed when read, at most once an hour per process.
        The write-ahead log (normally a few MiB) comes on top. None means no limit.
    storage_dtype : {"float32", "float16"}, default="float32"
        How new rows are stored on disk. ``"float16"`` halves the disk use at a precision of
        about 3 significant digits. Vectors are always returned, and kept in memory, as
        ``float32`` (the rounded values, identical from either layer). Rows whose values
        overflow float16 are stored as float32 instead.

    Attributes
    ----------
    stats : CacheStats
        Hit/miss/write/error counters of this process and current sizes.
    path : pathlib.Path or None
        The database file, or None for a memory-only cache.

    See Also
    --------
    resolve_cache : Turn an encoder's ``cache`` parameter into a shared cache object.

    Notes
    -----
    **Faults.** A damaged row (checksum, length or dtype mismatch) is deleted, counted in
    ``stats.errors`` and reported with a :class:`CacheWarning`. A database file SQLite reports
    as corrupt is renamed to ``embeddings.sqlite3.corrupt-<timestamp>`` (with its log) and a
    new one started; other processes notice the replacement on their next call and follow it.
    A full or read-only disk stops disk writes for the process after one warning (reads go
    on, through a read-only connection if need be); a file that cannot be opened at all
    leaves the cache memory-only. A lock held by another writer for longer than 30 s skips
    that write, with a warning. In all these cases the affected lookups are misses, so
    results are recomputed, never wrong.

    **Eviction** (``max_disk_bytes``) is an approximate LRU. Each row carries an access time,
    set when written and refreshed when read from disk, or served from memory, if it is
    more than an hour old: at most one small ``UPDATE`` per call, skipped if another process
    holds the write lock, so reads rarely write. After a write that takes the live pages over
    the limit, the oldest-accessed rows are deleted in the same transaction, down to 90 % of
    the limit, and the freed pages are returned to the file system.

    **Concurrency.** Each process opens its own connection lazily (again after ``fork``),
    guarded by a lock, so threads may share a cache. Writers queue on SQLite's lock (busy
    timeout 30 s); readers never wait for them (WAL). Memory-mapped I/O is left off on
    purpose: with it, a file truncated under a running process crashes it with ``SIGBUS``
    instead of raising an error the cache can recover from. A process frozen inside a write
    (``SIGSTOP``) keeps the lock until it resumes: other writers give up after 30 s each.

    **Compute claims.** Processes sharing a directory embed each missing key once between
    them: before computing its misses, an encoder claims them in a ``claims`` table of the same
    file, computes only the keys it got, and waits for the others to appear. A claim is a
    lease (10 s by default) that its owner renews every third of it while it computes, and
    releases when done or failed; a claim whose owner died (checked at once on the same host),
    stopped (``SIGSTOP``, a hung machine) or released it without writing is taken over by a
    waiter. Hosts sharing a directory need clocks synchronised to well within the lease.
    Claims obey the fault rules above: when the file cannot be written, every process
    computes its own misses.

    Examples
    --------
    >>> import numpy as np
    >>> from skdeep.cache import EmbeddingCache
    >>> cache = EmbeddingCache()  # memory only
    >>> cache.put_many([b"a", b"b"], np.array([[1.0, 2.0], [3.0, 4.0]]))
    >>> cache.get_many([b"b", b"zz"])
    [array([3., 4.], dtype=float32), None]
    >>> cache.stats.hits, cache.stats.misses
    (1, 1)
    """

    def __init__(
        self,
        directory=None,
        *,
        memory_bytes=256 * 2**20,
        max_disk_bytes=None,
        storage_dtype="float32",
    ):
        self.directory = directory
        self.memory_bytes = memory_bytes
        self.max_disk_bytes = max_disk_bytes
        self.storage_dtype = storage_dtype
        # Private run-time state: cheap objects only, no file is touched here.
        self._token = uuid.uuid4().hex
        self._memory = MemoryLayer(memory_bytes)
        self._init_process_state()
        self.reset_stats()

    def _init_process_state(self):
        self._pid = os.getpid()
        # New locks after fork: another thread of the parent may have held the old ones.
        self._memory.lock = threading.RLock()
        self._stats_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._store = None  # DiskStore, made on first use
        self._claims = None  # ComputeClaims, made on first use
        self._checked = False

    # ------------------------------------------------------------------ public API

    @property
    def path(self):
        """The database file (``<directory>/embeddings.sqlite3``), or None without a disk layer."""
        if self.directory is None:
            return None
        return Path(os.path.abspath(os.path.expanduser(os.fspath(self.directory)))) / DB_FILENAME

    def get_many(self, keys: Sequence[bytes]) -> list:
        """Look up vectors by key.

        Parameters
        ----------
        keys : sequence of bytes
            The keys to look up; duplicates are allowed.

        Returns
        -------
        list of ndarray or None
            One entry per key, in order: a read-only 1-D ``float32`` array for a hit (possibly
            shared with the cache, do not modify it), None for a miss.
        """
        return self._lookup(keys, count=True)

    def _lookup(self, keys, *, count):
        """``get_many``; ``count=False`` leaves the hit/miss counters alone (polling for claimed keys)."""
        self._prepare()
        keys = _as_keys(keys)
        out = [None] * len(keys)
        now = _now()
        missing, stale = self._memory.get(keys, out, now=now, stale_before=now - _TOUCH_INTERVAL_S)
        store = self._disk_store()
        if stale and store is not None:
            store.touch(stale, now)
        if missing and store is not None:
            unique = list(dict.fromkeys(keys[i] for i in missing))
            found = store.get(unique, now=now, stale_before=now - _TOUCH_INTERVAL_S)
            if found:
                for i in missing:
                    out[i] = found.get(keys[i])
                self._memory.put(found.items(), stamp=_now())
        if count:
            n_miss = sum(v is None for v in out) if missing else 0
            with self._stats_lock:
                self._hits += len(keys) - n_miss
                self._misses += n_miss
        return out

    def put_many(self, keys: Sequence[bytes], vectors) -> None:
        """Store vectors, row ``i`` under ``keys[i]``, replacing earlier values.

        Parameters
        ----------
        keys : sequence of bytes
            One key per row of ``vectors``.
        vectors : array-like of shape (n_keys, dim)
            Real-valued vectors. They are stored as ``storage_dtype`` and read back as float32.
        """
        self._prepare()
        keys = _as_keys(keys)
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[0] != len(keys):
            raise ValueError(
                f"vectors must be a 2-D array with one row per key: got shape {vectors.shape} for {len(keys)} keys"
            )
        if vectors.shape[1] == 0:
            raise ValueError(f"vectors must have at least one column, got shape {vectors.shape}")
        if vectors.dtype.kind not in "fiu":
            raise TypeError(f"vectors must be real numbers, got dtype {vectors.dtype}")
        if not keys:
            return
        stored = _to_storage(vectors, STORAGE_DTYPES[self.storage_dtype])
        store = self._disk_store()
        if store is not None:
            store.put(keys, stored, now=_now())
        if self.memory_bytes:
            # Per-row copies of exactly what a disk read returns (storage-rounded float32), so
            # that both layers agree and evicting a row really frees its bytes.
            as_f32 = stored if stored.dtype == _FLOAT32 else stored.astype(_FLOAT32)
            rows = [row.copy() for row in as_f32]
            for row in rows:
                row.flags.writeable = False
            self._memory.put(zip(keys, rows), stamp=_now())
        with self._stats_lock:
            self._writes += len(keys)

    def clear(self) -> None:
        """Delete every vector from memory and from the disk layer (the file stays usable)."""
        self._prepare()
        self._memory.clear()
        store = self._disk_store()
        if store is not None:
            store.clear()

    @property
    def stats(self) -> CacheStats:
        """Counters of this process and current sizes, as a :class:`CacheStats`."""
        self._prepare()
        store = self._disk_store()
        disk_items, disk_bytes = store.measure() if store is not None else (None, None)
        memory_items, memory_used = self._memory.size()
        with self._stats_lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                writes=self._writes,
                errors=self._errors,
                memory_items=memory_items,
                memory_bytes=memory_used,
                disk_items=disk_items,
                disk_bytes=disk_bytes,
            )

    def reset_stats(self) -> None:
        """Set the hit, miss, write and error counters back to zero."""
        with self._stats_lock:
            self._hits = self._misses = self._writes = self._errors = 0

    def __len__(self):
        """Number of distinct keys stored: on disk when there is a disk layer, else in memory."""
        disk_items = self.stats.disk_items
        if disk_items is not None:
            return disk_items
        return self._memory.size()[0]

    def __repr__(self):
        args = [] if self.directory is None else [repr(os.fspath(self.directory))]
        args += [f"{k}={getattr(self, k)!r}" for k, v in _DEFAULTS.items() if getattr(self, k) != v]
        return f"EmbeddingCache({', '.join(args)})"

    def __reduce__(self):
        # By reference: where the data lives and how to treat it, never the vectors themselves.
        directory = None if self.directory is None else str(self.path.parent)
        with _LIVE_LOCK:
            _LIVE_CACHES.setdefault(self._token, self)
        settings = (self.memory_bytes, self.max_disk_bytes, self.storage_dtype, self._token)
        return _restore_cache, (directory, *settings)

    # ------------------------------------------------------------------ process & layers

    def _prepare(self):
        if self._pid != os.getpid():
            if self._store is not None:
                self._store.abandon_after_fork()
            self._init_process_state()
        if not self._checked:
            self._check_params()

    def _check_params(self):
        if self.storage_dtype not in STORAGE_DTYPES:
            raise ValueError(f"storage_dtype must be one of {sorted(STORAGE_DTYPES)}, got {self.storage_dtype!r}")
        limits = (("memory_bytes", self.memory_bytes, 0), ("max_disk_bytes", self.max_disk_bytes, 1))
        for name, value, minimum in limits:
            if value is None and name == "max_disk_bytes":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        if self.directory is not None and not isinstance(self.directory, (str, os.PathLike)):
            raise TypeError(f"directory must be a str, os.PathLike or None, got {self.directory!r}")
        self._memory.limit = self.memory_bytes
        self._checked = True

    def _disk_store(self):
        """This process's :class:`DiskStore`, or None for a memory-only cache (call ``_prepare`` first)."""
        if self.directory is None:
            return None
        store = self._store
        if store is None:
            with self._state_lock:
                if self._store is None:
                    self._store = DiskStore(self.path, max_disk_bytes=self.max_disk_bytes, report=self._report)
                store = self._store
        return store

    def _compute_claims(self):
        """This process's :class:`ComputeClaims` on the disk layer, or None for a memory-only cache."""
        self._prepare()
        if self.directory is None:
            return None
        with self._state_lock:
            if self._claims is None:
                self._claims = ComputeClaims(self)
            return self._claims

    def _report(self, message, count=True):
        """Count a survived fault and warn about it (``message`` None: count only)."""
        if count:
            with self._stats_lock:
                self._errors += 1
        if message is not None:
            warnings.warn(message, CacheWarning, stacklevel=4)
