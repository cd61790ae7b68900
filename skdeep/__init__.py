"""skdeep: pretrained deep encoders as scikit-learn transformers."""

from .cache import EmbeddingCache
from .sources import FingerprintMismatchError, ModelNotFoundError
from .text import TextEncoder

__all__ = ["EmbeddingCache", "FingerprintMismatchError", "ModelNotFoundError", "TextEncoder"]
__version__ = "0.1.0"
