"""Run skdeep encoders on Dask: embed large collections partition by partition.

Grid searches need nothing from this module: wrap ``GridSearchCV.fit`` (or ``cross_val_score``) in
``joblib.parallel_backend("dask")`` and give the encoders a cache directory that every worker can
reach; see the Dask page of the user guide. This module covers the other half, embedding
collections too large for one machine:

* :func:`embed` returns a Dask array (one block per partition of the input);
* :func:`embed_frame` returns a Dask DataFrame aligned with the input's index;
* :func:`embed_to_parquet` writes that frame to Parquet;
* :func:`warm_cache` fills a shared cache ahead of a grid search;
* :func:`describe_workers` reports, per worker, the process, its device and the models it holds;
* :data:`WORKER_CONFIG` holds the Dask settings for workers that run models.

How the work is shipped
-----------------------
The encoder travels as one key of the task graph: its parameters and the fingerprint of its weights,
a few hundred bytes, never the weights (unless ``bundle_weights=True``, and even then once per
worker, not once per task). Each worker loads the model the first time one of its tasks needs it and
keeps it in skdeep's per-process registry, so a model is loaded once per worker process, whatever the
number of partitions. A worker whose weights differ from the fingerprint raises
:class:`~skdeep.FingerprintMismatchError` rather than mixing two models in one result.

With a disk cache shared by the workers, a partition that has to be recomputed (its worker died, or
its result was lost) is read back from the cache instead of being embedded again.

GPUs
----
Run one worker per GPU, each seeing only its own (dask-cuda's ``LocalCUDACluster`` or
``dask-cuda-worker`` set ``CUDA_VISIBLE_DEVICES`` that way, with one thread per worker): the default
``device="auto"`` then picks ``cuda`` (that worker's GPU) and each GPU runs one embedding at a
time. On a cluster that mixes CPU and GPU workers, start the GPU workers with
``--resources GPU=1`` and wrap both the call and the computation in
``dask.annotate(resources={"GPU": 1})``: Dask's graph optimisation drops annotations attached to
single layers of an array graph, so the annotation has to be on the computation.
"""

from __future__ import annotations

import collections
import hashlib
import math
import os
import pickle
import threading
from typing import NamedTuple

import cloudpickle
import dask
import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import numpy as np
import pandas as pd
from sklearn.base import clone

__all__ = ["WORKER_CONFIG", "describe_workers", "embed", "embed_frame", "embed_to_parquet", "warm_cache"]

DEFAULT_PARTITION_SIZE = 1_000

#: Dask settings for worker processes that run models.
#:
#: Apply them where the workers are started:
#: ``with dask.config.set(skdeep.dask.WORKER_CONFIG): cluster = LocalCluster(...)``.
#: Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` in every worker, which also freezes glibc's
#: mmap threshold, so each large tensor allocation maps and unmaps fresh pages: measured here, it
#: costs transformer inference on CPU about 25 % more CPU time. ``None`` unsets it. The nanny also
#: writes the variable into the starting process's own environment, which later workers inherit:
#: start workers with this configuration from a process that has not started untuned ones.
WORKER_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}

_FRAME, _BAG, _ARRAY = "frame", "bag", "array"


# ---------------------------------------------------------------------------------------------
# input collections -> partitions


class _Partitions:
    """The input split into partitions: delayed objects, their lengths (NaN when unknown), and
    how to index the rows of an output frame."""

    def __init__(self, kind, parts, lengths, divisions=None, index_meta=None):
        self.kind = kind
        self.parts = parts
        self.lengths = lengths
        self.divisions = divisions
        # An empty index of the input's index type and name (Dask inputs only).
        self.index_meta = index_meta if index_meta is not None else pd.RangeIndex(0)

    @property
    def lengths_known(self):
        return not any(math.isnan(n) for n in self.lengths)


def _check_partition_size(partition_size):
    if isinstance(partition_size, bool) or not isinstance(partition_size, (int, np.integer)) or partition_size < 1:
        raise ValueError(f"partition_size must be a positive integer, got {partition_size!r}.")


