"""Augmentation presets for images and texts, and their use in training only."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from test_finetune import FAST as TEXT_FAST
from test_finetune import HELD_OUT
from test_finetune import X as TEXTS
from test_finetune import Y as TEXT_Y

from skdeep.finetune import IMAGE_AUGMENTATIONS, FineTunedTextClassifier, TextAugmenter
from skdeep.finetune.augment import image_augmentation, text_augmentation


@pytest.mark.parametrize("preset", IMAGE_AUGMENTATIONS)
def test_image_presets_keep_shape_and_dtype_and_vary(preset):
    import torch

    torch.manual_seed(0)
    img = torch.randint(0, 256, (3, 24, 20), dtype=torch.uint8)
    aug = image_augmentation(preset, (24, 20))
    outs = [aug(img) for _ in range(8)]
    assert all(o.shape == (3, 24, 20) and o.dtype == torch.uint8 for o in outs)
    assert sum(not torch.equal(o, img) for o in outs) >= 6  # random: most draws change the image
    torch.manual_seed(1)
    first = [aug(img) for _ in range(3)]
    torch.manual_seed(1)
    again = [aug(img) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # seeded by torch: reproducible


def test_image_augmentation_none_unknown_and_callables():
    import torch

    assert image_augmentation(None, (8, 8)) is None
    with pytest.raises(ValueError, match="not one of"):
        image_augmentation("strong", (8, 8))
    to_float = image_augmentation(lambda img: img.float() / 255, (8, 8))
    img = torch.full((3, 8, 8), 128, dtype=torch.uint8)
    assert torch.equal(to_float(img), img)  # floats in [0, 1] come back as the same uint8 pixels
    with pytest.raises(ValueError, match="same shape"):
        image_augmentation(lambda img: img[:1], (8, 8))(img)


def test_text_augmenter_edits_preserve_words():
    text = "the quick brown fox jumps over the lazy dog"
    swap = TextAugmenter(p_delete=0.0, n_swaps=2, random_state=0)
    outs = [swap(text) for _ in range(20)]
    assert all(Counter(o.split()) == Counter(text.split()) for o in outs)
    assert sum(o != text for o in outs) >= 15
    delete = TextAugmenter(p_delete=0.5, n_swaps=0, random_state=0)
    for _ in range(50):
        kept = delete(text).split()
        assert 1 <= len(kept) <= 9 and all(w in text.split() for w in kept)
        # deletion keeps the order of the remaining words
        positions = [text.split().index(w) for w in kept if text.split().count(w) == 1]
        assert positions == sorted(positions)
    assert TextAugmenter(p_delete=0.99, random_state=0)("one two") in {"one", "two", "one two", "two one"}
    assert TextAugmenter(random_state=0)("single") == "single"
    syn = TextAugmenter(p_delete=0, n_swaps=0, synonyms={"Quick": ["fast", "rapid"]}, p_synonym=1.0, random_state=0)
    assert syn(text).split()[1] in {"fast", "rapid"} and syn(text).split()[2:] == text.split()[2:]
    with pytest.raises(ValueError, match="p_delete"):
        TextAugmenter(p_delete=1.0)


def test_text_presets_draw_from_the_given_generator():
    a = text_augmentation("eda", np.random.RandomState(3))
    b = text_augmentation("eda", np.random.RandomState(3))
    texts = ["a good film indeed today", "so very bad and slow"] * 5
    assert [a(t) for t in texts] == [b(t) for t in texts]
    assert text_augmentation("swap", np.random.RandomState(0)).p_delete == 0.0
    assert text_augmentation("delete", np.random.RandomState(0)).n_swaps == 0
    with pytest.raises(ValueError, match="not one of"):
        text_augmentation("synonyms", np.random.RandomState(0))
    with pytest.raises(ValueError, match="returned int"):
        text_augmentation(len, np.random.RandomState(0))("abc")


def test_text_fine_tuning_augments_training_texts_only(tiny_text_model):
    seen = []

    def shout(text):
        seen.append(text)
        return text.upper()

    clf = FineTunedTextClassifier(tiny_text_model, loss="softmax", augment=shout, max_steps=4, **TEXT_FAST)
    clf.fit(TEXTS, TEXT_Y)
    assert seen and set(seen) <= set(TEXTS)
    held_out = set(TEXTS) - {t for t in seen}
    n = len(seen)
    clf.predict(HELD_OUT)
    clf.transform(TEXTS)
    assert len(seen) == n  # never at predict or transform time
    assert held_out  # the validation texts were not augmented either (they are never trained on)
    eda = FineTunedTextClassifier(tiny_text_model, augment="eda", max_steps=4, **TEXT_FAST).fit(TEXTS, TEXT_Y)
    again = FineTunedTextClassifier(tiny_text_model, augment="eda", max_steps=4, **TEXT_FAST).fit(TEXTS, TEXT_Y)
    plain = FineTunedTextClassifier(tiny_text_model, max_steps=4, **TEXT_FAST).fit(TEXTS, TEXT_Y)
    assert eda.tuned_fingerprint_ == again.tuned_fingerprint_ != plain.tuned_fingerprint_
