"""The disk layer of the embedding cache: one SQLite file per directory, shared by processes.

``<directory>/embeddings.sqlite3`` holds two tables, used through one connection per process:

* ``vectors``: one checksummed row per key (dtype, length, CRC-32 of key and bytes, access time);
* ``claims``: which process is computing which missing key, with a lease (see
  :mod:`skdeep.cache._claims`, which owns the protocol; this module only runs its SQL).

Both follow the same fault rules (:mod:`skdeep.cache._connection`): nothing here raises a
database error to its caller.
"""

from __future__ import annotations

import math
import sqlite3
import zlib
from itertools import repeat

import numpy as np

from ._connection import StoreConnection, _short_busy_timeout
from ._sqlite import ROW_DTYPES, _checksum, _decode, _fault_kind, _shrink, _transaction, _used_bytes

# A row's access time is rewritten at most this often: keeps reads from turning into writes.
_TOUCH_INTERVAL_S = 3600
# Eviction frees down to this fraction of max_disk_bytes, so it runs once per many writes.
_EVICT_LOW_WATER = 0.9
# ``data`` is the last column so that the columns before it never need the blob's overflow pages.
_INSERT = "INSERT OR REPLACE INTO vectors (key, dtype, dim, crc, atime, data) VALUES (?, ?, ?, ?, ?, ?)"
# Claims are written in transactions of this many keys: few commits (each costs as much as
# ~1,000 rows), and the write lock is never held for long (~50 ms).
_CLAIMS_PER_TRANSACTION = 5000


class DiskStore(StoreConnection):
    """The vectors and claims of one cache file, as seen by one process (re-created after ``fork``).

    Parameters
    ----------
    path : pathlib.Path
        The database file; its folder is created on first use.
    max_disk_bytes : int or None
        Size limit of the live pages, enforced after each write (see :meth:`put`).
    report : callable
        Counts and reports survived faults (see :class:`~skdeep.cache._connection.StoreConnection`).
    """

    def __init__(self, path, *, max_disk_bytes, report):
        super().__init__(path, report=report)
        self.max_disk_bytes = max_disk_bytes

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
            conn.execute(
                "DELETE FROM vectors WHERE id IN (SELECT id FROM vectors ORDER BY atime, id LIMIT ?)", (n_evict,)
            )
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

        Keys that already have a vector go to ``theirs`` (someone computed them: read them),
        unclaimed keys become ours, and claims for which ``abandoned(owner, host, pid, expires)``
        is true are taken over. None means claims are unavailable (no disk layer, disk writes
        disabled, or a fault): compute everything.
        """
        with self.lock:
            for _ in range(2):  # a second try only after moving a corrupt file aside
                conn = self._connection()
                if conn is None or not self.writable:
                    return None
                ours, theirs = [], []
                try:
                    for batch in _batches(keys, _CLAIMS_PER_TRANSACTION):
                        with _transaction(conn):
                            for part in self._parts(batch):
                                mine = self._claim_part(conn, part, owner, host, pid, expires, abandoned)
                                ours += [k for k in part if k in mine]
                                theirs += [k for k in part if k not in mine]
                    return ours, theirs
                except sqlite3.Error as exc:
                    if not self._handle_db_error(exc, "claiming keys in"):
                        return None
            return None

    def _claim_part(self, conn, part, owner, host, pid, expires, abandoned):
        """Claim one chunk of keys inside the caller's transaction; return the set now ours."""
        marks = ",".join("?" * len(part))
        done = {row[0] for row in conn.execute(f"SELECT key FROM vectors WHERE key IN ({marks})", part)}
        todo = [k for k in part if k not in done]
        if not todo:
            return set()
        conn.executemany(
            "INSERT OR IGNORE INTO claims (key, owner, host, pid, expires) VALUES (?, ?, ?, ?, ?)",
            zip(todo, repeat(owner), repeat(host), repeat(pid), repeat(expires)),
        )
        marks = ",".join("?" * len(todo))
        rows = conn.execute(f"SELECT key, owner, host, pid, expires FROM claims WHERE key IN ({marks})", todo)
        mine, update = set(), []
        for key, *claim in rows:
            if claim[0] == owner:
                mine.add(key)
                if claim[3] != expires:  # an older claim of ours (rows inserted above have this lease)
                    update.append(key)
            elif abandoned(*claim):
                mine.add(key)
                update.append(key)
        conn.executemany(
            "UPDATE claims SET owner = ?, host = ?, pid = ?, expires = ? WHERE key = ?",
            zip(repeat(owner), repeat(host), repeat(pid), repeat(expires), update),
        )
        return mine

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
                    self._claims_statement(
                        conn, keys, "UPDATE claims SET expires = ? WHERE owner = ? AND key IN ({})", [expires, owner]
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
                self._claims_statement(conn, keys, "DELETE FROM claims WHERE owner = ? AND key IN ({})", [owner])
            except sqlite3.Error as exc:
                self._handle_db_error(exc, "releasing claims in")

    def _claims_statement(self, conn, keys, sql, params):
        """Run ``sql`` (with ``{}`` for the key placeholders) over ``keys``, in a few transactions."""
        for batch in _batches(keys, _CLAIMS_PER_TRANSACTION):
            with _transaction(conn):
                for part in self._parts(batch):
                    conn.execute(sql.format(",".join("?" * len(part))), [*params, *part])

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
        return _batches(keys, max(1, min(self._chunk - 2, 500)))


def _batches(keys, size):
    for start in range(0, len(keys), size):
        yield list(keys[start : start + size])