def _single_column(frame, what):
    if len(frame.columns) != 1:
        raise ValueError(
            f"Expected a single column of inputs, got a {what} with {len(frame.columns)} columns "
            f"{list(frame.columns)!r}; select the column to embed, e.g. df[{str(frame.columns[0])!r}]."
        )
    return frame[frame.columns[0]]


def _partitions(collection, partition_size) -> _Partitions:
    """Split any supported collection into partitions without computing anything."""
    _check_partition_size(partition_size)
    # In-memory inputs become the matching Dask collection, chunked by partition_size.
    if isinstance(collection, pd.DataFrame):
        collection = _single_column(collection, "pandas DataFrame")
    if isinstance(collection, pd.Series):
        collection = dd.from_pandas(collection, chunksize=int(partition_size), sort=False)
    elif isinstance(collection, np.ndarray):
        if collection.ndim == 0:
            raise TypeError("Expected a collection of inputs, got a 0-d array.")
        collection = da.from_array(collection, chunks=(int(partition_size),) + collection.shape[1:])
    elif isinstance(collection, (str, bytes, os.PathLike)):
        raise TypeError(
            f"Expected a collection of inputs, got a single {type(collection).__name__}; wrap it in a list."
        )
    elif isinstance(collection, (list, tuple)):
        if not collection:
            raise ValueError("Expected at least one input, got an empty collection.")
        items = list(collection)
        bag = db.from_sequence(items, partition_size=int(partition_size))
        size = int(partition_size)
        lengths = [min(size, len(items) - start) for start in range(0, len(items), size)]
        if len(lengths) != bag.npartitions:  # pragma: no cover - guards a change in dask's splitting
            raise RuntimeError("dask.bag.from_sequence split the input differently than expected.")
        return _Partitions(_BAG, list(bag.to_delayed()), lengths)

    if isinstance(collection, dd.DataFrame):
        collection = _single_column(collection, "Dask DataFrame")
    if isinstance(collection, dd.Series):
        parts = list(collection.to_delayed())
        divisions = collection.divisions if collection.known_divisions else None
        return _Partitions(_FRAME, parts, [math.nan] * len(parts), divisions, collection._meta.index[:0])
    if isinstance(collection, db.Bag):
        parts = list(collection.to_delayed())
        return _Partitions(_BAG, parts, [math.nan] * len(parts))
    if isinstance(collection, da.Array):
        if collection.ndim == 0:
            raise TypeError("Expected a collection of inputs, got a 0-d Dask array.")
        # Split along rows only, so each block holds whole samples.
        collection = collection.rechunk({axis: -1 for axis in range(1, collection.ndim)})
        parts = list(collection.to_delayed().ravel())
        return _Partitions(_ARRAY, parts, list(collection.chunks[0]))
    raise TypeError(
        "Expected a Dask Series / one-column DataFrame, a Dask Bag, a Dask array, or an in-memory list, "
        f"tuple, NumPy array or pandas Series of inputs (texts, file paths, ...); got {type(collection).__name__}."
    )


def _as_items(part):
    """A partition as the encoder expects it: Series and arrays as they are, anything else a list."""
    if isinstance(part, (pd.Series, np.ndarray, list)):
        return part
    return list(part)  # Bag partitions can be lazy iterators


# ---------------------------------------------------------------------------------------------
# the encoder: fitted once (on a worker), then shipped as one small key of pickled bytes
#
# Bytes rather than the estimator itself: the scheduler unpickles task graphs, and unpickling a
# fitted encoder looks for its model to check the fingerprint. Neither the scheduler nor the
# client should need the model, so only the workers ever unpickle the encoder, once per process.


class _ShippedEncoder(NamedTuple):
    blob: bytes  # cloudpickle of the fitted encoder: classes defined in __main__ travel too
    n_features_out: int
    feature_names: list


