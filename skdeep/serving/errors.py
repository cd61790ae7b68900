"""Error answers that cannot fail: strict JSON bodies, short and JSON-safe messages, a logged 500.

FastAPI's defaults turn some bad requests into 500s: ``json.loads`` accepts ``NaN``,
``Infinity``, ``1e999`` and lone surrogates, and the validation-error answer echoes each bad
value back, which ``NaN`` and lone surrogates cannot be encoded in; it also echoes the whole input,
so a 10 MB request got a 10 MB error. Here bodies are parsed strictly before validation
(:func:`skdeep.serving.inputs.parse_json`), and every error answer is ASCII JSON with excerpts of at
most :data:`skdeep.serving.inputs.ECHO_LIMIT` characters of client input.
"""

from __future__ import annotations

import json
import logging

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .inputs import InputError, excerpt, parse_json, short

#: Most validation errors listed in one answer.
MAX_ERRORS = 5

logger = logging.getLogger("skdeep.serving")


class SafeJSONResponse(JSONResponse):
    """JSON that always encodes: ASCII escapes (lone surrogates included), no NaN."""

    def render(self, content) -> bytes:
        try:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")
        except (TypeError, ValueError):
            logger.exception("An error answer could not be encoded as JSON")
            return b'{"detail":"The answer could not be encoded."}'


def _is_json(content_type) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class StrictJSONRoute(APIRoute):
    """Parse JSON bodies with :func:`~skdeep.serving.inputs.parse_json` before FastAPI validates them."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def strict_handler(request):
            if request.method == "POST" and _is_json(request.headers.get("content-type")):
                try:
                    body = await request.body()
                except ClientDisconnect:
                    return Response(status_code=499)
                if body:
                    try:
                        # Starlette's Request.json() returns this cached value: the body is parsed once.
                        request._json = parse_json(body)
                    except InputError as exc:
                        metrics = getattr(request.app.state, "metrics", None)
                        if metrics is not None:
                            metrics.reject("invalid_input")
                        raise HTTPException(status_code=422, detail=short(exc)) from None
            return await handler(request)

        return strict_handler


def _loc(part):
    return part if isinstance(part, int) else short(part, 60)


def install_error_handlers(app, metrics) -> None:
    """422 for invalid requests, short details for HTTP errors, a logged short 500 for bugs."""

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc: RequestValidationError):
        metrics.reject("invalid_input")
        errors = list(exc.errors())
        detail = []
        for err in errors[:MAX_ERRORS]:
            item = {
                "type": short(err.get("type", ""), 60),
                "loc": [_loc(p) for p in err.get("loc", ())],
                "msg": short(err.get("msg", ""), 200),
            }
            if "input" in err and err.get("type") != "json_invalid":
                item["input"] = excerpt(err["input"], 80)
            detail.append(item)
        if len(errors) > MAX_ERRORS:
            detail.append({"type": "more", "loc": [], "msg": f"{len(errors) - MAX_ERRORS} more errors not shown"})
        return SafeJSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        detail = exc.detail if not isinstance(exc.detail, str) else short(exc.detail)
        return SafeJSONResponse({"detail": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(request, exc: Exception):
        logger.error("Unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return SafeJSONResponse({"detail": "Internal server error; the server log has the details."}, status_code=500)
