"""Serve a fitted pipeline over HTTP: a FastAPI app with fair micro-batching that holds under abuse.

::

    request -> deadlines, Host/Origin/API key, size limit -> strict JSON + schema + image header probe
            -> MicroBatcher (bounded queue, fair slices) -> one model call at a time (worker thread)
            -> rows back per request; the input that fails alone gets 422, the others their rows

Concurrent requests are collected for a few milliseconds and run as one model call: on an
accelerator one forward pass over 32 texts costs little more than over one; on a CPU the gain is
what the model gains from larger batches (1.6x for all-MiniLM-L6-v2 on 2 cores; see the README
section "Save, serve, query"). Every call is bounded in inputs and characters / pixels, so a large
request is served in slices that take turns with other requests.

Endpoints: ``POST /predict``, ``POST /predict_proba`` (when the model has it), ``POST /transform``
(embeddings), their multipart twins ``POST /{op}/files`` for image models, ``GET /health``,
``GET /metadata`` and ``GET /metrics`` (Prometheus). ``/transform`` runs the model's own
``transform`` when it has one (a transformer pipeline); for a classifier pipeline it runs the steps
up to and including the first skdeep encoder, so it returns that encoder's embeddings. See
``docs/serving.md`` for limits, authentication and deployment.

Modules: :mod:`~skdeep.serving.inspect` (what a model is; no web imports),
:mod:`~skdeep.serving.batcher`, :mod:`~skdeep.serving.app` (routes, :func:`create_app`,
:func:`serve`), :mod:`~skdeep.serving.inputs`, :mod:`~skdeep.serving.errors`,
:mod:`~skdeep.serving.security`, :mod:`~skdeep.serving.metrics`, :mod:`~skdeep.serving.transport`
and :mod:`~skdeep.serving.limits`. FastAPI and uvicorn are imported only when an app is built or
served (``pip install scikit-deep[serve]``). The names below are imported lazily (PEP 562): the limits are
plain constants, so ``skdeep --help`` reads them without importing numpy or the model code.
"""

import importlib

from .limits import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_KEEP_ALIVE_TIMEOUT,
    DEFAULT_MAX_BATCH_CHARS,
    DEFAULT_MAX_BATCH_PIXELS,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_ITEMS,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_TEXT_LENGTH,
    DEFAULT_MAX_WAIT_MS,
    DEFAULT_TIMEOUT,
    Limits,
)

__all__ = [
    "create_app",
    "serve",
    "find_encoders",
    "input_kind",
    "describe",
    "embedding_model",
    "MicroBatcher",
    "BatchStats",
    "ItemFailedError",
    "QueueFullError",
    "Limits",
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_KEEP_ALIVE_TIMEOUT",
    "DEFAULT_MAX_BATCH_CHARS",
    "DEFAULT_MAX_BATCH_PIXELS",
    "DEFAULT_MAX_BATCH_SIZE",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFAULT_MAX_ITEMS",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_MAX_TEXT_LENGTH",
    "DEFAULT_MAX_WAIT_MS",
    "DEFAULT_TIMEOUT",
]

_LAZY = {
    "create_app": "app",
    "serve": "app",
    "BatchStats": "batcher",
    "ItemFailedError": "batcher",
    "MicroBatcher": "batcher",
    "QueueFullError": "batcher",
    "describe": "inspect",
    "embedding_model": "inspect",
    "find_encoders": "inspect",
    "input_kind": "inspect",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
