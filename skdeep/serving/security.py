"""Who may talk to the server: ``Host`` and ``Origin`` checks and bearer-token authentication.

One plain ASGI middleware, outside everything else, so a refused request costs no body read,
no validation and no model time:

1. ``Host`` must match ``allowed_hosts`` when given (400): with a loopback default, a web page
   that re-binds its domain to 127.0.0.1 (DNS rebinding) cannot reach the server.
2. A request carrying an ``Origin`` header is refused (403) unless that origin is the server's
   own or in ``allowed_origins``; so is an unsafe method whose ``Sec-Fetch-Site`` says another
   site sent it. Browsers send cross-site form posts without a CORS preflight, and this is what
   stops one from running a model call.
3. With an API key, every path but ``/health`` needs ``Authorization: Bearer <key>`` (401 with
   ``WWW-Authenticate: Bearer`` otherwise); the comparison takes constant time.

CORS preflights (``OPTIONS`` with ``Access-Control-Request-Method``) from allowed origins pass
without a token and are answered by Starlette's ``CORSMiddleware``.
"""

from __future__ import annotations

import hmac
import json
import os
import stat
import warnings
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from .inputs import excerpt
from .limits import send_json

PUBLIC_PATHS = frozenset({"/health"})
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def read_api_key_file(path) -> str:
    """The API key stored in ``path`` (surrounding whitespace removed); warns if others may read it."""
    path = Path(path)
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"Cannot read the API key file {str(path)!r}: {exc.strerror or exc}.") from None
    if not key:
        raise ValueError(f"The API key file {str(path)!r} is empty.")
    if os.name == "posix" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.warn(
            f"The API key file {str(path)!r} can be read by other users; chmod 600 it.", UserWarning, stacklevel=2
        )
    return key


def resolve_api_key(api_key: str | None = None, api_key_file=None) -> str | None:
    """The server's API key: from ``api_key_file``, else ``api_key``, else ``$SKDEEP_API_KEY``, else None."""
    from .. import _config

    if api_key_file is not None:
        return read_api_key_file(api_key_file)
    if api_key is not None:
        if not api_key.strip():
            raise ValueError("api_key is empty.")
        return api_key.strip()
    return _config.api_key()


def _host_of(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8000
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


def _host_allowed(host: str, patterns: list) -> bool:
    for pattern in patterns:
        if pattern == "*" or host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return True
    return False


def _normal_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def check_host_patterns(patterns) -> list:
    """Validate ``allowed_hosts``: host names, ``*.domain`` wildcards or ``*``."""
    out = []
    for pattern in patterns:
        pattern = str(pattern).strip().lower()
        wildcard_ok = pattern == "*" or (pattern.startswith("*.") and "*" not in pattern[1:])
        if not pattern or ("*" in pattern and not wildcard_ok):
            raise ValueError(f"Invalid allowed host {pattern!r}: use a host name, '*.example.com' or '*'.")
        out.append(pattern.strip("[]"))
    return out


def check_origins(origins) -> list:
    """Validate ``allowed_origins``: ``scheme://host[:port]`` or ``*``."""
    out = []
    for origin in origins:
        origin = _normal_origin(str(origin))
        if origin != "*":
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
                raise ValueError(f"Invalid allowed origin {origin!r}: use 'https://host[:port]' (no path) or '*'.")
        out.append(origin)
    return out


class SecurityMiddleware:
    """Refuse requests by ``Host``, ``Origin`` and bearer token before the app sees them.

    Parameters
    ----------
    app : ASGI app
    api_key : str, default=None
        Token every path but ``/health`` requires; None turns authentication off.
    allowed_origins : list of str, default=None
        Origins (``https://app.example.com``) besides the server's own that may call it from a browser.
    allowed_hosts : list of str, default=None
        Values the ``Host`` header may take (``*.example.com`` wildcards); None: any.
    on_reject : callable, default=None
        Called with ``"host"``, ``"origin"`` or ``"auth"`` for each refusal (metrics).
    """

    def __init__(
        self,
        app,
        *,
        api_key: str | None = None,
        allowed_origins=None,
        allowed_hosts=None,
        on_reject: Callable[[str], None] | None = None,
    ):
        self.app = app
        self._key = api_key.encode("utf-8") if api_key else None
        self.allowed_origins = set(check_origins(allowed_origins or []))
        self.allowed_hosts = check_host_patterns(allowed_hosts) if allowed_hosts else None
        self.on_reject = on_reject

    async def _refuse(self, send, reason: str, status: int, detail: str, headers=None) -> None:
        if self.on_reject is not None:
            self.on_reject(reason)
        await send_json(send, status, json.dumps({"detail": detail}).encode(), headers)

    def _origin_allowed(self, origin: str, host_header: str) -> bool:
        origin = _normal_origin(origin)
        if "*" in self.allowed_origins or origin in self.allowed_origins:
            return True
        # Same origin: a page served by this host (e.g. /docs) calling its own API.
        return origin != "null" and urlsplit(origin).netloc == host_header.strip().lower()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {}
        for name, value in scope.get("headers") or []:
            headers.setdefault(name, value.decode("latin-1"))
        host_header = headers.get(b"host", "")
        if self.allowed_hosts is not None and not _host_allowed(_host_of(host_header), self.allowed_hosts):
            await self._refuse(send, "host", 400, f"Host {excerpt(host_header, 80)} is not allowed by this server.")
            return
        origin = headers.get(b"origin")
        method = scope.get("method", "GET")
        if origin is not None and not self._origin_allowed(origin, host_header):
            await self._refuse(send, "origin", 403, f"Requests from origin {excerpt(origin, 80)} are not allowed.")
            return
        fetch_site = headers.get(b"sec-fetch-site", "").lower()
        if origin is None and method not in _SAFE_METHODS and fetch_site in ("cross-site", "same-site"):
            await self._refuse(send, "origin", 403, "Cross-site requests are not allowed.")
            return
        preflight = method == "OPTIONS" and b"access-control-request-method" in headers
        if self._key is not None and scope.get("path") not in PUBLIC_PATHS and not preflight:
            scheme, _, token = headers.get(b"authorization", "").strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                await self._refuse(
                    send,
                    "auth",
                    401,
                    "Missing bearer token: send the header 'Authorization: Bearer <API key>'.",
                    [(b"www-authenticate", b'Bearer realm="skdeep"')],
                )
                return
            if not hmac.compare_digest(token.strip().encode("latin-1"), self._key):
                await self._refuse(
                    send,
                    "auth",
                    401,
                    "Invalid API key.",
                    [(b"www-authenticate", b'Bearer realm="skdeep", error="invalid_token"')],
                )
                return
        await self.app(scope, receive, send)
