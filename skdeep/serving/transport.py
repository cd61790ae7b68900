"""The HTTP connection layer: uvicorn's h11 protocol with header and body read deadlines.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but never times out a client
that sends its headers or body slowly (slowloris): such a connection stays open as long as a
byte arrives now and then. :func:`timeout_protocol` subclasses uvicorn's h11 protocol with two
timers per request:

* headers: from the connection's first byte (or from connecting, or from the first byte after
  the previous answer) until the request's headers are complete: ``header_timeout``;
* body: from the end of the headers until the end of the body: ``body_timeout``.

When one expires the connection gets ``408 Request Timeout`` (if no answer has started) and is
closed; the app sees a client disconnect.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

logger = logging.getLogger("skdeep.serving")


def _timeout_answer(what: str, seconds: float) -> bytes:
    body = f"The request's {what} did not arrive within {seconds:g} s.".encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def timeout_protocol(
    header_timeout: float | None, body_timeout: float | None, on_timeout: Callable[[str], None] | None = None
) -> type:
    """An ``asyncio.Protocol`` class for ``uvicorn.Config(http=...)`` that enforces read deadlines.

    Parameters
    ----------
    header_timeout, body_timeout : float or None
        Seconds; None turns that timer off.
    on_timeout : callable, default=None
        Called with ``"header_timeout"`` or ``"body_timeout"`` when a connection is closed (metrics).
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimeoutH11Protocol(H11Protocol):
        def connection_made(self, transport) -> None:
            self._skdeep_timers = {"header": None, "body": None}
            super().connection_made(transport)
            self._arm("header")

        def _arm(self, kind: str) -> None:
            seconds = header_timeout if kind == "header" else body_timeout
            if seconds is not None and self._skdeep_timers[kind] is None:
                self._skdeep_timers[kind] = self.loop.call_later(seconds, self._expired, kind, seconds)

        def _disarm(self, kind: str) -> None:
            timer = self._skdeep_timers[kind]
            if timer is not None:
                timer.cancel()
                self._skdeep_timers[kind] = None

        def _expired(self, kind: str, seconds: float) -> None:
            self._skdeep_timers[kind] = None
            if self.transport.is_closing():
                return
            cycle = self.cycle
            in_request = cycle is not None and not cycle.response_complete
            if not (in_request and cycle.response_started):
                self.transport.write(_timeout_answer("headers" if kind == "header" else "body", seconds))
            logger.info("Closed a connection from %s: %s timeout (%g s).", self.client, kind, seconds)
            if on_timeout is not None:
                on_timeout(f"{kind}_timeout")
            self.transport.close()

        def _between_requests(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def data_received(self, data: bytes) -> None:
            if self._between_requests():
                self._arm("header")  # the first bytes of a new request on this connection
            super().data_received(data)
            if not self._between_requests():
                self._disarm("header")
                if self.cycle.more_body:
                    self._arm("body")
                else:
                    self._disarm("body")

        def on_response_complete(self) -> None:
            self._disarm("body")
            super().on_response_complete()

        def connection_lost(self, exc) -> None:
            self._disarm("header")
            self._disarm("body")
            super().connection_lost(exc)

    return TimeoutH11Protocol


def uvicorn_config(
    app,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    header_timeout: float | None = None,
    body_timeout: float | None = None,
    keep_alive_timeout: int = 5,
    max_connections: int | None = None,
    forwarded_allow_ips: str | None = None,
    on_timeout: Callable[[str], None] | None = None,
):
    """A ``uvicorn.Config`` for ``app`` with the read deadlines and connection limits wired in."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        http=timeout_protocol(header_timeout, body_timeout, on_timeout),
        timeout_keep_alive=keep_alive_timeout,
        limit_concurrency=max_connections,
        forwarded_allow_ips=forwarded_allow_ips,
    )
