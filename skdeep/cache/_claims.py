"""Compute claims: processes sharing a disk cache embed each missing key once between them.

Without coordination, two workers of a ``GridSearchCV(n_jobs=2)`` (or two Dask workers) that miss
the same texts at the same moment would both embed them. Before computing its misses, a process
*claims* them in the ``claims`` table of the cache's own database; keys another live process has
claimed are not computed but waited for, and read from the cache once written. A process only
waits after computing its own claims, so two processes never wait on each other.

A claim is a *lease*: it ends ``LEASE_S`` seconds after it was taken or last renewed. While a
:meth:`ComputeClaims.holding` block runs, a daemon thread renews its leases every third of that,
so a process that computes for an hour keeps its claims, and one that is frozen (``SIGSTOP``, a
hung host), killed or partitioned away loses them within one lease. A waiter takes a claim over
when its lease has run out, when its owner released it without writing (an error), or at once
when its owner is a dead process on the same host.

The engine's use::

    claims = claims_for(cache)                      # None for a memory-only cache
    ours, theirs = claims.claim(keys)
    with claims.holding(ours):
        ...compute ``ours`` and cache.put_many(...)
    found, give_up = fetch_claimed_elsewhere(cache, claims, theirs)
    with claims.holding(give_up):                   # abandoned claims, now ours
        ...compute ``give_up``

Claims share the store's fault handling (:mod:`skdeep.cache._store`): when the database cannot be
written or read, ``claim`` answers "all yours" and everyone computes their own misses.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Sequence

from ._sqlite import CacheWarning, _as_keys

#: Seconds a claim lasts unless its owner renews it (every ``LEASE_S / 3`` while it computes).
LEASE_S = 10.0
# Polling for claimed keys: the first look is immediate, then the interval grows to this.
_MAX_POLL_S = 0.5


def _host_id() -> str:
    """This machine and PID namespace: where a claim's pid can be checked with ``kill(pid, 0)``."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}/{namespace}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (OSError, OverflowError):
        return True  # cannot tell: let the lease decide
    return True


class ComputeClaims:
    """Per-key claims on the work of computing a disk cache's misses, held as renewed leases.

    Get one with :func:`claims_for`; all methods are thread-safe and never raise on database
    faults (they degrade to "compute it yourself"). The owner of a claim is the calling thread
    of this process, so two threads of one server do not share claims.

    Parameters
    ----------
    cache : EmbeddingCache
        A cache with a disk layer; the claims live in its database file.
    lease : float or None, default=None
        Seconds a claim lasts without renewal; None reads the module's ``LEASE_S`` at each use.
    """

    def __init__(self, cache, lease: float | None = None):
        self._cache = cache
        self._lease = lease
        self._host = _host_id()
        self._pid = os.getpid()
        self._token = threading.local()
        self._held: dict[int, tuple[str, list[bytes]]] = {}  # open `holding` blocks: id -> (owner, keys)
        self._held_lock = threading.Lock()
        self._renewer: threading.Thread | None = None

    @property
    def lease(self) -> float:
        """Seconds a claim lasts unless renewed."""
        return LEASE_S if self._lease is None else float(self._lease)

    # ------------------------------------------------------------------ API

    def claim(self, keys: Sequence[bytes]) -> tuple[list[bytes], list[bytes]]:
        """Claim ``keys`` for the calling thread.

        Parameters
        ----------
        keys : sequence of bytes
            Keys the caller is about to compute.

        Returns
        -------
        ours : list of bytes
            Keys now claimed by the caller (new, taken over from an abandoned claim, or already
            its own). Compute them inside :meth:`holding`.
        theirs : list of bytes
            Keys another live owner is computing, or that already have a vector: read them with
            :func:`fetch_claimed_elsewhere`.

        Without a usable database (no disk layer, disk writes disabled, a fault) every key is
        ``ours``: the caller computes everything, as it would without claims.
        """
        keys = list(dict.fromkeys(_as_keys(keys)))
        store = self._store()
        if not keys or store is None:
            return keys, []
        result = store.claim(
            keys,
            owner=self._owner(),
            host=self._host,
            pid=os.getpid(),
            expires=time.time() + self.lease,
            abandoned=self._is_abandoned,
        )
        return (keys, []) if result is None else result

    @contextlib.contextmanager
    def holding(self, keys: Sequence[bytes]):
        """Context manager: keep the caller's claims on ``keys`` alive, release them at exit.

        A daemon thread renews the leases every ``lease / 3`` seconds while the block runs; the
        claims are released when it ends, normally or by an exception (others then compute the
        keys whose vectors were not written). Keys not claimed by the caller are left alone.
        """
        keys = _as_keys(keys)
        owner = self._owner()
        ticket = object()
        if keys:
            self._start_renewing(ticket, owner, keys)
        try:
            yield self
        finally:
            if keys:
                with self._held_lock:
                    self._held.pop(id(ticket), None)
                self._release(keys, owner)

    def release(self, keys: Sequence[bytes]) -> None:
        """Give up the calling thread's claims on ``keys`` (after writing their vectors, or on failure)."""
        self._release(_as_keys(keys), self._owner())

    def abandoned(self, keys: Sequence[bytes]) -> list[bytes]:
        """Of ``keys``, those nobody is computing any more.

        That is: no claim (released, or written and released), a lease that ran out, an owner
        that is a dead process on this host, or the caller's own claim (never wait for oneself).
        All of ``keys`` when the database is unusable.
        """
        keys = _as_keys(keys)
        store = self._store()
        rows = store.claim_rows(keys) if store is not None and keys else None
        if rows is None:
            return keys
        owner = self._owner()
        return [k for k in keys if k not in rows or rows[k][0] == owner or self._is_abandoned(*rows[k])]

    # ------------------------------------------------------------------ plumbing

    def _store(self):
        self._cache._prepare()  # re-opens after fork
        return self._cache._disk_store()

    def _owner(self) -> str:
        token = getattr(self._token, "value", None)
        if token is None:
            token = self._token.value = uuid.uuid4().hex
        return token

    def _is_abandoned(self, owner: str, host: str, pid: int, expires: float) -> bool:
        if expires < time.time():
            return True
        # Same host: a dead owner is seen at once, without waiting for its lease to run out.
        return host == self._host and pid != os.getpid() and not _pid_alive(pid)

    def _release(self, keys, owner):
        store = self._store()
        if store is not None and keys:
            store.release(keys, owner=owner)

    def _start_renewing(self, ticket, owner, keys):
        with self._held_lock:
            self._held[id(ticket)] = (owner, keys)
            if self._pid != os.getpid():  # forked: the parent's renewer thread does not exist here
                self._pid, self._renewer = os.getpid(), None
            if self._renewer is None:
                self._renewer = threading.Thread(target=self._renew_loop, name="skdeep-claims-renewer", daemon=True)
                self._renewer.start()

    def _renew_loop(self):
        try:
            while True:
                interval = self.lease / 3
                time.sleep(interval)
                with self._held_lock:
                    if not self._held:
                        self._renewer = None  # decided under the lock: a later `holding` starts a new thread
                        return
                    by_owner: dict[str, list[bytes]] = {}
                    for owner, keys in self._held.values():
                        by_owner.setdefault(owner, []).extend(keys)
                store = self._store()
                if store is None:
                    continue
                for owner, keys in by_owner.items():
                    # A renewal stuck behind another writer for longer than the interval is skipped:
                    # the next one, a third of a lease later, tries again.
                    store.renew(keys, owner=owner, expires=time.time() + self.lease, busy_timeout=interval)
        finally:  # also after an unexpected error, so that renewing can start again
            with self._held_lock:
                if self._renewer is threading.current_thread():
                    self._renewer = None


