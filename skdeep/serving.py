"""Serve a fitted pipeline over HTTP: a FastAPI app with micro-batching.

::

    request -> validate (pydantic, base64/image checks) -> MicroBatcher queue -----+
                                                                                    | up to max_wait_ms,
    response <- split rows back per request <- one model call (worker thread) <----+ up to max_batch_size

Concurrent requests are collected for a few milliseconds and run as one model call: on an
accelerator one forward pass over 32 texts costs little more than over one; on a CPU the gain is
what the model gains from larger batches (1.6x for all-MiniLM-L6-v2 on 2 cores; see the README section "Save, serve, query").
Each request is validated on its own before it joins a batch; if a batched call still fails, every
request of that batch is retried alone, so only the bad one gets the error.

Endpoints: ``POST /predict``, ``POST /predict_proba`` (when the model has it), ``POST /transform``
(embeddings), their multipart twins ``POST /{op}/files`` for image models, ``GET /health`` and
``GET /metadata``. ``/transform`` runs the model's own ``transform`` when it has one (a transformer
pipeline); for a classifier pipeline it runs the steps up to and including the first skdeep encoder,
so it returns that encoder's embeddings.

FastAPI and uvicorn are imported only by :func:`create_app` and :func:`serve`
(``pip install scikit-deep[serve]``).
"""

import asyncio
import base64
import binascii
import collections
import io
import ipaddress
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Callable, Optional

import numpy as np

from .engine import BaseEncoder

DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_MAX_WAIT_MS = 5.0
DEFAULT_MAX_BODY_BYTES = 16 * 2**20
DEFAULT_MAX_ITEMS = 256
DEFAULT_MAX_TEXT_LENGTH = 10_000
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
OPERATIONS = ("predict", "predict_proba", "transform")
INPUT_KINDS = ("text", "image")


# ---------------------------------------------------------------------------------------------
# what a model is: input kind, encoders, the step behind /transform


def _type_name(obj) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def find_encoders(estimator) -> list:
    """``(path, encoder)`` for every skdeep encoder inside ``estimator``, in step order.

    Looks at parameters (pipeline steps, ``encoder=...``), then at fitted attributes such as
    ``encoder_``. A path is a parameter name (``"textencoder"``) or ``"<owner>.<attribute>"``. A
    parameter whose fitted copy exists (``encoder`` and ``encoder_``) is reported once, as the copy
    that actually runs.
    """
    params = estimator.get_params(deep=True) if hasattr(estimator, "get_params") else {}
    owners = [("", estimator)] + [(k, v) for k, v in params.items() if hasattr(v, "get_params")]
    fitted = {}
    for path, owner in owners:
        for attr, value in vars(owner).items():
            if attr.endswith("_") and not attr.startswith("_") and isinstance(value, BaseEncoder):
                fitted[f"{path}.{attr}" if path else attr] = value
    found = [("", estimator)] if isinstance(estimator, BaseEncoder) else []
    for path, value in params.items():
        if isinstance(value, BaseEncoder):
            owner, _, last = path.rpartition("__")
            if (f"{owner}.{last}_" if owner else f"{last}_") not in fitted:
                found.append((path, value))
    found += list(fitted.items())
    unique, seen = [], set()
    for path, encoder in found:
        if id(encoder) not in seen:
            seen.add(id(encoder))
            unique.append((path, encoder))
    return unique


def _image_encoder_class():
    try:
        from .image import ImageEncoder
    except ImportError:
        return None
    return ImageEncoder


def input_kind(estimator) -> str:
    """``"text"`` or ``"image"``: what the model's first skdeep encoder (or the model itself) takes."""
    image_cls = _image_encoder_class()
    candidates = [enc for _, enc in find_encoders(estimator)] or [estimator]
    first = candidates[0]
    if image_cls is not None and isinstance(first, image_cls):
        return "image"
    tags = first.__sklearn_tags__() if hasattr(first, "__sklearn_tags__") else None
    if tags is not None and tags.input_tags.string:
        return "text"
    raise ValueError(
        f"Cannot tell whether {type(estimator).__name__} takes texts or images (no skdeep encoder found); "
        "pass input_kind='text' or input_kind='image'."
    )


