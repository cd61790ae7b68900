"""The FastAPI app: routes, request schemas, error answers, and :func:`serve`.

::

    connection (header/body deadlines) -> metrics -> Host / Origin / API key -> body size limit
      -> strict JSON + schema (422) -> image header probe (422) -> MicroBatcher queue (503 when full)
      -> fair model calls -> rows, or 422 for the input that failed alone; 504 past --timeout;
         dropped from the queue when the client disconnects

No request can produce a 5xx from bad input: JSON the schema cannot hold, non-finite numbers,
lone surrogates, undecodable images and inputs that fail in the model are all answered 422 with
a short message naming the item. A 500 means a server bug (logged with its traceback); 503 and
504 mean the server is busy.
"""

import asyncio
import io
import ipaddress
import logging
import os
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from .batcher import ItemFailedError, MicroBatcher, QueueFullError
from .inputs import InputError, decode_base64_image, excerpt, probe_images, short, text_costs
from .inspect import _plain, describe, embedding_model, encoder_places, input_kind
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
    BodyLimitMiddleware,
    Limits,
)
from .metrics import Metrics
from .security import LOOPBACK_HOSTS, SecurityMiddleware, check_host_patterns, check_origins, resolve_api_key
from .tables import record_model, records_frame, table_columns, table_items, warm_table_encoders

OPERATIONS = ("predict", "predict_proba", "transform")
INPUT_KINDS = ("text", "image")
#: Exceptions that say the input is wrong, whatever else the model did (answered 422).
INPUT_ERRORS = (ValueError, TypeError, LookupError, UnicodeError)
#: How long a client whose input failed in the model has its requests run in calls of their own.
SUSPECT_SECONDS = 60.0
_MAX_SUSPECTS = 10_000

logger = logging.getLogger("skdeep.serving")


# ---------------------------------------------------------------------------------------------
# helpers


def _check_finite(out: np.ndarray) -> None:
    if out.dtype.kind in "fc" and not np.isfinite(out).all():
        # Never a silent NaN in an answer; the batcher finds the input that causes it.
        raise ValueError("the model produced NaN or infinite values for this input")


def _model_runner(estimator, op: str, columns: list | None = None) -> Callable[[list], Any] | None:
    if op == "transform":
        target = embedding_model(estimator)
        fn = None if target is None else target.transform
    else:
        fn = getattr(estimator, op, None)
    if fn is None:
        return None

    def run(items: list):
        out = fn(items if columns is None else records_frame(items, columns))
        if isinstance(out, list):
            # Multi-output predict_proba: one (n, k_j) table per output -> one row (a tuple) per input.
            tables = [np.asarray(t) for t in out]
            for table in tables:
                _check_finite(table)
            if any(len(t) != len(items) for t in tables):
                raise RuntimeError(
                    f"The model returned tables of {[len(t) for t in tables]} rows for {len(items)} inputs."
                )
            return [tuple(t[i] for t in tables) for i in range(len(items))]
        out = np.asarray(out)  # a DataFrame from set_output becomes rows we can slice
        _check_finite(out)
        return out

    return run


def _warmup_inputs(kind: str) -> list:
    if kind == "text":
        return ["skdeep warm-up"]
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (127, 127, 127)).save(buf, format="PNG")
    return [buf.getvalue()]


_WHAT = {"text": "texts", "image": "base64 images", "table": "records (one object per row)"}


def _missing_op_message(estimator, op: str) -> str:
    last = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    if op == "transform":
        return f"This model ({type(estimator).__name__}) has no transform and no skdeep encoder step."
    return f"This model has no {op}: its final estimator {type(last).__name__} does not provide it."


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _public_info(info: dict, source_file: str | None) -> dict:
    """``describe`` output safe to show clients: file and model folder names, never server paths."""
    encoders = []
    for enc in info["encoders"]:
        model = enc["model"]
        if os.path.isabs(model) or os.path.exists(model):
            model = Path(model).name
        encoders.append({**enc, "model": model})
    return {**info, "encoders": encoders, "source_file": None if source_file is None else Path(source_file).name}


