"""SQLite plumbing and the row format of the disk store: transactions, fault classes, checksums.

Small functions with no state, shared by :mod:`skdeep.cache._store` and the cache that feeds it.
"""

from __future__ import annotations

import sqlite3
import time
import zlib

import numpy as np

_FLOAT32 = np.dtype(np.float32)
#: How new rows may be stored (``EmbeddingCache(storage_dtype=...)``).
STORAGE_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
# Row dtypes this version can decode (another process may have written float16 or float64 rows).
ROW_DTYPES = {d.str: d for d in (np.dtype("<f2"), np.dtype("<f4"), np.dtype("<f8"))}


class CacheWarning(UserWarning):
    """A fault in the embedding cache that was survived (data dropped, disk layer disabled).

    The affected vectors are treated as cache misses and recomputed; results stay correct.
    """


# ---------------------------------------------------------------------- transactions


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
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or ("malformed" in msg or "not a database" in msg):
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


# ---------------------------------------------------------------------- rows


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
        return vectors.astype(STORAGE_DTYPES["float32"])
    return stored


def _checksum(key, data):
    """CRC-32 of a row's key and vector bytes: a damaged key or vector both fail it."""
    return zlib.crc32(data, zlib.crc32(key))


def _decode(key, dtype, dim, crc, data):
    """A read-only float32 vector from a row, or None if the row fails any check."""
    row_dtype = ROW_DTYPES.get(dtype)
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