_MEMO_SIZE = 8
_unpickled: collections.OrderedDict = collections.OrderedDict()  # digest -> encoder, this process
_unpickled_lock = threading.Lock()


def _ship(fitted) -> _ShippedEncoder:
    return _ShippedEncoder(cloudpickle.dumps(fitted), int(fitted.n_features_out_), _feature_names(fitted))


def _receive(blob: bytes):
    """The encoder in ``blob``, unpickled (and its weights checked) once per process."""
    digest = hashlib.blake2b(blob, digest_size=16).digest()
    with _unpickled_lock:
        encoder = _unpickled.get(digest)
        if encoder is None:
            encoder = pickle.loads(blob)
            _unpickled[digest] = encoder
            while len(_unpickled) > _MEMO_SIZE:
                _unpickled.popitem(last=False)
        else:
            _unpickled.move_to_end(digest)
    return encoder


def _fit_on_first_item(blob, part):
    """On a worker: fit a clone of the encoder on the partition's first item (None if it is empty)."""
    items = _as_items(part)
    if len(items) == 0:
        return None
    sample = items[:1]
    fitted = clone(_receive(blob)).fit(sample)
    if getattr(fitted, "n_features_out_", None) is None:
        # Not a skdeep encoder: learn the width from one row.
        fitted.n_features_out_ = int(np.asarray(fitted.transform(sample)).shape[1])
    return _ship(fitted)


def _fitted_encoder(encoder, partitions: _Partitions) -> _ShippedEncoder:
    """The encoder, fitted and pickled: as given when already fitted, else fitted on a worker on
    the first input.

    Fitting on a worker keeps the model and the data off the client (which may have no GPU, or no
    copy of the weights), and the fingerprint it records then checks every other worker's copy.
    """
    if not hasattr(encoder, "transform") or not hasattr(encoder, "get_params"):
        raise TypeError(
            f"Expected a scikit-learn transformer such as skdeep.TextEncoder, got {type(encoder).__name__}."
        )
    if getattr(encoder, "n_features_out_", None) is not None:
        return _ship(encoder)
    blob = cloudpickle.dumps(encoder)
    # Usually the first partition answers; empty ones are skipped.
    for part in partitions.parts:
        shipped = dask.delayed(_fit_on_first_item, pure=True)(blob, part).compute()
        if shipped is not None:
            return shipped
    raise ValueError("Expected at least one input, got a collection whose partitions are all empty.")


def _feature_names(encoder) -> list[str]:
    try:
        return [str(name) for name in encoder.get_feature_names_out()]
    except (AttributeError, ValueError, TypeError):
        return [f"{type(encoder).__name__.lower()}{i}" for i in range(encoder.n_features_out_)]


# ---------------------------------------------------------------------------------------------
# tasks run on the workers


def _embed_partition(blob, part):
    encoder = _receive(blob)
    items = _as_items(part)
    if len(items) == 0:
        return np.empty((0, encoder.n_features_out_), dtype=np.float32)
    return np.asarray(encoder.transform(items))


def _embed_partition_frame(blob, part, columns, start):
    vectors = _embed_partition(blob, part)
    if isinstance(part, pd.Series):
        index = part.index
    else:
        # Global row positions when the partition's offset is known, else positions within it.
        index = pd.RangeIndex(start, start + len(vectors))
    return pd.DataFrame(vectors, index=index, columns=columns)


def _embed_partition_count(blob, part):
    return len(_embed_partition(blob, part))


def _tasks(func, shipped: _ShippedEncoder, partitions: _Partitions, *extra_per_part):
    """One task per partition, all depending on a single key that holds the pickled encoder."""
    encoder_key = dask.delayed(shipped.blob, pure=True, name=f"skdeep-encoder-{dask.base.tokenize(shipped.blob)}")
    return [
        dask.delayed(func, pure=True)(encoder_key, part, *(extra[i] for extra in extra_per_part))
        for i, part in enumerate(partitions.parts)
    ]


# ---------------------------------------------------------------------------------------------
# public API


