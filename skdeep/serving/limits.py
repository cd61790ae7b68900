"""The server's limits and their defaults, and the request body size guard."""

from __future__ import annotations

import json
from dataclasses import dataclass

DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_MAX_WAIT_MS = 5.0
DEFAULT_MAX_BODY_BYTES = 16 * 2**20
DEFAULT_MAX_ITEMS = 256
DEFAULT_MAX_TEXT_LENGTH = 10_000
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
#: Most characters per model call, counted as ``n_texts * (longest text + 32)``: a forward pass pads
#: every text to the longest, and the 32 stand for each text's fixed share of the work.
DEFAULT_MAX_BATCH_CHARS = 16_384
#: Most decoded pixels per model call (one image larger than this runs alone).
DEFAULT_MAX_BATCH_PIXELS = 40_000_000
#: Most inputs waiting for the model, over all requests; beyond, 503 with Retry-After.
DEFAULT_MAX_QUEUE = 2048
#: Seconds a request may take from arrival to answer (queue and model); beyond, 504.
DEFAULT_TIMEOUT = 60.0
#: Seconds a connection may take to send a request's headers (from connecting, or after the last answer).
DEFAULT_HEADER_TIMEOUT = 10.0
#: Seconds a request may take to send its body once its headers are in.
DEFAULT_BODY_TIMEOUT = 60.0
#: Seconds an idle keep-alive connection stays open (uvicorn's ``timeout_keep_alive``).
DEFAULT_KEEP_ALIVE_TIMEOUT = 5

#: Extra cost per text: the model's work that does not grow with the text (special tokens, pooling).
TEXT_COST_OVERHEAD = 32


@dataclass
class Limits:
    """Request limits of a server (shown by ``/metadata``)."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_items: int = DEFAULT_MAX_ITEMS
    max_text_length: int = DEFAULT_MAX_TEXT_LENGTH
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_batch_chars: int = DEFAULT_MAX_BATCH_CHARS
    max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS
    max_queue: int | None = DEFAULT_MAX_QUEUE
    timeout_s: float | None = DEFAULT_TIMEOUT


async def send_json(send, status: int, body: bytes, headers: list | None = None) -> None:
    """Answer with a ready JSON body from plain ASGI code (middleware that runs before FastAPI)."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            + list(headers or []),
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Answer 413 to bodies over ``max_bytes``: early from Content-Length, else while streaming."""

    def __init__(self, app, max_bytes: int, on_reject=None):
        self.app = app
        self.max_bytes = int(max_bytes)
        self.on_reject = on_reject

    def _message(self) -> str:
        return f"Request body is larger than the limit of {self.max_bytes} bytes."

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.max_bytes
            except ValueError:
                await send_json(send, 400, b'{"detail": "Invalid Content-Length header."}')
                return
            if too_large:
                if self.on_reject is not None:
                    self.on_reject("body_too_large")
                body = json.dumps({"detail": self._message()}).encode()
                await send_json(send, 413, body, [(b"connection", b"close")])
                return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    from fastapi import HTTPException

                    if self.on_reject is not None:
                        self.on_reject("body_too_large")
                    # FastAPI passes HTTPExceptions raised while reading the body through unchanged.
                    raise HTTPException(status_code=413, detail=self._message())
            return message

        await self.app(scope, limited_receive, send)
