"""Compute claims: processes sharing a disk cache compute each missing key once, and survive faults."""

from __future__ import annotations

import gc
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest
from cache_fixtures import _cache_warnings, _db, _key, _vector
from conftest import REPO_ROOT

from skdeep import TextEncoder
from skdeep.cache import (
    DB_FILENAME,
    CacheWarning,
    ComputeClaims,
    EmbeddingCache,
    _claims,
    claims_for,
    fetch_claimed_elsewhere,
)

TEXTS = ["a good film", "a bad film", "the plot", "slow and long", "fun", "a good film", "great acting"]


def _keys(indices):
    return [_key(i) for i in indices]


def _owners(cache, keys):
    """{key: pid} of the claims on ``keys``, read through the cache's own store."""
    return {k: row[2] for k, row in cache._disk_store().claim_rows(keys).items()}


def _compute_once(cache, keys, model):
    """What the engine does with a shared cache: claim, compute ours, wait for theirs, repeat."""
    claims = claims_for(cache)
    todo, out = list(keys), {}
    while todo:
        ours, theirs = claims.claim(todo)
        if ours:
            with claims.holding(ours):
                vectors = model(ours)
                cache.put_many(ours, vectors)
            out.update(zip(ours, vectors))
        if theirs:
            found, give_up = fetch_claimed_elsewhere(cache, claims, theirs)
            if give_up:
                with claims.holding(give_up):
                    vectors = model(give_up)
                    cache.put_many(give_up, vectors)
                found.update(zip(give_up, vectors))
            out.update(found)
        todo = [k for k in todo if k not in out]
    return out


# ---------------------------------------------------------------------- the protocol in one process


def test_claims_need_a_disk_layer_and_bytes_keys(tmp_path):
    assert claims_for(None) is None and claims_for(EmbeddingCache()) is None
    claims = claims_for(EmbeddingCache(tmp_path))
    with pytest.raises(TypeError, match="key 1 is str: 'b'"):
        claims.claim([b"a", "b"])
    assert claims.claim([bytearray(b"a"), b"a"]) == ([b"a"], [])  # bytes-like, duplicates once


def test_overlapping_claims_of_concurrent_owners_are_disjoint(tmp_path):
    # Two cache instances (as two processes would have) x two threads each: four owners.
    caches = [EmbeddingCache(tmp_path), EmbeddingCache(tmp_path)]
    barrier = threading.Barrier(4)
    results, errors = {}, []

    def work(owner):
        rng = np.random.default_rng(owner)
        keys = _keys(rng.choice(200, size=120, replace=False))
        try:
            barrier.wait()
            results[owner] = keys, claims_for(caches[owner % 2]).claim(keys)
        except Exception as exc:  # reported below: assertions in threads are otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 4
    claimed = {}
    for owner, (keys, (ours, theirs)) in results.items():
        assert sorted(ours + theirs) == sorted(keys)  # every key answered, once
        for key in ours:
            assert claimed.setdefault(key, owner) == owner, "a key was claimed by two owners"
    for owner, (_owned, (_mine, theirs)) in results.items():
        assert all(claimed[k] != owner for k in theirs)  # theirs: held by another owner
    assert set(claimed) == {k for keys, _ in results.values() for k in keys}


@pytest.mark.skipif(not hasattr(sqlite3.Connection, "setlimit"), reason="needs Python >= 3.11")
def test_large_claims_span_statements_and_transactions(tmp_path, monkeypatch):
    real_connect = sqlite3.connect

    def connect(*args, **kwargs):
        conn = real_connect(*args, **kwargs)
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 37)
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    first, second = claims_for(EmbeddingCache(tmp_path)), claims_for(EmbeddingCache(tmp_path))
    assert first.claim(_keys(range(12_000))) == (_keys(range(12_000)), [])
    assert second.claim(_keys(range(6_000, 18_000))) == (_keys(range(12_000, 18_000)), _keys(range(6_000, 12_000)))
    with first.holding(_keys(range(12_000))):
        assert second.abandoned(_keys(range(11_990, 12_010))) == _keys(range(12_000, 12_010))  # its own
    assert second.claim(_keys(range(12_000))) == (_keys(range(12_000)), [])


