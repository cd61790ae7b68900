"""Data loaders shared by the benchmarks: Rotten Tomatoes (``examples/real_data.py``) and UCI sentences."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples"))

from _uci_sentiment import load_uci_sentiment  # noqa: E402,F401
from real_data import load_rotten_tomatoes  # noqa: E402,F401
