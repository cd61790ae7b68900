"""Devices, precision and batch execution shared by every backend.

Backends know about devices and numeric precision; nothing else in skdeep does.
"""

from __future__ import annotations

import contextlib
import threading
import warnings

import torch

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: Values of the encoders' ``dtype`` parameter: torch's spellings, and "auto".
COMPUTE_DTYPES = ("auto", "float32", "float16", "bfloat16")
#: dtype -> the short name autocast and older releases' ``precision`` used.
DTYPE_SHORT_NAMES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
#: The other way: ``"fp16"`` -> ``"float16"``.
DTYPE_NAMES = {short: name for name, short in DTYPE_SHORT_NAMES.items()}


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

    On accelerators, fp16 or bf16 autocast. On the CPU only bf16, and only where the CPU computes it
    natively (:func:`cpu_supports_bf16`; callers check and fall back first): emulated bf16 is slower
    than fp32, and CPU fp16 is slow or unsupported for many ops.
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    if device.type == "cpu":
        if precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, dtype=PRECISIONS[precision])


def effective_dtype(dtype: str, device: torch.device, *, warn: bool = False, stacklevel: int = 4) -> str:
    """The compute dtype a torch model really runs in on ``device`` for the ``dtype`` parameter.

    ``"auto"`` is bfloat16 on CUDA devices that support it, else float16 on CUDA and MPS, and
    float32 on the CPU. On the CPU, bfloat16 runs through autocast where the CPU computes it
    natively (:func:`skdeep.devices.cpu_supports_bf16`); elsewhere, and for float16, the CPU
    computes in float32, with a warning when ``warn`` is set (the dtype was asked for explicitly).
    The result salts the cache keys, so a request that falls back shares the float32 vectors.
    """
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"dtype must be one of {COMPUTE_DTYPES}, got {dtype!r}.")
    if device.type == "cpu":
        if dtype == "bfloat16":
            if cpu_supports_bf16():
                return "bfloat16"
            if warn:
                warnings.warn(
                    "dtype='bfloat16' needs a CPU that computes bfloat16 natively (AVX-512 BF16 or AMX), which this "
                    "one does not (emulated bfloat16 is slower than float32); computing in float32.",
                    UserWarning,
                    stacklevel=stacklevel,
                )
            return "float32"
        if warn and dtype == "float16":
            warnings.warn(
                "dtype='float16' is not supported on the CPU (slower than float32 there); computing in float32. "
                "dtype='bfloat16' is the CPU's reduced precision.",
                UserWarning,
                stacklevel=stacklevel,
            )
        return "float32"
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bfloat16"
        return "float16"
    return dtype


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
    with contextlib.suppress(Exception):
        if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
            return True
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# ---------------------------------------------------------------------------------------------
# threads


def check_num_threads(num_threads) -> int | None:
    """``num_threads`` if it is None or a positive integer, else ``$SKDEEP_NUM_THREADS`` for None."""
    if num_threads is None:
        from ._config import num_threads as from_environment

        return from_environment()
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive integer or None, got {num_threads!r}.")
    return int(num_threads)


_threads_lock = threading.Lock()
_threads_state = {"depth": 0, "saved": None, "blas": None}


@contextlib.contextmanager
def limit_threads(num_threads: int | None):
    """Run the body with torch's intra-op threads and the BLAS library's threads set to ``num_threads``.

    The previous settings come back when the outermost such block ends. ONNX Runtime and OpenVINO
    take their thread count when a model is compiled (the backends do that); this covers torch and
    numpy's BLAS. Thread counts are process-wide: concurrent blocks share the last count asked for.
    None changes nothing.
    """
    if num_threads is None:
        yield
        return
    with _threads_lock:
        state = _threads_state
        if state["depth"] == 0:
            state["saved"] = torch.get_num_threads()
            try:
                from threadpoolctl import threadpool_limits

                state["blas"] = threadpool_limits(limits=num_threads, user_api="blas")
            except Exception:  # noqa: BLE001 - no BLAS to limit (or threadpoolctl missing): torch alone
                state["blas"] = None
        state["depth"] += 1
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        with _threads_lock:
            state["depth"] -= 1
            if state["depth"] == 0:
                torch.set_num_threads(state["saved"])
                if state["blas"] is not None:
                    state["blas"].restore_original_limits()
                state["saved"] = state["blas"] = None


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