class _Suspects:
    """Clients whose input failed in the model lately: their requests run alone, so that a client sending
    one failing input after another cannot make every batch fail and be split."""

    def __init__(self, seconds: float = SUSPECT_SECONDS, size: int = _MAX_SUSPECTS):
        import collections

        self.seconds = seconds
        self.size = size
        self._until: collections.OrderedDict = collections.OrderedDict()

    @staticmethod
    def key(scope) -> str | None:
        # (host, port): a connection; behind a trusted proxy uvicorn reports (client IP, 0): a client.
        client = scope.get("client")
        return None if not client else f"{client[0]}:{client[1]}"

    def mark(self, key: str | None) -> None:
        if key is None:
            return
        self._until[key] = time.monotonic() + self.seconds
        self._until.move_to_end(key)
        while len(self._until) > self.size:
            self._until.popitem(last=False)

    def __contains__(self, key) -> bool:
        until = self._until.get(key)
        if until is None:
            return False
        if until < time.monotonic():
            del self._until[key]
            return False
        return True


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("skdeep")
    except Exception:  # noqa: BLE001 - running from a source tree
        return "0+unknown"


async def _wait_for_disconnect(receive) -> None:
    # Once the body is read, the next receive() only returns when the client goes away.
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


# ---------------------------------------------------------------------------------------------
# the app


