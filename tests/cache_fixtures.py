"""Helpers shared by the cache tests (test_cache.py, test_cache_store.py, test_claims.py)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from skdeep.cache import DB_FILENAME, CacheWarning, _embedding_cache

#: The skdeep package folder, for child processes that load the cache without importing skdeep.
SKDEEP_DIR = Path(_embedding_cache.__file__).parent.parent


def _key(i):
    return int(i).to_bytes(16, "little")


def _vector(i, dim):
    """The vector every writer stores under ``_key(i)``: concurrent writers agree on it."""
    return (np.arange(dim, dtype=np.float32) / dim + i).astype(np.float32)


def _rows(indices, dim):
    return [_key(i) for i in indices], np.stack([_vector(i, dim) for i in indices])


@contextlib.contextmanager
def _db(directory):
    """A plain SQLite connection to a cache's file, as another tool or process would have."""
    conn = sqlite3.connect(os.fspath(Path(directory) / DB_FILENAME), isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def _assert_correct_or_missing(got, indices, dim):
    """No wrong or partial vector: each entry is exactly the stored one, or None."""
    for i, vector in zip(indices, got):
        if vector is not None:
            assert vector.dtype == np.float32 and vector.shape == (dim,)
            np.testing.assert_array_equal(vector, _vector(i, dim))


@pytest.fixture
def clock(monkeypatch):
    """Control the cache's clock (access stamps) from a test."""
    now = {"t": 1_000_000}
    monkeypatch.setattr(_embedding_cache, "_now", lambda: now["t"])
    return now


def _cache_warnings(record):
    return [str(w.message) for w in record if issubclass(w.category, CacheWarning)]
