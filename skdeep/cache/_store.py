"""The disk layer of the embedding cache: one SQLite file per directory, shared by processes.

``<directory>/embeddings.sqlite3`` holds two tables on one connection per process:

* ``vectors``: one checksummed row per key (dtype, length, CRC-32 of key and bytes, access time);
* ``claims``: which process is computing which missing key, with a lease (see
  :mod:`skdeep.cache._claims`, which owns the protocol; this module only runs its SQL).

Both go through the same fault rules: a corrupt file is moved aside and replaced, a full or
read-only disk stops writes after one warning, a file that cannot be opened switches the disk layer
off, a lock held too long skips the operation. Nothing here raises a database error to its caller.
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
import time
import zlib
from itertools import repeat

import numpy as np

from ._sqlite import (
    ROW_DTYPES,
    _checksum,
    _decode,
    _describe,
    _fault_kind,
    _retry_busy,
    _shrink,
    _transaction,
    _used_bytes,
)

_SCHEMA_VERSION = 1
# A row's access time is rewritten at most this often: keeps reads from turning into writes.
_TOUCH_INTERVAL_S = 3600
_BUSY_TIMEOUT_S = 30.0
_PAGE_SIZE = 16384
# Eviction frees down to this fraction of max_disk_bytes, so it runs once per many writes.
_EVICT_LOW_WATER = 0.9
# SQLite's historical default bound on ``?`` parameters; used when the library cannot tell us.
_DEFAULT_MAX_VARIABLES = 999

_VECTORS_SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    id    INTEGER PRIMARY KEY,
    key   BLOB    NOT NULL UNIQUE,
    dtype TEXT    NOT NULL,
    dim   INTEGER NOT NULL,
    crc   INTEGER NOT NULL,
    atime INTEGER NOT NULL,
    data  BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS vectors_by_atime ON vectors (atime)
"""
# Added beside ``vectors`` without a schema version bump: older skdeep versions ignore it.
# ``expires`` is the owner's wall-clock time at which its lease ends unless renewed.
_CLAIMS_SCHEMA = """
CREATE TABLE IF NOT EXISTS claims (
    key     BLOB    PRIMARY KEY,
    owner   TEXT    NOT NULL,
    host    TEXT    NOT NULL,
    pid     INTEGER NOT NULL,
    expires REAL    NOT NULL
) WITHOUT ROWID
"""
# ``data`` is the last column so that the columns before it never need the blob's overflow pages.
_INSERT = "INSERT OR REPLACE INTO vectors (key, dtype, dim, crc, atime, data) VALUES (?, ?, ?, ?, ?, ?)"

# Connections inherited through fork: closing them in the child could disturb the parent's
# database state, and letting them be garbage-collected closes them, so they are parked here.
_ABANDONED_CONNECTIONS = []


