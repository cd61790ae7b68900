"""Fine-tuning of pretrained sentence encoders on labelled texts (SetFit and friends).

``text`` holds :class:`FineTunedTextClassifier`; ``objectives`` the training objectives it chooses
from by its ``loss`` parameter (:data:`LOSSES`).
"""

from .objectives import LOSSES, make_pairs
from .text import TUNED_PREFIX, FineTunedTextClassifier

__all__ = ["LOSSES", "TUNED_PREFIX", "FineTunedTextClassifier", "make_pairs"]
