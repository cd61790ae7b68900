"""Data augmentation for the fine-tuners' ``augment`` parameter: training batches only, never predictions.

Images: torchvision's ``transforms.v2`` presets applied to each training image (a uint8 tensor of
shape (3, h, w), already resized and cropped as the model's weights expect), with a fresh draw per
image and epoch:

* ``"light"``: random crop after reflection padding by 1/8 of the side (shifts of up to 12.5%, the
  classic CIFAR recipe) and horizontal flip;
* ``"trivialaugment"``, ``"randaugment"``, ``"autoaugment"``: ``"light"`` followed by that policy
  (TrivialAugmentWide, RandAugment, AutoAugment with the ImageNet policy);
* any callable taking and returning such a tensor (e.g. a ``v2.Compose``).

Texts: label-preserving edits in the spirit of EDA (Wei & Zou, 2019), :class:`TextAugmenter`:

* ``"delete"``: drop each word with probability 0.1 (never every word);
* ``"swap"``: swap two random words, once;
* ``"eda"``: both;
* a :class:`TextAugmenter` (e.g. with your own ``synonyms`` table), or any callable ``str -> str``.

Synonym replacement needs a synonym table. None ships inside a PyPI package usable offline (NLTK's
WordNet and ``wn`` download their data at run time; ``wordnet-lookup`` ships hashed terms only), so
skdeep has no built-in table: give one as ``TextAugmenter(synonyms={"good": ["fine", "great"]})``.
"""

from __future__ import annotations

import numpy as np

IMAGE_AUGMENTATIONS = ("light", "trivialaugment", "randaugment", "autoaugment")
TEXT_AUGMENTATIONS = ("delete", "swap", "eda")

__all__ = ["IMAGE_AUGMENTATIONS", "TEXT_AUGMENTATIONS", "TextAugmenter", "image_augmentation", "text_augmentation"]


def image_augmentation(augment, size):
    """The per-image training transform for ``augment`` (see the module docstring), or None.

    Parameters
    ----------
    augment : None, str or callable
    size : (int, int)
        Height and width the model sees; crops are resized back to it.

    Returns
    -------
    callable or None
        Maps a uint8 tensor (3, h, w) to a uint8 tensor of the same shape.
    """
    if augment is None:
        return None
    if callable(augment):
        return _CheckedImageTransform(augment, tuple(size))
    if augment not in IMAGE_AUGMENTATIONS:
        raise ValueError(f"augment={augment!r} is not one of {IMAGE_AUGMENTATIONS}, a callable or None.")
    from torchvision.transforms import v2

    pad = max(1, min(size) // 8)
    steps = [
        v2.RandomCrop(tuple(size), padding=pad, padding_mode="reflect"),
        v2.RandomHorizontalFlip(),
    ]
    if augment == "trivialaugment":
        steps.append(v2.TrivialAugmentWide())
    elif augment == "randaugment":
        steps.append(v2.RandAugment())
    elif augment == "autoaugment":
        steps.append(v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET))
    return v2.Compose(steps)


class _CheckedImageTransform:
    """A user's image transform, with its output checked (same shape; floats in [0, 1] become uint8)."""

    def __init__(self, fn, size):
        self.fn = fn
        self.size = size

    def __call__(self, img):
        import torch

        out = self.fn(img)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (3, *self.size):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"augment must map a uint8 tensor of shape (3, {self.size[0]}, {self.size[1]}) to a tensor of the "
                f"same shape; {self.fn!r} returned {shape}."
            )
        if out.dtype != torch.uint8:
            out = (out.float().clamp(0, 1) * 255).round().to(torch.uint8)
        return out


class TextAugmenter:
    """Label-preserving random edits of a text: word deletion, word swaps, synonym replacement.

    Parameters
    ----------
    p_delete : float, default=0.1
        Probability of dropping each word (at least one word is always kept).
    n_swaps : int, default=1
        Times two random words trade places.
    synonyms : dict of str to list of str, default=None
        Replacement candidates per lowercase word; None: no synonym replacement.
    p_synonym : float, default=0.1
        Probability of replacing each word that has synonyms.
    random_state : int, RandomState or None, default=None

    Examples
    --------
    >>> aug = TextAugmenter(p_delete=0.0, n_swaps=0, synonyms={"good": ["fine"]}, p_synonym=1.0, random_state=0)
    >>> aug("a good film")
    'a fine film'
    """

    def __init__(self, p_delete=0.1, n_swaps=1, synonyms=None, p_synonym=0.1, random_state=None):
        if not 0 <= p_delete < 1 or not 0 <= p_synonym <= 1 or int(n_swaps) != n_swaps or n_swaps < 0:
            raise ValueError("TextAugmenter needs 0 <= p_delete < 1, 0 <= p_synonym <= 1 and an integer n_swaps >= 0.")
        self.p_delete = p_delete
        self.n_swaps = int(n_swaps)
        self.synonyms = {str(k).lower(): list(v) for k, v in (synonyms or {}).items()}
        self.p_synonym = p_synonym
        self.rng = (
            random_state if isinstance(random_state, np.random.RandomState) else np.random.RandomState(random_state)
        )

    def __call__(self, text: str) -> str:
        words = text.split()
        if len(words) < 2:
            return text
        rng = self.rng
        if self.synonyms and self.p_synonym > 0:
            words = [
                self.synonyms[w.lower()][rng.randint(len(self.synonyms[w.lower()]))]
                if w.lower() in self.synonyms and self.synonyms[w.lower()] and rng.rand() < self.p_synonym
                else w
                for w in words
            ]
        if self.p_delete > 0:
            kept = [w for w in words if rng.rand() >= self.p_delete]
            words = kept or [words[rng.randint(len(words))]]
        for _ in range(self.n_swaps):
            if len(words) < 2:
                break
            i, j = rng.choice(len(words), size=2, replace=False)
            words[i], words[j] = words[j], words[i]
        return " ".join(words)


def text_augmentation(augment, rng):
    """The training-time text transform for ``augment`` (see the module docstring), or None.

    Presets draw from ``rng`` (the fine-tuner's seeded generator), so runs are reproducible.
    """
    if augment is None:
        return None
    if isinstance(augment, TextAugmenter):
        import copy

        return copy.deepcopy(augment)  # a parameter is never changed by fit (its generator advances)
    if callable(augment):
        return _CheckedTextTransform(augment)
    if augment not in TEXT_AUGMENTATIONS:
        raise ValueError(f"augment={augment!r} is not one of {TEXT_AUGMENTATIONS}, a callable or None.")
    p_delete = 0.1 if augment in ("delete", "eda") else 0.0
    n_swaps = 1 if augment in ("swap", "eda") else 0
    return TextAugmenter(p_delete=p_delete, n_swaps=n_swaps, random_state=rng)


class _CheckedTextTransform:
    def __init__(self, fn):
        self.fn = fn

    def __call__(self, text):
        out = self.fn(text)
        if not isinstance(out, str):
            raise ValueError(f"augment must map a text to a text; {self.fn!r} returned {type(out).__name__}.")
        return out