def create_app(
    model,
    *,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_items: int = DEFAULT_MAX_ITEMS,
    max_text_length: int = DEFAULT_MAX_TEXT_LENGTH,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_batch_chars: int = DEFAULT_MAX_BATCH_CHARS,
    max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS,
    max_queue: int | None = DEFAULT_MAX_QUEUE,
    timeout: float | None = DEFAULT_TIMEOUT,
    api_key: str | None = None,
    allowed_origins=None,
    allowed_hosts=None,
    input_kind_override: str | None = None,
    encoder_params: dict | None = None,
    trusted=None,
    allow_pickle: bool = False,
    warmup: bool = True,
):
    """Build the FastAPI app serving ``model``.

    Parameters
    ----------
    model : estimator, str or path-like
        A fitted pipeline, or a file saved with :func:`skdeep.persistence.save` (loaded here, once).
    max_batch_size : int, default=32
        Most inputs per model call; 1 turns micro-batching off.
    max_wait_ms : float, default=5.0
        How long a model call waits for more requests once it has one.
    max_body_bytes : int, default=16 MiB
        Larger request bodies are answered 413.
    max_items : int, default=256
        Most texts or images in one request (422 beyond).
    max_text_length : int, default=10000
        Most characters per text (422 beyond).
    max_image_pixels : int, default=40_000_000
        Most pixels an image header may declare (422 beyond); checked without decoding.
    max_batch_chars : int, default=16384
        Most characters per model call, counted as ``n_texts * (longest + 32)``; larger requests
        are cut into slices that take turns with other requests.
    max_batch_pixels : int, default=40_000_000
        Most image pixels per model call (one larger image runs alone).
    max_queue : int or None, default=2048
        Most inputs waiting for the model; a request beyond is answered 503 with ``Retry-After``.
    timeout : float or None, default=60
        Seconds from a request's body being read to its answer; beyond, 504 and its queued work is
        dropped.
    api_key : str, default=None
        Require ``Authorization: Bearer <api_key>`` on every path but ``/health``.
    allowed_origins : list of str, default=None
        Browser origins (``https://app.example.com``, or ``*``) allowed besides the server's own;
        requests from any other ``Origin`` are refused (403). Enables CORS for them.
    allowed_hosts : list of str, default=None
        Accepted ``Host`` header values (``*.example.com`` wildcards); None: any.
    input_kind_override : {"text", "image"}, default=None
        What the model takes, when it has no skdeep encoder to tell. A model fitted on a DataFrame
        (``feature_names_in_``) whose encoders read columns (a ColumnTransformer), or with several
        columns, takes rows: ``{"records": [{"text": ..., "price": ...}, ...]}``.
    encoder_params : dict, default=None
        Parameters set on every skdeep encoder of the model before serving, e.g.
        ``{"backend": "openvino", "num_threads": 4}`` (how the model runs, not what it is).
    trusted : list of str, default=None
        Extra types to trust when loading a ``.skops`` file.
    allow_pickle : bool, default=False
        Whether ``model`` may be a pickle (``.joblib``): unpickling runs any code the file holds.
    warmup : bool, default=True
        Run each endpoint's model call once at start-up, so the first request does not pay for
        loading the weights.

    Returns
    -------
    fastapi.FastAPI
        The application; run it with any ASGI server (``uvicorn.run(app)``), or use :func:`serve`.
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, File, HTTPException, Request, UploadFile
    from fastapi.concurrency import run_in_threadpool
    from pydantic import BaseModel, ConfigDict, Field, StrictStr, StringConstraints

    from .. import persistence
    from .errors import StrictJSONRoute, install_error_handlers

    source_file = None
    if not hasattr(model, "get_params"):
        source_file = str(model)
        model = persistence.load(model, trusted=trusted, allow_pickle=allow_pickle)
    for place in encoder_places(model) if encoder_params else ():
        place.encoder.set_params(**encoder_params)
    if input_kind_override is not None and input_kind_override not in INPUT_KINDS:
        raise ValueError(f"input_kind_override must be one of {INPUT_KINDS}, got {input_kind_override!r}.")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be > 0 or None, got {timeout}.")
    if api_key is not None and not api_key.strip():
        raise ValueError("api_key is empty; pass None to turn authentication off.")
    # Checked now, not when Starlette first builds its middleware stack (at the first request).
    allowed_origins = check_origins(allowed_origins) if allowed_origins else None
    allowed_hosts = check_host_patterns(allowed_hosts) if allowed_hosts else None
    kind = input_kind_override or input_kind(model)
    columns, text_columns = table_columns(model) if kind == "table" else (None, set())
    limits = Limits(
        max_body_bytes=max_body_bytes,
        max_items=max_items,
        max_text_length=max_text_length,
        max_image_pixels=max_image_pixels,
        max_batch_chars=max_batch_chars,
        max_batch_pixels=max_batch_pixels,
        max_queue=max_queue,
        timeout_s=timeout,
    )
    runners = {op: _model_runner(model, op, columns) for op in OPERATIONS}
    endpoints = [f"/{op}" for op in OPERATIONS] + [f"/{op}/files" for op in OPERATIONS]
    metrics = Metrics(endpoints + ["/health", "/metadata", "/metrics", "/docs", "/openapi.json"])
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="skdeep-model")
    batchers = {
        op: MicroBatcher(
            run,
            executor,
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            max_batch_cost=max_batch_pixels if kind == "image" else max_batch_chars,
            padded_cost=kind != "image",
            max_queue=max_queue,
            on_call=metrics.call_observer(op),
        )
        for op, run in runners.items()
        if run is not None
    }
    info = _public_info({**describe(model), "input_kind": kind}, source_file)
    suspects = _Suspects()

    @asynccontextmanager
    async def lifespan(app):
        for batcher in batchers.values():
            await batcher.start()
        if warmup:
            loop = asyncio.get_running_loop()
            if kind == "table":
                await loop.run_in_executor(executor, warm_table_encoders, model)
            else:
                sample = _warmup_inputs(kind)
                for op, run in runners.items():
                    if run is None:
                        continue
                    try:
                        await loop.run_in_executor(executor, run, sample)
                    except (AttributeError, NotImplementedError) as exc:
                        # Advertised but not computable (e.g. a wrapper without probabilities): answer 404.
                        logger.warning("/%s is not available: %s: %s", op, type(exc).__name__, short(exc, 200))
                        await batchers.pop(op).stop()
        try:
            yield
        finally:
            for batcher in batchers.values():
                await batcher.stop()
            executor.shutdown(wait=True)

    app = FastAPI(
        title="skdeep model server",
        version=_version(),
        description=f"Serves {info['estimator']} ({kind} input). Micro-batches concurrent requests.",
        lifespan=lifespan,
    )
    app.router.route_class = StrictJSONRoute
    install_error_handlers(app, metrics)
    # Added innermost first: metrics (outermost) > security > CORS > body limit > routes.
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_body_bytes, on_reject=metrics.reject)
    if allowed_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(allowed_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    app.add_middleware(
        SecurityMiddleware,
        api_key=api_key,
        allowed_origins=allowed_origins,
        allowed_hosts=allowed_hosts,
        on_reject=metrics.reject,
    )
    app.add_middleware(_Wrapped, wrap=metrics.middleware)
    app.state.model = model
    app.state.batchers = batchers
    app.state.limits = limits
    app.state.metrics = metrics

    # ---- request and response schemas (limits are part of the schema, so they show in OpenAPI)
    Text = Annotated[StrictStr, StringConstraints(max_length=limits.max_text_length)]
    items_field = dict(min_length=1, max_length=limits.max_items)

    class TextRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        inputs: Annotated[list[Text], Field(description="Texts, one per sample.", **items_field)]

    class ImageRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        images: Annotated[
            list[StrictStr], Field(description="Images as base64 strings (data URLs allowed).", **items_field)
        ]

    class TableRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        records: Annotated[
            list[record_model(columns or [], text_columns, Text)],
            Field(description="Rows, one object per sample, with the columns the model was fitted on.", **items_field),
        ]

    class PredictResponse(BaseModel):
        predictions: list[Any] = Field(description="One prediction per input (a list per input for multi-output).")

    class ProbaResponse(BaseModel):
        classes: list[Any] = Field(description="Class labels, the order of each row's probabilities.")
        probabilities: list[list[float]]

    class MultiProbaResponse(BaseModel):
        outputs: list[ProbaResponse] = Field(description="Multi-output models: one probability table per output.")

    class TransformResponse(BaseModel):
        embeddings: list[list[float]]
        dim: int

    class Health(BaseModel):
        status: str

    request_model = {"text": TextRequest, "image": ImageRequest, "table": TableRequest}[kind]
    multi_output = isinstance(getattr(model, "classes_", None), list)
    response_models = {
        "predict": PredictResponse,
        "predict_proba": MultiProbaResponse | ProbaResponse if multi_output else ProbaResponse,
        "transform": TransformResponse,
    }
    error_responses = {
        404: {"description": "The model has no such method"},
        413: {"description": "Body too large"},
        422: {"description": "Invalid input, or an input failed in the model"},
        503: {"description": "Queue full (see Retry-After)"},
        504: {"description": "Not answered within the server's time limit"},
    }

    def proba_table(table: np.ndarray, classes) -> dict:
        classes = None if classes is None else _plain(np.asarray(classes))
        if not isinstance(classes, list) or table.ndim != 2 or len(classes) != table.shape[1]:
            classes = list(range(table.shape[1] if table.ndim == 2 else 1))  # columns without labels
        return {"classes": classes, "probabilities": table.astype(np.float64).tolist()}

    def package(op: str, out):
        if op == "predict_proba" and isinstance(out, list):  # rows of a multi-output model: tuples
            n_outputs = len(out[0]) if out else 0
            labels = getattr(model, "classes_", None)
            labels = labels if isinstance(labels, list) and len(labels) == n_outputs else [None] * n_outputs
            tables = [np.stack([row[j] for row in out]) for j in range(n_outputs)]
            return {"outputs": [proba_table(t, c) for t, c in zip(tables, labels)]}
        out = np.asarray(out)
        if op == "predict":
            return {"predictions": _plain(out)}
        if op == "predict_proba":
            return proba_table(out, getattr(model, "classes_", None))
        return {"embeddings": out.astype(np.float64).tolist(), "dim": int(out.shape[1]) if out.ndim == 2 else 1}

    def model_failure(op: str, exc: ItemFailedError, labels: list):
        label = labels[exc.index]
        error = exc.error
        message = f"{type(error).__name__}: {error}"
        if exc.isolated or isinstance(error, INPUT_ERRORS):
            metrics.reject("model_input")
            if isinstance(error, INPUT_ERRORS):
                logger.info("/%s: %s failed in the model: %s", op, label, short(message, 200))
            else:  # an input-specific failure of an unexpected kind: worth a look, with its traceback
                logger.warning("/%s: %s failed in the model alone", op, label, exc_info=error)
            return HTTPException(status_code=422, detail=short(f"{label} failed in the model: {message}"))
        if isinstance(error, (AttributeError, NotImplementedError)):
            # The method exists on the pipeline but its final estimator cannot compute it.
            logger.warning("/%s: the model cannot compute it: %s", op, short(message, 200))
            return HTTPException(status_code=404, detail=short(f"This model cannot compute {op}: {message}"))
        logger.error("/%s: the model failed on %s", op, label, exc_info=error)
        return HTTPException(status_code=500, detail=f"The model failed on {label}; the server log has the details.")

    async def run_op(request, op: str, items: list, costs: list, labels: list):
        batcher = batchers.get(op)
        if batcher is None:
            raise HTTPException(status_code=404, detail=_missing_op_message(model, op))
        client = _Suspects.key(request.scope)
        job = asyncio.ensure_future(batcher.submit(items, costs, alone=client in suspects))
        gone = asyncio.ensure_future(_wait_for_disconnect(request.receive))
        try:
            done, _ = await asyncio.wait({job, gone}, timeout=limits.timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not job.done():
                job.cancel()  # the batcher drops whatever has not reached the model
        if job not in done:
            await asyncio.gather(job, return_exceptions=True)
            if gone in done:
                metrics.reject("client_disconnected")
                from fastapi.responses import Response

                return Response(status_code=499)  # nobody reads it; the status shows in logs and metrics
            metrics.reject("timeout")
            raise HTTPException(
                status_code=504,
                detail=f"Not answered within the server's limit of {limits.timeout_s:g} s: the server is busy or "
                "the request too large; retry later or send fewer inputs per request.",
            )
        try:
            return package(op, job.result())
        except QueueFullError as exc:
            metrics.reject("queue_full")
            raise HTTPException(
                status_code=503, detail=str(exc), headers={"Retry-After": str(exc.retry_after)}
            ) from None
        except ItemFailedError as exc:
            error = model_failure(op, exc, labels)
            if error.status_code == 422:
                suspects.mark(client)
            raise error from None
        except RuntimeError as exc:
            if "shutting down" in str(exc):
                raise HTTPException(status_code=503, detail="The server is shutting down.") from None
            raise

    def invalid(exc: InputError):
        metrics.reject("invalid_input")
        return HTTPException(status_code=422, detail=short(str(exc)))

    async def images_from_blobs(blobs: list, labels: list) -> list:
        try:
            return await run_in_threadpool(probe_images, blobs, labels, limits.max_image_pixels)
        except InputError as exc:
            raise invalid(exc) from None

    def decode_and_probe(texts: list) -> tuple:
        blobs = [decode_base64_image(text, i) for i, text in enumerate(texts)]
        labels = [f"images[{i}]" for i in range(len(blobs))]
        return blobs, labels, probe_images(blobs, labels, limits.max_image_pixels)

    def add_json_route(op: str):
        async def endpoint(request: Request, body: request_model):
            if kind == "text":
                items = list(body.inputs)
                labels = [f"inputs[{i}]" for i in range(len(items))]
                costs = text_costs(items)
            elif kind == "table":
                items, labels, costs = table_items(body.records, columns, text_columns)
            else:
                try:  # off the event loop: up to --max-body-bytes of base64 to decode
                    items, labels, costs = await run_in_threadpool(decode_and_probe, list(body.images))
                except InputError as exc:
                    raise invalid(exc) from None
            return await run_op(request, op, items, costs, labels)

        endpoint.__name__ = op
        app.post(
            f"/{op}",
            response_model=response_models[op],
            include_in_schema=op in batchers,
            summary=f"{op} on a JSON list of {_WHAT[kind]}",
            responses=error_responses,
        )(endpoint)

    def add_upload_route(op: str):
        async def endpoint(request: Request, files: Annotated[list[UploadFile], File(description="Image files.")]):
            if len(files) > limits.max_items:
                metrics.reject("invalid_input")
                raise HTTPException(
                    status_code=422, detail=f"{len(files)} files, more than the limit of {limits.max_items}."
                )
            blobs = [await f.read() for f in files]
            labels = [f"file {i} ({excerpt(f.filename or '', 60)})" for i, f in enumerate(files)]
            costs = await images_from_blobs(blobs, labels)
            return await run_op(request, op, blobs, costs, labels)

        endpoint.__name__ = f"{op}_files"
        app.post(
            f"/{op}/files",
            response_model=response_models[op],
            include_in_schema=op in batchers,
            summary=f"{op} on uploaded image files (multipart/form-data, field 'files')",
            responses=error_responses,
        )(endpoint)

    def add_upload_refusal(op: str):
        async def endpoint():
            raise HTTPException(
                status_code=415, detail=f'This model takes texts, not files: POST JSON {{"inputs": [...]}} to /{op}.'
            )

        endpoint.__name__ = f"{op}_files"
        app.post(f"/{op}/files", include_in_schema=False)(endpoint)

    for op in OPERATIONS:
        add_json_route(op)
        (add_upload_route if kind == "image" else add_upload_refusal)(op)

    @app.get("/health", response_model=Health)
    async def health():
        return {"status": "ok"}

    @app.get("/metadata")
    async def metadata() -> dict:
        return {
            **info,
            "limits": asdict(limits),
            "batching": {"max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms},
            "stats": {op: asdict(b.stats) for op, b in batchers.items()},
            "queue": {op: b.waiting_items for op, b in batchers.items()},
        }

    if metrics.available:
        from fastapi.responses import Response

        @app.get("/metrics", include_in_schema=False)
        async def prometheus_metrics():
            body, content_type = metrics.render(batchers)
            return Response(body, media_type=content_type)

    return app


class _Wrapped:
    """Adapt a function ``wrap(app) -> app`` to Starlette's ``add_middleware``."""

    def __init__(self, app, wrap):
        self._app = wrap(app)

    async def __call__(self, scope, receive, send):
        await self._app(scope, receive, send)


