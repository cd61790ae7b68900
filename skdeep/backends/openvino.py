"""OpenVINO backend (``backend="openvino"``): the exported ONNX graph compiled for the CPU by OpenVINO.

Text models use the transformer exported once per weight fingerprint for ONNX Runtime
(:mod:`skdeep.backends.onnx`); image models the graph of :mod:`skdeep.backends.image_export`.
OpenVINO reads that file and compiles it in a fraction of a second, so only the ONNX file is kept.

The compute dtype is OpenVINO's *inference precision hint*: ``dtype="float32"`` asks for ``f32``,
``"bfloat16"`` for ``bf16`` (on CPUs with native bfloat16; others fall back to float32 with a
warning), ``"float16"`` for ``f16``, and ``"auto"`` leaves OpenVINO its default for the CPU (``bf16``
where the CPU supports it). The precision OpenVINO reports after compiling is the backend's
``dtype``, which salts the cache keys. Install with ``pip install scikit-deep[openvino]``.
"""

from __future__ import annotations

import warnings

import numpy as np

from .. import devices
from .onnx import ExportedTextBackend

#: dtype parameter -> OpenVINO inference precision hint (None: OpenVINO's default).
PRECISION_HINTS = {"float32": "f32", "bfloat16": "bf16", "float16": "f16", "auto": None}
_DTYPE_NAMES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}


def _openvino():
    try:
        import openvino
    except ImportError as exc:
        raise ImportError(
            "backend='openvino' needs the openvino package: pip install scikit-deep[openvino] "
            "(or pip install openvino)."
        ) from exc
    return openvino


def openvino_available() -> bool:
    """Whether the ``openvino`` package can be imported."""
    try:
        _openvino()
    except ImportError:
        return False
    return True


def precision_hint(dtype: str, *, warn: bool = False) -> str | None:
    """OpenVINO's precision hint for ``dtype`` on this CPU (bfloat16 falls back to f32 where unsupported)."""
    if dtype not in PRECISION_HINTS:
        raise ValueError(f"dtype must be one of {tuple(PRECISION_HINTS)}, got {dtype!r}.")
    if dtype == "bfloat16" and not devices.cpu_supports_bf16():
        if warn:
            warnings.warn(
                "dtype='bfloat16' needs a CPU that computes bfloat16 natively (AVX-512 BF16 or AMX), which this one "
                "does not; OpenVINO computes in float32.",
                UserWarning,
                stacklevel=4,
            )
        return "f32"
    return PRECISION_HINTS[dtype]


def effective_dtype(dtype: str, *, warn: bool = False) -> str:
    """The dtype OpenVINO computes in for ``dtype`` on this CPU, without compiling anything."""
    hint = precision_hint(dtype, warn=warn)
    if hint is None:  # OpenVINO's default: bf16 where the CPU has it
        return "bfloat16" if devices.cpu_supports_bf16() else "float32"
    return _DTYPE_NAMES[hint]


def compile_model(path, dtype: str = "float32", num_threads: int | None = None):
    """Compile the ONNX file at ``path`` for the CPU; returns ``(compiled model, dtype it computes in)``.

    Parameters
    ----------
    path : path-like
        An ONNX file.
    dtype : {"float32", "bfloat16", "float16", "auto"}
        The precision hint (see the module's docstring).
    num_threads : int or None
        OpenVINO's ``INFERENCE_NUM_THREADS``; None: its default (one per core).
    """
    ov = _openvino()
    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY"}
    hint = precision_hint(dtype)
    if hint is not None:
        config["INFERENCE_PRECISION_HINT"] = hint
    if num_threads is not None:
        config["INFERENCE_NUM_THREADS"] = int(num_threads)
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    actual = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return compiled, _DTYPE_NAMES.get(actual, actual)


def infer(compiled, feeds: dict) -> np.ndarray:
    """The first output of one synchronous inference (a fresh request: safe from several threads)."""
    request = compiled.create_infer_request()
    result = request.infer(feeds)
    return np.array(result[compiled.output(0)], dtype=np.float32, copy=True)


class OpenVinoTextBackend(ExportedTextBackend):
    """A sentence-transformers model whose exported transformer OpenVINO runs on the CPU.

    Takes the parameters of :class:`~skdeep.backends.onnx.ExportedTextBackend` (no ``quantize``),
    plus ``dtype``, the precision hint (see :mod:`skdeep.backends.openvino`). ``num_threads`` sets
    ``INFERENCE_NUM_THREADS``.
    """

    name = "openvino"

    def __init__(self, source, *, dtype: str = "auto", **options):
        self.requested_dtype = dtype
        precision_hint(dtype)  # a bad dtype fails before the model loads
        super().__init__(source, quantize=False, **options)

    def _compile(self, path, num_threads):
        self.compiled, self.dtype = compile_model(path, self.requested_dtype, num_threads)
        return [port.get_any_name() for port in self.compiled.inputs]

    def _run(self, feeds):
        return infer(self.compiled, feeds)
