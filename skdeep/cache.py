"""Embedding cache: a ``bytes`` key -> vector store with a memory layer and a SQLite disk layer.

The cache knows nothing about models. Its callers (skdeep's encoder engine) compute opaque
content keys and hand over finished vectors; the cache only stores, finds and protects them.

Layers
------
* **Memory**: an LRU dictionary bounded by bytes, shared by the threads of one process.
* **Disk** (optional): one SQLite file, ``<directory>/embeddings.sqlite3``, in WAL mode so that
  several processes can read while one writes. Each row stores the vector's dtype, length and a
  CRC-32 of its key and bytes, so a damaged row is detected and dropped rather than returned.

Every disk fault (corrupt file, full or read-only disk, lock time-out) is reported with a
:class:`CacheWarning` and turned into cache misses: callers recompute, they never see an
exception from the disk layer.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import sqlite3
import threading
import time
import uuid
import warnings
import weakref
import zlib
from itertools import repeat
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["CacheStats", "CacheWarning", "EmbeddingCache", "resolve_cache", "DB_FILENAME"]

#: Name of the SQLite file inside a cache directory.
DB_FILENAME = "embeddings.sqlite3"
#: Environment variable naming the directory of the process-wide default cache.
CACHE_DIR_ENV = "SKDEEP_CACHE_DIR"

_SCHEMA_VERSION = 1
_STORAGE_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
# Row dtypes this version can decode (another process may have written float16 or float64 rows).
_ROW_DTYPES = {d.str: d for d in (np.dtype("<f2"), np.dtype("<f4"), np.dtype("<f8"))}
_FLOAT32 = np.dtype(np.float32)
# Rough per-entry cost of the memory layer beyond the vector's bytes: ndarray header, key, dict slot.
_ENTRY_OVERHEAD = 200
# A row's access time is rewritten at most this often: keeps reads from turning into writes.
_TOUCH_INTERVAL_S = 3600
_BUSY_TIMEOUT_S = 30.0
_PAGE_SIZE = 16384
# Eviction frees down to this fraction of max_disk_bytes, so it runs once per many writes.
_EVICT_LOW_WATER = 0.9
# SQLite's historical default bound on ``?`` parameters; used when the library cannot tell us.
_DEFAULT_MAX_VARIABLES = 999

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    id    INTEGER PRIMARY KEY,
    key   BLOB    NOT NULL UNIQUE,
    dtype TEXT    NOT NULL,
    dim   INTEGER NOT NULL,
    crc   INTEGER NOT NULL,
    atime INTEGER NOT NULL,
    data  BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS vectors_by_atime ON vectors (atime);
"""
# ``data`` is the last column so that the columns before it never need the blob's overflow pages.
_INSERT = "INSERT OR REPLACE INTO vectors (key, dtype, dim, crc, atime, data) VALUES (?, ?, ?, ?, ?, ?)"


def _now():
    """Seconds since the epoch as an int (a function so tests can move the clock)."""
    return int(time.time())


class CacheWarning(UserWarning):
    """A fault in the embedding cache that was survived (data dropped, disk layer disabled).

    The affected vectors are treated as cache misses and recomputed; results stay correct.
    """


