"""The cache's disk layer: SQLite store, limits, integrity and faults."""

from __future__ import annotations

import gc
import os
import re
import sqlite3
import warnings

import numpy as np
import pytest
from cache_fixtures import _assert_correct_or_missing, _cache_warnings, _db, _key, _rows, _vector, clock  # noqa: F401

from skdeep.cache import DB_FILENAME, CacheWarning, EmbeddingCache, _connection, _sqlite, _store

# ---------------------------------------------------------------------- disk layer


def test_disk_layer_is_created_lazily_and_survives_restarts(tmp_path):
    directory = tmp_path / "a" / "b"
    cache = EmbeddingCache(directory)
    assert not directory.exists()  # nothing opened in __init__
    keys, vectors = _rows(range(50), 32)
    cache.put_many(keys, vectors)
    assert (directory / DB_FILENAME).exists()
    with _db(directory) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert cache._store._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000
    assert cache._store._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    del cache
    gc.collect()

    restarted = EmbeddingCache(str(directory))
    got = restarted.get_many(keys + [b"nope"])
    assert got[-1] is None
    for i, vector in enumerate(got[:-1]):
        np.testing.assert_array_equal(vector, _vector(i, 32))
    stats = restarted.stats
    assert (stats.hits, stats.misses) == (50, 1)
    assert stats.memory_items == 50  # disk hits were promoted
    assert stats.disk_items == 50 == len(restarted) and stats.disk_bytes > 50 * 32 * 4


@pytest.mark.skipif(not hasattr(sqlite3.Connection, "setlimit"), reason="needs Python >= 3.11")
def test_lookups_beyond_sqlites_parameter_limit_are_chunked(tmp_path, monkeypatch):
    real_connect = sqlite3.connect

    def connect(*args, **kwargs):
        conn = real_connect(*args, **kwargs)
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 37)
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    EmbeddingCache(tmp_path).put_many(*_rows(range(500), 8))
    indices = list(range(-50, 550))
    got = EmbeddingCache(tmp_path, memory_bytes=0).get_many([_key(i % 2**64) for i in indices])
    assert [v is not None for v in got] == [0 <= i < 500 for i in indices]
    _assert_correct_or_missing(got[50:550], range(500), 8)


def test_rows_of_different_lengths_and_dtypes_share_one_store(tmp_path, recwarn):
    EmbeddingCache(tmp_path).put_many([b"short"], np.ones((1, 3)))
    EmbeddingCache(tmp_path, storage_dtype="float16").put_many([b"long"], np.full((1, 700), 0.1))
    with _db(tmp_path) as conn:
        # A float64 row written by some other tool is still decoded (as float32).
        data = np.array([1.5, 2.5]).tobytes()
        conn.execute(
            "INSERT INTO vectors (key, dtype, dim, crc, atime, data) VALUES (?, '<f8', 2, ?, 0, ?)",
            (b"f64", _sqlite._checksum(b"f64", data), data),
        )
    short, long_, f64 = EmbeddingCache(tmp_path, memory_bytes=0).get_many([b"short", b"long", b"f64"])
    np.testing.assert_array_equal(short, np.ones(3))
    assert long_.dtype == np.float32 and long_.shape == (700,)
    np.testing.assert_array_equal(long_, np.float32(np.float16(0.1)))
    np.testing.assert_array_equal(f64, np.array([1.5, 2.5], dtype=np.float32))
    assert not [w for w in recwarn if issubclass(w.category, CacheWarning)]