def claims_for(cache) -> ComputeClaims | None:
    """The compute claims of ``cache``'s disk layer (one object per cache per process).

    Parameters
    ----------
    cache : EmbeddingCache, a view of one, or None

    Returns
    -------
    ComputeClaims or None
        None for no cache or a memory-only cache (nothing to share with other processes).
    """
    get = getattr(cache, "_compute_claims", None)
    return get() if get is not None else None


def fetch_claimed_elsewhere(
    cache, claims: ComputeClaims | None, keys: Sequence[bytes], *, timeout: float | None = None
):
    """Wait for vectors that other owners are computing.

    Polls the cache (at once, then at growing intervals up to 0.5 s) until every key is found or
    some claims turn out abandoned (see :meth:`ComputeClaims.abandoned`). Abandoned keys are
    claimed for the caller before returning: compute them inside ``claims.holding(give_up)``.
    Keys another waiter took over first are waited for like the rest.

    Parameters
    ----------
    cache : EmbeddingCache
    claims : ComputeClaims or None
    keys : sequence of bytes
        The ``theirs`` of :meth:`ComputeClaims.claim`.
    timeout : float or None, default=None
        None waits as long as the owners keep renewing their leases. A number caps the wait in
        seconds: then a :class:`CacheWarning` is issued and the missing keys are given up.

    Returns
    -------
    found : dict of bytes to ndarray
        Vectors read from the cache.
    give_up : list of bytes
        Keys for the caller to compute. Keys in neither (another waiter took them over) must be
        asked for again.
    """
    found: dict[bytes, object] = {}
    pending = list(dict.fromkeys(keys))
    # Polls do not count as cache misses: the keys were looked up (and counted) once already.
    peek = getattr(cache, "_lookup", None)
    look = (lambda ks: peek(ks, count=False)) if peek is not None else cache.get_many
    delay, start = 0.02, time.monotonic()
    while pending:
        pending = _collect(look, pending, found)
        if not pending:
            break
        if claims is None:
            return found, pending
        abandoned = claims.abandoned(pending)
        if abandoned:
            # An owner writes its vectors before releasing its claims: look once more, then take over.
            abandoned = _collect(look, abandoned, found)
            ours, _ = claims.claim(abandoned)
            if ours:
                return found, ours
            pending = [k for k in pending if k not in found]  # the rest: found, or another waiter's now
            if not pending:
                break
        waited = time.monotonic() - start
        if timeout is not None and waited >= timeout:
            warnings.warn(
                f"Waited {waited:.0f} s for {len(pending)} embeddings other processes claimed; computing them here.",
                CacheWarning,
                stacklevel=2,
            )
            return found, pending
        time.sleep(delay if timeout is None else min(delay, max(0.0, timeout - waited)))
        delay = min(delay * 1.5, _MAX_POLL_S)
    return found, []


def _collect(look, keys, found):
    """Add the vectors of ``keys`` present in the cache to ``found``; return the keys still missing."""
    missing = []
    for key, vector in zip(keys, look(keys)):
        if vector is None:
            missing.append(key)
        else:
            found[key] = vector
    return missing