@dataclasses.dataclass(frozen=True)
class CacheStats:
    """A snapshot of an :class:`EmbeddingCache`'s counters and sizes.

    Counters (``hits``, ``misses``, ``writes``, ``errors``) count what this process did since the
    cache was created or :meth:`EmbeddingCache.reset_stats` was called.

    Attributes
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
# Connections inherited through fork: closing them in the child could disturb the parent's
# database state, and letting them be garbage-collected closes them, so they are parked here.
_ABANDONED_CONNECTIONS = []


def _restore_cache(directory, memory_bytes, max_disk_bytes, storage_dtype, token):
    """Unpickle an :class:`EmbeddingCache`: the live one with this token, else a new one."""
    with _LIVE_LOCK:
        cache = _LIVE_CACHES.get(token)
        if cache is None:
            cache = EmbeddingCache(
                directory,
                memory_bytes=memory_bytes,
                max_disk_bytes=max_disk_bytes,
                storage_dtype=storage_dtype,
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
    instead of raising an error the cache can recover from.

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
        self._init_process_state()
        # Two plain mappings rather than key -> [vector, stamp]: no per-entry container object
        # for the garbage collector to walk, which matters at 10^5-10^6 entries.
        self._memory = collections.OrderedDict()  # key -> read-only float32 vector, LRU order
        self._stamps = {}  # key -> disk access time this process last knew or set
        self._memory_used = 0
        self.reset_stats()

    def _init_process_state(self):
        self._pid = os.getpid()
        self._memory_lock = threading.RLock()
        self._db_lock = threading.RLock()
        self._stats_lock = threading.Lock()
        self._conn = None
        self._db_ident = None  # (st_dev, st_ino) of the file the connection opened
        self._disk_state = "closed"  # "closed" (open on next use), "open" or "off"
        self._disk_writable = True
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
        self._prepare()
        keys = _as_keys(keys)
        out = [None] * len(keys)
        missing = self._memory_get(keys, out)
        if missing and self.directory is not None:
            unique = list(dict.fromkeys(keys[i] for i in missing))
            found = self._disk_get(unique)
            if found:
                for i in missing:
                    out[i] = found.get(keys[i])
                self._memory_put(found.items(), stamp=_now())
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
                f"vectors must be a 2-D array with one row per key: got shape {vectors.shape} "
                f"for {len(keys)} keys"
            )
        if vectors.shape[1] == 0:
            raise ValueError(f"vectors must have at least one column, got shape {vectors.shape}")
        if vectors.dtype.kind not in "fiu":
            raise TypeError(f"vectors must be real numbers, got dtype {vectors.dtype}")
        if not keys:
            return
        stored = _to_storage(vectors, _STORAGE_DTYPES[self.storage_dtype])
        if self.directory is not None:
            self._disk_put(keys, stored)
        if self.memory_bytes:
            # Per-row copies of exactly what a disk read returns (storage-rounded float32), so
            # that both layers agree and evicting a row really frees its bytes.
            as_f32 = stored if stored.dtype == _FLOAT32 else stored.astype(_FLOAT32)
            rows = [row.copy() for row in as_f32]
            for row in rows:
                row.flags.writeable = False
            self._memory_put(zip(keys, rows), stamp=_now())
        with self._stats_lock:
            self._writes += len(keys)

    def clear(self) -> None:
        """Delete every vector from memory and from the disk layer (the file stays usable)."""
        self._prepare()
        with self._memory_lock:
            self._memory.clear()
            self._stamps.clear()
            self._memory_used = 0
        if self.directory is None:
            return
        with self._db_lock:
            conn = self._connection()
            if conn is None:
                return
            if not self._disk_writable:
                self._warn(f"could not clear the disk cache {self.path}: disk writes are disabled")
                return
            try:
                with _transaction(conn):
                    conn.execute("DELETE FROM vectors")
                _shrink(conn)
            except sqlite3.Error as exc:
                self._handle_db_error(exc, "clearing")

    @property
    def stats(self) -> CacheStats:
        """Counters of this process and current sizes, as a :class:`CacheStats`."""
        self._prepare()
        disk_items = disk_bytes = None
        if self.directory is not None:
            with self._db_lock:
                conn = self._connection()
                if conn is not None:
                    try:
                        disk_items = conn.execute("SELECT count(*) FROM vectors").fetchone()[0]
                        disk_bytes = _used_bytes(conn)
                    except sqlite3.Error as exc:
                        self._handle_db_error(exc, "measuring")
                        disk_items = disk_bytes = None
        with self._memory_lock:
            memory_items, memory_used = len(self._memory), self._memory_used
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
        with self._memory_lock:
            return len(self._memory)

    def __repr__(self):
        args = [] if self.directory is None else [repr(os.fspath(self.directory))]
        defaults = {"memory_bytes": 256 * 2**20, "max_disk_bytes": None, "storage_dtype": "float32"}
        args += [f"{k}={getattr(self, k)!r}" for k, v in defaults.items() if getattr(self, k) != v]
        return f"EmbeddingCache({', '.join(args)})"

    def __reduce__(self):
        # By reference: where the data lives and how to treat it, never the vectors themselves.
        directory = None if self.directory is None else str(self.path.parent)
        with _LIVE_LOCK:
            _LIVE_CACHES.setdefault(self._token, self)
        settings = (self.memory_bytes, self.max_disk_bytes, self.storage_dtype, self._token)
        return _restore_cache, (directory, *settings)

    # ------------------------------------------------------------------ process & validation

    def _prepare(self):
        if self._pid != os.getpid():
            self._after_fork()
        if not self._checked:
            self._check_params()

    def _after_fork(self):
        if self._conn is not None:
            _ABANDONED_CONNECTIONS.append(self._conn)
        self._init_process_state()

    def _check_params(self):
        if self.storage_dtype not in _STORAGE_DTYPES:
            raise ValueError(
                f"storage_dtype must be one of {sorted(_STORAGE_DTYPES)}, got {self.storage_dtype!r}"
            )
        for name, value, minimum in (
            ("memory_bytes", self.memory_bytes, 0),
            ("max_disk_bytes", self.max_disk_bytes, 1),
        ):
            if value is None and name == "max_disk_bytes":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        if self.directory is not None and not isinstance(self.directory, (str, os.PathLike)):
            raise TypeError(f"directory must be a str, os.PathLike or None, got {self.directory!r}")
        self._checked = True

    # ------------------------------------------------------------------ memory layer

    def _memory_get(self, keys, out):
        """Fill ``out`` with memory hits; return the indices of the misses."""
        if not self.memory_bytes:
            return list(range(len(keys)))
        missing = []
        stale = []  # keys whose disk access stamp is due for a refresh
        now = _now()
        stale_before = now - _TOUCH_INTERVAL_S
        memory, stamps = self._memory, self._stamps
        with self._memory_lock:
            for i, key in enumerate(keys):
                vector = memory.get(key)
                if vector is None:
                    missing.append(i)
                    continue
                memory.move_to_end(key)
                out[i] = vector
                if stamps[key] < stale_before:
                    stamps[key] = now
                    stale.append(key)
        if stale and self.directory is not None:
            self._touch(stale, now)
        return missing

    def _memory_put(self, items, stamp):
        """Insert (key, read-only float32 vector) pairs, then evict least recently used ones."""
        if not self.memory_bytes:
            return
        limit = self.memory_bytes
        memory, stamps = self._memory, self._stamps
        with self._memory_lock:
            used = self._memory_used
            for key, vector in items:
                old = memory.pop(key, None)
                if old is not None:
                    used -= old.nbytes + len(key) + _ENTRY_OVERHEAD
                size = vector.nbytes + len(key) + _ENTRY_OVERHEAD
                if size > limit:
                    stamps.pop(key, None)
                    continue
                memory[key] = vector
                stamps[key] = stamp
                used += size
            while used > limit:
                key, vector = memory.popitem(last=False)
                del stamps[key]
                used -= vector.nbytes + len(key) + _ENTRY_OVERHEAD
            self._memory_used = used

    # ------------------------------------------------------------------ disk layer

    def _connection(self):
        """The open connection (opening it on first use), or None when the disk layer is off.

        The caller holds ``_db_lock``.
        """
        path = self.path
        if self._disk_state == "open":
            if self._same_file(path):
                return self._conn
            # Another process moved a corrupt file aside (or the folder was deleted): follow
            # the replacement instead of writing into a file nobody will read again.
            self._close()
        if self._disk_state == "off":
            return None
        try:
            self._open(path)
        except (sqlite3.Error, OSError) as exc:
            self._close()
            if _fault_kind(exc) == "busy":
                self._report_error(
                    f"cannot open the disk cache {path} ({_describe(exc)}): gave up waiting for "
                    f"the lock after {_BUSY_TIMEOUT_S:.0f} s; will try again on the next call"
                )
                return None
            if _fault_kind(exc) != "corrupt":
                if path.is_file() and self._open_read_only(path):
                    # e.g. a cache shipped read-only: its vectors are still worth reading.
                    self._disk_writable = False
                    self._report_error(
                        f"cannot write to the disk cache {path} ({_describe(exc)}); reading it "
                        "only, new vectors are kept in memory for this process"
                    )
                    return self._conn
                self._disable_disk(f"cannot open the disk cache {path} ({_describe(exc)})")
                return None
            # A file that is not a database or is malformed: keep it for inspection, start over.
            moved = self._move_aside(path)
            self._report_error(f"the disk cache {path} is corrupt ({_describe(exc)}); {moved}")
            try:
                self._open(path)
            except (sqlite3.Error, OSError) as exc2:
                self._close()
                self._disable_disk(f"cannot create a new disk cache {path} ({_describe(exc2)})")
                return None
        return self._conn

    def _open(self, path):
        self._db_ident = None
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            os.fspath(path), timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        self._conn = conn
        try:
            st = os.stat(path)
            self._db_ident = (st.st_dev, st.st_ino)
        except OSError:
            self._db_ident = None
        conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        # Settings that write to the file are only issued when needed, so that opening a
        # database another process is writing to does not wait for its lock.
        if version == 0:
            # Both only take effect on a new file, before WAL and the first table. Incremental
            # auto-vacuum lets eviction shrink the file; 16 KiB pages hold several vectors each
            # (a 384-d float32 row is 1.5 KiB), which made writes ~1.7x and reads ~1.15x faster
            # than the 4 KiB default and the file 20 % smaller.
            conn.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            _retry_busy(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
        conn.execute("PRAGMA synchronous = NORMAL")
        # Bound the log left behind after a large batch has been checkpointed.
        conn.execute("PRAGMA journal_size_limit = 67108864")
        if version > _SCHEMA_VERSION:
            raise sqlite3.OperationalError(
                f"schema version {version} is newer than this skdeep understands ({_SCHEMA_VERSION})"
            )
        if version < _SCHEMA_VERSION:
            with _transaction(conn):
                # One statement at a time: executescript() would COMMIT behind our back.
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        self._opened(conn)

    def _open_read_only(self, path):
        """Open an existing database for reading only; return whether that worked.

        ``mode=ro`` sees the latest data but needs the WAL index files to exist or be
        creatable; ``immutable=1`` works in any read-only folder but ignores changes
        that are still in a write-ahead log (only misses, never wrong vectors: rows are
        checksummed).
        """
        for params in ("mode=ro", "mode=ro&immutable=1"):
            conn = None
            try:
                conn = sqlite3.connect(
                    f"{path.as_uri()}?{params}",
                    uri=True,
                    timeout=_BUSY_TIMEOUT_S,
                    isolation_level=None,
                    check_same_thread=False,
                )
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                conn.execute("SELECT key FROM vectors LIMIT 1").fetchall()
                if version != _SCHEMA_VERSION:
                    raise sqlite3.OperationalError(f"unknown schema version {version}")
            except sqlite3.Error:
                if conn is not None:
                    conn.close()
                continue
            self._conn = conn
            st = os.stat(path)
            self._db_ident = (st.st_dev, st.st_ino)
            self._opened(conn)
            return True
        return False

    def _opened(self, conn):
        try:
            limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        except AttributeError:  # Python < 3.11
            limit = _DEFAULT_MAX_VARIABLES
        self._chunk = max(1, limit)  # keys per SELECT: as many as one statement may bind
        self._disk_state = "open"

    def _same_file(self, path):
        """Whether ``path`` is still the file our connection has open (one ``stat`` call)."""
        if self._db_ident is None:
            return True
        try:
            st = os.stat(path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._db_ident

    def _close(self):
        conn, self._conn = self._conn, None
        if self._disk_state == "open":
            self._disk_state = "closed"
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    def _disk_get(self, keys):
        """Read ``keys`` from disk; return {key: float32 vector} for the valid rows found."""
        found = {}
        bad_keys = []
        stale_keys = []
        now = _now()
        stale_before = now - _TOUCH_INTERVAL_S
        with self._db_lock:
            conn = self._connection()
            if conn is None:
                return found
            chunk = self._chunk
            crc32, frombuffer, f4 = zlib.crc32, np.frombuffer, _ROW_DTYPES["<f4"]
            try:
                for start in range(0, len(keys), chunk):
                    part = keys[start : start + chunk]
                    # Keys -> row ids through the key index first, then the rows in id order:
                    # the table is then read front to back instead of in key-hash order
                    # (about 25 % faster on a large file).
                    sql = (
                        "SELECT key, dtype, dim, crc, atime, data FROM vectors WHERE id IN "
                        "(SELECT id FROM vectors WHERE key IN (" + ",".join("?" * len(part)) + "))"
                    )
                    for key, dtype, dim, crc, atime, data in conn.execute(sql, part):
                        # Inline fast path for the common float32 row: this loop is the
                        # Python cost of every disk hit.
                        if (
                            dtype == "<f4"
                            and type(data) is bytes
                            and len(data) == dim * 4
                            and crc32(data, crc32(key)) == crc
                        ):
                            found[key] = frombuffer(data, f4)
                        else:
                            vector = _decode(key, dtype, dim, crc, data)
                            if vector is None:
                                bad_keys.append(key)
                                continue
                            found[key] = vector
                        if atime < stale_before:
                            stale_keys.append(key)
            except sqlite3.Error as exc:
                self._handle_db_error(exc, "reading")
                return found
            if bad_keys:
                self._report_error(
                    f"{len(bad_keys)} damaged row(s) in the disk cache {self.path} failed their "
                    "checksum or length check; they were discarded and will be recomputed"
                )
                self._delete_keys(conn, bad_keys)
            if stale_keys:
                self._try_touch(conn, stale_keys, now)
        return found

    def _disk_put(self, keys, stored):
        dtype = stored.dtype.str
        dim = stored.shape[1]
        data = memoryview(np.ascontiguousarray(stored)).cast("B")
        row_bytes = stored.itemsize * dim
        blobs = [data[i * row_bytes : (i + 1) * row_bytes] for i in range(len(keys))]
        crcs = [_checksum(k, b) for k, b in zip(keys, blobs)]
        with self._db_lock:
            for _ in range(2):  # a second try only after moving a corrupt file aside
                conn = self._connection()
                if conn is None or not self._disk_writable:
                    return
                now = _now()
                try:
                    with _transaction(conn):
                        conn.executemany(
                            _INSERT, zip(keys, repeat(dtype), repeat(dim), crcs, repeat(now), blobs)
                        )
                        evicted = self.max_disk_bytes is not None and self._evict(conn)
                    if evicted:
                        _shrink(conn)
                    return
                except sqlite3.Error as exc:
                    if not self._handle_db_error(exc, "writing"):
                        return

    def _evict(self, conn):
        """Delete least recently accessed rows until the live pages are under the low-water mark.

        Runs inside the writing transaction; the caller holds ``_db_lock``. Returns whether
        anything was deleted.
        """
        limit = self.max_disk_bytes
        evicted = False
        for _ in range(4):  # the per-row size is an estimate: re-measure and go again if needed
            used = _used_bytes(conn)
            if used <= limit:
                break
            n_rows = conn.execute("SELECT count(*) FROM vectors").fetchone()[0]
            if n_rows == 0:
                break
            excess = used - _EVICT_LOW_WATER * limit
            n_evict = min(n_rows, max(1, math.ceil(excess / (used / n_rows))))
            conn.execute(
                "DELETE FROM vectors WHERE id IN "
                "(SELECT id FROM vectors ORDER BY atime, id LIMIT ?)",
                (n_evict,),
            )
            evicted = True
        return evicted

    def _delete_keys(self, conn, keys):
        if not self._disk_writable:
            return
        try:
            with _transaction(conn):
                conn.executemany("DELETE FROM vectors WHERE key = ?", ((k,) for k in keys))
        except sqlite3.Error as exc:
            self._handle_db_error(exc, "deleting damaged rows from")

    def _touch(self, keys, now):
        """Refresh the disk access stamps of memory hits whose stamps are old."""
        with self._db_lock:
            conn = self._connection()
            if conn is not None:
                self._try_touch(conn, keys, now)

    def _try_touch(self, conn, keys, now):
        """Refresh access stamps, best effort: a busy database is not worth waiting for here."""
        if not self._disk_writable:
            return
        conn.execute("PRAGMA busy_timeout = 100")
        try:
            with _transaction(conn):
                conn.executemany(
                    "UPDATE vectors SET atime = ? WHERE key = ? AND atime < ?",
                    ((now, k, now - _TOUCH_INTERVAL_S) for k in keys),
                )
        except sqlite3.Error as exc:
            if _fault_kind(exc) != "busy":
                self._handle_db_error(exc, "updating access times in")
        finally:
            if self._conn is conn:
                conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")

    # ------------------------------------------------------------------ faults

    def _handle_db_error(self, exc, doing):
        """Warn about a database error and adapt; return True if the operation may be retried.

        The caller holds ``_db_lock``.
        """
        path = self.path
        kind = _fault_kind(exc)
        what = f"{_describe(exc)} while {doing} the disk cache {path}"
        if kind == "corrupt":
            self._close()
            moved = self._move_aside(path)
            self._report_error(f"{what}: the database is corrupt; {moved}")
            return True
        if kind == "moved":
            # Another process replaced the file (e.g. after finding it corrupt): follow it.
            self._close()
            return True
        if kind == "unwritable" and doing == "reading":
            # e.g. the WAL index cannot be created in a read-only folder: reads cannot work either.
            self._disable_disk(what)
            return False
        if kind == "unwritable":
            self._end_failed_transaction()
            if self._disk_writable:
                self._disk_writable = False
                self._report_error(
                    f"{what}; disk writes are disabled for this process "
                    "(reads continue; new vectors are kept in memory only)"
                )
            else:
                self._count_error()
            return False
        if kind == "busy":
            self._report_error(
                f"{what}: gave up waiting for the lock after {_BUSY_TIMEOUT_S:.0f} s; "
                "the affected vectors are treated as misses or not saved"
            )
            return False
        self._close()
        self._disable_disk(what)
        return False

    def _end_failed_transaction(self):
        conn = self._conn
        if conn is not None and conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                self._close()

    def _move_aside(self, path):
        """Rename a corrupt database (and its log) to ``<name>.corrupt-<timestamp>``."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return "a new database will be created"
        if self._db_ident is not None and (st.st_dev, st.st_ino) != self._db_ident:
            return "another process has already replaced it"
        stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime()) + f".{time.time_ns() % 10**9:09d}"
        target = path.with_name(f"{path.name}.corrupt-{stamp}")
        try:
            os.replace(path, target)
            for suffix in ("-wal", "-shm"):
                side = path.with_name(path.name + suffix)
                if side.exists():
                    # The log belongs to the corrupt file: replaying it into a new one would be wrong.
                    os.replace(side, target.with_name(target.name + suffix))
        except OSError as exc:
            self._disable_disk(f"cannot move the corrupt disk cache {path} aside ({exc})")
            return "it could not be moved aside, so the disk layer is off"
        self._db_ident = None
        return f"moved it to {target} and started a new one"

    def _disable_disk(self, why):
        self._close()
        self._disk_state = "off"
        self._report_error(
            f"{why}; the disk layer is off for this process (the cache works in memory only)"
        )

    def _report_error(self, message):
        self._count_error()
        self._warn(message)

    def _count_error(self):
        with self._stats_lock:
            self._errors += 1

    @staticmethod
    def _warn(message):
        warnings.warn(message, CacheWarning, stacklevel=4)


