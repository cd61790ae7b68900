"""Embedding cache: a ``bytes`` key -> vector store with a memory layer and a SQLite disk layer.

The cache knows nothing about models. Its callers (skdeep's encoder engine) compute opaque
content keys and hand over finished vectors; the cache only stores, finds and protects them.

Layers
------
* **Memory** (:mod:`._memory`): an LRU dictionary bounded by bytes, shared by the threads of one
  process.
* **Disk** (:mod:`._store`, optional): one SQLite file, ``<directory>/embeddings.sqlite3``, in WAL
  mode so that several processes can read while one writes. Each row stores the vector's dtype,
  length and a CRC-32 of its key and bytes, so a damaged row is detected and dropped rather than
  returned.
* **Compute claims** (:mod:`._claims`): leases in a ``claims`` table of the same file, so that
  processes sharing a directory compute each missing key once between them.

Every disk fault (corrupt file, full or read-only disk, lock time-out) is reported with a
:class:`CacheWarning` and turned into cache misses (and, for claims, into "compute it here"):
callers recompute, they never see an exception from the disk layer.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from .._config import cache_dir
from . import _auto
from ._claims import ComputeClaims, claims_for, fetch_claimed_elsewhere
from ._embedding_cache import DB_FILENAME, CacheStats, EmbeddingCache, _restore_cache  # noqa: F401 (old pickles)
from ._sqlite import CacheWarning

__all__ = [
    "CacheStats",
    "CacheWarning",
    "EmbeddingCache",
    "resolve_cache",
    "DB_FILENAME",
    "ComputeClaims",
    "claims_for",
    "fetch_claimed_elsewhere",
]

# ---------------------------------------------------------------------- resolving `cache=`

_SHARED_LOCK = threading.Lock()
_SHARED_BY_PATH = {}  # resolved directory -> EmbeddingCache
_DEFAULT_MEMORY_CACHE = None


def resolve_cache(spec):
    """Turn the value of an encoder's ``cache`` parameter into a cache object.

    Caches are shared per process, so the clones made by ``GridSearchCV`` or ``clone`` see the
    vectors stored by one another.

    Parameters
    ----------
    spec : "auto", bool, None, str, os.PathLike or EmbeddingCache
        ``"auto"`` or True: the process-wide default cache, on disk at ``$SKDEEP_CACHE_DIR``
        when that environment variable is set, else in memory; in joblib worker processes, a
        temporary disk cache shared by the workers of one parent (see :mod:`skdeep.cache._auto`).
        None or False: no caching.
        A path: a disk cache in that directory, one instance per resolved path per process.
        An :class:`EmbeddingCache`: itself.

    Returns
    -------
    EmbeddingCache or None

    Raises
    ------
    TypeError
        If ``spec`` is of any other type.
    ValueError
        If ``spec`` is an empty string.

    Examples
    --------
    >>> from skdeep.cache import resolve_cache
    >>> resolve_cache(None) is None
    True
    >>> resolve_cache("auto") is resolve_cache(True)
    True
    """
    global _DEFAULT_MEMORY_CACHE
    if spec is None or spec is False:
        return None
    if isinstance(spec, EmbeddingCache):
        return spec
    if spec is True or (isinstance(spec, str) and spec == "auto"):
        env_dir = cache_dir()
        if env_dir:
            return resolve_cache(env_dir)
        with _SHARED_LOCK:
            if _DEFAULT_MEMORY_CACHE is None:
                _DEFAULT_MEMORY_CACHE = EmbeddingCache()
        # In joblib workers (and their parent afterwards): one temporary disk cache per parent process.
        return _auto.auto_cache(_DEFAULT_MEMORY_CACHE, resolve_cache)
    if isinstance(spec, (str, os.PathLike)):
        raw = os.fspath(spec)
        if isinstance(raw, bytes):
            raw = os.fsdecode(raw)
        if not raw:
            raise ValueError("cache='' is not a directory; use None for no cache or 'auto'")
        directory = str(Path(raw).expanduser().resolve())
        with _SHARED_LOCK:
            cache = _SHARED_BY_PATH.get(directory)
            if cache is None:
                cache = _SHARED_BY_PATH[directory] = EmbeddingCache(directory)
            return cache
    raise TypeError(
        "cache must be 'auto', True, False, None, a directory path or an EmbeddingCache; "
        f"got {spec!r} of type {type(spec).__name__}"
    )
