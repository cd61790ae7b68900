"""Backends: one object per model family that embeds a batch of already-validated inputs.

A backend knows about devices and precision, nothing about scikit-learn or caching. Loaded backends
live in a per-process registry keyed by everything that defines them, so that the many clones
``GridSearchCV`` makes share one copy of the weights instead of reloading them.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Hashable

_registry: dict[Hashable, object] = {}
_registry_lock = threading.Lock()
_key_locks: dict[Hashable, threading.Lock] = {}


def get_or_load(key: Hashable, loader: Callable[[], object]):
    """Return the backend registered under ``key``, loading it once per process if needed.

    A lock per key lets two threads asking for the same model wait for one load, while
    different models load concurrently.
    """
    backend = _registry.get(key)
    if backend is not None:
        return backend
    with _registry_lock:
        lock = _key_locks.setdefault(key, threading.Lock())
    with lock:
        backend = _registry.get(key)
        if backend is None:
            backend = loader()
            _registry[key] = backend
    return backend


def loaded_backends() -> list[Hashable]:
    """Keys of the backends loaded in this process (for tests and diagnostics)."""
    return list(_registry)


def clear_backends() -> None:
    """Forget every loaded backend, freeing their memory once nothing else refers to them."""
    with _registry_lock:
        _registry.clear()
        _key_locks.clear()


@contextlib.contextmanager
def quiet_loading():
    """Hide transformers' per-load progress bars: loading is skdeep's business, not the user's."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