# ---------------------------------------------------------------------- helpers


class _transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on error.

    IMMEDIATE takes the write lock up front, so concurrent writers queue on the busy timeout
    instead of failing when a read transaction tries to upgrade.
    """

    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        return False


def _retry_busy(fn, attempts=50):
    # Switching to WAL needs a brief exclusive lock; SQLite may refuse it without waiting.
    for i in range(attempts):
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if _fault_kind(exc) != "busy" or i == attempts - 1:
                raise
            time.sleep(0.05)


def _as_keys(keys):
    """Validate keys: bytes (bytearray/memoryview are converted) -> list of bytes."""
    keys = list(keys)
    for i, key in enumerate(keys):
        if type(key) is not bytes:
            if isinstance(key, (bytes, bytearray, memoryview)):
                keys[i] = bytes(key)
            else:
                raise TypeError(f"cache keys must be bytes; key {i} is {type(key).__name__}: {key!r}")
    return keys


def _to_storage(vectors, dtype):
    """``vectors`` as ``dtype`` (maybe the same array); float32 where float16 would overflow."""
    if dtype.itemsize >= 4:
        return vectors.astype(dtype, copy=False)
    with np.errstate(over="ignore"):
        stored = vectors.astype(dtype)
    if not np.isfinite(stored).all() and (~np.isfinite(stored) & np.isfinite(vectors)).any():
        # float16 cannot hold these values: store them exactly rather than as inf.
        return vectors.astype(_STORAGE_DTYPES["float32"])
    return stored


def _checksum(key, data):
    """CRC-32 of a row's key and vector bytes: a damaged key or vector both fail it."""
    return zlib.crc32(data, zlib.crc32(key))


