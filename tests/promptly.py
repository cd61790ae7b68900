"""Run a call with a time limit, for tests of inputs that could block forever (named pipes, devices)."""

from __future__ import annotations

import os
import threading

import pytest

needs_fifo = pytest.mark.skipif(
    not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"), reason="needs named pipes and /dev/zero"
)


def call_promptly(fn, timeout: float = 120.0):
    """fn() in a thread: a regression that blocks on a pipe or reads a device forever fails, not hangs."""
    result = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - SystemExit included, handed to the caller
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still running after {timeout} s: it blocked on a pipe or read a device"
    if "error" in result:
        raise result["error"]
    return result["value"]
