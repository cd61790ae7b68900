"""Devices, precision and batch execution shared by every backend.

Backends know about devices and numeric precision; nothing else in skdeep does.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | None = "auto") -> torch.device:
    """Turn a user's ``device`` setting into a usable :class:`torch.device`.

    ``"auto"`` picks CUDA, then Apple's MPS, then the CPU. An explicit accelerator that this machine
    lacks falls back to the CPU with a warning rather than failing, so that a pipeline saved on a GPU
    machine still predicts on a CPU-only one.
    """
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device={device!r} is not a valid torch device; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'."
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        warnings.warn(
            f"device={device!r} was requested but CUDA is not available here; running on the CPU.",
            RuntimeWarning,
            stacklevel=3,
        )
        return torch.device("cpu")
    if dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        warnings.warn(
            f"device={device!r} was requested but MPS is not available here; running on the CPU.",
            RuntimeWarning,
            stacklevel=3,
        )
        return torch.device("cpu")
    return dev


def autocast(device: torch.device, precision: str):
    """Mixed-precision context for inference.

    Autocast runs on accelerators only: CPU autocast in fp16 is slow or unsupported for many ops,
    and the CPU is where exactness matters most for tests and reproducibility.
    """
    if precision == "fp32" or device.type == "cpu":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=PRECISIONS[precision])


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an accelerator out-of-memory error."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def run_in_batches(encode_batch, items, batch_size: int, *, on_batch_done=None):
    """Call ``encode_batch`` on consecutive slices of ``items`` and stack the results.

    On an out-of-memory error the batch size is halved and the same slice retried, down to one item;
    only then is the error raised. The reduced size is kept for the remaining slices, since memory
    pressure rarely goes away mid-call.

    Parameters
    ----------
    encode_batch : callable
        Takes a list (a slice of ``items``) and returns an array of shape (len(slice), dim).
    items : sequence
    batch_size : int
    on_batch_done : callable, default=None
        Called with the number of items finished after each successful batch (progress bars).

    Returns
    -------
    list of numpy.ndarray
        One array per successful batch, in order.
    """
    outputs = []
    start = 0
    size = max(1, int(batch_size))
    while start < len(items):
        chunk = items[start : start + size]
        try:
            outputs.append(encode_batch(chunk))
        except Exception as exc:  # noqa: BLE001 - re-raised unless it is an OOM we can absorb
            if not is_out_of_memory(exc) or size == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            size = max(1, size // 2)
            warnings.warn(
                f"Out of memory on the accelerator; retrying with batch_size={size}.",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        start += len(chunk)
        if on_batch_done is not None:
            on_batch_done(len(chunk))
    return outputs


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX), so that bf16 autocast can pay off.

    Reads PyTorch's detected CPU capability and, on Linux, the CPU flags (``avx512_bf16``,
    ``amx_bf16``). Without native support PyTorch still runs bf16, but emulated and slower than fp32.
    """
    capability = ""
    with contextlib.suppress(Exception):
        capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    if "AMX" in capability:
        return True
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