def embedding_model(estimator):
    """What ``/transform`` runs: the model's own ``transform``, else the steps up to its first encoder."""
    if hasattr(estimator, "transform"):
        return estimator
    steps = getattr(estimator, "steps", None)
    if steps is not None:
        for i, (_, step) in enumerate(steps):
            if find_encoders(step):
                return estimator[: i + 1]
        return None
    encoders = find_encoders(estimator)
    return encoders[0][1] if encoders else None


def _plain(value):
    """Numpy scalars and arrays -> built-in Python values that JSON can carry."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def describe(estimator) -> dict:
    """Steps, classes, encoders (model, fingerprint, origin) and expected input of a fitted model."""
    steps = getattr(estimator, "steps", None)
    if steps is not None:
        step_list = [{"name": name, "class": _type_name(step)} for name, step in steps]
    else:
        step_list = [{"name": None, "class": _type_name(estimator)}]
    encoders = []
    for path, enc in find_encoders(estimator):
        encoders.append(
            {
                "parameter": path or None,
                "class": _type_name(enc),
                "model": str(enc.model),
                "fingerprint": getattr(enc, "model_fingerprint_", None),
                "origin": getattr(enc, "model_origin_", None),
                "n_features_out": getattr(enc, "n_features_out_", None),
                "bundle_weights": bool(getattr(enc, "bundle_weights", False)),
            }
        )
    classes = getattr(estimator, "classes_", None)
    try:
        kind = input_kind(estimator)
    except ValueError:
        kind = None
    return {
        "estimator": _type_name(estimator),
        "steps": step_list,
        "classes": None if classes is None else _plain(np.asarray(classes)),
        "input_kind": kind,
        "encoders": encoders,
        "methods": {
            "predict": hasattr(estimator, "predict"),
            "predict_proba": hasattr(estimator, "predict_proba"),
            "transform": embedding_model(estimator) is not None,
        },
    }


# ---------------------------------------------------------------------------------------------
# micro-batching


@dataclass
class BatchStats:
    """Counters of one :class:`MicroBatcher`."""

    requests: int = 0
    items: int = 0
    model_calls: int = 0
    fallback_batches: int = 0
    largest_batch: int = 0


@dataclass
class _Pending:
    items: list
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Collect concurrent requests into one call of ``run`` and hand each its rows of the result.

    A batch starts with the oldest waiting request and takes whatever else is waiting, then waits
    up to ``max_wait_ms`` for more, until it holds ``max_batch_size`` items. A request is never
    split: one larger than ``max_batch_size`` runs alone. ``max_batch_size=1`` turns batching off.

    Parameters
    ----------
    run : callable
        Takes a list of items and returns an array or list with one row per item, in order.
    executor : concurrent.futures.Executor
        Where ``run`` executes; a single thread keeps model calls from competing for the cores.
    max_batch_size : int
    max_wait_ms : float
    """

    def __init__(self, run: Callable[[list], Any], executor, *, max_batch_size: int, max_wait_ms: float):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}.")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}.")
        self.run = run
        self.executor = executor
        self.max_batch_size = int(max_batch_size)
        self.max_wait_s = float(max_wait_ms) / 1000.0
        self.stats = BatchStats()
        self._pending: collections.deque = collections.deque()
        self._wakeup: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._collect_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._pending:
            pending = self._pending.popleft()
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("The server is shutting down."))

    async def submit(self, items: list):
        """Queue ``items`` (already validated) and wait for their rows of the batched result."""
        if self._task is None:
            raise RuntimeError("MicroBatcher.start() has not been called.")
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(list(items), future))
        self.stats.requests += 1
        self.stats.items += len(items)
        self._wakeup.set()
        return await future

    async def _wait_for_pending(self, timeout: Optional[float]) -> bool:
        # An Event rather than Queue.get under wait_for: a timed-out wait can never lose a request.
        while not self._pending:
            self._wakeup.clear()
            try:
                if timeout is None:
                    await self._wakeup.wait()
                else:
                    await asyncio.wait_for(self._wakeup.wait(), timeout)
            except asyncio.TimeoutError:
                return False
        return True

    async def _collect_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wait_for_pending(None)
            batch = [self._pending.popleft()]
            n_items = len(batch[0].items)
            deadline = loop.time() + self.max_wait_s
            while n_items < self.max_batch_size:
                if not self._pending and not await self._wait_for_pending(deadline - loop.time()):
                    break
                if n_items + len(self._pending[0].items) > self.max_batch_size:
                    break  # the next request starts the next batch
                nxt = self._pending.popleft()
                batch.append(nxt)
                n_items += len(nxt.items)
            batch = [p for p in batch if not p.future.done()]  # clients that gave up
            try:
                await self._run_batch(batch)
            except Exception as exc:  # noqa: BLE001 - a bug here must not stop the loop serving others
                for pending in batch:
                    _resolve(pending.future, exception=exc)

    async def _call(self, items: list):
        self.stats.model_calls += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(items))
        loop = asyncio.get_running_loop()
        out = await loop.run_in_executor(self.executor, self.run, items)
        if len(out) != len(items):
            raise RuntimeError(f"The model returned {len(out)} rows for {len(items)} inputs.")
        return out

    async def _run_batch(self, batch: list) -> None:
        if not batch:
            return
        items = [item for pending in batch for item in pending.items]
        try:
            out = await self._call(items)
        except Exception as exc:  # noqa: BLE001 - handed to the requests, never raised here
            if len(batch) == 1:
                _resolve(batch[0].future, exception=exc)
                return
            # Retry each request alone so only the bad one gets the error.
            self.stats.fallback_batches += 1
            for pending in batch:
                try:
                    _resolve(pending.future, result=await self._call(pending.items))
                except Exception as single_exc:  # noqa: BLE001
                    _resolve(pending.future, exception=single_exc)
            return
        start = 0
        for pending in batch:
            stop = start + len(pending.items)
            _resolve(pending.future, result=out[start:stop])
            start = stop


