"""The default cache across joblib worker processes: one temporary disk cache per parent process.

``cache="auto"`` is a memory cache of the process. Inside joblib's worker processes (loky, the
default backend of ``GridSearchCV(n_jobs=...)``, or multiprocessing) a memory cache per worker
would embed every text once per worker. So a worker's ``"auto"`` cache is a disk cache in a
temporary directory named after its parent process (``<tmp>/skdeep-auto-<uid>/<pid>-<start time>``),
which all workers of that parent share through the disk cache's compute claims (each missing text
embedded once between them). The parent reads that directory too once it exists (the refit after
a search finds the workers' vectors), and removes it when it exits; directories left by parents
that died are removed by the next worker that starts one.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import shutil
import stat
import tempfile
import threading
from pathlib import Path

_ROOT_PREFIX = "skdeep-auto-"
_lock = threading.Lock()
_swept = False
_views: dict[str, object] = {}


def _process_start(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, from /proc), or "" where unknown.

    Pairs with the pid to tell a parent from a later process that reuses its pid.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError):
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but not ours to signal
        return True
    return True


def in_worker() -> bool:
    """Whether this process is a joblib worker (loky or a multiprocessing pool)."""
    try:
        from joblib.externals.loky import process_executor

        if process_executor._CURRENT_DEPTH > 0:
            return True
    except ImportError:  # pragma: no cover - joblib is a dependency
        pass
    return "PoolWorker" in multiprocessing.current_process().name


def _root() -> Path | None:
    """``<tmp>/skdeep-auto-<uid>``, private to this user; None if it cannot be made safely."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    root = Path(tempfile.gettempdir()) / f"{_ROOT_PREFIX}{uid if uid is not None else 'user'}"
    try:
        root.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(root)
    except OSError:
        return None
    # In a shared /tmp, refuse a directory (or symlink) someone else planted under our name.
    if not stat.S_ISDIR(st.st_mode) or (uid is not None and st.st_uid != uid):
        return None
    return root


def session_dir(pid: int | None = None) -> Path | None:
    """The shared directory of the workers of parent ``pid`` (default: this process); not created."""
    root = _root()
    if root is None:
        return None
    pid = os.getpid() if pid is None else pid
    return root / f"{pid}-{_process_start(pid)}"


def _sweep(root: Path) -> None:
    """Remove the directories of parents that are gone (once per process)."""
    global _swept
    if _swept:
        return
    _swept = True
    for child in root.iterdir():
        pid_text, _, start = child.name.partition("-")
        if not pid_text.isdigit():
            continue
        pid = int(pid_text)
        if not _alive(pid) or (start and _process_start(pid) not in ("", start)):
            shutil.rmtree(child, ignore_errors=True)


def _remove_own_dir() -> None:
    if in_worker():
        return
    directory = session_dir()
    if directory is not None and directory.is_dir():
        shutil.rmtree(directory, ignore_errors=True)


class _ParentView:
    """The parent's default cache once its workers made a shared directory: memory first, then that disk.

    Vectors found on disk are copied into memory; new ones go to both, so a later search's workers
    find what the parent embedded.
    """

    def __init__(self, memory, disk):
        self.memory = memory
        self.disk = disk

    def get_many(self, keys):
        found = self.memory.get_many(keys)
        missing = [i for i, vec in enumerate(found) if vec is None]
        if missing:
            from_disk = self.disk.get_many([keys[i] for i in missing])
            hits = [(i, vec) for i, vec in zip(missing, from_disk) if vec is not None]
            if hits:
                self.memory.put_many([keys[i] for i, _ in hits], [vec for _, vec in hits])
                for i, vec in hits:
                    found[i] = vec
        return found

    def _lookup(self, keys, *, count):
        return self.disk._lookup(keys, count=count)

    def put_many(self, keys, vectors) -> None:
        self.memory.put_many(keys, vectors)
        self.disk.put_many(keys, vectors)

    def _compute_claims(self):
        return self.disk._compute_claims()

    @property
    def stats(self):
        return self.disk.stats

    def __repr__(self):
        return f"<skdeep default cache: memory, then the workers' shared directory {str(self.disk.path)!r}>"


def auto_cache(memory, resolve):
    """The ``"auto"`` cache of this process: ``memory``, a worker's shared disk cache, or a view of both.

    Parameters
    ----------
    memory : EmbeddingCache
        The process-wide memory cache.
    resolve : callable
        ``resolve(path)`` returns the process's :class:`EmbeddingCache` for a directory.
    """
    if in_worker():
        directory = session_dir(os.getppid())
        if directory is None:
            return memory
        with _lock:
            _sweep(directory.parent)
        return resolve(str(directory))
    directory = session_dir()
    if directory is None or not directory.is_dir():
        return memory
    key = str(directory)
    with _lock:
        view = _views.get(key)
        if view is None or view.memory is not memory:
            view = _views[key] = _ParentView(memory, resolve(key))
    return view


if not in_worker():
    atexit.register(_remove_own_dir)