def _decode(key, dtype, dim, crc, data):
    """A read-only float32 vector from a row, or None if the row fails any check."""
    row_dtype = _ROW_DTYPES.get(dtype)
    if (
        row_dtype is None
        or type(data) is not bytes
        or type(dim) is not int
        or len(data) != dim * row_dtype.itemsize
        or _checksum(key, data) != crc
    ):
        return None
    vector = np.frombuffer(data, row_dtype)
    if row_dtype != _FLOAT32:
        vector = vector.astype(_FLOAT32)
        vector.flags.writeable = False
    return vector


def _shrink(conn):
    """Give the free pages back to the file system (the file has incremental auto-vacuum).

    ``executescript`` because ``execute`` steps the pragma once, which frees a single page.
    It runs as its own small transaction, after the caller's has committed.
    """
    conn.executescript("PRAGMA incremental_vacuum;")


def _used_bytes(conn):
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return (pages - free) * page_size


def _fault_kind(exc):
    """Classify a database error: corrupt, moved, unwritable, busy, unavailable or other."""
    if isinstance(exc, OSError):
        return "unavailable"
    name = getattr(exc, "sqlite_errorname", None) or ""
    msg = str(exc).lower()
    if name == "SQLITE_READONLY_DBMOVED":
        return "moved"
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or (
        "malformed" in msg or "not a database" in msg
    ):
        return "corrupt"
    if name.startswith(("SQLITE_READONLY", "SQLITE_FULL", "SQLITE_PERM")) or (
        "readonly" in msg or "read-only" in msg or "disk is full" in msg
    ):
        return "unwritable"
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "database is locked" in msg:
        return "busy"
    return "other"


