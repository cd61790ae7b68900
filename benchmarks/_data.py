"""Data loaders shared by the benchmarks.

``examples/datasets.py`` is loaded by path under another module name: a module called ``datasets``
on ``sys.path`` would shadow Hugging Face's ``datasets`` package, which sentence-transformers imports.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _load_examples_datasets():
    spec = importlib.util.spec_from_file_location("skdeep_example_datasets", HERE.parent / "examples" / "datasets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


load_rotten_tomatoes = _load_examples_datasets().load_rotten_tomatoes

from _uci_sentiment import load_uci_sentiment  # noqa: E402,F401
