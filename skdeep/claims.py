"""Compute claims: processes sharing a disk cache embed each missing key once between them.

Without coordination, two workers of a ``GridSearchCV(n_jobs=2)`` (or two Dask workers) that miss
the same texts at the same moment would both embed them. Before computing its misses, a process
*claims* them in a small SQLite table beside the cache; keys another live process has claimed are
not computed but waited for, and read from the cache once written. A process only waits after
computing its own claims, so two processes can never wait on each other.

A claim is abandoned, and taken over by a waiter, when its owner releases it without writing (an
error), when its owner process is gone (same host), or when it is older than ``ttl`` seconds
(another host, whose processes cannot be checked).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Sequence

CLAIMS_FILENAME = "claims.sqlite3"
DEFAULT_TTL_S = 1800.0
_CHUNK = 500


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class ComputeClaims:
    """Per-key claims on the work of computing cache misses, shared through ``<directory>``.

    Parameters
    ----------
    directory : path-like
        The cache directory; the claims live in ``claims.sqlite3`` there.
    ttl : float, default=1800
        Age in seconds after which a claim by a process on another host counts as abandoned.
    """

    def __init__(self, directory, ttl: float = DEFAULT_TTL_S):
        self.directory = Path(directory)
        self.ttl = ttl
        self._lock = threading.Lock()
        self._conn = None
        self._conn_pid = None
        self._host = socket.gethostname()
        # Unique per thread of a process: two threads of one server must not share claims.
        self._token = threading.local()

    # ------------------------------------------------------------------ plumbing
    def _owner(self) -> str:
        token = getattr(self._token, "value", None)
        if token is None:
            token = self._token.value = uuid.uuid4().hex
        return token

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None or self._conn_pid != os.getpid():
            self.directory.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.directory / CLAIMS_FILENAME, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS claims (key BLOB PRIMARY KEY, owner TEXT NOT NULL, "
                "host TEXT NOT NULL, pid INTEGER NOT NULL, t REAL NOT NULL)"
            )
            self._conn, self._conn_pid = conn, os.getpid()
        return self._conn

    def _abandoned(self, host: str, pid: int, t: float) -> bool:
        if host == self._host:
            return not _pid_alive(pid)
        return time.time() - t > self.ttl

    # ------------------------------------------------------------------ API
    def claim(self, keys: Sequence[bytes]) -> tuple[list[bytes], list[bytes]]:
        """Claim ``keys``; returns (keys now ours to compute, keys another process is computing).

        Claims of dead or expired owners are taken over.
        """
        owner, now, pid = self._owner(), time.time(), os.getpid()
        ours, theirs = [], []
        with self._lock:
            conn = self._connect()
            for start in range(0, len(keys), _CHUNK):
                chunk = list(keys[start : start + _CHUNK])
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(
                        "INSERT OR IGNORE INTO claims (key, owner, host, pid, t) VALUES (?, ?, ?, ?, ?)",
                        [(k, owner, self._host, pid, now) for k in chunk],
                    )
                    marks = ",".join("?" * len(chunk))
                    rows = conn.execute(
                        f"SELECT key, owner, host, pid, t FROM claims WHERE key IN ({marks})", chunk
                    ).fetchall()
                    stale = [r[0] for r in rows if r[1] != owner and self._abandoned(r[2], r[3], r[4])]
                    if stale:
                        conn.executemany(
                            "UPDATE claims SET owner=?, host=?, pid=?, t=? WHERE key=?",
                            [(owner, self._host, pid, now, k) for k in stale],
                        )
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                stale_set = set(stale)
                for key, row_owner, *_ in rows:
                    (ours if row_owner == owner or key in stale_set else theirs).append(key)
        return ours, theirs

    def release(self, keys: Sequence[bytes]) -> None:
        """Give up this owner's claims on ``keys`` (after writing their vectors, or on failure)."""
        owner = self._owner()
        with self._lock:
            conn = self._connect()
            for start in range(0, len(keys), _CHUNK):
                chunk = list(keys[start : start + _CHUNK])
                marks = ",".join("?" * len(chunk))
                conn.execute(f"DELETE FROM claims WHERE owner=? AND key IN ({marks})", [owner, *chunk])

    @contextlib.contextmanager
    def holding(self, keys: Sequence[bytes]):
        """Hold the claims on ``keys`` while the body runs; release them at the end."""
        try:
            yield
        finally:
            self.release(keys)

    def abandoned(self, keys: Sequence[bytes]) -> list[bytes]:
        """Of ``keys``, those nobody is computing any more (released, dead or expired owner)."""
        if not keys:
            return []
        with self._lock:
            conn = self._connect()
            live = set()
            for start in range(0, len(keys), _CHUNK):
                chunk = list(keys[start : start + _CHUNK])
                marks = ",".join("?" * len(chunk))
                for key, host, pid, t in conn.execute(
                    f"SELECT key, host, pid, t FROM claims WHERE key IN ({marks})", chunk
                ):
                    if not self._abandoned(host, pid, t):
                        live.add(key)
        return [k for k in keys if k not in live]


_claims_by_dir: dict[str, ComputeClaims] = {}
_claims_lock = threading.Lock()


def claims_for(cache) -> ComputeClaims | None:
    """The shared claims of a disk cache (one object per directory per process), else None."""
    directory = getattr(cache, "directory", None)
    if directory is None:
        return None
    key = str(Path(directory).resolve())
    with _claims_lock:
        claims = _claims_by_dir.get(key)
        if claims is None:
            claims = _claims_by_dir[key] = ComputeClaims(key)
    return claims


def fetch_claimed_elsewhere(cache, claims: ComputeClaims, keys: list[bytes], *, timeout: float | None = None):
    """Wait for vectors other processes are computing; returns (found: dict, give_up: list of keys).

    Polls the cache with a growing interval and returns as soon as every key is found, or some
    claims turn out abandoned (those keys come back in ``give_up`` for the caller to claim and
    compute; keys neither found nor abandoned are in neither and must be asked for again).
    """
    found: dict[bytes, object] = {}
    pending = list(keys)
    delay, waited = 0.02, 0.0
    while pending:
        for key, vec in zip(pending, cache.get_many(pending)):
            if vec is not None:
                found[key] = vec
        pending = [k for k in pending if k not in found]
        if not pending:
            break
        give_up = claims.abandoned(pending)
        if give_up:
            return found, give_up
        if timeout is not None and waited >= timeout:
            warnings.warn(
                f"Waited {waited:.0f} s for {len(pending)} embeddings another process claimed; computing them here.",
                RuntimeWarning,
                stacklevel=3,
            )
            return found, pending
        time.sleep(delay)
        waited += delay
        delay = min(delay * 1.5, 0.5)
    return found, []
