"""TextEncoder: correctness against sentence-transformers, input handling, sklearn conventions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import INPUT_AGNOSTIC_CHECKS
from sentence_transformers import SentenceTransformer
from sklearn.base import clone

from skdeep import TextEncoder
from skdeep import backends as backend_registry
from skdeep.sources import ModelNotFoundError

TEXTS = [
    "a good film",
    "",
    "the movie was bad, really bad and far too long for what it had to say",
    "good",
    "a film",
]


@pytest.fixture(scope="module")
def reference_model(tiny_text_model):
    return SentenceTransformer(tiny_text_model, device="cpu")


def test_matches_sentence_transformers_encode(tiny_text_model, reference_model):
    expected = reference_model.encode(TEXTS, convert_to_numpy=True)
    got = TextEncoder(tiny_text_model, cache=None).fit_transform(TEXTS)
    assert got.dtype == np.float32
    assert got.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_length_sorted_batches_come_back_in_input_order(tiny_text_model, reference_model):
    rng = np.random.default_rng(0)
    texts = ["good " * int(k) for k in rng.integers(1, 30, size=23)]
    got = TextEncoder(tiny_text_model, batch_size=3, cache=None).transform(texts)
    one_by_one = np.stack([reference_model.encode([t])[0] for t in texts])
    np.testing.assert_allclose(got, one_by_one, atol=1e-5)


def test_normalize_gives_unit_vectors_in_same_direction(tiny_text_model):
    raw = TextEncoder(tiny_text_model, cache=None).transform(TEXTS)
    unit = TextEncoder(tiny_text_model, normalize=True, cache=None).transform(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)


def test_pooling_cls_returns_the_cls_token_embedding(tiny_text_model, reference_model):
    tokens = reference_model.encode(TEXTS, output_value="token_embeddings")
    got = TextEncoder(tiny_text_model, pooling="cls", cache=None).transform(TEXTS)
    expected = np.stack([t[0].numpy() for t in tokens])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.allclose(got, TextEncoder(tiny_text_model, cache=None).transform(TEXTS), atol=1e-3)


def test_max_length_truncates(tiny_text_model):
    prefix = "abcdefgh"
    a, b = prefix + " the first ending", prefix + " another, longer, different ending"
    short = TextEncoder(tiny_text_model, max_length=6, cache=None).transform([a, b])
    np.testing.assert_allclose(short[0], short[1], atol=1e-6)  # only the shared prefix survives
    full = TextEncoder(tiny_text_model, cache=None).transform([a, b])
    assert not np.allclose(full[0], full[1], atol=1e-3)


@pytest.mark.parametrize(
    "wrap",
    [
        list,
        tuple,
        lambda t: np.array(t, dtype=object),
        lambda t: np.array(t),  # unicode dtype
        lambda t: pd.Series(t, index=range(10, 10 + len(t))),
        lambda t: pd.DataFrame({"review": t}),
        lambda t: np.array(t, dtype=object).reshape(-1, 1),
    ],
    ids=["list", "tuple", "object-array", "unicode-array", "series", "one-column-frame", "column-array"],
)
def test_accepted_input_containers_give_identical_output(tiny_text_model, wrap):
    enc = TextEncoder(tiny_text_model, cache=None)
    np.testing.assert_allclose(enc.transform(wrap(TEXTS)), enc.transform(TEXTS), atol=1e-6)


@pytest.mark.parametrize(
    "bad, error, message",
    [
        (["ok", None], ValueError, "position 1 is None"),
        (["ok", "ok", float("nan")], ValueError, "position 2 is NaN"),
        (["ok", pd.NA], ValueError, "position 1 is pandas.NA"),
        ([3], TypeError, "position 0 has type int"),
        (["ok", 2.5], TypeError, "position 1 has type float"),
        (["ok", b"bytes"], TypeError, "position 1 is bytes"),
        (["ok", ["nested"]], TypeError, "position 1 is a nested list"),
        ([], ValueError, "empty input"),
        ("a single string", TypeError, "single str"),
        (np.array([["a", "b"], ["c", "d"]]), ValueError, "shape \\(2, 2\\)"),
        (pd.DataFrame({"a": ["x"], "b": ["y"]}), ValueError, "2 columns"),
        (12, TypeError, "got int"),
    ],
)
def test_bad_input_names_the_first_bad_item(tiny_text_model, bad, error, message):
    enc = TextEncoder(tiny_text_model, cache=None)
    with pytest.raises(error, match=message):
        enc.fit(bad)
    with pytest.raises(error, match=message):
        enc.transform(bad)


@pytest.mark.parametrize(
    "bad, error, message",
    [
        (
            ["ok", "fine", "good", "abc\ud800"],
            ValueError,
            r"position 3 contains a lone surrogate \('\\ud800' at character 3\)",
        ),
        (["ok", "caf\udce9 au lait"], ValueError, "position 1 contains a lone surrogate"),  # surrogateescape'd byte
        ({"a", "b"}, TypeError, r"got set \(unordered: row order would be arbitrary\); pass a list"),
        (frozenset({"a"}), TypeError, r"got frozenset \(unordered"),
        ({"a": "x", "b": "y"}, TypeError, r"got dict \(a mapping\); pass list\(X.values\(\)\)"),
        ({"a": 1}.keys(), TypeError, r"got dict_keys \(unordered"),
        ((t for t in ["a", "b"]), TypeError, r"got generator \(an iterator without a length"),
        (iter(["a", "b"]), TypeError, r"got list_iterator \(an iterator"),
    ],
    ids=["surrogate", "escaped-byte", "set", "frozenset", "dict", "dict-keys", "generator", "iterator"],
)
def test_lone_surrogates_and_unordered_containers_are_refused(tiny_text_model, bad, error, message):
    # Before: a tokenizer TypeError naming no row, or rows in set-iteration order.
    with pytest.raises(error, match=message):
        TextEncoder(tiny_text_model, cache=None).fit_transform(bad)


def test_non_ascii_text_is_still_valid(tiny_text_model):
    out = TextEncoder(tiny_text_model, cache=None).transform(["café", "naïve 日本語 \U0001f600", "plain"])
    assert out.shape == (3, 32) and np.isfinite(out).all()


def test_empty_strings_are_valid(tiny_text_model):
    out = TextEncoder(tiny_text_model, cache=None).transform(["", "", "x"])
    assert out.shape == (3, 32) and np.isfinite(out).all()
    np.testing.assert_allclose(out[0], out[1])


def test_init_stores_parameters_only(tmp_path):
    # A model that does not exist: construction must not look for it, fit must.
    enc = TextEncoder(str(tmp_path / "nowhere"), batch_size=-5, precision="fp8")
    assert enc.get_params()["batch_size"] == -5
    clone(enc)
    with pytest.raises(ValueError, match="batch_size"):
        enc.fit(["x"])


def test_invalid_parameters_fail_in_fit_with_sklearn_message(tiny_text_model):
    with pytest.raises(ValueError, match="precision"):
        TextEncoder(tiny_text_model, precision="fp8").fit(["x"])
    with pytest.raises(ValueError, match="pooling"):
        TextEncoder(tiny_text_model, pooling="median").transform(["x"])


def test_missing_model_error_says_what_was_looked_for():
    with pytest.raises(ModelNotFoundError) as info:
        TextEncoder("no-such-model-xyz").fit(["x"])
    msg = str(info.value)
    assert "no-such-model-xyz" in msg
    assert "Hugging Face cache" in msg and "scikit-deep[models]" in msg and "SKDEEP_ALLOW_DOWNLOAD" in msg


def test_clones_share_one_loaded_model(tiny_text_model):
    enc = TextEncoder(tiny_text_model, cache=None).fit(["x"])
    before = len(backend_registry.loaded_backends())
    for _ in range(5):
        clone(enc).fit(["y"]).transform(["z"])
    assert len(backend_registry.loaded_backends()) == before


def test_fitted_attributes_and_feature_names(tiny_text_model):
    enc = TextEncoder(tiny_text_model, cache=None).fit(TEXTS)
    assert enc.n_features_out_ == 32
    assert enc.model_origin_ == "path"
    assert len(enc.model_fingerprint_) == 32
    names = enc.get_feature_names_out()
    assert names.dtype == object and list(names[:2]) == ["textencoder0", "textencoder1"] and len(names) == 32


def test_set_output_pandas_keeps_the_series_index(tiny_text_model):
    series = pd.Series(TEXTS, index=[f"doc{i}" for i in range(len(TEXTS))])
    enc = TextEncoder(tiny_text_model, cache=None).set_output(transform="pandas")
    frame = enc.fit_transform(series)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.index) == list(series.index)
    assert list(frame.columns) == list(enc.get_feature_names_out())


def test_tags_declare_string_input_and_no_fit():
    tags = TextEncoder().__sklearn_tags__()
    assert tags.input_tags.string and not tags.input_tags.two_d_array
    assert tags.requires_fit is False


def test_works_unfitted_like_hashing_vectorizer(tiny_text_model):
    out = TextEncoder(tiny_text_model, cache=None).transform(["unfitted"])
    assert out.shape == (1, 32)


def test_requested_cuda_falls_back_to_cpu_with_warning(tiny_text_model):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present: the fallback applies to CPU-only machines")
    enc = TextEncoder(tiny_text_model, device="cuda", cache=None)
    with pytest.warns(RuntimeWarning, match="CUDA is not available"):
        out = enc.fit_transform(TEXTS)
    np.testing.assert_allclose(out, TextEncoder(tiny_text_model, cache=None).transform(TEXTS), atol=1e-6)


def test_show_progress_draws_a_bar(tiny_text_model, capsys):
    TextEncoder(tiny_text_model, show_progress=True, batch_size=2, cache=None).transform(TEXTS)
    assert "Embedding texts" in capsys.readouterr().err


@pytest.mark.parametrize("check_name", INPUT_AGNOSTIC_CHECKS)
def test_sklearn_input_agnostic_checks(check_name, tiny_text_model):
    import sklearn.utils.estimator_checks as checks

    getattr(checks, check_name)("TextEncoder", TextEncoder(tiny_text_model, cache=None))


def test_fit_is_idempotent_and_leaves_parameters_alone(tiny_text_model):
    enc = TextEncoder(tiny_text_model, cache=None)
    params = enc.get_params()
    first = enc.fit(TEXTS).transform(TEXTS)
    second = enc.fit(TEXTS[:2]).transform(TEXTS)
    np.testing.assert_array_equal(first, second)
    assert enc.get_params() == params
