"""The one path every encoder takes: content keys -> cache -> misses in batches -> reassembly.

::

    validated items -> content keys -> cache.get_many -> distinct misses, claimed across processes
                                                                 |
                            chunks of misses: prepare (threads) -> order -> batches -> backend.forward
                                                                 |              (OOM halves the batch)
    output (input order) <- reassemble <- cache.put_many (successes only) <-------+
                                        \
                                         failures: zero rows, never cached, reported by position

Public estimators (:class:`~skdeep.TextEncoder`, :class:`~skdeep.ImageEncoder`) subclass
:class:`BaseEncoder` and supply only what is theirs: input validation, the bytes that identify an
item's content, the parameters that change the model's output (declared once, in
``_model_settings``), how to find and load the model, and cheap post-processing applied after the
cache. A backend (see :class:`Backend`) embeds a batch of validated items and knows nothing about
scikit-learn or caching.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from abc import ABCMeta, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, runtime_checkable

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin

from . import backends
from ._config import ENCODE_LOG_ENV, encode_log_path
from ._sklearn import DocLinkMixin, _fit_context
from .cache import claims_for, fetch_claimed_elsewhere, resolve_cache
from .devices import resolve_device, run_in_batches
from .persistence import verify_on_load
from .sources import FingerprintMismatchError, ModelSource, bundle_state, bundled_source, restore_bundle

__all__ = ["Backend", "BaseEncoder", "ENCODE_LOG_ENV", "content_keys", "encode_with_cache", "settings_namespace"]

KEY_BYTES = 16
# Misses are embedded and stored in chunks of this many batches: a crash or an error loses at most
# one chunk of work, and sorting by size within a chunk already removes most padding.
CHUNK_BATCHES = 16


@runtime_checkable
class Backend(Protocol):
    """What the engine needs from a loaded model.

    Attributes
    ----------
    dim : int
        Width of the vectors ``forward`` returns.

    Optional members: ``prepare(item)`` does the per-item CPU work (decoding, resizing) in the
    engine's threads and raises one of ``item_errors`` for an item that cannot be embedded (that
    item fails alone); ``size(prepared)`` makes the engine batch items of similar size together,
    largest first (less padding, and an out-of-memory error comes on the first batch). The engine
    sets ``max_batch_size`` after an out-of-memory error and respects it from then on.
    """

    dim: int

    def forward(self, batch: list) -> np.ndarray:
        """Embed one batch of prepared items; float array of shape (len(batch), dim)."""


def settings_namespace(settings: dict) -> bytes:
    """Digest of every setting that changes an encoder's output; it salts each content key.

    Settings must be JSON-serialisable; key order does not matter.
    """
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.blake2b(blob, digest_size=32).digest()


def content_keys(namespace: bytes, payloads: Sequence[bytes]) -> list[bytes]:
    """One 16-byte key per input: a keyed BLAKE2b of its content under the settings namespace."""
    blake2b = hashlib.blake2b
    return [blake2b(p, digest_size=KEY_BYTES, key=namespace).digest() for p in payloads]


def _log_encoded(n_rows: int) -> None:
    path = encode_log_path()
    if path and n_rows:
        # One short O_APPEND write per batch is atomic across processes.
        with open(path, "a") as fh:
            fh.write(f"{n_rows}\n")


class _FunctionBackend:
    """A plain ``items -> array`` callable seen as a backend (fakes in tests, simple callers)."""

    def __init__(self, fn):
        self.fn = fn

    def forward(self, batch):
        return self.fn(batch)


# ---------------------------------------------------------------------------------------------
# misses -> batches -> backend


def _prepared(backend, items: list, num_workers: int, lookahead: int) -> Iterator[tuple[int, object, Exception]]:
    """``(index, prepared item or None, error or None)`` in item order, prepared ahead in threads.

    PIL and tokenizers release the GIL, so threads overlap with each other and with the model,
    without process start-up or the limits of daemonic worker processes (loky, Dask).
    """
    prepare = getattr(backend, "prepare", None)
    item_errors = tuple(getattr(backend, "item_errors", ()))

    def one(index):
        if prepare is None:
            return index, items[index], None
        try:
            return index, prepare(items[index]), None
        except item_errors as exc:
            return index, None, exc

    if prepare is None or num_workers <= 0 or len(items) <= 1:
        for index in range(len(items)):
            yield one(index)
        return
    with ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="skdeep-prepare") as pool:
        pending = deque(pool.submit(one, i) for i in range(min(lookahead, len(items))))
        following = iter(range(len(pending), len(items)))
        try:
            while pending:
                result = pending.popleft().result()
                nxt = next(following, None)
                if nxt is not None:
                    pending.append(pool.submit(one, nxt))
                yield result
        finally:
            for future in pending:
                future.cancel()


class _BatchRunner:
    """Embeds lists of misses with one backend: prepare, order, batch, forward, report failures."""

    def __init__(self, backend, *, batch_size: int, num_workers: int, progress, stop_on_error: bool):
        self.backend = backend
        self.batch_size = max(1, int(batch_size))
        self.num_workers = num_workers
        self.progress = progress
        self.stop_on_error = stop_on_error

    def _forward(self, batch: list) -> np.ndarray:
        # An out-of-memory error halves the batch; the smaller size is kept on the backend for later
        # calls, since memory pressure rarely goes away.
        limit = getattr(self.backend, "max_batch_size", None) or len(batch)
        parts = run_in_batches(self.backend.forward, batch, min(len(batch), limit))
        largest = max(len(p) for p in parts)
        if largest < len(batch):
            self.backend.max_batch_size = min(limit, largest)
        vectors = np.concatenate([np.asarray(p, dtype=np.float32) for p in parts], axis=0)
        if vectors.ndim != 2 or vectors.shape[0] != len(batch):
            raise RuntimeError(f"the backend returned an array of shape {vectors.shape} for {len(batch)} inputs.")
        return vectors

    def _batches(self, items: list, failures: dict) -> Iterator[list[tuple[int, object]]]:
        size = getattr(self.backend, "size", None)
        stream = _prepared(self.backend, items, self.num_workers, lookahead=2 * self.batch_size)
        if size is not None:
            # Sized items (texts): prepare the chunk, then batch the largest together first.
            ready = []
            for index, prepared, error in stream:
                if error is None:
                    ready.append((index, prepared))
                else:
                    self._fail(index, error, failures)
            ready.sort(key=lambda pair: -size(pair[1]))
            for start in range(0, len(ready), self.batch_size):
                yield ready[start : start + self.batch_size]
            return
        batch = []
        for index, prepared, error in stream:
            if error is not None:
                self._fail(index, error, failures)
                continue
            batch.append((index, prepared))
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _fail(self, index, error, failures):
        if self.stop_on_error:
            raise error
        failures[index] = error
        if self.progress is not None:
            self.progress.update(1)

    def __call__(self, items: list) -> tuple[np.ndarray | None, dict[int, Exception]]:
        """Vectors for ``items`` (zero rows where they failed; None if all failed) and the failures."""
        failures: dict[int, Exception] = {}
        out = None
        for batch in self._batches(items, failures):
            vectors = self._forward([prepared for _, prepared in batch])
            if out is None:
                out = np.zeros((len(items), vectors.shape[1]), dtype=np.float32)
            out[[index for index, _ in batch]] = vectors
            _log_encoded(len(batch))
            if self.progress is not None:
                self.progress.update(len(batch))
        return out, failures


# ---------------------------------------------------------------------------------------------
# the cache around it


def encode_with_cache(
    items: Sequence,
    keys: Sequence[bytes],
    *,
    cache,
    backend=None,
    encode_misses: Callable[[list], np.ndarray] | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    failures: dict | None = None,
    progress: Callable[[int], object] | None = None,
) -> np.ndarray:
    """Embed ``items``, computing only what ``cache`` lacks and each distinct key once.

    Parameters
    ----------
    items : sequence
        Validated inputs, one per row of the output.
    keys : sequence of bytes
        Content key of each item; equal keys mean equal outputs.
    cache : EmbeddingCache or None
        Looked up first; successes are stored chunk by chunk; failures never are.
    backend : Backend or callable returning one, optional
        Embeds the misses. A callable is called (once) only if there are misses, so a warm cache
        never loads a model.
    encode_misses : callable, optional
        Instead of ``backend``: a plain function from a list of items to an array.
    batch_size : int, default=32
        Items per ``backend.forward`` call; halved for good after an out-of-memory error.
    num_workers : int, default=0
        Threads running ``backend.prepare`` ahead of the model.
    failures : dict or None, default=None
        None: the first item that fails raises. A dict: failed items get zero rows and their
        positions are added to it, ``{position: exception}``.
    progress : callable, optional
        ``progress(total)`` returns a bar (``update(n)``, ``close()``) over the items embedded.

    Returns
    -------
    ndarray of shape (len(items), dim), float32
    """
    if (backend is None) == (encode_misses is None):
        raise TypeError("pass exactly one of backend= and encode_misses=.")
    n = len(items)
    found = cache.get_many(keys) if cache is not None else [None] * n

    # First position of each distinct missing key: duplicates within one call are embedded once.
    miss_positions: dict[bytes, int] = {}
    for i, (key, vec) in enumerate(zip(keys, found)):
        if vec is None and key not in miss_positions:
            miss_positions[key] = i

    computed: dict[bytes, np.ndarray] = {}
    failed: dict[bytes, Exception] = {}
    if miss_positions:
        if encode_misses is not None:
            backend = _FunctionBackend(encode_misses)
        elif not hasattr(backend, "forward"):
            backend = backend()
        bar = progress(len(miss_positions)) if progress is not None else None
        runner = _BatchRunner(
            backend, batch_size=batch_size, num_workers=num_workers, progress=bar, stop_on_error=failures is None
        )
        try:
            _compute_misses(miss_positions, items, cache, runner, computed, failed)
        finally:
            if bar is not None:
                bar.close()

    dim = _width(found, computed, backend)
    out = np.zeros((n, dim), dtype=np.float32)
    for i, (key, vec) in enumerate(zip(keys, found)):
        row = vec if vec is not None else computed.get(key)
        if row is None:
            failures[i] = failed[key]
            continue
        if row.shape[0] != dim:
            raise RuntimeError(
                f"cached vector for row {i} has length {row.shape[0]}, expected {dim}; "
                "the cache holds vectors of another model under the same key."
            )
        out[i] = row
    return out


def _width(found, computed, backend) -> int:
    for vec in found:
        if vec is not None:
            return vec.shape[0]
    for vec in computed.values():
        return vec.shape[0]
    return int(backend.dim)  # every miss failed: the model still says how wide a row is


def _compute_misses(miss_positions, items, cache, runner, computed, failed) -> None:
    """Claim, compute and store the misses; wait for those other processes are computing."""
    claims = claims_for(cache)
    todo = dict(miss_positions)
    while todo:
        # With a disk cache shared by processes, compute only what no other live process is
        # computing, then wait for the rest (see skdeep.cache). Keys another process stored since
        # our lookup come back in `theirs` too, and are read rather than computed.
        ours, theirs = claims.claim(list(todo)) if claims is not None else (list(todo), [])
        if ours:
            with claims.holding(ours) if claims is not None else contextlib.nullcontext():
                _compute(ours, todo, items, cache, runner, computed, failed)
            for key in ours:
                del todo[key]
        if theirs:
            fetched, given_up = fetch_claimed_elsewhere(cache, claims, theirs)
            computed.update(fetched)
            for key in fetched:
                del todo[key]
            # Claims whose owner died, failed or stalled are handed to us, already claimed.
            if given_up:
                with claims.holding(given_up):
                    _compute(given_up, todo, items, cache, runner, computed, failed)
                for key in given_up:
                    del todo[key]


def _compute(keys, positions, items, cache, runner, computed, failed) -> None:
    chunk = runner.batch_size * CHUNK_BATCHES
    for start in range(0, len(keys), chunk):
        part = keys[start : start + chunk]
        vectors, errors = runner([items[positions[k]] for k in part])
        good = [j for j in range(len(part)) if j not in errors]
        for j, error in errors.items():
            failed[part[j]] = error
        if not good:
            continue
        if cache is not None:
            cache.put_many([part[j] for j in good], vectors[good])
        computed.update((part[j], vectors[j]) for j in good)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


# ---------------------------------------------------------------------------------------------
# the estimators' shared base


class BaseEncoder(DocLinkMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator, metaclass=ABCMeta):
    """Shared machinery of skdeep's frozen encoders.

    A subclass declares ``_family`` (a short name, part of every key) and ``_model_settings`` (the
    parameters that change the model's output: they salt the cache keys and define the loaded
    backend, from this one list), and implements the abstract hooks. Everything heavy (loaded
    models) lives in the per-process backend registry, never on the estimator, so estimators stay
    cheap to clone and pickle.
    """

    _family: str = ""
    _model_settings: tuple[str, ...] = ()

    # ----------------------------------------------------------------- hooks for subclasses
    @abstractmethod
    def _validate_input(self, X, *, reset: bool = False) -> list:
        """Check and normalise raw input into a list of items, raising on the first bad one.

        ``reset=True`` (from ``fit``) lets an encoder record input attributes such as ``n_features_in_``.
        """

    @abstractmethod
    def _resolve_source(self) -> ModelSource:
        """Find the model's files (offline first)."""

    @abstractmethod
    def _load_backend(self, source: ModelSource, device) -> Backend:
        """Load the backend for this encoder's model settings; called once per process per key."""

    @abstractmethod
    def _content_payloads(self, items: list) -> list[bytes]:
        """The bytes that identify each item's content."""

    def _source_settings(self, source: ModelSource) -> dict:
        """Settings that come with the model rather than from parameters (e.g. its preprocessing)."""
        return {}

    def _setting_value(self, name: str):
        """A model setting as it enters keys: JSON-friendly and hashable."""
        value = getattr(self, name)
        return tuple(value) if isinstance(value, list) else value

    def _postprocess(self, vectors: np.ndarray) -> np.ndarray:
        """Cheap functions of the model's output (e.g. normalisation), applied after the cache."""
        return vectors

    def _num_workers(self, n_items: int) -> int:
        """Threads preparing items ahead of the model."""
        return 0

    def _collect_failures(self) -> bool:
        """Whether failed items become zero rows (reported) instead of raising."""
        return False

    _progress_desc = "Embedding"
    _progress_unit = "item"

    # ----------------------------------------------------------------- derived from the declaration
    def _output_settings(self, source: ModelSource) -> dict:
        """Everything that changes the cached vectors: model, model-provided settings, parameters."""
        settings = {"family": self._family, "fingerprint": source.fingerprint, **self._source_settings(source)}
        settings.update({name: self._setting_value(name) for name in self._model_settings})
        return settings

    def _backend_key(self, source: ModelSource, device) -> tuple:
        """Identity of a loaded backend in the registry: where the model is, what it outputs, where it runs."""
        return (self._family, source.path, settings_namespace(self._output_settings(source)), str(device))

    def _model_identity(self) -> tuple:
        """The parameters that name the model (not how it runs)."""
        return (type(self).__name__, self.model)

    # ----------------------------------------------------------------- shared plumbing
    def _source(self) -> ModelSource:
        # A model restored from a bundled pickle stands in for its name in this process, so clones
        # of a loaded pipeline (GridSearchCV, Dask) find it too.
        source = bundled_source(self._model_identity()) or self._resolve_source()
        expected = getattr(self, "model_fingerprint_", None)
        if expected is not None and source.fingerprint != expected:
            raise FingerprintMismatchError(
                f"{type(self).__name__}(model={self.model!r}) was fitted with weights of fingerprint "
                f"{expected}, but the model found at {source.path!r} ({source.origin}) has fingerprint "
                f"{source.fingerprint}: the weights changed since fitting. Re-fit the pipeline, restore "
                "the original weights, or save the pipeline with bundle_weights=True."
            )
        return source

    def _backend(self, source: ModelSource):
        device = resolve_device(self.device)
        return backends.get_or_load(self._backend_key(source, device), lambda: self._load_backend(source, device))

    def _progress(self):
        if not getattr(self, "show_progress", False):
            return None
        from tqdm.auto import tqdm

        return lambda total: tqdm(total=total, desc=self._progress_desc, unit=self._progress_unit)

    def _encode(self, X) -> tuple[np.ndarray, list, dict]:
        """Validated items, their vectors (before post-processing) and the failures by position."""
        items = self._validate_input(X)
        source = self._source()
        keys = content_keys(settings_namespace(self._output_settings(source)), self._content_payloads(items))
        failures = {} if self._collect_failures() else None
        vectors = encode_with_cache(
            items,
            keys,
            cache=resolve_cache(self.cache),
            backend=lambda: self._backend(source),
            batch_size=self.batch_size,
            num_workers=self._num_workers(len(items)),
            failures=failures,
            progress=self._progress(),
        )
        return items, vectors, failures or {}

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Check the input and the model, and record the model's identity.

        Nothing is learned: the encoder is a fixed, pretrained feature extractor. ``fit`` loads the
        model (once per process) to learn its output dimension.

        Parameters
        ----------
        X : array-like of shape (n_samples,) or (n_samples, 1), or str
            Texts for a :class:`~skdeep.TextEncoder`; images, image files, a folder or a glob
            for an :class:`~skdeep.ImageEncoder`. The encoder's page lists what it accepts.
            Checked as ``transform`` checks them.
        y : None
            Ignored.

        Returns
        -------
        self : object
            The fitted encoder.
        """
        self._validate_input(X, reset=True)
        source = bundled_source(self._model_identity()) or self._resolve_source()
        backend = self._backend(source)
        self.model_fingerprint_ = source.fingerprint
        self.model_origin_ = source.origin
        self.n_features_out_ = int(backend.dim)
        self._record_output_layout(backend)
        return self

    def _record_output_layout(self, backend) -> None:
        """Hook for fitted attributes that describe the output beyond its width (e.g. feature names)."""

    def transform(self, X):
        """Embed ``X``.

        Works unfitted too (like ``HashingVectorizer``): the encoder has nothing to learn.

        Parameters
        ----------
        X : array-like of shape (n_samples,) or (n_samples, 1), or str
            Texts for a :class:`~skdeep.TextEncoder`; images, image files, a folder or a glob
            for an :class:`~skdeep.ImageEncoder`. The encoder's page lists what it accepts.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features_out), float32
            One embedding per input, in input order.
        """
        self._validate_params()
        items, vectors, failures = self._encode(X)
        vectors = self._postprocess(vectors)
        if failures:
            vectors = self._handle_failures(X, items, vectors, failures)
        return vectors

    def _handle_failures(self, X, items, vectors, failures) -> np.ndarray:
        """Report failed rows (only encoders that collect failures get here)."""
        raise next(iter(failures.values()))

    def fit_transform(self, X, y=None):
        """Fit to ``X`` (check it and the model), then embed it.

        Parameters
        ----------
        X : array-like of shape (n_samples,) or (n_samples, 1), or str
            Texts for a :class:`~skdeep.TextEncoder`; images, image files, a folder or a glob
            for an :class:`~skdeep.ImageEncoder`. The encoder's page lists what it accepts.
        y : None
            Ignored.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features_out), float32
            One embedding per input, in input order.
        """
        return self.fit(X, y).transform(X)

    @property
    def _n_features_out(self):
        # Unfitted encoders transform too (nothing to learn), so feature names (set_output) must
        # not require fit: ask the shared backend for its dimension.
        if hasattr(self, "n_features_out_"):
            return self.n_features_out_
        return int(self._backend(self._source()).dim)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.non_deterministic = False
        return tags

    # ----------------------------------------------------------------- persistence by reference
    def __getstate__(self):
        state = dict(super().__getstate__())  # object.__getstate__ may return the live __dict__
        if getattr(self, "bundle_weights", False):
            state["_skdeep_bundle"] = bundle_state(self._source())
        return state

    def __setstate__(self, state):
        bundle = state.pop("_skdeep_bundle", None)
        super().__setstate__(state)
        if bundle is not None:
            restore_bundle(bundle, self._model_identity())
        if "model_fingerprint_" in state:
            verify_on_load(self)
