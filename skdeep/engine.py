"""The path every encoder shares: content keys -> cache lookup -> misses in batches -> reassembly.

::

    validated inputs -> content keys -> cache.get_many -> unique misses -> encode_misses(batch...)
                                                                                 |
    output (input order) <------------- reassemble <------- cache.put_many <-----+

Public estimators (:class:`~skdeep.TextEncoder`, :class:`~skdeep.ImageEncoder`, ...) subclass
:class:`BaseEncoder` and supply only what is specific to them: input validation, the bytes that
identify an input's content, the settings that change the output, and how to embed a list of misses.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from abc import abstractmethod
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin, _fit_context

from . import backends
from ._config import ENCODE_LOG_ENV, encode_log_path
from .cache import claims_for, fetch_claimed_elsewhere, resolve_cache
from .devices import resolve_device
from .persistence import bundle_state, bundled_source, restore_bundle, verify_on_load
from .sources import FingerprintMismatchError, ModelSource

KEY_BYTES = 16


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


def encode_with_cache(
    items: Sequence,
    keys: Sequence[bytes],
    *,
    cache,
    encode_misses: Callable[[list], np.ndarray],
) -> np.ndarray:
    """Embed ``items``, computing only what ``cache`` lacks and each distinct key once.

    Parameters
    ----------
    items : sequence
        Validated inputs, one per row of the output.
    keys : sequence of bytes
        Content key of each item; equal keys mean equal outputs.
    cache : EmbeddingCache or None
    encode_misses : callable
        Takes a list of items and returns a float32 array with one row per item, in order.

    Returns
    -------
    ndarray of shape (len(items), dim), float32
    """
    n = len(items)
    found = cache.get_many(keys) if cache is not None else [None] * n

    # First position of each distinct missing key: duplicates within one call are embedded once.
    miss_positions: dict[bytes, int] = {}
    for i, (key, vec) in enumerate(zip(keys, found)):
        if vec is None and key not in miss_positions:
            miss_positions[key] = i

    computed: dict[bytes, np.ndarray] = {}
    claims = claims_for(cache) if miss_positions else None
    todo = dict(miss_positions)
    while todo:
        # With a disk cache shared by processes, compute only what no other live process is
        # computing, then wait for the rest (see skdeep.cache._claims).
        ours, theirs = claims.claim(list(todo)) if claims is not None else (list(todo), [])
        if ours:
            with claims.holding(ours) if claims is not None else contextlib.nullcontext():
                computed.update(_compute(ours, [items[todo[k]] for k in ours], cache, encode_misses))
            for key in ours:
                del todo[key]
        if theirs:
            fetched, give_up = fetch_claimed_elsewhere(cache, claims, theirs)
            # Abandoned claims (owner failed, died or stopped renewing), now ours: compute them here.
            if give_up:
                with claims.holding(give_up):
                    fetched.update(_compute(give_up, [items[todo[k]] for k in give_up], cache, encode_misses))
            computed.update(fetched)
            for key in fetched:
                del todo[key]

    dim = None
    for vec in found:
        if vec is not None:
            dim = vec.shape[0]
            break
    if dim is None:
        dim = next(iter(computed.values())).shape[0]
    out = np.empty((n, dim), dtype=np.float32)
    for i, (key, vec) in enumerate(zip(keys, found)):
        row = vec if vec is not None else computed[key]
        if row.shape[0] != dim:
            raise RuntimeError(
                f"cached vector for row {i} has length {row.shape[0]}, expected {dim}; "
                "the cache holds vectors of another model under the same key."
            )
        out[i] = row
    return out


def _compute(keys: list[bytes], items: list, cache, encode_misses) -> dict[bytes, np.ndarray]:
    vectors = np.asarray(encode_misses(items), dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(items):
        raise RuntimeError(f"the backend returned an array of shape {vectors.shape} for {len(items)} inputs.")
    _log_encoded(len(items))
    if cache is not None:
        cache.put_many(keys, vectors)
    return dict(zip(keys, vectors))


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class BaseEncoder(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Shared machinery of skdeep's frozen encoders.

    Subclasses define ``_validate_input``, ``_resolve_source``, ``_load_backend``,
    ``_output_settings``, ``_content_payloads`` and ``_encode_misses``. Everything heavy (loaded
    models) lives in the per-process backend registry, never on the estimator, so estimators stay
    cheap to clone and pickle.
    """

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
    def _backend_key(self, source: ModelSource, device) -> tuple:
        """Everything that defines a loaded backend, for the per-process registry."""

    @abstractmethod
    def _load_backend(self, source: ModelSource, device):
        """Load the backend; called once per process per key."""

    @abstractmethod
    def _output_settings(self, source: ModelSource) -> dict:
        """The settings that change the output (never batch size, device or progress)."""

    @abstractmethod
    def _content_payloads(self, items: list) -> list[bytes]:
        """The bytes that identify each item's content."""

    @abstractmethod
    def _encode_misses(self, backend, items: list) -> np.ndarray:
        """Embed items the cache lacked: batched, with progress, in input order."""

    # ----------------------------------------------------------------- shared plumbing
    def _model_identity(self) -> tuple:
        """The parameters that name the model (not how it runs)."""
        return (type(self).__name__, self.model)

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

    def _encode(self, X) -> np.ndarray:
        items = self._validate_input(X)
        source = self._source()
        namespace = settings_namespace(self._output_settings(source))
        keys = content_keys(namespace, self._content_payloads(items))
        return encode_with_cache(
            items,
            keys,
            cache=resolve_cache(self.cache),
            encode_misses=lambda misses: self._encode_misses(self._backend(source), misses),
        )

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Check the input and the model, and record the model's identity.

        Nothing is learned: the encoder is a fixed, pretrained feature extractor. ``fit`` loads the
        model (once per process) to learn its output dimension.

        Parameters
        ----------
        X : see the class docstring
        y : None
            Ignored.

        Returns
        -------
        self
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

        Returns
        -------
        ndarray of shape (n_samples, n_features_out_), float32
        """
        self._validate_params()
        return self._encode(X)

    def fit_transform(self, X, y=None):
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
        state = super().__getstate__()
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
