"""The database file of a disk cache, as one process sees it: opening, schema and fault rules.

:class:`StoreConnection` owns the SQLite connection of one process (re-created after ``fork``)
and decides what each database error means: a corrupt file is moved aside and replaced, a file
another process replaced is followed, a full or read-only disk stops writes after one warning,
a file that cannot be opened switches the disk layer off, a lock held too long skips the
operation. :class:`skdeep.cache._store.DiskStore` runs the vector and claim queries on top.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time

from ._sqlite import _describe, _fault_kind, _retry_busy, _transaction

_SCHEMA_VERSION = 1
_BUSY_TIMEOUT_S = 30.0
_PAGE_SIZE = 16384
# SQLite's historical default bound on ``?`` parameters; used when the library cannot tell us.
_DEFAULT_MAX_VARIABLES = 999

# The file's layout, created when a connection opens it (see ``_open``).
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
)
"""
# Connections inherited through fork: closing them in the child could disturb the parent's
# database state, and letting them be garbage-collected closes them, so they are parked here.
_ABANDONED_CONNECTIONS = []


class StoreConnection:
    """The lazily opened connection to one cache file, and the fault rules around it.

    Parameters
    ----------
    path : pathlib.Path
        The database file; its folder is created on first use.
    report : callable
        ``report(message)`` counts a survived fault and warns with a :class:`CacheWarning`;
        ``report(None)`` only counts it, ``report(message, count=False)`` only warns.

    Notes
    -----
    Every method that touches the database holds ``lock`` (threads share the connection) and
    calls :meth:`_connection` first; on ``sqlite3.Error`` it calls :meth:`_handle_db_error`,
    which returns whether the operation may be retried once (after a corrupt file was
    replaced, or another process's replacement followed).
    """

    def __init__(self, path, *, report):
        self.path = path
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
        if (
            version < _SCHEMA_VERSION
            or not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'claims'").fetchone()
        ):
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
