"""Prometheus metrics of one server: requests, latency, model calls, queue depth, refusals.

Each app gets its own registry (several apps can live in one process, as in the tests). Without
``prometheus-client`` installed the server runs without ``/metrics`` and says so in its log.

==========================================  ==========================================================
metric                                      meaning
==========================================  ==========================================================
``skdeep_http_requests_total``              answered requests, by ``endpoint`` and ``status``
``skdeep_http_request_duration_seconds``    time from request start to answer, by ``endpoint``
``skdeep_model_batch_size``                 inputs per model call, by ``operation``
``skdeep_model_call_duration_seconds``      duration of model calls, by ``operation``
``skdeep_model_call_failures_total``        failed model calls (then bisected), by ``operation``
``skdeep_queue_items``                      inputs waiting for the model, by ``operation``
``skdeep_rejected_requests_total``          refusals, by ``reason`` (see :data:`REJECT_REASONS`)
==========================================  ==========================================================
"""

from __future__ import annotations

import logging
import time

REJECT_REASONS = (
    "host",  # Host header not allowed (400)
    "origin",  # cross-origin request (403)
    "auth",  # missing or bad API key (401)
    "body_too_large",  # 413
    "invalid_input",  # 422 before the model: schema, JSON, base64, image header
    "model_input",  # 422: the input failed in the model, alone
    "queue_full",  # 503 with Retry-After
    "timeout",  # 504: not answered within --timeout
    "client_disconnected",  # the client left before its answer; its queued work was dropped
    "header_timeout",  # connection closed: headers not received in time
    "body_timeout",  # connection closed: body not received in time
)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

logger = logging.getLogger("skdeep.serving")


class Metrics:
    """The metrics of one app; ``available`` is False without prometheus-client (then all no-ops)."""

    def __init__(self, endpoints):
        self.endpoints = frozenset(endpoints)
        try:
            import prometheus_client as prom
        except ImportError:
            self.available = False
            logger.warning("prometheus-client is not installed: /metrics is off (pip install prometheus-client).")
            return
        self.available = True
        self._prom = prom
        self.registry = prom.CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = prom.Counter(
            "skdeep_http_requests", "Answered HTTP requests.", ["endpoint", "status"], registry=r
        )
        self.latency = prom.Histogram(
            "skdeep_http_request_duration_seconds",
            "Time from request start to answer.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = prom.Histogram(
            "skdeep_model_batch_size", "Inputs per model call.", ["operation"], buckets=_BATCH_BUCKETS, registry=r
        )
        self.call_seconds = prom.Histogram(
            "skdeep_model_call_duration_seconds",
            "Duration of model calls.",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.call_failures = prom.Counter(
            "skdeep_model_call_failures",
            "Failed model calls (then split to find the failing input).",
            ["operation"],
            registry=r,
        )
        self.queue = prom.Gauge("skdeep_queue_items", "Inputs waiting for the model.", ["operation"], registry=r)
        self.rejects = prom.Counter("skdeep_rejected_requests", "Refused requests, by reason.", ["reason"], registry=r)
        for reason in REJECT_REASONS:
            self.rejects.labels(reason)  # every reason appears, at 0, from the start

    def reject(self, reason: str) -> None:
        if self.available:
            self.rejects.labels(reason).inc()

    def call_observer(self, operation: str):
        """``on_call`` callback for the operation's :class:`~skdeep.serving.batcher.MicroBatcher`."""

        def observe(n_items: int, cost: float, seconds: float, ok: bool) -> None:
            if not self.available:
                return
            self.batch_size.labels(operation).observe(n_items)
            self.call_seconds.labels(operation).observe(seconds)
            if not ok:
                self.call_failures.labels(operation).inc()

        return observe

    def render(self, batchers: dict) -> tuple:
        """``(body, content_type)`` of the Prometheus text exposition."""
        for op, batcher in batchers.items():
            self.queue.labels(op).set(batcher.waiting_items)
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST

    def middleware(self, app):
        """Wrap ``app`` (plain ASGI) to count every answer, including refusals by outer checks."""
        if not self.available:
            return app
        metrics = self

        async def counted(scope, receive, send):
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            path = scope.get("path", "")
            endpoint = path if path in metrics.endpoints else "other"
            start = time.perf_counter()
            status = {"code": 0}

            async def send_and_record(message):
                if message["type"] == "http.response.start":
                    status["code"] = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_and_record)
            finally:
                code = str(status["code"] or 500)
                metrics.requests.labels(endpoint, code).inc()
                metrics.latency.labels(endpoint).observe(time.perf_counter() - start)

        return counted