def embed(collection, encoder, *, partition_size=DEFAULT_PARTITION_SIZE):
    """Embed a collection partition by partition, lazily, as a Dask array.

    Parameters
    ----------
    collection : Dask Series, one-column Dask DataFrame, Dask Bag, Dask array, list, tuple, \
            ndarray or pandas Series
        The inputs, in whatever form ``encoder.transform`` accepts for a batch (texts, file paths,
        ...). Dask collections keep their partitions; in-memory inputs are split into partitions of
        ``partition_size`` rows.
    encoder : skdeep encoder
        For example :class:`~skdeep.TextEncoder`. If it is not fitted yet it is fitted once, on a
        worker, on one input: the client never loads the model. Its ``cache`` parameter is used by
        every worker, so give it a directory all workers share (see "Dask" in the user guide).
    partition_size : int, default=1000
        Rows per partition for in-memory inputs; ignored for Dask collections.

    Returns
    -------
    X : dask.array.Array of shape (n_samples, n_features_out), float32
        One block per partition. Block lengths are unknown (NaN) for Dask DataFrames and Bags until
        computed; call ``.compute_chunk_sizes()`` if you need them.

    Examples
    --------
    >>> import dask.dataframe as dd
    >>> from skdeep import TextEncoder
    >>> from skdeep.dask import embed
    >>> df = dd.read_parquet("reviews/")  # doctest: +SKIP
    >>> X = embed(df["text"], TextEncoder(cache="/local/scratch/skdeep-cache"))  # doctest: +SKIP
    >>> X.compute().shape  # doctest: +SKIP
    (1000000, 384)
    """
    partitions = _partitions(collection, partition_size)
    shipped = _fitted_encoder(encoder, partitions)
    dim = shipped.n_features_out
    tasks = _tasks(_embed_partition, shipped, partitions)
    blocks = [da.from_delayed(task, shape=(n, dim), dtype=np.float32) for task, n in zip(tasks, partitions.lengths)]
    return da.concatenate(blocks, axis=0, allow_unknown_chunksizes=True)


def embed_frame(collection, encoder, *, partition_size=DEFAULT_PARTITION_SIZE):
    """Embed a collection partition by partition, lazily, as a Dask DataFrame.

    The index follows the input: a (Dask or pandas) Series keeps its own index and divisions; lists,
    arrays and Bags built from lists get row positions. A Dask Bag has no row positions, so its rows
    are numbered within each partition.

    Parameters
    ----------
    collection : Dask Series, one-column Dask DataFrame, Dask Bag, Dask array, list, tuple, \
            ndarray or pandas Series
        The inputs, as in :func:`embed`.
    encoder : skdeep encoder
        The encoder, as in :func:`embed`.
    partition_size : int, default=1000
        Rows per partition for in-memory inputs; ignored for Dask collections.

    Returns
    -------
    frame : dask.dataframe.DataFrame
        One float32 column per embedding dimension, named like ``encoder.get_feature_names_out()``
        (``textencoder0``, ``textencoder1``, ...).
    """
    partitions = _partitions(collection, partition_size)
    shipped = _fitted_encoder(encoder, partitions)
    columns = shipped.feature_names
    if partitions.lengths_known:
        starts = np.concatenate([[0], np.cumsum(partitions.lengths)[:-1]]).astype(int).tolist()
    else:
        starts = [0] * len(partitions.parts)
    n = len(partitions.parts)
    tasks = _tasks(
        _embed_partition_frame,
        shipped,
        partitions,
        [columns] * n,
        starts,
    )
    meta = pd.DataFrame(np.empty((0, len(columns)), dtype=np.float32), columns=columns, index=partitions.index_meta)
    if partitions.kind == _FRAME:
        return dd.from_delayed(tasks, meta=meta, divisions=partitions.divisions, verify_meta=False)
    divisions = None
    if partitions.lengths_known:
        ends = [s + n_rows for s, n_rows in zip(starts, partitions.lengths)]
        if all(n_rows > 0 for n_rows in partitions.lengths):
            divisions = tuple(starts) + (ends[-1] - 1,)
    return dd.from_delayed(tasks, meta=meta, divisions=divisions, verify_meta=False)