def _resolve(future: asyncio.Future, *, result=None, exception=None) -> None:
    if future.done():
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)


# ---------------------------------------------------------------------------------------------
# input checks shared by the JSON and the multipart endpoints


class InputError(ValueError):
    """A request's input is invalid; the message names the bad item."""


def decode_base64_image(text: str, index: int) -> bytes:
    """Decode one base64 image (a ``data:image/...;base64,`` prefix is allowed)."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"images[{index}] is not valid base64 ({exc}).") from exc


def check_image(data: bytes, label: str, max_pixels: int) -> None:
    """Raise :class:`InputError` unless ``data`` is a complete image of at most ``max_pixels`` pixels."""
    from PIL import Image

    if not data:
        raise InputError(f"{label} is empty.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > max_pixels:
                    raise InputError(
                        f"{label} has {img.width}x{img.height} pixels, more than the limit of {max_pixels}."
                    )
                img.load()
    except InputError:
        raise
    except Image.UnidentifiedImageError as exc:
        raise InputError(f"{label} is not an image (no image format recognised).") from exc
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
        raise InputError(f"{label} is not a readable image ({type(exc).__name__}: {exc}).") from exc


@dataclass
class Limits:
    """Request limits of a server."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_items: int = DEFAULT_MAX_ITEMS
    max_text_length: int = DEFAULT_MAX_TEXT_LENGTH
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS


