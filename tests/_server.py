"""Run an app with uvicorn in a background thread, for tests (the same transport as ``skdeep serve``)."""

from __future__ import annotations

import socket
import threading
import time


class ServerThread:
    """Serve ``app`` on 127.0.0.1 from a daemon thread; use as a context manager, ``url`` is ready on entry.

    Parameters
    ----------
    app : ASGI app
    header_timeout, body_timeout : float or None
        Read deadlines of the connection layer (:mod:`skdeep.serving.transport`).
    **options
        Other keywords of :func:`skdeep.serving.transport.uvicorn_config`.
    """

    def __init__(
        self, app, host="127.0.0.1", port=0, log_level="warning", header_timeout=10.0, body_timeout=60.0, **options
    ):
        import uvicorn

        from skdeep.serving.transport import uvicorn_config

        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host, self.port = self._socket.getsockname()[:2]
        metrics = getattr(getattr(app, "state", None), "metrics", None)
        config = uvicorn_config(
            app,
            log_level=log_level,
            header_timeout=header_timeout,
            body_timeout=body_timeout,
            on_timeout=metrics.reject if metrics is not None else None,
            **options,
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self):
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