def embed_to_parquet(
    collection, encoder, path, *, partition_size=DEFAULT_PARTITION_SIZE, compute=True, **to_parquet_kwargs
):
    """Embed a collection and write the embeddings to a Parquet dataset, one file per partition.

    Each partition is embedded and written by the worker that holds it: the vectors never pass
    through the client.

    Parameters
    ----------
    collection : Dask Series, one-column Dask DataFrame, Dask Bag, Dask array, list, tuple, \
            ndarray or pandas Series
        The inputs, as in :func:`embed`.
    encoder : skdeep encoder
        The encoder, as in :func:`embed`.
    path : str or path-like
        Directory of the Parquet dataset (any fsspec URL Dask accepts, e.g. ``s3://bucket/emb/``).
    partition_size : int, default=1000
        Rows per partition for in-memory inputs; ignored for Dask collections.
    compute : bool, default=True
        Write now; with False, return the delayed write for the caller to compute.
    **to_parquet_kwargs
        Passed to :meth:`dask.dataframe.DataFrame.to_parquet` (``write_index``, ``compression``,
        ``overwrite``, ...).

    Returns
    -------
    result : None or dask.delayed.Delayed
        What ``DataFrame.to_parquet`` returns: None, or the delayed write when ``compute=False``.
    """
    frame = embed_frame(collection, encoder, partition_size=partition_size)
    return frame.to_parquet(os.fspath(path), compute=compute, **to_parquet_kwargs)


def warm_cache(collection, encoder, *, partition_size=DEFAULT_PARTITION_SIZE) -> int:
    """Embed a collection into the encoder's cache without bringing the vectors back.

    Run it before a grid search on a cluster: every unique input is then embedded by exactly one
    worker (the partitions are disjoint), and the search's many fits read the cache instead of
    racing to embed the same inputs. Inputs repeated across partitions may still be embedded by
    two workers at the same moment.

    Parameters
    ----------
    collection : Dask Series, one-column Dask DataFrame, Dask Bag, Dask array, list, tuple, \
            ndarray or pandas Series
        The inputs, as in :func:`embed`.
    encoder : skdeep encoder
        The encoder, as in :func:`embed`. Its ``cache`` must be a directory the workers share.
    partition_size : int, default=1000
        Rows per partition for in-memory inputs; ignored for Dask collections.

    Returns
    -------
    n_rows : int
        Number of rows processed (found in the cache or embedded).
    """
    cache = encoder.get_params().get("cache", None) if hasattr(encoder, "get_params") else None
    if cache is None or cache is False:
        raise ValueError(
            f"warm_cache needs an encoder with a cache; {type(encoder).__name__} has cache={cache!r}. "
            "Pass cache=<directory shared by the workers>."
        )
    partitions = _partitions(collection, partition_size)
    shipped = _fitted_encoder(encoder, partitions)
    counts = dask.compute(*_tasks(_embed_partition_count, shipped, partitions))
    return int(sum(counts))


def _worker_report():
    from . import backends
    from .devices import resolve_device

    return {
        "pid": os.getpid(),
        "device": str(resolve_device("auto")),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "backends": [repr(key) for key in backends.loaded_backends()],
    }


def describe_workers(client) -> dict:
    """What each worker of a ``dask.distributed`` cluster would use: process, device, loaded models.

    Parameters
    ----------
    client : distributed.Client
        A client connected to the cluster.

    Returns
    -------
    workers : dict
        Worker address -> ``{"pid", "device", "CUDA_VISIBLE_DEVICES", "backends"}``: ``device`` is
        what ``device="auto"`` picks there (``cuda`` is the first GPU that worker sees, so with one
        GPU per worker each uses its own); ``backends`` lists the models loaded in that process.
    """
    return client.run(_worker_report)
