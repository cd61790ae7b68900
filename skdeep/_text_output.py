"""What :class:`skdeep.TextEncoder` does to the model's vectors after the cache.

Every step here is a cheap function of the cached vectors, so it is never part of a cache key: a
grid over ``truncate_dim``, ``chunk_pooling``, ``normalize`` or ``precision`` embeds nothing new.
The order is sentence-transformers' (truncate, normalise, quantise), with the pooling of the
windows of long documents after truncation.
"""

from __future__ import annotations

import numpy as np

CHUNK_POOLING_MODES = ("mean", "max", "first")
#: Output quantisations, as ``SentenceTransformer.encode(precision=...)`` names them.
OUTPUT_PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")
#: The compute precisions ``precision=`` used to name, and the ``dtype`` each now means.
LEGACY_PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def chunk_modes(chunk_pooling) -> tuple[str, ...]:
    """``chunk_pooling`` as a tuple of modes, checked."""
    modes = (chunk_pooling,) if isinstance(chunk_pooling, str) else tuple(chunk_pooling)
    bad = [m for m in modes if m not in CHUNK_POOLING_MODES]
    if not modes or bad or len(set(modes)) != len(modes):
        raise ValueError(
            f"chunk_pooling must be one of {CHUNK_POOLING_MODES} or a sequence of distinct ones, got {chunk_pooling!r}."
        )
    return modes


def pool_windows(vectors: np.ndarray, owners: np.ndarray, n_docs: int, modes) -> np.ndarray:
    """One vector per document from the vectors of its windows (``owners`` sorted, every document present).

    Each mode gives ``dim`` columns (mean, element-wise max, or the first window's vector), in the
    order given; a document with one window gets its vector in every block.
    """
    dim = vectors.shape[1]
    if len(owners) == n_docs:  # one window per document: every mode is the identity
        return np.tile(vectors, (1, len(modes))) if len(modes) > 1 else vectors
    counts = np.bincount(owners, minlength=n_docs)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = np.empty((n_docs, dim * len(modes)), dtype=np.float32)
    for block, mode in enumerate(modes):
        cols = slice(block * dim, (block + 1) * dim)
        if mode == "mean":
            out[:, cols] = np.add.reduceat(vectors.astype(np.float64), starts, axis=0) / counts[:, None]
        elif mode == "max":
            out[:, cols] = np.maximum.reduceat(vectors, starts, axis=0)
        else:
            out[:, cols] = vectors[starts]
    return out


def output_width(dim: int, truncate_dim, modes, precision: str) -> int:
    """Columns of the encoder's output for a model of width ``dim``."""
    width = (min(dim, truncate_dim) if truncate_dim else dim) * len(modes)
    return (width + 7) // 8 if precision.endswith("binary") else width


def quantization_ranges(vectors: np.ndarray) -> np.ndarray:
    """Per-dimension (min, max), shape (2, dim): what sentence-transformers calibrates int8 / uint8 on."""
    return np.vstack([vectors.min(axis=0), vectors.max(axis=0)]).astype(np.float32)


def quantize(vectors: np.ndarray, precision: str, ranges=None) -> np.ndarray:
    """``sentence_transformers.quantize_embeddings``, with a clear error when int8 has nothing to calibrate on."""
    if precision == "float32":
        return vectors
    from sentence_transformers import quantize_embeddings

    if precision.endswith("int8") and ranges is None and len(vectors) < 2:
        raise ValueError(
            f"precision={precision!r} needs the range of each dimension: fit the encoder on representative texts "
            f"first (fit learns quantization_ranges_), or transform at least two texts at once."
        )
    return quantize_embeddings(vectors, precision=precision, ranges=ranges)