def test_float16_storage_halves_the_bytes_and_both_layers_agree(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((1000, 256))
    keys = [_key(i) for i in range(1000)]
    f32 = EmbeddingCache(tmp_path / "f32")
    f16 = EmbeddingCache(tmp_path / "f16", storage_dtype="float16")
    f32.put_many(keys, vectors)
    f16.put_many(keys, vectors)
    from_memory = np.stack(f16.get_many(keys))
    from_disk = np.stack(EmbeddingCache(tmp_path / "f16", memory_bytes=0).get_many(keys))
    assert from_memory.dtype == from_disk.dtype == np.float32
    np.testing.assert_array_equal(from_memory, vectors.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(from_disk, from_memory)
    assert f16.stats.disk_bytes < 0.6 * f32.stats.disk_bytes
    # float16 cannot hold 1e6: such rows are kept exactly (as float32), never turned into inf.
    f16.put_many([b"big"], np.array([[1e6, -2.0]]))
    with _db(tmp_path / "f16") as conn:
        assert conn.execute("SELECT dtype FROM vectors WHERE key = ?", (b"big",)).fetchone()[0] == "<f4"
    np.testing.assert_array_equal(EmbeddingCache(tmp_path / "f16", memory_bytes=0).get_many([b"big"])[0], [1e6, -2.0])


def test_clear_empties_both_layers_and_keeps_the_file_usable(tmp_path):
    cache = EmbeddingCache(tmp_path)
    cache.put_many(*_rows(range(100), 16))
    cache.clear()
    assert cache.get_many([_key(0)]) == [None]
    assert len(cache) == 0 and cache.stats.memory_items == 0 and cache.stats.memory_bytes == 0
    assert EmbeddingCache(tmp_path).get_many([_key(5)]) == [None]
    cache.put_many(*_rows([7], 16))
    np.testing.assert_array_equal(EmbeddingCache(tmp_path).get_many([_key(7)])[0], _vector(7, 16))
    memory_only = EmbeddingCache()
    memory_only.put_many([b"a"], np.ones((1, 2)))
    memory_only.clear()
    assert len(memory_only) == 0


def test_max_disk_bytes_evicts_least_recently_accessed_rows(tmp_path, clock):
    # A batch of n rows is ~0.5 MB on disk: two batches (and the empty claims table) fit, three do not.
    dim, limit, n = 256, 1_050_000, 400
    cache = EmbeddingCache(tmp_path, memory_bytes=0, max_disk_bytes=limit)
    old = list(range(0, n))
    clock["t"] = 1_000
    cache.put_many(*_rows(old, dim))
    clock["t"] = 2_000
    cache.put_many(*_rows(range(n, 2 * n), dim))
    # Reading half of the oldest rows an hour later refreshes their access stamps...
    clock["t"] = 2_000 + _store._TOUCH_INTERVAL_S + 1
    touched, untouched = old[: n // 2], old[n // 2 :]
    assert all(v is not None for v in cache.get_many([_key(i) for i in touched]))
    with _db(tmp_path) as conn:
        stamps = {r[0] for r in conn.execute("SELECT atime FROM vectors WHERE key = ?", (_key(0),))}
        assert stamps == {clock["t"]}
    # ...so the next write evicts the untouched old rows first, then the middle ones, not them.
    clock["t"] += 100
    cache.put_many(*_rows(range(2 * n, 3 * n), dim))
    assert cache.stats.disk_bytes <= limit
    present = [v is not None for v in cache.get_many([_key(i) for i in range(3 * n)])]
    assert all(present[i] for i in touched) and all(present[2 * n : 3 * n])
    assert not any(present[i] for i in untouched)
    assert not all(present[n : 2 * n])
    # Further writes keep it under the limit, newest rows first in line to stay.
    for batch in range(3, 6):
        clock["t"] += 100
        cache.put_many(*_rows(range(batch * n, (batch + 1) * n), dim))
        assert cache.stats.disk_bytes <= limit
    got = cache.get_many([_key(i) for i in range(6 * n)])
    _assert_correct_or_missing(got, range(6 * n), dim)
    present = [v is not None for v in got]
    assert all(present[5 * n :]) and not any(present[: 2 * n])
    assert 1.5 * n < sum(present) < 2.5 * n
    # The file really shrinks (incremental auto-vacuum), it does not just grow a free list.
    with _db(tmp_path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert (tmp_path / DB_FILENAME).stat().st_size <= limit * 1.1


def test_memory_hits_refresh_old_disk_stamps_once_per_interval(tmp_path, clock):
    cache = EmbeddingCache(tmp_path)
    cache.put_many([b"a"], np.ones((1, 4)))
    with _db(tmp_path) as conn:
        atime = lambda: conn.execute("SELECT atime FROM vectors").fetchone()[0]  # noqa: E731
        start = atime()
        clock["t"] += 10
        cache.get_many([b"a"])  # a recent stamp is not rewritten: reads stay reads
        assert atime() == start
        clock["t"] += _store._TOUCH_INTERVAL_S
        cache.get_many([b"a"])
        assert atime() == clock["t"]


# ---------------------------------------------------------------------- integrity & faults


def test_damaged_rows_are_misses_deleted_counted_and_warned(tmp_path):
    dim = 16
    keys, vectors = _rows(range(10), dim)
    EmbeddingCache(tmp_path).put_many(keys, vectors)
    with _db(tmp_path) as conn:
        # One flipped byte, a truncated blob, an unknown dtype, a key changed under its vector.
        blob = bytearray(conn.execute("SELECT data FROM vectors WHERE key = ?", (keys[1],)).fetchone()[0])
        blob[5] ^= 0xFF
        conn.execute("UPDATE vectors SET data = ? WHERE key = ?", (bytes(blob), keys[1]))
        conn.execute("UPDATE vectors SET data = substr(data, 1, 20) WHERE key = ?", (keys[2],))
        conn.execute("UPDATE vectors SET dtype = '<i4' WHERE key = ?", (keys[3],))
        conn.execute("UPDATE vectors SET key = ? WHERE key = ?", (_key(99), keys[4]))
    cache = EmbeddingCache(tmp_path)
    with pytest.warns(CacheWarning, match=r"4 damaged row\(s\) in the disk cache .*embeddings.sqlite3"):
        got = cache.get_many(keys + [_key(99)])
    assert [v is None for v in got] == [False, True, True, True, True] + [False] * 5 + [True]
    _assert_correct_or_missing(got, list(range(10)) + [99], dim)
    assert cache.stats.errors == 1 and cache.stats.disk_items == 6  # damaged rows deleted
    cache.put_many(keys[1:4], vectors[1:4])  # recomputed and stored again
    assert all(v is not None for v in EmbeddingCache(tmp_path).get_many(keys[:4]))


def _write_then_close(directory, n=2000, dim=64):
    cache = EmbeddingCache(directory)
    for start in range(0, n, 500):
        cache.put_many(*_rows(range(start, min(n, start + 500)), dim))
    del cache
    gc.collect()  # closes the connection: the log is checkpointed into the file


def test_garbage_database_file_is_moved_aside_and_replaced(tmp_path):
    _write_then_close(tmp_path, n=100)
    path = tmp_path / DB_FILENAME
    bystander = EmbeddingCache(tmp_path, memory_bytes=0)
    assert bystander.get_many([_key(3)])[0] is not None  # has the file open
    with open(path, "r+b") as fh:
        fh.write(os.urandom(4096))  # the header and first page become noise
    cache = EmbeddingCache(tmp_path)
    expected = r"disk cache .*embeddings.sqlite3 is corrupt.*moved it to .*corrupt-"
    with pytest.warns(CacheWarning, match=expected):
        assert cache.get_many([_key(0), _key(1)]) == [None, None]
    aside = [p for p in tmp_path.glob(DB_FILENAME + ".corrupt-*") if not p.name.endswith(("-wal", "-shm"))]
    assert len(aside) == 1  # kept for inspection (with its log, if any)
    assert cache.stats.errors == 1
    cache.put_many(*_rows([0, 1], 64))
    reread = EmbeddingCache(tmp_path, memory_bytes=0).get_many([_key(0), _key(1)])
    assert all(v is not None for v in reread)
    _assert_correct_or_missing(reread, [0, 1], 64)
    assert EmbeddingCache(tmp_path).stats.disk_items == 2
    # An instance that had the old file open follows the new one rather than writing into
    # the file that was moved aside.
    bystander.put_many(*_rows([42], 64))
    assert EmbeddingCache(tmp_path).get_many([_key(42)])[0] is not None
    assert bystander.get_many([_key(0)])[0] is not None and bystander.stats.disk_items == 3


@pytest.mark.parametrize("damage", ["truncate", "overwrite_middle"])
def test_damaged_database_file_never_yields_wrong_vectors_and_recovers(tmp_path, damage):
    n, dim = 2000, 64
    _write_then_close(tmp_path, n=n, dim=dim)
    path = tmp_path / DB_FILENAME
    size = path.stat().st_size
    reader = EmbeddingCache(tmp_path, memory_bytes=0)
    reader.get_many([_key(0)])  # a connection that is open while the file is damaged
    if damage == "truncate":
        os.truncate(path, size // 2)
    else:
        with open(path, "r+b") as fh:
            fh.seek(size // 3)
            fh.write(os.urandom(size // 4))
    indices = list(range(n))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for cache in (reader, EmbeddingCache(tmp_path, memory_bytes=0)):
            got = cache.get_many([_key(i) for i in indices])  # never raises
            _assert_correct_or_missing(got, indices, dim)
    messages = _cache_warnings(record)
    assert messages and all(str(tmp_path) in m for m in messages)
    assert any("corrupt" in m or "damaged" in m for m in messages)
    # The store still works afterwards, for old and new instances alike.
    fresh = EmbeddingCache(tmp_path, memory_bytes=0)
    fresh.put_many(*_rows([5000], dim))
    reread = EmbeddingCache(tmp_path, memory_bytes=0).get_many([_key(5000)])[0]
    np.testing.assert_array_equal(reread, _vector(5000, dim))
    _assert_correct_or_missing(fresh.get_many([_key(i) for i in indices]), indices, dim)


def test_busy_database_gives_up_after_the_timeout_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(_connection, "_BUSY_TIMEOUT_S", 0.2)
    cache = EmbeddingCache(tmp_path)
    cache.put_many(*_rows([1], 8))
    with _db(tmp_path) as blocker:
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        with pytest.warns(CacheWarning, match="gave up waiting for the lock"):
            cache.put_many(*_rows([2], 8))
        # WAL readers are not blocked by a writer.
        np.testing.assert_array_equal(EmbeddingCache(tmp_path).get_many([_key(1)])[0], _vector(1, 8))
        blocker.execute("ROLLBACK")
    cache.put_many(*_rows([3], 8))  # busy is transient: writes were not disabled
    assert EmbeddingCache(tmp_path).get_many([_key(3)])[0] is not None


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_directory_falls_back_without_raising(tmp_path):
    directory = tmp_path / "ro"
    _write_then_close(directory, n=10, dim=8)
    os.chmod(directory / DB_FILENAME, 0o444)
    os.chmod(directory, 0o555)
    try:
        cache = EmbeddingCache(directory)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            got = cache.get_many([_key(i) for i in range(10)])
            cache.put_many(*_rows([100], 8))
            cache.put_many(*_rows([101], 8))
        assert all(v is not None for v in got)  # still read, through a read-only connection
        _assert_correct_or_missing(got, range(10), 8)
        messages = _cache_warnings(record)
        assert len(messages) == 1 and str(directory) in messages[0]
        np.testing.assert_array_equal(cache.get_many([_key(101)])[0], _vector(101, 8))
    finally:
        os.chmod(directory, 0o755)


def _faulty_connect(monkeypatch, *, on, message):
    """Make sqlite3 raise ``OperationalError(message)`` on connect or on writing rows."""
    real_connect = sqlite3.connect

    class FaultyConnection(sqlite3.Connection):
        def executemany(self, sql, params):
            if sql.lstrip().upper().startswith("INSERT"):
                raise sqlite3.OperationalError(message)
            return super().executemany(sql, params)

    def connect(*args, **kwargs):
        if on == "connect":
            raise sqlite3.OperationalError(message)
        return real_connect(*args, factory=FaultyConnection, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", connect)


def test_unopenable_store_works_in_memory_only(tmp_path, monkeypatch):
    _faulty_connect(monkeypatch, on="connect", message="attempt to write a readonly database")
    cache = EmbeddingCache(tmp_path)
    keys, vectors = _rows(range(3), 8)
    expected = f"cannot open the disk cache {re.escape(str(tmp_path))}.*readonly.*memory only"
    with pytest.warns(CacheWarning, match=expected):
        cache.put_many(keys, vectors)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)  # warned once, not on every call
        got = cache.get_many(keys)
        cache.put_many(*_rows([9], 8))
    _assert_correct_or_missing(got, range(3), 8)
    assert all(v is not None for v in got)
    assert cache.stats.disk_items is None and len(cache) == 4 and cache.stats.errors == 1


def test_store_that_cannot_be_opened_for_writing_is_still_read(tmp_path, monkeypatch):
    # What a read-only folder does to a non-root user: read-write opens fail, read-only work.
    EmbeddingCache(tmp_path).put_many(*_rows(range(5), 8))
    gc.collect()
    real_connect = sqlite3.connect

    def connect(*args, **kwargs):
        if not kwargs.get("uri"):
            raise sqlite3.OperationalError("attempt to write a readonly database")
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", connect)
    cache = EmbeddingCache(tmp_path)
    with pytest.warns(CacheWarning, match="cannot write to the disk cache .*readonly.*reading it only"):
        got = cache.get_many([_key(i) for i in range(6)])
    assert [v is not None for v in got] == [True] * 5 + [False]
    _assert_correct_or_missing(got, range(6), 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)  # warned once, not per call
        cache.put_many(*_rows([5], 8))
    np.testing.assert_array_equal(cache.get_many([_key(5)])[0], _vector(5, 8))  # from memory
    assert cache.stats.disk_items == 5 and cache.stats.errors == 1
    with pytest.warns(CacheWarning, match="could not clear the disk cache"):
        cache.clear()
    assert cache.stats.memory_items == 0 and cache.stats.disk_items == 5


@pytest.mark.parametrize("message", ["attempt to write a readonly database", "database or disk is full"])
def test_unwritable_store_disables_disk_writes_once_and_keeps_reading(tmp_path, monkeypatch, message):
    EmbeddingCache(tmp_path).put_many(*_rows(range(5), 8))
    _faulty_connect(monkeypatch, on="write", message=message)
    cache = EmbeddingCache(tmp_path)
    expected = f"{message} while writing the disk cache {re.escape(str(tmp_path))}.*disabled"
    with pytest.warns(CacheWarning, match=expected):
        cache.put_many(*_rows([10], 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        cache.put_many(*_rows([11], 8))  # no second warning, no raise
        got = cache.get_many([_key(i) for i in (0, 4, 10, 11, 12)])
    _assert_correct_or_missing(got, (0, 4, 10, 11, 12), 8)
    assert [v is None for v in got] == [False, False, False, False, True]  # disk reads + memory
    monkeypatch.undo()
    assert EmbeddingCache(tmp_path).stats.disk_items == 5  # nothing half-written