def test_holding_releases_on_success_and_on_failure(tmp_path):
    owner, other = claims_for(EmbeddingCache(tmp_path)), claims_for(EmbeddingCache(tmp_path))
    keys = _keys(range(10))
    assert owner.claim(keys) == (keys, [])
    with pytest.raises(RuntimeError, match="model failed"):
        with owner.holding(keys):
            assert other.claim(keys) == ([], keys)  # held by a live owner
            assert other.abandoned(keys) == []
            raise RuntimeError("model failed")
    # Released without writing: abandoned, and claimable by anyone.
    assert other.abandoned(keys) == keys
    assert other.claim(keys[:5]) == (keys[:5], [])
    with other.holding(keys[:5]):
        pass
    assert owner.claim(keys) == (keys, [])
    owner.release(keys)
    assert other.claim(keys) == (keys, [])


def test_keys_with_a_vector_are_theirs_and_fetched_at_once(tmp_path):
    cache = EmbeddingCache(tmp_path)
    cache.put_many(_keys(range(3)), np.stack([_vector(i, 8) for i in range(3)]))
    # Another process wrote these between our lookup and our claim: read them, do not recompute.
    claims = claims_for(EmbeddingCache(tmp_path, memory_bytes=0))
    ours, theirs = claims.claim(_keys(range(5)))
    assert ours == _keys(range(3, 5)) and theirs == _keys(range(3))
    start = time.monotonic()
    found, give_up = fetch_claimed_elsewhere(cache, claims, theirs)
    assert give_up == [] and time.monotonic() - start < 5
    for i in range(3):
        np.testing.assert_array_equal(found[_key(i)], _vector(i, 8))


def test_waiter_gets_the_vectors_a_live_owner_writes(tmp_path):
    owner_cache, waiter_cache = EmbeddingCache(tmp_path), EmbeddingCache(tmp_path, memory_bytes=0)
    owner, waiter = claims_for(owner_cache), claims_for(waiter_cache)
    keys = _keys(range(20))
    assert owner.claim(keys) == (keys, [])
    assert waiter.claim(keys) == ([], keys)
    result = {}
    thread = threading.Thread(target=lambda: result.update(fetch=fetch_claimed_elsewhere(waiter_cache, waiter, keys)))
    thread.start()
    with owner.holding(keys):
        time.sleep(0.3)  # the waiter polls meanwhile
        owner_cache.put_many(keys, np.stack([_vector(i, 8) for i in range(20)]))
    thread.join(60)
    found, give_up = result["fetch"]
    assert give_up == [] and sorted(found) == sorted(keys)
    for i in range(20):
        np.testing.assert_array_equal(found[_key(i)], _vector(i, 8))
    assert waiter_cache.stats.misses == 0  # polling is not counted as cache misses


def test_threads_sharing_a_directory_compute_each_key_once(tmp_path):
    computed, lock = [], threading.Lock()

    def model(keys):
        time.sleep(0.02)  # slow enough for the others to claim meanwhile
        with lock:
            computed.extend(keys)
        return np.stack([_vector(int.from_bytes(k, "little"), 8) for k in keys])

    barrier, errors = threading.Barrier(3), []

    def work(seed):
        try:
            order = np.random.default_rng(seed).permutation(60)
            cache = EmbeddingCache(tmp_path, memory_bytes=0)  # its own connection, like another process
            barrier.wait()
            out = _compute_once(cache, _keys(order), model)
            for i in order:
                np.testing.assert_array_equal(out[_key(i)], _vector(i, 8))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert sorted(computed) == sorted(_keys(range(60)))  # each key computed exactly once


def test_an_expired_owner_does_not_release_its_successors_claims(tmp_path):
    keys = _keys(range(4))
    slow = ComputeClaims(EmbeddingCache(tmp_path), lease=0.05)
    assert slow.claim(keys) == (keys, [])
    time.sleep(0.3)
    successor = claims_for(EmbeddingCache(tmp_path))
    assert successor.abandoned(keys) == keys
    assert successor.claim(keys) == (keys, [])  # the lease ran out: taken over
    with slow.holding(keys):  # the slow owner wakes up, renews and releases: none of it is its own now
        pass
    slow.release(keys)
    assert claims_for(EmbeddingCache(tmp_path)).claim(keys) == ([], keys)


