"""The ``skdeep`` options that say how a model runs (``--backend``, ``--dtype``, ``--num-threads``).

Standard library only: ``skdeep --help`` imports no model code.
"""

from __future__ import annotations

import argparse

#: ``TextEncoder`` / ``ImageEncoder`` backends (the encoder refuses one it does not have); repeated here so
#: that ``--help`` imports no model code.
BACKENDS = ("torch", "onnx", "onnx-int8", "onnx-int8-all", "openvino", "auto")
DTYPES = ("float32", "bfloat16", "float16", "auto")


def add_runtime_options(p, *, defaults: bool) -> None:
    """--backend, --dtype and --num-threads: how the model runs, not what it is."""
    saved = " (default: as saved)"
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="inference engine: torch, onnx, onnx-int8 / onnx-int8-all (int8 weights; text), openvino, or auto "
        "(the fastest path within cosine 0.9999 of torch float32 on this machine; text)"
        + (" (default: torch)" if defaults else saved),
    )
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="compute dtype; bfloat16 runs on CPUs with native bfloat16, else float32 with a warning"
        + (" (default: float32)" if defaults else saved),
    )
    p.add_argument(
        "--num-threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="threads the model uses (torch, ONNX Runtime, OpenVINO, BLAS) (default: "
        + ("$SKDEEP_NUM_THREADS, else the libraries' own)" if defaults else "as saved)"),
    )


def runtime_params(args) -> dict:
    """The encoder parameters the runtime options set (those given on the command line)."""
    return {name: getattr(args, name) for name in ("backend", "dtype", "num_threads") if getattr(args, name, None)}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value
