"""Serve a pipeline from its own process, for the serving benchmarks.

Imported as a sibling module by scripts in this folder (``from _server import ServerProcess``).
The server runs in a separate (spawned) process so that the benchmark's clients do not share its
interpreter; ``torch.set_num_threads`` is applied there before the model loads.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import time


def refuse_poison(texts):
    """A pipeline step that fails on texts starting with ``POISON``: inputs that pass the server's
    validation but fail in the model, as a text-cleaning step raising on unexpected content would."""
    texts = list(texts)
    for text in texts:
        if text.startswith("POISON"):
            raise ValueError(f"cannot clean {text[:40]!r}")
    return texts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(pipe, port: int, threads: int, log_level: str, options: dict) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import uvicorn

    from skdeep.serving import create_app
    from skdeep.serving.transport import uvicorn_config

    torch.set_num_threads(threads)
    app = create_app(pipe, **options)
    server = uvicorn.Server(uvicorn_config(app, port=port, log_level=log_level, on_timeout=app.state.metrics.reject))
    try:
        server.run()
    except KeyboardInterrupt:
        pass


class ServerProcess:
    """Run :func:`skdeep.serving.create_app` on ``pipe`` in a spawned process on 127.0.0.1.

    Parameters
    ----------
    pipe : fitted estimator
        Pickled to the server process (functions in it must be importable there, e.g. from this module).
    threads : int, default=1
        ``torch.set_num_threads`` in the server process.
    **options
        Keywords of :func:`skdeep.serving.create_app`.
    """

    def __init__(self, pipe, *, threads: int = 1, log_level: str = "warning", start_timeout: float = 300, **options):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.threads = threads
        self.start_timeout = start_timeout
        ctx = multiprocessing.get_context("spawn")
        self.process = ctx.Process(target=_serve, args=(pipe, self.port, threads, log_level, options), daemon=True)

    def __enter__(self):
        import httpx

        self.process.start()
        deadline = time.monotonic() + self.start_timeout
        while True:
            if not self.process.is_alive():
                raise RuntimeError(f"The server process exited with status {self.process.exitcode}.")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(f"The server did not start within {self.start_timeout:g} s.")
            time.sleep(0.2)

    def __exit__(self, *exc):
        self.process.terminate()  # SIGTERM: uvicorn shuts down gracefully
        self.process.join(timeout=60)
        if self.process.is_alive():
            self.process.kill()