def test_a_database_from_before_claims_gets_its_claims_table(tmp_path):
    EmbeddingCache(tmp_path).put_many([b"a"], np.ones((1, 3)))
    gc.collect()
    with _db(tmp_path) as conn:
        conn.execute("DROP TABLE claims")  # as written by skdeep versions with claims.sqlite3
    cache = EmbeddingCache(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        assert claims_for(cache).claim([b"a", b"b"]) == ([b"b"], [b"a"])
    assert cache.get_many([b"a"])[0] is not None


# ---------------------------------------------------------------------- owners in other processes

_OWNER_SOURCE = """
import os, pathlib, sys, time
import skdeep.cache._claims as claims_module
from skdeep.cache import EmbeddingCache, claims_for

directory, lease, start, stop, mode, ready = sys.argv[1:]
claims_module.LEASE_S = float(lease)
claims = claims_for(EmbeddingCache(directory))
keys = [i.to_bytes(16, "little") for i in range(int(start), int(stop))]
ours, theirs = claims.claim(keys)
assert ours == keys and not theirs, (ours, theirs)
if mode == "exit":
    os._exit(0)  # dies holding its claims: no release, no renewal
with claims.holding(ours):
    pathlib.Path(ready).write_text("ready")
    time.sleep(600)
"""


def _start_owner(tmp_path, directory, indices, *, lease, mode):
    ready = tmp_path / f"ready-{indices.start}"
    env = {**os.environ, "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    args = [str(directory), str(lease), str(indices.start), str(indices.stop), mode, str(ready)]
    process = subprocess.Popen([sys.executable, "-c", _OWNER_SOURCE, *args], env=env, stderr=subprocess.PIPE)
    if mode == "hold":
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the owner process did not start"
            time.sleep(0.02)
    return process


def _stop(process):
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(30)
    process.stderr.close()


def test_a_dead_owner_is_taken_over_at_once(tmp_path):
    directory = tmp_path / "cache"
    # A long lease: only the dead-pid check can free these claims quickly.
    child = _start_owner(tmp_path, directory, range(0, 8), lease=600, mode="exit")
    assert child.wait(120) == 0, child.stderr.read().decode()[-2000:]
    child.stderr.close()
    cache = EmbeddingCache(directory)
    keys = _keys(range(8))
    assert set(_owners(cache, keys).values()) == {child.pid}  # the claims are there...
    claims = claims_for(cache)
    assert claims.abandoned(keys) == keys  # ...but their owner is gone
    found, give_up = fetch_claimed_elsewhere(cache, claims, keys, timeout=60)
    assert found == {} and sorted(give_up) == sorted(keys)
    assert set(_owners(cache, keys).values()) == {os.getpid()}  # taken over for the caller


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_a_stopped_owner_is_taken_over_after_its_lease_and_a_renewing_one_is_not(tmp_path, monkeypatch):
    lease = 4.0  # renewed every 1.3 s: generous slack for a loaded machine
    monkeypatch.setattr(_claims, "LEASE_S", lease)
    directory = tmp_path / "cache"
    stopped = _start_owner(tmp_path, directory, range(0, 10), lease=lease, mode="hold")
    live = _start_owner(tmp_path, directory, range(10, 20), lease=lease, mode="hold")
    try:
        with _db(directory) as conn:
            # Stop the owner while we hold the write lock, so it is not frozen inside a renewal
            # transaction (a stopped process holding SQLite's lock would block every writer).
            conn.execute("BEGIN IMMEDIATE")
            os.kill(stopped.pid, signal.SIGSTOP)
            _wait_stopped(stopped.pid)
            conn.execute("ROLLBACK")
        cache = EmbeddingCache(directory)
        claims = claims_for(cache)
        frozen, renewing = _keys(range(10)), _keys(range(10, 20))
        assert claims.claim(frozen + renewing) == ([], frozen + renewing)
        start = time.monotonic()
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            found, give_up = fetch_claimed_elsewhere(cache, claims, frozen, timeout=60)
        assert not _cache_warnings(record)  # not given up by the time-out...
        assert found == {} and sorted(give_up) == sorted(frozen)
        assert set(_owners(cache, frozen).values()) == {os.getpid()}  # ...but taken over
        assert time.monotonic() - start < 60
        # The live owner keeps renewing: its claims outlast the lease several times over.
        with pytest.warns(CacheWarning, match="Waited"):
            found, give_up = fetch_claimed_elsewhere(cache, claims, renewing, timeout=2 * lease)
        assert found == {} and sorted(give_up) == sorted(renewing)  # given up by the time-out only
        assert claims.abandoned(renewing) == []
        assert claims.claim(renewing) == ([], renewing)
        assert set(_owners(cache, renewing).values()) == {live.pid}
    finally:
        for process in (stopped, live):
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
            _stop(process)


def _wait_stopped(pid):
    stat = f"/proc/{pid}/stat"
    if not os.path.exists(stat):
        time.sleep(0.5)
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open(stat) as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] in ("T", "t"):
                return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not stop")


# ---------------------------------------------------------------------- faults: claims degrade like vectors


def _damage(directory, how):
    """Fill a cache for TEXTS, close it, then damage its file."""
    path = directory / DB_FILENAME
    if how == "not_a_database":
        directory.mkdir()
        path.write_bytes(os.urandom(1 << 16))
        return
    cache = EmbeddingCache(directory)
    cache.put_many(_keys(range(200)), np.stack([_vector(i, 32) for i in range(200)]))
    del cache
    gc.collect()  # closes the connection: the log is checkpointed into the file
    for suffix in ("-wal", "-shm"):
        (directory / (DB_FILENAME + suffix)).unlink(missing_ok=True)
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[page:] = os.urandom(len(data) - page)  # every table and index page is noise, the header is fine
    path.write_bytes(bytes(data))


def _root():
    return hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.mark.parametrize(
    "fault",
    ["damaged", "not_a_database", "unopenable", "read_only_directory", "path_is_a_file", "unwritable_parent"],
)
def test_transform_survives_a_broken_cache_with_a_warning(tiny_text_model, tmp_path, monkeypatch, fault):
    expected = TextEncoder(tiny_text_model, cache=None).transform(TEXTS)
    directory = tmp_path / "cache"
    restore = []
    if fault in ("damaged", "not_a_database"):
        _damage(directory, fault)
    elif fault == "unopenable":

        def connect(*args, **kwargs):
            raise sqlite3.OperationalError("unable to open database file")

        monkeypatch.setattr(sqlite3, "connect", connect)
    elif fault == "read_only_directory":
        EmbeddingCache(directory).put_many([b"x"], np.ones((1, 32)))
        gc.collect()
        os.chmod(directory / DB_FILENAME, 0o444)
        os.chmod(directory, 0o555)
        restore.append(directory)
        if _root():  # root ignores permissions: refuse read-write opens as the folder would
            real_connect = sqlite3.connect

            def connect(*args, **kwargs):
                if not kwargs.get("uri"):
                    raise sqlite3.OperationalError("attempt to write a readonly database")
                return real_connect(*args, **kwargs)

            monkeypatch.setattr(sqlite3, "connect", connect)
    elif fault == "path_is_a_file":
        directory.write_text("not a folder")
    elif fault == "unwritable_parent":
        parent = tmp_path / "locked"
        parent.mkdir()
        os.chmod(parent, 0o555)
        restore.append(parent)
        directory = parent / "cache"
        if _root():
            real_mkdir = os.mkdir

            def mkdir(path, *args, **kwargs):
                if os.fspath(path).startswith(os.fspath(parent)):
                    raise PermissionError(13, "Permission denied", os.fspath(path))
                return real_mkdir(path, *args, **kwargs)

            monkeypatch.setattr(os, "mkdir", mkdir)
    try:
        cache = EmbeddingCache(directory)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            got = TextEncoder(tiny_text_model, cache=cache).transform(TEXTS)  # never raises
            again = TextEncoder(tiny_text_model, cache=cache).transform(TEXTS)
            claims = claims_for(cache)
            keys = _keys(range(5))
            ours, theirs = claims.claim(keys)
            with claims.holding(ours):
                pass
            claims.release(keys)
        np.testing.assert_allclose(got, expected, atol=1e-6)
        np.testing.assert_allclose(again, expected, atol=1e-6)
        messages = _cache_warnings(record)
        assert messages and all(str(tmp_path) in m for m in messages), messages
        # Claims answered, without raising: "compute it here" when they cannot be written.
        assert sorted(ours + theirs) == sorted(keys)
        if fault not in ("damaged", "not_a_database"):  # those two were moved aside and replaced
            assert (ours, theirs) == (keys, [])
    finally:
        for path in restore:
            os.chmod(path, 0o755)