# ---------------------------------------------------------------------------------------------
# running it


def serve(
    model,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    api_key: str | None = None,
    api_key_file=None,
    allowed_hosts=None,
    header_timeout: float | None = DEFAULT_HEADER_TIMEOUT,
    body_timeout: float | None = DEFAULT_BODY_TIMEOUT,
    keep_alive_timeout: int = DEFAULT_KEEP_ALIVE_TIMEOUT,
    max_connections: int | None = None,
    forwarded_allow_ips: str | None = None,
    **app_options,
) -> None:
    """Load ``model`` and serve it with uvicorn until interrupted (what ``skdeep serve`` runs).

    Parameters
    ----------
    model : estimator, str or path-like
        A fitted pipeline, or a file saved with :func:`skdeep.save`.
    host : str, default="127.0.0.1"
        Interface to bind. Loopback only by default; bind ``0.0.0.0`` behind a reverse proxy.
    port : int, default=8000
        TCP port.
    log_level : {"critical", "error", "warning", "info", "debug"}, default="info"
        uvicorn's log level.
    api_key : str, default=None
        Bearer token every endpoint but ``/health`` requires. The key comes from ``api_key_file``,
        else ``api_key``, else ``$SKDEEP_API_KEY``; none of them: no authentication.
    api_key_file : path-like, default=None
        A file holding the key (kept out of the process list and shell history).
    allowed_hosts : list of str, default=None
        Accepted ``Host`` headers. None while bound to a loopback address accepts only
        ``localhost``, ``127.0.0.1`` and ``::1`` (a guard against DNS rebinding).
    header_timeout : float or None, default=10
        Seconds a client may take to send its request headers before the connection is closed.
    body_timeout : float or None, default=60
        Seconds a client may take to send its request body.
    keep_alive_timeout : int, default=5
        Seconds an idle keep-alive connection stays open.
    max_connections : int, default=None
        Open connections beyond this many are answered 503.
    forwarded_allow_ips : str, default=None
        Proxies whose ``X-Forwarded-*`` headers are trusted (uvicorn's option).
    **app_options
        Passed to :func:`create_app` (limits, batching, deadline, origins, trusted types).

    See Also
    --------
    create_app : The application itself, for any ASGI server.
    """
    import uvicorn

    from .transport import uvicorn_config

    api_key = resolve_api_key(api_key, api_key_file)
    if allowed_hosts is None and _is_loopback(host):
        allowed_hosts = list(LOOPBACK_HOSTS)
    if not _is_loopback(host) and api_key is None:
        warnings.warn(
            f"Serving on {host} without an API key: anyone who can reach this machine can query the model. "
            "Set --api-key-file (or SKDEEP_API_KEY), or put the server behind a proxy that authenticates.",
            UserWarning,
            stacklevel=2,
        )
    app = create_app(model, api_key=api_key, allowed_hosts=allowed_hosts, **app_options)
    config = uvicorn_config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        keep_alive_timeout=keep_alive_timeout,
        max_connections=max_connections,
        forwarded_allow_ips=forwarded_allow_ips,
        on_timeout=app.state.metrics.reject,
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl+C it handled; the shutdown was clean
        pass
    if not server.started:
        raise RuntimeError(f"The server did not start on {host}:{port}; see the log above.")
