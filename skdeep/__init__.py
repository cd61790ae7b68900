"""skdeep: pretrained deep encoders as scikit-learn transformers.

Public names are imported lazily (PEP 562), so ``import skdeep.cache`` in a worker process, or the
``skdeep`` command line, does not pay for importing torch until an encoder is used.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "TextEncoder": "text",
    "ImageEncoder": "image",
    "EmbeddingCache": "cache",
    "ZeroShotClassifier": "zero_shot",
    "FineTunedTextClassifier": "finetune",
    "FineTunedImageClassifier": "finetune",
    "CORAL": "domain",
    "SubspaceAlignment": "domain",
    "save": "persistence",
    "load": "persistence",
    "UntrustedTypesError": "persistence",
    "create_app": "serving",
    "ModelNotFoundError": "sources",
    "FingerprintMismatchError": "sources",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'skdeep' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