class BodyLimitMiddleware:
    """Answer 413 to bodies over ``max_bytes``: early from Content-Length, else while streaming."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    def _message(self) -> str:
        return f"Request body is larger than the limit of {self.max_bytes} bytes."

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from fastapi import HTTPException
        from fastapi.responses import JSONResponse

        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.max_bytes
            except ValueError:
                await JSONResponse({"detail": "Invalid Content-Length header."}, status_code=400)(scope, receive, send)
                return
            if too_large:
                await JSONResponse({"detail": self._message()}, status_code=413)(scope, receive, send)
                return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI passes HTTPExceptions raised while reading the body through unchanged.
                    raise HTTPException(status_code=413, detail=self._message())
            return message

        await self.app(scope, limited_receive, send)


# ---------------------------------------------------------------------------------------------
# the app


def _model_runner(estimator, op: str) -> Optional[Callable[[list], Any]]:
    if op == "transform":
        target = embedding_model(estimator)
        return None if target is None else target.transform
    return getattr(estimator, op, None)


def _warmup_inputs(kind: str) -> list:
    if kind == "text":
        return ["skdeep warm-up"]
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (127, 127, 127)).save(buf, format="PNG")
    return [buf.getvalue()]


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


def create_app(
    model,
    *,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_items: int = DEFAULT_MAX_ITEMS,
    max_text_length: int = DEFAULT_MAX_TEXT_LENGTH,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    input_kind_override: Optional[str] = None,
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
        Most items per model call; 1 turns micro-batching off.
    max_wait_ms : float, default=5.0
        How long a batch waits for more requests once it has one.
    max_body_bytes : int, default=16 MiB
        Larger request bodies are answered 413.
    max_items : int, default=256
        Most texts or images in one request (422 beyond).
    max_text_length : int, default=10000
        Most characters per text (422 beyond).
    max_image_pixels : int, default=40_000_000
        Most pixels per image (422 beyond).
    input_kind_override : {"text", "image"}, default=None
        What the model takes, when it has no skdeep encoder to tell.
    trusted : list of str, default=None
        Extra types to trust when loading a ``.skops`` file.
    allow_pickle : bool, default=False
        Whether ``model`` may be a pickle (``.joblib``): unpickling runs any code the file holds.
    warmup : bool, default=True
        Run each endpoint's model call once at start-up, so the first request does not pay for
        loading the weights.

    Returns
    -------
    app : fastapi.FastAPI
        The application; run it with any ASGI server, or test it with ``fastapi.testclient.TestClient``.
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, File, HTTPException, UploadFile
    from fastapi.concurrency import run_in_threadpool
    from pydantic import BaseModel, ConfigDict, Field, StrictStr, StringConstraints

    from . import persistence

    source_file = None
    if not hasattr(model, "get_params"):
        source_file = str(model)
        model = persistence.load(model, trusted=trusted, allow_pickle=allow_pickle)
    if input_kind_override is not None and input_kind_override not in INPUT_KINDS:
        raise ValueError(f"input_kind_override must be one of {INPUT_KINDS}, got {input_kind_override!r}.")
    kind = input_kind_override or input_kind(model)
    limits = Limits(max_body_bytes, max_items, max_text_length, max_image_pixels)
    runners = {op: _model_runner(model, op) for op in OPERATIONS}
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="skdeep-model")
    batchers = {
        op: MicroBatcher(run, executor, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms)
        for op, run in runners.items()
        if run is not None
    }
    info = describe(model)
    info["input_kind"] = kind
    info["source_file"] = source_file

    @asynccontextmanager
    async def lifespan(app):
        for batcher in batchers.values():
            await batcher.start()
        if warmup:
            sample = _warmup_inputs(kind)
            loop = asyncio.get_running_loop()
            for run in (r for r in runners.values() if r is not None):
                await loop.run_in_executor(executor, run, sample)
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
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_body_bytes)
    app.state.model = model
    app.state.batchers = batchers
    app.state.limits = limits

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

    class PredictResponse(BaseModel):
        predictions: list[Any] = Field(description="One prediction per input.")

    class ProbaResponse(BaseModel):
        classes: list[Any] = Field(description="Class labels, the order of each row's probabilities.")
        probabilities: list[list[float]]

    class TransformResponse(BaseModel):
        embeddings: list[list[float]]
        dim: int

    class Health(BaseModel):
        status: str

    request_model = TextRequest if kind == "text" else ImageRequest
    response_models = {"predict": PredictResponse, "predict_proba": ProbaResponse, "transform": TransformResponse}

    def package(op: str, out):
        out = np.asarray(out)
        if op == "predict":
            return {"predictions": _plain(out)}
        if op == "predict_proba":
            return {"classes": _plain(np.asarray(model.classes_)), "probabilities": out.tolist()}
        return {"embeddings": out.astype(np.float64).tolist(), "dim": int(out.shape[1]) if out.ndim == 2 else 1}

    async def run_op(op: str, items: list):
        batcher = batchers.get(op)
        if batcher is None:
            raise HTTPException(status_code=404, detail=_missing_op_message(model, op))
        try:
            out = await batcher.submit(items)
        except (ValueError, TypeError) as exc:
            raise HTTPException(status_code=422, detail=f"The model rejected the input: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - the client gets a message, the server stays up
            raise HTTPException(status_code=500, detail=f"The model failed: {type(exc).__name__}: {exc}") from exc
        return package(op, out)

    def check_images(blobs: list, labels: list) -> list:
        for data, label in zip(blobs, labels):
            check_image(data, label, limits.max_image_pixels)
        return blobs

    async def items_from_json(body) -> list:
        if kind == "text":
            return list(body.inputs)
        try:
            blobs = [decode_base64_image(text, i) for i, text in enumerate(body.images)]
            return await run_in_threadpool(check_images, blobs, [f"images[{i}]" for i in range(len(blobs))])
        except InputError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc

    def add_json_route(op: str):
        async def endpoint(body: request_model):
            return await run_op(op, await items_from_json(body))

        endpoint.__name__ = op
        app.post(
            f"/{op}",
            response_model=response_models[op],
            include_in_schema=op in batchers,
            summary=f"{op} on a JSON list of {'texts' if kind == 'text' else 'base64 images'}",
            responses={404: {"description": "The model has no such method"}, 413: {}, 422: {}},
        )(endpoint)

    def add_upload_route(op: str):
        async def endpoint(files: Annotated[list[UploadFile], File(description="Image files.")]):
            if len(files) > limits.max_items:
                raise HTTPException(status_code=422, detail=f"{len(files)} files, more than the limit of {limits.max_items}.")
            blobs = [await f.read() for f in files]
            labels = [f"file {i} ({f.filename!r})" for i, f in enumerate(files)]
            try:
                items = await run_in_threadpool(check_images, blobs, labels)
            except InputError as exc:
                raise HTTPException(status_code=422, detail=str(exc)) from exc
            return await run_op(op, items)

        endpoint.__name__ = f"{op}_files"
        app.post(
            f"/{op}/files",
            response_model=response_models[op],
            include_in_schema=op in batchers,
            summary=f"{op} on uploaded image files (multipart/form-data, field 'files')",
            responses={404: {"description": "The model has no such method"}, 413: {}, 422: {}},
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
        }

    return app


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("skdeep")
    except Exception:  # noqa: BLE001 - running from a source tree
        return "0+unknown"


def serve(model, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", **app_options) -> None:
    """Load ``model`` and serve it with uvicorn until interrupted.

    Parameters
    ----------
    model : str, path-like or estimator
        A saved pipeline (``.skops`` or ``.joblib``) or a fitted estimator, as for :func:`create_app`.
    host : str, default="127.0.0.1"
        Interface to bind; the default answers this machine only.
    port : int, default=8000
        TCP port.
    log_level : str, default="info"
        Log level of uvicorn.
    **app_options : dict
        Passed to :func:`create_app` (limits, batching, trusted types, ...).
    """
    import uvicorn

    if not _is_loopback(host):
        warnings.warn(
            f"Serving on {host}: anyone who can reach this machine can query the model. The server has no "
            "authentication; put it behind a proxy that has.",
            UserWarning,
            stacklevel=2,
        )
    app = create_app(model, **app_options)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


class ServerThread:
    """Run an app with uvicorn in a background thread (tests, notebooks, benchmarks).

    Use as a context manager; ``url`` is ready once ``__enter__`` returns.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import socket

        import uvicorn

        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host, self.port = self._socket.getsockname()[:2]
        config = uvicorn.Config(app, log_level=log_level, lifespan="on")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self):
        import time

        self._thread.start()
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("The server failed to start; see the log above.")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self._thread.join(timeout=30)
        self._socket.close()
