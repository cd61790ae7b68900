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
``SKDEEP_ALLOW_DOWNLOAD``   ``1`` lets skdeep ask the frameworks to download missing weights.
``SKDEEP_ENCODE_LOG``       A file to which every process appends ``<n>`` for each batch of
                            ``n`` inputs that reaches a model: counts work across processes.
``SKDEEP_API_KEY``          Bearer token the HTTP server requires (``skdeep serve``), when no
                            ``--api-key-file`` is given.
``SKDEEP_DATA_DIR``         Where :mod:`skdeep.datasets` keeps the packages it reads data from.
                            Default ``~/.cache/skdeep/data``.
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

_TRUE = {"1", "true", "yes", "on"}


def skdeep_home() -> Path:
    """``$SKDEEP_HOME``, else ``~/.cache/skdeep``: where skdeep keeps its own files."""
    value = os.environ.get(HOME_ENV)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "skdeep"


def cache_dir() -> str | None:
    """``$SKDEEP_CACHE_DIR``: the directory of the default disk cache, or None (memory only)."""
    return os.environ.get(CACHE_DIR_ENV) or None


def downloads_allowed() -> bool:
    """Whether frameworks may download missing weights (``SKDEEP_ALLOW_DOWNLOAD=1``)."""
    return os.environ.get(ALLOW_DOWNLOAD_ENV, "0").strip().lower() in _TRUE


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