class DiskStore:
    """The SQLite file of one cache, as seen by one process (re-created after ``fork``).

    Parameters
    ----------
    path : pathlib.Path
        The database file; its folder is created on first use.
    max_disk_bytes : int or None
        Size limit of the live pages, enforced after each write (see :meth:`put`).
    report : callable
        ``report(message)`` counts a survived fault and warns with a :class:`CacheWarning`;
        ``report(None)`` only counts it.
    """

    def __init__(self, path, *, max_disk_bytes, report):
        self.path = path
        self.max_disk_bytes = max_disk_bytes
        self._report = report
        self.lock = threading.RLock()  # guards the connection: threads share it
        self._conn = None
        self._db_ident = None  # (st_dev, st_ino) of the file the connection opened
        self._state = "closed"  # "closed" (open on next use), "open" or "off"
        self.writable = True
        self._chunk = _DEFAULT_MAX_VARIABLES

    def abandon_after_fork(self):
        """In a forked child: leave the parent's connection alone (see ``_ABANDONED_CONNECTIONS``)."""
        if self._conn is not None:
            _ABANDONED_CONNECTIONS.append(self._conn)
            self._conn = None

    # ------------------------------------------------------------------ vectors

    def get(self, keys, *, now, stale_before):
        """Read ``keys``; return {key: read-only float32 vector} for the valid rows found.

        Damaged rows are deleted and reported; rows last accessed before ``stale_before`` get
        ``now`` as their access time (best effort).
        """
        found = {}
        bad_keys = []
        stale_keys = []
        with self.lock:
            conn = self._connection()
            if conn is None:
                return found
            chunk = self._chunk
            crc32, frombuffer, f4 = zlib.crc32, np.frombuffer, ROW_DTYPES["<f4"]
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
                        if dtype == "<f4" and type(data) is bytes and len(data) == dim * 4 and crc32(data, crc32(key)) == crc:
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
                self._handle_db_error(exc, "reading", reading=True)
                return found
            if bad_keys:
                self._report(
                    f"{len(bad_keys)} damaged row(s) in the disk cache {self.path} failed their "
                    "checksum or length check; they were discarded and will be recomputed"
                )
                self._delete_keys(conn, bad_keys)
            if stale_keys:
                self._try_touch(conn, stale_keys, now)
        return found

    def put(self, keys, stored, *, now):
        """Write one row per key from the 2-D array ``stored`` in one transaction, then evict."""
        dtype = stored.dtype.str
        dim = stored.shape[1]
        data = memoryview(np.ascontiguousarray(stored)).cast("B")
        row_bytes = stored.itemsize * dim
        blobs = [data[i * row_bytes : (i + 1) * row_bytes] for i in range(len(keys))]
        crcs = [_checksum(k, b) for k, b in zip(keys, blobs)]
        with self.lock:
            for _ in range(2):  # a second try only after moving a corrupt file aside
                conn = self._connection()
                if conn is None or not self.writable:
                    return
                try:
                    with _transaction(conn):
                        conn.executemany(_INSERT, zip(keys, repeat(dtype), repeat(dim), crcs, repeat(now), blobs))
                        evicted = self.max_disk_bytes is not None and self._evict(conn)
                    if evicted:
                        _shrink(conn)
                    return
                except sqlite3.Error as exc:
                    if not self._handle_db_error(exc, "writing"):
                        return

    def touch(self, keys, now):
        """Refresh the access stamps of ``keys`` (memory hits whose stamps are old), best effort."""
        with self.lock:
            conn = self._connection()
            if conn is not None:
                self._try_touch(conn, keys, now)

    def clear(self):
        """Delete every vector; warn instead when the disk cannot be written."""
        with self.lock:
            conn = self._connection()
            if conn is None:
                return
            if not self.writable:
                self._warn_only(f"could not clear the disk cache {self.path}: disk writes are disabled")
                return
            try:
                with _transaction(conn):
                    conn.execute("DELETE FROM vectors")
                _shrink(conn)
            except sqlite3.Error as exc:
                self._handle_db_error(exc, "clearing")

    def measure(self):
        """(rows, bytes of live pages), or (None, None) without a usable disk layer."""
        with self.lock:
            conn = self._connection()
            if conn is None:
                return None, None
            try:
                return conn.execute("SELECT count(*) FROM vectors").fetchone()[0], _used_bytes(conn)
            except sqlite3.Error as exc:
                self._handle_db_error(exc, "measuring")
                return None, None

    def _evict(self, conn):
        """Delete least recently accessed rows until the live pages are under the low-water mark.

        Runs inside the writing transaction; the caller holds ``lock``. Returns whether anything
        was deleted.
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
            conn.execute("DELETE FROM vectors WHERE id IN (SELECT id FROM vectors ORDER BY atime, id LIMIT ?)", (n_evict,))
            evicted = True
        return evicted

    def _delete_keys(self, conn, keys):
        if not self.writable:
            return
        try:
            with _transaction(conn):
                conn.executemany("DELETE FROM vectors WHERE key = ?", ((k,) for k in keys))
        except sqlite3.Error as exc:
            self._handle_db_error(exc, "deleting damaged rows from")

    def _try_touch(self, conn, keys, now):
        """Refresh access stamps, best effort: a busy database is not worth waiting for here."""
        if not self.writable:
            return
        try:
            with _short_busy_timeout(conn, self, 0.1), _transaction(conn):
                conn.executemany(
                    "UPDATE vectors SET atime = ? WHERE key = ? AND atime < ?",
                    ((now, k, now - _TOUCH_INTERVAL_S) for k in keys),
                )
        except sqlite3.Error as exc:
            if _fault_kind(exc) != "busy":
                self._handle_db_error(exc, "updating access times in")

    # ------------------------------------------------------------------ claims table

    def claim(self, keys, *, owner, host, pid, expires, abandoned):
        """Claim ``keys`` for ``owner`` until ``expires``; return (ours, theirs), or None.

        In one transaction per chunk: keys that already have a vector go to ``theirs`` (someone
        computed them: read them), unclaimed keys are inserted as ours, and claims for which
        ``abandoned(owner, host, pid, expires)`` is true are taken over. None means claims are
        unavailable (no disk layer, disk writes disabled, or a fault): compute everything.
        """
        with self.lock:
            for _ in range(2):  # a second try only after moving a corrupt file aside
                conn = self._connection()
                if conn is None or not self.writable:
                    return None
                ours, theirs = [], []
                try:
                    for part in self._parts(keys):
                        marks = ",".join("?" * len(part))
                        with _transaction(conn):
                            done = {row[0] for row in conn.execute(f"SELECT key FROM vectors WHERE key IN ({marks})", part)}
                            todo = [k for k in part if k not in done]
                            theirs += [k for k in part if k in done]
                            if not todo:
                                continue
                            conn.executemany(
                                "INSERT OR IGNORE INTO claims (key, owner, host, pid, expires) VALUES (?, ?, ?, ?, ?)",
                                zip(todo, repeat(owner), repeat(host), repeat(pid), repeat(expires)),
                            )
                            marks = ",".join("?" * len(todo))
                            rows = conn.execute(
                                f"SELECT key, owner, host, pid, expires FROM claims WHERE key IN ({marks})", todo
                            ).fetchall()
                            mine = {r[0] for r in rows if r[1] == owner or abandoned(*r[1:])}
                            # Ours now, whether new, taken over or already ours (a fresh lease).
                            conn.executemany(
                                "UPDATE claims SET owner = ?, host = ?, pid = ?, expires = ? WHERE key = ?",
                                ((owner, host, pid, expires, k) for k in mine),
                            )
                        ours += [k for k in todo if k in mine]
                        theirs += [k for k in todo if k not in mine]
                    return ours, theirs
                except sqlite3.Error as exc:
                    if not self._handle_db_error(exc, "claiming keys in"):
                        return None
            return None

    def renew(self, keys, *, owner, expires, busy_timeout):
        """Extend ``owner``'s leases on ``keys`` (claims taken over by others stay theirs).

        A lock held longer than ``busy_timeout`` skips this renewal silently: the next one retries.
        """
        with self.lock:
            conn = self._connection()
            if conn is None or not self.writable:
                return
            try:
                with _short_busy_timeout(conn, self, busy_timeout):
                    for part in self._parts(keys):
                        marks = ",".join("?" * len(part))
                        with _transaction(conn):
                            conn.execute(
                                f"UPDATE claims SET expires = ? WHERE owner = ? AND key IN ({marks})",
                                [expires, owner, *part],
                            )
            except sqlite3.Error as exc:
                if _fault_kind(exc) != "busy":
                    self._handle_db_error(exc, "renewing claims in")

    def release(self, keys, *, owner):
        """Delete ``owner``'s claims on ``keys``."""
        with self.lock:
            conn = self._connection()
            if conn is None or not self.writable:
                return
            try:
                for part in self._parts(keys):
                    marks = ",".join("?" * len(part))
                    with _transaction(conn):
                        conn.execute(f"DELETE FROM claims WHERE owner = ? AND key IN ({marks})", [owner, *part])
            except sqlite3.Error as exc:
                self._handle_db_error(exc, "releasing claims in")

    def claim_rows(self, keys):
        """{key: (owner, host, pid, expires)} of the claims on ``keys``, or None when unavailable."""
        rows = {}
        with self.lock:
            conn = self._connection()
            if conn is None or not self.writable:
                return None
            try:
                for part in self._parts(keys):
                    marks = ",".join("?" * len(part))
                    for key, *claim in conn.execute(
                        f"SELECT key, owner, host, pid, expires FROM claims WHERE key IN ({marks})", part
                    ):
                        rows[key] = tuple(claim)
            except sqlite3.Error as exc:
                self._handle_db_error(exc, "reading claims in", reading=True)
                return None
        return rows

    def _parts(self, keys):
        """``keys`` in chunks small enough to bind with a few more parameters in one statement."""
        size = max(1, min(self._chunk - 2, 500))
        for start in range(0, len(keys), size):
            yield list(keys[start : start + size])

    # ------------------------------------------------------------------ connection

    def _connection(self):
        """The open connection (opening it on first use), or None when the disk layer is off.

        The caller holds ``lock``.
        """
        path = self.path
        if self._state == "open":
            if self._same_file(path):
                return self._conn
            # Another process moved a corrupt file aside (or the folder was deleted): follow
            # the replacement instead of writing into a file nobody will read again.
            self._close()
        if self._state == "off":
            return None
        try:
            self._open(path)
        except (sqlite3.Error, OSError) as exc:
            self._close()
            if _fault_kind(exc) == "busy":
                self._report(
                    f"cannot open the disk cache {path} ({_describe(exc)}): gave up waiting for "
                    f"the lock after {_BUSY_TIMEOUT_S:.0f} s; will try again on the next call"
                )
                return None
            if _fault_kind(exc) != "corrupt":
                if path.is_file() and self._open_read_only(path):
                    # e.g. a cache shipped read-only: its vectors are still worth reading.
                    self.writable = False
                    self._report(
                        f"cannot write to the disk cache {path} ({_describe(exc)}); reading it "
                        "only, new vectors are kept in memory for this process"
                    )
                    return self._conn
                self._disable(f"cannot open the disk cache {path} ({_describe(exc)})")
                return None
            # A file that is not a database or is malformed: keep it for inspection, start over.
            moved = self._move_aside(path)
            self._report(f"the disk cache {path} is corrupt ({_describe(exc)}); {moved}")
            try:
                self._open(path)
            except (sqlite3.Error, OSError) as exc2:
                self._close()
                self._disable(f"cannot create a new disk cache {path} ({_describe(exc2)})")
                return None
        return self._conn

    def _open(self, path):
        self._db_ident = None
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(os.fspath(path), timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
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
        statements = []
        if version < _SCHEMA_VERSION:
            statements += _VECTORS_SCHEMA.split(";") + [f"PRAGMA user_version = {_SCHEMA_VERSION}"]
        if version < _SCHEMA_VERSION or not conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'claims'"
        ).fetchone():
            statements.append(_CLAIMS_SCHEMA)  # files written before claims moved in here lack it
        if statements:
            with _transaction(conn):
                # One statement at a time: executescript() would COMMIT behind our back.
                for statement in statements:
                    if statement.strip():
                        conn.execute(statement)
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
        self._state = "open"

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
        if self._state == "open":
            self._state = "closed"
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    # ------------------------------------------------------------------ faults

    def _handle_db_error(self, exc, doing, *, reading=False):
        """Warn about a database error and adapt; return True if the operation may be retried.

        The caller holds ``lock``.
        """
        path = self.path
        kind = _fault_kind(exc)
        what = f"{_describe(exc)} while {doing} the disk cache {path}"
        if kind == "corrupt":
            self._close()
            moved = self._move_aside(path)
            self._report(f"{what}: the database is corrupt; {moved}")
            return True
        if kind == "moved":
            # Another process replaced the file (e.g. after finding it corrupt): follow it.
            self._close()
            return True
        if kind == "unwritable" and reading:
            # e.g. the WAL index cannot be created in a read-only folder: reads cannot work either.
            self._disable(what)
            return False
        if kind == "unwritable":
            self._end_failed_transaction()
            if self.writable:
                self.writable = False
                self._report(
                    f"{what}; disk writes are disabled for this process "
                    "(reads continue; new vectors are kept in memory only)"
                )
            else:
                self._report(None)
            return False
        if kind == "busy":
            self._report(
                f"{what}: gave up waiting for the lock after {_BUSY_TIMEOUT_S:.0f} s; "
                "the affected vectors are treated as misses or not saved"
            )
            return False
        self._close()
        self._disable(what)
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
            self._disable(f"cannot move the corrupt disk cache {path} aside ({exc})")
            return "it could not be moved aside, so the disk layer is off"
        self._db_ident = None
        return f"moved it to {target} and started a new one"

    def _disable(self, why):
        self._close()
        self._state = "off"
        self._report(f"{why}; the disk layer is off for this process (the cache works in memory only)")

    def _warn_only(self, message):
        """A warning that is not a fault (nothing to count)."""
        self._report(message, count=False)


class _short_busy_timeout:
    """Lower the connection's busy timeout for one best-effort operation, then restore it."""

    def __init__(self, conn, store, seconds):
        self.conn, self.store, self.ms = conn, store, int(max(0.0, min(seconds, _BUSY_TIMEOUT_S)) * 1000)

    def __enter__(self):
        self.conn.execute(f"PRAGMA busy_timeout = {self.ms}")

    def __exit__(self, *exc_info):
        if self.store._conn is self.conn:  # unless a fault closed it meanwhile
            try:
                self.conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
            except sqlite3.Error:
                pass
        return False