def _describe(exc):
    return f"{type(exc).__module__}.{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------- resolving `cache=`

_SHARED_LOCK = threading.Lock()
_SHARED_BY_PATH = {}  # resolved directory -> EmbeddingCache
_DEFAULT_MEMORY_CACHE = None


def resolve_cache(spec):
    """Turn the value of an encoder's ``cache`` parameter into a cache object.

    Caches are shared per process, so the clones made by ``GridSearchCV`` or ``clone`` see the
    vectors stored by one another.

    Parameters
    ----------
    spec : "auto", bool, None, str, os.PathLike or EmbeddingCache
        ``"auto"`` or True: the process-wide default cache, on disk at ``$SKDEEP_CACHE_DIR``
        when that environment variable is set, else in memory. None or False: no caching.
        A path: a disk cache in that directory, one instance per resolved path per process.
        An :class:`EmbeddingCache`: itself.

    Returns
    -------
    EmbeddingCache or None

    Raises
    ------
    TypeError
        If ``spec`` is of any other type.
    ValueError
        If ``spec`` is an empty string.

    Examples
    --------
    >>> from skdeep.cache import resolve_cache
    >>> resolve_cache(None) is None
    True
    >>> resolve_cache("auto") is resolve_cache(True)
    True
    """
    global _DEFAULT_MEMORY_CACHE
    if spec is None or spec is False:
        return None
    if isinstance(spec, EmbeddingCache):
        return spec
    if spec is True or (isinstance(spec, str) and spec == "auto"):
        env_dir = os.environ.get(CACHE_DIR_ENV)
        if env_dir:
            return resolve_cache(env_dir)
        with _SHARED_LOCK:
            if _DEFAULT_MEMORY_CACHE is None:
                _DEFAULT_MEMORY_CACHE = EmbeddingCache()
            return _DEFAULT_MEMORY_CACHE
    if isinstance(spec, (str, os.PathLike)):
        raw = os.fspath(spec)
        if isinstance(raw, bytes):
            raw = os.fsdecode(raw)
        if not raw:
            raise ValueError("cache='' is not a directory; use None for no cache or 'auto'")
        directory = str(Path(raw).expanduser().resolve())
        with _SHARED_LOCK:
            cache = _SHARED_BY_PATH.get(directory)
            if cache is None:
                cache = _SHARED_BY_PATH[directory] = EmbeddingCache(directory)
            return cache
    raise TypeError(
        "cache must be 'auto', True, False, None, a directory path or an EmbeddingCache; "
        f"got {spec!r} of type {type(spec).__name__}"
    )


from .claims import claims_for, fetch_claimed_elsewhere  # noqa: E402,F401  (the engine's entry points)
