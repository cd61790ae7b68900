"""TextEncoder speaks sentence-transformers: prompts, dtype / precision, truncate_dim, output quantisation,
long documents, dataframes, missing values (issue #14)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sentence_transformers import SentenceTransformer, quantize_embeddings
from sklearn.base import clone

from skdeep import TextEncoder
from skdeep.backends._tokens import window_spans
from skdeep.cache import EmbeddingCache
from skdeep.text import TextTruncationWarning

TEXTS = ["a good film", "bad", "the plot was dull", "great acting, slow start", "fun", "x"]
# ~ 450 tokens, over the tiny model's limit of 64; numbered words, so no stretch of tokens repeats.
LONG = " ".join(f"{w}{i}" for i, w in enumerate(["movie", "plot", "good", "bad", "film", "the"] * 15))


@pytest.fixture(scope="module")
def prompted_model(tiny_text_model, tmp_path_factory):
    """The tiny model with configured prompts, a default prompt, and prompt tokens left out of pooling."""
    from sentence_transformers.sentence_transformer import modules as models

    base = SentenceTransformer(tiny_text_model, device="cpu")
    pool = models.Pooling(32, pooling_mode="mean", include_prompt=False)
    model = SentenceTransformer(
        modules=[base[0], pool],
        device="cpu",
        prompts={"query": "query: ", "passage": "passage: "},
        default_prompt_name="passage",
    )
    path = str(tmp_path_factory.mktemp("prompted") / "model")
    model.save(path)
    return path


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TextTruncationWarning)
        return fn(*args, **kwargs)


# ------------------------------------------------------------------------------------------ prompts


def test_prompt_matches_sentence_transformers_and_changes_vector_and_key(tiny_text_model):
    reference = SentenceTransformer(tiny_text_model, device="cpu")
    enc = TextEncoder(tiny_text_model, prompt="query: ", cache=None)
    out = enc.transform(TEXTS)
    np.testing.assert_allclose(out, reference.encode(TEXTS, prompt="query: "), atol=1e-5)
    plain = TextEncoder(tiny_text_model, cache=None)
    assert not np.allclose(out, plain.transform(TEXTS), atol=1e-3)
    assert set(enc._item_keys(TEXTS)).isdisjoint(plain._item_keys(TEXTS))


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_prompt_name_and_default_prompt_from_the_model_config(prompted_model, backend):
    reference = SentenceTransformer(prompted_model, device="cpu")
    by_name = TextEncoder(prompted_model, prompt_name="query", backend=backend, cache=None).transform(TEXTS)
    # include_prompt=False: the prompt's tokens are left out of the mean, as sentence-transformers does.
    np.testing.assert_allclose(by_name, reference.encode(TEXTS, prompt_name="query"), atol=1e-4)
    by_text = TextEncoder(prompted_model, prompt="query: ", backend=backend, cache=None).transform(TEXTS)
    np.testing.assert_allclose(by_name, by_text, atol=1e-6)
    default = TextEncoder(prompted_model, backend=backend, cache=None).transform(TEXTS)
    np.testing.assert_allclose(default, reference.encode(TEXTS), atol=1e-4)  # the "passage" default
    np.testing.assert_allclose(default, reference.encode(TEXTS, prompt="passage: "), atol=1e-4)
    # An explicit empty prompt switches the default off.
    np.testing.assert_allclose(
        TextEncoder(prompted_model, prompt="", backend=backend, cache=None).transform(TEXTS),
        reference.encode(TEXTS, prompt=""),
        atol=1e-4,
    )


def test_prompt_errors_are_clear(prompted_model):
    with pytest.raises(ValueError, match=r"prompt_name='qeury' is not one of the prompts .*'passage', 'query'\]"):
        TextEncoder(prompted_model, prompt_name="qeury").fit(TEXTS)
    with pytest.raises(ValueError, match="prompt or prompt_name, not both"):
        TextEncoder(prompted_model, prompt="q: ", prompt_name="query").fit(TEXTS)


# ------------------------------------------------------------------------------------------ dtype and precision


def test_legacy_precision_maps_to_dtype_with_a_future_warning(tiny_text_model, monkeypatch):
    from skdeep import devices

    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: False)  # the fallback (see test_cpu_backends.py)
    with pytest.warns(FutureWarning, match=r"precision='bf16' is deprecated.*dtype='bfloat16'"):
        old = TextEncoder(tiny_text_model, precision="bf16", cache=None).fit_transform(TEXTS)
    assert old.dtype == np.float32
    with pytest.warns(UserWarning, match="bfloat16 natively"):
        new = TextEncoder(tiny_text_model, dtype="bfloat16", cache=None).fit_transform(TEXTS)
    np.testing.assert_array_equal(old, new)
    with pytest.raises(ValueError, match="conflicts with dtype"):
        TextEncoder(tiny_text_model, precision="fp16", dtype="bfloat16").fit(TEXTS)
    with pytest.raises(ValueError, match="precision"):
        TextEncoder(tiny_text_model, precision="fp8").fit(TEXTS)


def test_effective_dtype_on_each_device(monkeypatch):
    import torch

    from skdeep import devices
    from skdeep.backends.text import effective_dtype

    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: False)  # bf16 on CPUs with it: test_cpu_backends.py
    cpu = torch.device("cpu")
    assert effective_dtype("auto", cpu) == "float32" and effective_dtype("bfloat16", cpu) == "float32"
    assert effective_dtype("float16", torch.device("cuda")) == "float16"
    assert effective_dtype("auto", torch.device("mps")) == "float16"


def test_old_pickles_get_the_new_parameters(tiny_text_model):
    enc = TextEncoder(tiny_text_model, cache=None)
    state = enc.__getstate__()
    for name in ("prompt", "dtype", "truncate_dim", "long_text", "missing", "model_kwargs"):
        state.pop(name)
    state["precision"] = "fp16"
    restored = TextEncoder.__new__(TextEncoder)
    restored.__setstate__(state)
    params = restored.get_params()
    assert params["dtype"] == "float16" and params["precision"] == "float32" and params["long_text"] == "truncate"


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
def test_quantised_output_matches_sentence_transformers(tiny_text_model, precision):
    train, test = TEXTS, ["another film", "a dull plot", "good good good"]
    float_train = TextEncoder(tiny_text_model, normalize=True, cache=None).transform(train)
    float_test = TextEncoder(tiny_text_model, normalize=True, cache=None).transform(test)
    enc = TextEncoder(tiny_text_model, normalize=True, precision=precision, cache=None)
    got_train = enc.fit_transform(train)
    np.testing.assert_array_equal(got_train, quantize_embeddings(float_train, precision=precision))
    expected_dtype = np.int8 if precision in ("int8", "binary") else np.uint8
    assert got_train.dtype == expected_dtype
    assert enc.n_features_out_ == got_train.shape[1] == (4 if precision.endswith("binary") else 32)
    got_test = enc.transform(test)
    if precision.endswith("int8"):
        # New texts are quantised on the ranges learned in fit, as a calibration set would be.
        assert enc.quantization_ranges_.shape == (2, 32)
        expected = quantize_embeddings(float_test, precision=precision, ranges=enc.quantization_ranges_)
    else:
        expected = quantize_embeddings(float_test, precision=precision)
    np.testing.assert_array_equal(got_test, expected)
    # Unfitted, int8 calibrates on the batch, like SentenceTransformer.encode(precision="int8").
    unfitted = TextEncoder(tiny_text_model, normalize=True, precision=precision, cache=None).transform(test)
    np.testing.assert_array_equal(unfitted, quantize_embeddings(float_test, precision=precision))


def test_int8_without_ranges_on_one_text_says_to_fit(tiny_text_model):
    with pytest.raises(ValueError, match="fit the encoder on representative texts"):
        TextEncoder(tiny_text_model, precision="int8", cache=None).transform(["one"])


# ------------------------------------------------------------------------------------------ truncate_dim


@pytest.mark.parametrize("normalize", [False, True])
def test_truncate_dim_is_the_first_columns_renormalised(tiny_text_model, normalize):
    full = TextEncoder(tiny_text_model, cache=None).transform(TEXTS)
    enc = TextEncoder(tiny_text_model, truncate_dim=8, normalize=normalize, cache=None)
    got = enc.fit_transform(TEXTS)
    expected = full[:, :8]
    if normalize:
        expected = expected / np.linalg.norm(expected, axis=1, keepdims=True)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert enc.n_features_out_ == 8 and len(enc.get_feature_names_out()) == 8
    reference = SentenceTransformer(tiny_text_model, device="cpu", truncate_dim=8)
    np.testing.assert_allclose(got, reference.encode(TEXTS, normalize_embeddings=normalize), atol=1e-5)


def test_truncate_dim_larger_than_the_model_is_an_error(tiny_text_model):
    with pytest.raises(ValueError, match="truncate_dim=64 is larger than the model's 32 dimensions"):
        TextEncoder(tiny_text_model, truncate_dim=64, cache=None).transform(TEXTS)


# ------------------------------------------------------------------------------------------ long documents


@pytest.mark.parametrize("n, window, overlap", [(1, 4, 0), (10, 4, 1), (100, 7, 3), (33, 32, 0), (257, 50, 49)])
def test_window_spans_cover_every_token_with_full_windows(n, window, overlap):
    spans = window_spans(n, window, overlap)
    covered = np.zeros(n, dtype=int)
    for a, b in spans:
        covered[a:b] += 1
        assert b - a == min(window, n)
    assert covered.min() >= 1 and spans[0][0] == 0 and spans[-1][1] == n
    for (_, b1), (a2, _) in zip(spans, spans[1:]):
        assert b1 - a2 >= overlap  # neighbours share at least `overlap` tokens


def test_chunking_covers_every_token_and_pools_the_windows(tiny_text_model):
    enc = TextEncoder(tiny_text_model, long_text="chunk", prompt="q: ", chunk_overlap=0.25, cache=None)
    backend = enc._backend(enc._source())
    tok = backend.tokens
    body = tok.tokenizer(LONG, add_special_tokens=False, verbose=False)["input_ids"]
    prefix, suffix = tok.specials()
    prompt_ids, _ = tok.prompt("q: ")
    tokenized = tok([LONG], prompt="q: ", long_text="chunk", overlap=0.25)
    windows = tokenized.sequences
    assert len(windows) > 1 and all(len(w) <= 64 for w in windows)
    n_inner = len(prefix) + len(prompt_ids)
    inner = [w[n_inner : len(w) - len(suffix)] for w in windows]
    assert all(w[:n_inner] == (*prefix, *prompt_ids) for w in windows)  # every window has the prompt
    # Every token of the document is in some window, in order.
    seen = np.zeros(len(body), dtype=bool)
    position = 0
    for part in inner:
        start = next(s for s in range(position, len(body)) if tuple(body[s : s + len(part)]) == tuple(part))
        seen[start : start + len(part)] = True
        position = start + 1
    assert seen.all()
    # The document's vector is the mean of its windows' vectors.
    got = enc.transform([LONG, "short"])
    expected = backend.forward(windows, prompt_length=None).mean(axis=0)
    np.testing.assert_allclose(got[0], expected, atol=1e-5)
    short = TextEncoder(tiny_text_model, prompt="q: ", cache=None).transform(["short"])[0]
    np.testing.assert_allclose(got[1], short, atol=1e-5)  # batched with padding: float noise only


def test_chunk_pooling_modes_and_shared_cache_with_truncate(tiny_text_model):
    cache = EmbeddingCache()
    truncated = _quiet(TextEncoder(tiny_text_model, cache=cache).transform, TEXTS + [LONG])
    before = len(cache)
    enc = TextEncoder(tiny_text_model, long_text="chunk", chunk_pooling=("mean", "max", "first"), cache=cache)
    out = enc.fit_transform(TEXTS + [LONG])
    assert out.shape == (len(TEXTS) + 1, 96) and enc.n_features_out_ == 96
    # Texts that fit are the same input in both modes: only the long text's windows are new.
    np.testing.assert_array_equal(out[:-1, :32], truncated[:-1])
    np.testing.assert_array_equal(out[:-1, 32:64], truncated[:-1])
    n_windows = len(enc._item_keys([LONG]))
    assert len(cache) == before + n_windows - 1  # its first window is the truncated text itself
    np.testing.assert_array_equal(out[-1, 64:], truncated[-1])  # "first": the truncated text
    assert (out[-1, 32:64] >= out[-1, :32] - 1e-6).all()  # max >= mean


def test_truncation_warns_once_per_transform_with_counts(tiny_text_model):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        TextEncoder(tiny_text_model, cache=None).transform(TEXTS + [LONG, LONG + "!"])
    messages = [str(w.message) for w in seen if issubclass(w.category, TextTruncationWarning)]
    assert len(messages) == 1 and messages[0].startswith("2 of 8 texts are longer than 64 tokens")
    with warnings.catch_warnings():
        warnings.simplefilter("error", TextTruncationWarning)
        TextEncoder(tiny_text_model, long_text="chunk", cache=None).transform([LONG])
        TextEncoder(tiny_text_model, cache=None).transform(TEXTS)


def test_chunk_window_too_small_is_refused(tiny_text_model):
    with pytest.raises(ValueError, match="leaves .* tokens per window"):
        TextEncoder(tiny_text_model, long_text="chunk", max_length=8, prompt="a long prompt!", cache=None).transform(
            [LONG]
        )


# ------------------------------------------------------------------------------------------ dataframes


def _frames(values, name="review"):
    import polars as pl
    import pyarrow as pa

    return {
        "pandas-series": pd.Series(values, name=name),
        "pandas-frame": pd.DataFrame({name: values}),
        "polars-series": pl.Series(name, values),
        "polars-frame": pl.DataFrame({name: values}),
        "pyarrow-chunked": pa.chunked_array([values]),
        "pyarrow-array": pa.array(values),
        "pyarrow-table": pa.table({name: values}),
    }


def test_polars_and_pyarrow_inputs_give_the_pandas_output(tiny_text_model):
    enc = TextEncoder(tiny_text_model, cache=None)
    expected = enc.transform(TEXTS)
    for kind, X in _frames(TEXTS).items():
        np.testing.assert_array_equal(enc.transform(X), expected, err_msg=kind)
        fitted = clone(enc).fit(X)
        names = list(fitted.get_feature_names_out()[:2])
        unnamed = kind in ("pyarrow-array", "pyarrow-chunked")  # Arrow arrays carry no name
        assert names == (["textencoder0", "textencoder1"] if unnamed else ["review_0", "review_1"])


def test_polars_output_and_column_transformer_on_a_polars_frame(tiny_text_model):
    import polars as pl
    from sklearn.compose import ColumnTransformer

    frame = pl.DataFrame({"review": TEXTS, "stars": np.arange(len(TEXTS), dtype=float)})
    ct = ColumnTransformer(
        [("text", TextEncoder(tiny_text_model, truncate_dim=4, cache=None), "review")], remainder="passthrough"
    ).set_output(transform="polars")
    out = ct.fit_transform(frame)
    assert isinstance(out, pl.DataFrame)
    assert out.columns == ["text__review_0", "text__review_1", "text__review_2", "text__review_3", "remainder__stars"]
    np.testing.assert_allclose(
        out.select(pl.exclude("remainder__stars")).to_numpy(),
        TextEncoder(tiny_text_model, cache=None).transform(TEXTS)[:, :4],
        atol=1e-6,
    )


def test_a_non_text_column_names_the_column(tiny_text_model):
    import polars as pl

    with pytest.raises(TypeError, match=r"position 0 has type int \(1\) \(column 'stars'\)"):
        TextEncoder(tiny_text_model, cache=None).transform(pl.Series("stars", [1, 2]))
    with pytest.raises(ValueError, match="2 columns"):
        TextEncoder(tiny_text_model, cache=None).transform(pl.DataFrame({"a": ["x"], "b": ["y"]}))


# ------------------------------------------------------------------------------------------ missing values


@pytest.mark.parametrize("kind", ["list", "pandas-series", "polars-series", "pyarrow-chunked"])
def test_missing_values_raise_embed_empty_or_give_zero_rows(tiny_text_model, kind):
    values = ["a good film", None, "bad"]
    X = values if kind == "list" else _frames(values)[kind]
    with pytest.raises(ValueError, match=r"position 1 is (None|NaN) \(a missing value\).*missing='empty'"):
        TextEncoder(tiny_text_model, cache=None).transform(X)
    expected = TextEncoder(tiny_text_model, cache=None).transform(["a good film", "", "bad"])
    np.testing.assert_array_equal(TextEncoder(tiny_text_model, missing="empty", cache=None).transform(X), expected)
    cache = EmbeddingCache()
    zero = TextEncoder(tiny_text_model, missing="zero", normalize=True, cache=cache)
    out = zero.fit_transform(X)
    assert (out[1] == 0).all() and np.allclose(np.linalg.norm(out[[0, 2]], axis=1), 1.0)
    assert len(cache) == 2  # the missing row never reached the model nor the cache
    assert zero.__sklearn_tags__().input_tags.allow_nan


def test_all_missing_with_zero_gives_zeros_of_the_output_width(tiny_text_model):
    out = TextEncoder(tiny_text_model, missing="zero", truncate_dim=5, cache=None).fit_transform([None, float("nan")])
    assert out.shape == (2, 5) and not out.any()


# ------------------------------------------------------------------------------------------ the model source


def test_downloads_follow_hf_hub_offline(monkeypatch):
    from skdeep import _config

    monkeypatch.delenv("SKDEEP_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not _config.downloads_allowed()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert _config.downloads_allowed() and not _config.downloads_allowed(local_files_only=True)
    monkeypatch.setattr(_config, "_warned_allow_download", False)
    monkeypatch.setenv("SKDEEP_ALLOW_DOWNLOAD", "0")
    with pytest.warns(FutureWarning, match="SKDEEP_ALLOW_DOWNLOAD is deprecated"):
        assert not _config.downloads_allowed()


def test_revision_and_local_files_only_reach_the_hub_client(tiny_text_model, monkeypatch):
    import huggingface_hub

    from skdeep.sources import ModelNotFoundError

    calls = []

    def fake_snapshot_download(repo_id, revision=None, local_files_only=False, **kwargs):
        calls.append((repo_id, revision, local_files_only))
        if repo_id == "org/tiny" and revision == "v1" and local_files_only:
            return tiny_text_model
        raise FileNotFoundError(repo_id)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    enc = TextEncoder("org/tiny", revision="v1", cache=None).fit(["x"])
    assert enc.model_origin_ == "hf-cache" and calls == [("org/tiny", "v1", True)]
    calls.clear()
    # Not in the cache at revision v2, and local_files_only forbids the download a normal run would try.
    with pytest.raises(ModelNotFoundError, match="at revision 'v2'"):
        TextEncoder("org/tiny", revision="v2", local_files_only=True).fit(["x"])
    assert calls == [("org/tiny", "v2", True)]


def test_model_kwargs_reach_the_model_and_the_key(tiny_text_model):
    enc = TextEncoder(tiny_text_model, model_kwargs={"attn_implementation": "eager"}, cache=None)
    out = enc.fit_transform(TEXTS)
    np.testing.assert_allclose(out, TextEncoder(tiny_text_model, cache=None).transform(TEXTS), atol=1e-5)
    backend = enc._backend(enc._source())
    assert backend.model[0].auto_model.config._attn_implementation == "eager"
    assert set(enc._item_keys(TEXTS)).isdisjoint(TextEncoder(tiny_text_model)._item_keys(TEXTS))


def test_warm_transforms_do_not_tokenise_and_lazy_ids_fill_cache_misses(tiny_text_model, monkeypatch):
    from skdeep.backends._tokens import TextTokenizer

    texts = [f"review number {i}" for i in range(20)] + [LONG]
    enc = TextEncoder(tiny_text_model, long_text="chunk", cache=EmbeddingCache())
    first = enc.transform(texts)
    calls = []
    real_call = TextTokenizer.__call__
    monkeypatch.setattr(
        TextTokenizer, "__call__", lambda self, t, **kw: (calls.append(len(t)), real_call(self, t, **kw))[1]
    )
    np.testing.assert_array_equal(enc.transform(texts), first)
    assert calls == []  # keys come from the per-process memo, vectors from the cache
    # A new, empty cache: the memoised keys all miss, and the token ids are computed in one batch.
    fresh = clone(enc).set_params(cache=EmbeddingCache())
    np.testing.assert_allclose(fresh.transform(texts), first, atol=1e-6)
    assert calls == [len(texts)]


def test_trust_remote_code_reaches_sentence_transformers_and_names_its_own_backend(tiny_text_model, monkeypatch):
    import sentence_transformers

    from skdeep.backends import clear_backends

    seen = []
    real = sentence_transformers.SentenceTransformer

    def recording(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return real(*args, **kwargs)

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", recording)
    clear_backends()
    trusted = TextEncoder(tiny_text_model, trust_remote_code=True, cache=None)
    plain = TextEncoder(tiny_text_model, cache=None)
    np.testing.assert_array_equal(trusted.fit_transform(TEXTS), plain.fit_transform(TEXTS))
    assert seen == [True, False]  # two backends: one loaded with remote code allowed, one without
    assert trusted._item_keys(TEXTS) == plain._item_keys(TEXTS)  # the same weights give the same vectors
