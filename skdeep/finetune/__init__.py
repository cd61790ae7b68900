"""Fine-tuning of pretrained encoders on labelled data.

* :class:`FineTunedTextClassifier` (``text``): sentence encoders, SetFit-style, with the training
  objectives of ``objectives`` (:data:`LOSSES`).
* :class:`FineTunedImageClassifier` (``image``): torchvision / timm CNNs and ViTs, with gradual
  unfreezing, discriminative learning rates and augmentation.
* ``augment``: data augmentation presets for both (``augment=`` parameter), :class:`TextAugmenter`.

Both accept a 2-D ``y`` (one column per task: one shared backbone, one head per task) and LoRA
adapters (``lora=True``) that are pickled as adapters, apart from the base model.
"""

from .augment import IMAGE_AUGMENTATIONS, TEXT_AUGMENTATIONS, TextAugmenter
from .image import FineTunedImageClassifier
from .objectives import LOSSES, make_pairs
from .text import TUNED_PREFIX, FineTunedTextClassifier

__all__ = [
    "IMAGE_AUGMENTATIONS",
    "LOSSES",
    "TEXT_AUGMENTATIONS",
    "TUNED_PREFIX",
    "FineTunedImageClassifier",
    "FineTunedTextClassifier",
    "TextAugmenter",
    "make_pairs",
]
