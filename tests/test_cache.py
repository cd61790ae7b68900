"""The embedding cache on its own: layers, limits, integrity, faults, processes, pickling."""

from __future__ import annotations

import contextlib
import copy
import gc
import multiprocessing
import os
import pickle
import re
import runpy
import signal
import sqlite3
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import skdeep.cache as cache_module
from skdeep.cache import DB_FILENAME, CacheStats, CacheWarning, EmbeddingCache, resolve_cache

SKDEEP_DIR = Path(cache_module.__file__).parent


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
    monkeypatch.setattr(cache_module, "_now", lambda: now["t"])
    return now


# ---------------------------------------------------------------------- memory layer & API


def test_memory_roundtrip_order_duplicates_and_stats():
    cache = EmbeddingCache()
    keys, vectors = _rows(range(5), 8)
    cache.put_many(keys, vectors.astype(np.float64))
    got = cache.get_many([keys[3], b"missing", keys[0], keys[3]])
    np.testing.assert_array_equal(got[0], _vector(3, 8))
    assert got[1] is None
    np.testing.assert_array_equal(got[2], _vector(0, 8))
    assert got[3] is got[0]
    assert got[0].dtype == np.float32 and not got[0].flags.writeable
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.writes, stats.errors) == (3, 1, 5, 0)
    assert stats.hit_rate == 0.75
    assert stats.memory_items == 5 and stats.disk_items is None and stats.disk_bytes is None
    assert "hit_rate=75.0%" in str(stats) and "no disk layer" in str(stats)
    assert len(cache) == 5
    cache.reset_stats()
    assert cache.stats.hits == cache.stats.misses == cache.stats.writes == 0
    assert CacheStats(0, 0, 0, 0, 0, 0, None, None).hit_rate == 0.0


def test_put_copies_its_input_and_replaces_old_values():
    cache = EmbeddingCache()
    vectors = np.ones((2, 4), dtype=np.float32)
    cache.put_many([b"a", b"b"], vectors)
    vectors[:] = 7  # the caller's array is theirs to change
    assert vectors.flags.writeable
    np.testing.assert_array_equal(cache.get_many([b"a"])[0], np.ones(4))
    cache.put_many([b"a"], np.full((1, 3), 2.0))
    np.testing.assert_array_equal(cache.get_many([b"a"])[0], [2.0, 2.0, 2.0])
    assert len(cache) == 2


def test_keys_may_be_bytes_like_and_bad_input_fails_clearly():
    cache = EmbeddingCache()
    cache.put_many([bytearray(b"k1"), memoryview(b"k2"), np.bytes_(b"k3")], np.eye(3))
    assert all(v is not None for v in cache.get_many([b"k1", b"k2", b"k3"]))
    with pytest.raises(TypeError, match=r"key 1 is str: 'text'"):
        cache.get_many([b"ok", "text"])
    with pytest.raises(ValueError, match=r"one row per key: got shape \(2, 3\) for 3 keys"):
        cache.put_many([b"a", b"b", b"c"], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="2-D"):
        cache.put_many([b"a"], np.zeros(3))
    with pytest.raises(TypeError, match="real numbers"):
        cache.put_many([b"a"], np.array([["x"]]))
    with pytest.raises(ValueError, match="at least one column"):
        cache.put_many([b"a"], np.zeros((1, 0)))
    with pytest.raises(ValueError, match="storage_dtype must be one of .* got 'int8'"):
        EmbeddingCache(storage_dtype="int8").get_many([b"a"])
    with pytest.raises(ValueError, match="memory_bytes must be an int >= 0, got -1"):
        EmbeddingCache(memory_bytes=-1).get_many([b"a"])
    with pytest.raises(ValueError, match="max_disk_bytes must be an int >= 1, got 0"):
        EmbeddingCache(max_disk_bytes=0).get_many([b"a"])
    cache.put_many([], np.zeros((0, 3)))
    assert cache.get_many([]) == []


def test_memory_layer_is_an_lru_bounded_by_bytes():
    dim = 64
    entry = dim * 4 + 16 + cache_module._ENTRY_OVERHEAD
    cache = EmbeddingCache(memory_bytes=10 * entry)
    keys, vectors = _rows(range(10), dim)
    cache.put_many(keys, vectors)
    cache.get_many([keys[0], keys[1]])  # now the most recently used
    new_keys, new_vectors = _rows(range(10, 13), dim)
    cache.put_many(new_keys, new_vectors)
    got = cache.get_many(keys)
    assert [v is not None for v in got] == [True, True, False, False, False] + [True] * 5
    stats = cache.stats
    assert stats.memory_items == 10 and stats.memory_bytes == 10 * entry
    # A vector bigger than the whole budget is not kept, and does not flush the others.
    cache.put_many([b"huge"], np.zeros((1, 100 * dim)))
    assert cache.get_many([b"huge"]) == [None] and cache.stats.memory_items == 10


