"""Every ``SKDEEP_*`` environment setting, read in one place.

Settings are read when they are used, not at import time, so a test (or a notebook) can change
the environment between calls.

==========================  =====================================================================
variable                    meaning
==========================  =====================================================================
``SKDEEP_HOME``             Folder for skdeep's own files: unpacked weight bundles, exported ONNX
                            / OpenVINO models, backend choices. Default ``~/.cache/skdeep``.
``SKDEEP_CACHE_DIR``        Directory of the disk embedding cache that ``cache="auto"`` uses.
                            Unset: a memory-only cache per process.
``SKDEEP_ALLOW_DOWNLOAD``   Deprecated. Missing weights are downloaded unless ``HF_HUB_OFFLINE=1``
                            (the Hugging Face convention) or ``local_files_only=True`` says not
                            to; ``SKDEEP_ALLOW_DOWNLOAD=0`` / ``1`` still forbids / allows it, with
                            a ``FutureWarning``.
``SKDEEP_ENCODE_LOG``       A file to which every process appends ``<n>`` for each batch of
                            ``n`` inputs that reaches a model: counts work across processes.
``SKDEEP_API_KEY``          Bearer token the HTTP server requires (``skdeep serve``), when no
                            ``--api-key-file`` is given.
``SKDEEP_DATA_DIR``         Where :mod:`skdeep.datasets` keeps the packages it reads data from.
                            Default ``~/.cache/skdeep/data``.
``SKDEEP_NUM_THREADS``      Threads an encoder's model uses during ``transform`` (torch, ONNX
                            Runtime, OpenVINO and the BLAS library) when its ``num_threads`` is
                            None. Unset: each library's own default.
==========================  =====================================================================
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "SKDEEP_HOME"
CACHE_DIR_ENV = "SKDEEP_CACHE_DIR"
ALLOW_DOWNLOAD_ENV = "SKDEEP_ALLOW_DOWNLOAD"
ENCODE_LOG_ENV = "SKDEEP_ENCODE_LOG"
API_KEY_ENV = "SKDEEP_API_KEY"
DATA_DIR_ENV = "SKDEEP_DATA_DIR"
NUM_THREADS_ENV = "SKDEEP_NUM_THREADS"

_TRUE = {"1", "true", "yes", "on"}


def skdeep_home() -> Path:
    """``$SKDEEP_HOME``, else ``~/.cache/skdeep``: where skdeep keeps its own files."""
    value = os.environ.get(HOME_ENV)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "skdeep"


def cache_dir() -> str | None:
    """``$SKDEEP_CACHE_DIR``: the directory of the default disk cache, or None (memory only)."""
    return os.environ.get(CACHE_DIR_ENV) or None


OFFLINE_ENVS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_warned_allow_download = False


def offline() -> bool:
    """Whether the environment says "no network" the Hugging Face way (``HF_HUB_OFFLINE=1``)."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in OFFLINE_ENVS)


def downloads_allowed(local_files_only: bool = False) -> bool:
    """Whether missing weights may be downloaded.

    The ecosystem's convention: yes, unless ``local_files_only=True`` or ``HF_HUB_OFFLINE=1``
    (or ``TRANSFORMERS_OFFLINE=1``). The older ``SKDEEP_ALLOW_DOWNLOAD``, when set, still decides
    (``0`` forbids, ``1`` allows) and warns that it is deprecated.
    """
    global _warned_allow_download
    if local_files_only:
        return False
    legacy = os.environ.get(ALLOW_DOWNLOAD_ENV)
    if legacy is not None and legacy.strip():
        if not _warned_allow_download:
            _warned_allow_download = True
            import warnings

            warnings.warn(
                f"{ALLOW_DOWNLOAD_ENV} is deprecated and will be ignored in a future release: skdeep now "
                "downloads missing weights unless HF_HUB_OFFLINE=1 is set or local_files_only=True is passed.",
                FutureWarning,
                stacklevel=3,
            )
        return legacy.strip().lower() in _TRUE
    return not offline()


def encode_log_path() -> str | None:
    """``$SKDEEP_ENCODE_LOG``: a file counting the inputs that reach a model, or None."""
    return os.environ.get(ENCODE_LOG_ENV) or None


def api_key() -> str | None:
    """``$SKDEEP_API_KEY``: the server's bearer token, or None."""
    value = os.environ.get(API_KEY_ENV)
    return value.strip() if value and value.strip() else None


def data_dir() -> Path:
    """``$SKDEEP_DATA_DIR``, else ``~/.cache/skdeep/data``: where :mod:`skdeep.datasets` keeps its packages."""
    value = os.environ.get(DATA_DIR_ENV)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "skdeep" / "data"


def num_threads() -> int | None:
    """``$SKDEEP_NUM_THREADS``: threads a model uses during ``transform``, or None (the libraries' defaults).

    Raises
    ------
    ValueError
        If the variable is set to anything but a positive integer.
    """
    value = os.environ.get(NUM_THREADS_ENV, "").strip()
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{NUM_THREADS_ENV} must be a positive integer, got {value!r}.")
    return n
