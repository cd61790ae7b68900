"""The embedding cache on its own: memory layer, API, processes, pickling (disk layer: test_cache_store.py)."""

from __future__ import annotations

import copy
import gc
import multiprocessing
import os
import pickle
import runpy
import signal
import threading
import time
import warnings

import numpy as np
import pytest
from cache_fixtures import SKDEEP_DIR, _assert_correct_or_missing, _key, _rows, _vector

from skdeep.cache import DB_FILENAME, CacheStats, CacheWarning, EmbeddingCache, _memory, resolve_cache

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
    entry = dim * 4 + 16 + _memory._ENTRY_OVERHEAD
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
    cache = EmbeddingCache(memory_bytes=300 * (dim * 4 + 16 + _memory._ENTRY_OVERHEAD))
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
    layer = cache._memory
    with layer.lock:
        recount = sum(v.nbytes + len(k) + _memory._ENTRY_OVERHEAD for k, v in layer.vectors.items())
        assert recount == stats.memory_bytes and set(layer.stamps) == set(layer.vectors)


# ---------------------------------------------------------------------- several processes

# Child processes load the skdeep.cache package under a bare `skdeep` package rather than importing
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
    process = ctx.Process(target=runpy.run_path, args=(str(script),), kwargs={"init_globals": settings}, name=name)
    process.start()
    return process


def test_concurrent_writer_processes_leave_every_key_readable_and_correct(tmp_path):
    directory, dim = tmp_path / "shared", 48
    # Overlapping ranges, written three times each in small transactions so the writers interleave;
    # the first child gets the cache by pickle (by reference: it opens the same directory).
    shipped = pickle.dumps(EmbeddingCache(directory, storage_dtype="float32"))
    children = [
        _start_child(
            tmp_path,
            f"writer{w}",
            DIRECTORY=str(directory),
            START=300 * w,
            STOP=300 * w + 600,
            BATCH=25,
            DIM=dim,
            ROUNDS=3,
            CACHE=shipped if w == 0 else None,
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
        tmp_path,
        "doomed",
        DIRECTORY=str(directory),
        START=0,
        STOP=10**6,
        BATCH=2000,
        DIM=dim,
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
    parent_conn = cache._store._conn
    child = multiprocessing.get_context("fork").Process(target=_forked_child, args=(cache,))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert cache._store._conn is parent_conn  # the parent's connection was left alone
    got = cache.get_many([_key(1), _key(2)])
    np.testing.assert_array_equal(got[1], _vector(2, 8))  # read from disk, written by the child


def _forked_child(cache):
    inherited = cache._store._conn
    cache.put_many(*_rows([2], 8))
    assert cache._store._conn is not inherited and cache._pid == os.getpid()
    os._exit(0 if cache.get_many([_key(1)])[0] is not None else 1)


# ---------------------------------------------------------------------- pickling & resolving


def test_pickles_by_reference_small_and_same_settings(tmp_path):
    cache = EmbeddingCache(tmp_path / "c", memory_bytes=1 << 20, max_disk_bytes=1 << 30, storage_dtype="float16")
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