def test_memory_bytes_zero_disables_the_memory_layer(tmp_path):
    cache = EmbeddingCache(memory_bytes=0)
    cache.put_many([b"a"], np.ones((1, 3)))
    assert cache.get_many([b"a"]) == [None] and len(cache) == 0
    disk_only = EmbeddingCache(tmp_path, memory_bytes=0)
    disk_only.put_many([b"a"], np.ones((1, 3)))
    np.testing.assert_array_equal(disk_only.get_many([b"a"])[0], np.ones(3))
    assert disk_only.stats.memory_items == 0 and disk_only.stats.disk_items == 1


def test_memory_layer_is_thread_safe():
    dim = 16
    cache = EmbeddingCache(memory_bytes=300 * (dim * 4 + 16 + cache_module._ENTRY_OVERHEAD))
    errors = []

    def work(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(200):
                idx = rng.integers(0, 1000, size=20)
                cache.put_many(*_rows(idx, dim))
                _assert_correct_or_missing(cache.get_many([_key(i) for i in idx]), idx, dim)
        except Exception as exc:  # reported below: assertions in threads are otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stats = cache.stats
    assert stats.memory_bytes <= cache.memory_bytes
    with cache._memory_lock:
        recount = sum(v.nbytes + len(k) + cache_module._ENTRY_OVERHEAD for k, v in cache._memory.items())
        assert recount == stats.memory_bytes and set(cache._stamps) == set(cache._memory)


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
    assert cache._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000
    assert cache._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
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
            (b"f64", cache_module._checksum(b"f64", data), data),
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
    np.testing.assert_array_equal(
        EmbeddingCache(tmp_path / "f16", memory_bytes=0).get_many([b"big"])[0], [1e6, -2.0]
    )


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
    dim, limit, n = 256, 1_000_000, 400  # a batch of n rows is ~0.4 MB on disk
    cache = EmbeddingCache(tmp_path, memory_bytes=0, max_disk_bytes=limit)
    old = list(range(0, n))
    clock["t"] = 1_000
    cache.put_many(*_rows(old, dim))
    clock["t"] = 2_000
    cache.put_many(*_rows(range(n, 2 * n), dim))
    # Reading half of the oldest rows an hour later refreshes their access stamps...
    clock["t"] = 2_000 + cache_module._TOUCH_INTERVAL_S + 1
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
        clock["t"] += cache_module._TOUCH_INTERVAL_S
        cache.get_many([b"a"])
        assert atime() == clock["t"]


# ---------------------------------------------------------------------- integrity & faults


def _cache_warnings(record):
    return [str(w.message) for w in record if issubclass(w.category, CacheWarning)]


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
    monkeypatch.setattr(cache_module, "_BUSY_TIMEOUT_S", 0.2)
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


# ---------------------------------------------------------------------- several processes

# Child processes load skdeep/cache.py under a bare `skdeep` package rather than importing
# skdeep itself, whose __init__ pulls in torch: the cache needs only the stdlib and numpy,
# and this keeps each child's start-up well under a second.
_CHILD_SOURCE = """
import sys, types
package = types.ModuleType("skdeep")
package.__path__ = [SKDEEP_DIR]
sys.modules.setdefault("skdeep", package)
import pickle
import numpy as np
from skdeep.cache import EmbeddingCache

def key(i):
    return i.to_bytes(16, "little")

def vector(i, dim):
    return (np.arange(dim, dtype=np.float32) / dim + i).astype(np.float32)

cache = pickle.loads(CACHE) if CACHE is not None else EmbeddingCache(DIRECTORY)
for _ in range(ROUNDS):
    for start in range(START, STOP, BATCH):
        idx = range(start, min(STOP, start + BATCH))
        cache.put_many([key(i) for i in idx], np.stack([vector(i, DIM) for i in idx]))
        if PROGRESS:
            open(PROGRESS, "a").write(".")
got = EmbeddingCache(DIRECTORY, memory_bytes=0).get_many([key(i) for i in range(START, STOP)])
for i, v in zip(range(START, STOP), got):
    assert v is not None and (v == vector(i, DIM)).all(), i
"""


def _start_child(tmp_path, name, **params):
    script = tmp_path / "child.py"
    script.write_text(_CHILD_SOURCE)
    settings = {"SKDEEP_DIR": str(SKDEEP_DIR), "CACHE": None, "ROUNDS": 1, "PROGRESS": None, **params}
    ctx = multiprocessing.get_context("spawn")
    process = ctx.Process(
        target=runpy.run_path, args=(str(script),), kwargs={"init_globals": settings}, name=name
    )
    process.start()
    return process


def test_concurrent_writer_processes_leave_every_key_readable_and_correct(tmp_path):
    directory, dim = tmp_path / "shared", 48
    # Overlapping ranges, written three times each in small transactions so the writers interleave;
    # the first child gets the cache by pickle (by reference: it opens the same directory).
    shipped = pickle.dumps(EmbeddingCache(directory, storage_dtype="float32"))
    children = [
        _start_child(
            tmp_path, f"writer{w}", DIRECTORY=str(directory), START=300 * w, STOP=300 * w + 600,
            BATCH=25, DIM=dim, ROUNDS=3, CACHE=shipped if w == 0 else None,
        )
        for w in range(3)
    ]
    for child in children:
        child.join(120)
    assert [c.exitcode for c in children] == [0, 0, 0]
    indices = list(range(1200))
    got = EmbeddingCache(directory, memory_bytes=0).get_many([_key(i) for i in indices])
    assert all(v is not None for v in got)
    _assert_correct_or_missing(got, indices, dim)
    assert EmbeddingCache(directory).stats.disk_items == 1200


def test_writer_killed_mid_batch_leaves_only_correct_rows_and_a_working_store(tmp_path):
    directory, dim = tmp_path / "killed", 128
    progress = tmp_path / "progress"
    child = _start_child(
        tmp_path, "doomed", DIRECTORY=str(directory), START=0, STOP=10**6, BATCH=2000, DIM=dim,
        PROGRESS=str(progress),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(progress.read_text() if progress.exists() else "") < 3:
        time.sleep(0.01)
    time.sleep(0.05)  # into the next batch's transaction
    os.kill(child.pid, signal.SIGKILL)
    child.join(30)
    assert child.exitcode == -signal.SIGKILL
    committed = len(progress.read_text()) * 2000
    indices = list(range(committed + 20_000))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)  # a killed writer is not corruption
        cache = EmbeddingCache(directory, memory_bytes=0)
        got = cache.get_many([_key(i) for i in indices])
    _assert_correct_or_missing(got, indices, dim)
    found = [v is not None for v in got]
    assert all(found[:committed])  # every committed batch is there...
    assert sum(found) % 2000 == 0  # ...and batches are all-or-nothing
    cache.put_many(*_rows([10**7], dim))
    assert EmbeddingCache(directory).get_many([_key(10**7)])[0] is not None


def test_a_forked_child_reopens_its_own_connection(tmp_path):
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    cache = EmbeddingCache(tmp_path)
    cache.put_many(*_rows([1], 8))
    parent_conn = cache._conn
    child = multiprocessing.get_context("fork").Process(target=_forked_child, args=(cache,))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert cache._conn is parent_conn  # the parent's connection was left alone
    got = cache.get_many([_key(1), _key(2)])
    np.testing.assert_array_equal(got[1], _vector(2, 8))  # read from disk, written by the child


def _forked_child(cache):
    inherited = cache._conn
    cache.put_many(*_rows([2], 8))
    assert cache._conn is not inherited and cache._pid == os.getpid()
    os._exit(0 if cache.get_many([_key(1)])[0] is not None else 1)


# ---------------------------------------------------------------------- pickling & resolving


def test_pickles_by_reference_small_and_same_settings(tmp_path):
    cache = EmbeddingCache(
        tmp_path / "c", memory_bytes=1 << 20, max_disk_bytes=1 << 30, storage_dtype="float16"
    )
    cache.put_many(*_rows(range(2000), 128))
    blob = pickle.dumps(cache)
    assert len(blob) < 500  # directory and settings, none of the ~1 MB of vectors
    # In the owning process, unpickling and deep-copying give back the same cache (one memory
    # layer shared by clones); elsewhere, an equivalent cache on the same directory.
    assert pickle.loads(blob) is cache
    assert copy.deepcopy(cache) is cache and copy.copy(cache) is cache
    del cache
    gc.collect()
    other = pickle.loads(blob)
    assert other.path == (tmp_path / "c" / DB_FILENAME).resolve()
    assert (other.memory_bytes, other.max_disk_bytes, other.storage_dtype) == (1 << 20, 1 << 30, "float16")
    assert other.stats.memory_items == 0 and len(other) == 2000
    assert len(pickle.dumps(EmbeddingCache())) < 300
    assert repr(other).startswith("EmbeddingCache(") and "float16" in repr(other)


def test_resolve_cache(tmp_path, monkeypatch):
    assert resolve_cache(None) is None and resolve_cache(False) is None
    default = resolve_cache("auto")
    assert isinstance(default, EmbeddingCache) and default.directory is None
    assert resolve_cache(True) is default and resolve_cache("auto") is default
    monkeypatch.setenv("SKDEEP_CACHE_DIR", str(tmp_path / "env"))
    from_env = resolve_cache("auto")
    assert from_env.path == tmp_path / "env" / DB_FILENAME and resolve_cache(True) is from_env
    by_str = resolve_cache(str(tmp_path / "dir"))
    assert resolve_cache(tmp_path / "dir") is by_str
    assert resolve_cache(str(tmp_path / "x" / ".." / "dir")) is by_str
    assert resolve_cache(tmp_path / "other") is not by_str
    own = EmbeddingCache()
    assert resolve_cache(own) is own
    with pytest.raises(TypeError, match="got 3 of type int"):
        resolve_cache(3)
    with pytest.raises(TypeError, match=r"got \['a'\] of type list"):
        resolve_cache(["a"])
    with pytest.raises(ValueError, match="cache=''"):
        resolve_cache("")
