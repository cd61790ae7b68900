"""The shared engine with a fake backend that counts what reaches the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skdeep.cache import EmbeddingCache
from skdeep.devices import run_in_batches
from skdeep.engine import ENCODE_LOG_ENV, content_keys, encode_with_cache, settings_namespace
from skdeep.text import TextEncoder


class CountingModel:
    """Embeds a string as [len, ord(first char), position-free hash]; counts every row it sees."""

    def __init__(self):
        self.rows = 0
        self.calls = 0

    def __call__(self, items):
        self.calls += 1
        self.rows += len(items)
        return np.array([[len(s), ord(s[0]) if s else 0, hash(s) % 997] for s in items], dtype=np.float32)


def _keys(items, settings=None):
    return content_keys(settings_namespace(settings or {"m": 1}), [s.encode() for s in items])


def test_duplicates_within_a_call_are_embedded_once_and_order_is_kept():
    model = CountingModel()
    items = ["b", "a", "b", "c", "a", "b"]
    out = encode_with_cache(items, _keys(items), cache=None, encode_misses=model)
    assert model.rows == 3
    np.testing.assert_array_equal(out, model(items))


def test_cache_hits_never_reach_the_model():
    cache = EmbeddingCache(memory_bytes=1 << 20)
    model = CountingModel()
    first = ["x", "y", "z"]
    encode_with_cache(first, _keys(first), cache=cache, encode_misses=model)
    assert model.rows == 3
    mixed = ["z", "new", "x", "new", "y"]
    out = encode_with_cache(mixed, _keys(mixed), cache=cache, encode_misses=model)
    assert model.rows == 4  # only "new", once
    np.testing.assert_array_equal(out, CountingModel()(mixed))


def test_settings_namespace_separates_outputs_of_different_settings():
    cache = EmbeddingCache(memory_bytes=1 << 20)
    model = CountingModel()
    encode_with_cache(["x"], _keys(["x"], {"normalize": False}), cache=cache, encode_misses=model)
    encode_with_cache(["x"], _keys(["x"], {"normalize": True}), cache=cache, encode_misses=model)
    assert model.rows == 2
    assert settings_namespace({"a": 1, "b": 2}) == settings_namespace({"b": 2, "a": 1})


def test_encode_log_counts_rows_reaching_the_model(tmp_path, monkeypatch):
    log = tmp_path / "encoded.log"
    monkeypatch.setenv(ENCODE_LOG_ENV, str(log))
    items = ["p", "q", "p"]
    encode_with_cache(items, _keys(items), cache=None, encode_misses=CountingModel())
    assert log.read_text().split() == ["2"]


def test_backend_returning_wrong_shape_is_an_error_not_a_silent_answer():
    with pytest.raises(RuntimeError, match="shape"):
        encode_with_cache(["a", "b"], _keys(["a", "b"]), cache=None, encode_misses=lambda xs: np.zeros((1, 3)))


SHORT = ["a good film", "bad"]
LONG = ["the movie was bad, really bad and far too long for what it had to say about anything"]


@pytest.mark.parametrize(
    "change, same_key",
    [
        ({"batch_size": 2}, True),
        ({"device": "cpu"}, True),
        ({"show_progress": True}, True),
        # Applied after the cache (a grid over them embeds nothing new; issue #14).
        ({"normalize": True}, True),
        ({"truncate_dim": 8}, True),
        ({"precision": "int8"}, True),
        ({"precision": "binary"}, True),
        ({"chunk_pooling": ("mean", "max")}, True),
        ({"missing": "zero"}, True),
        # Truncation is keyed by the token ids the model sees: short texts are unaffected.
        ({"max_length": 16}, True),
        # On a CPU, float16 computes in float32: same vectors, same keys (bfloat16, which CPUs with
        # native support run, is in test_cpu_backends.py).
        ({"dtype": "float16"}, True),
        ({"num_threads": 1}, True),
        ({"pooling": "cls"}, False),
        ({"prompt": "query: "}, False),
        ({"backend": "onnx"}, False),
    ],
)
def test_only_output_changing_settings_change_the_key(tiny_text_model, change, same_key):
    import warnings

    base = TextEncoder(tiny_text_model)
    other = TextEncoder(tiny_text_model, **change)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert (base._item_keys(SHORT) == other._item_keys(SHORT)) is same_key


def test_max_length_changes_the_keys_of_long_texts_only(tiny_text_model):
    full = TextEncoder(tiny_text_model)._item_keys(SHORT + LONG)
    cut = TextEncoder(tiny_text_model, max_length=16)._item_keys(SHORT + LONG)
    assert full[:2] == cut[:2] and full[2] != cut[2]
    # A limit above every text's length is the same input as no limit at all.
    assert TextEncoder(tiny_text_model, max_length=60)._item_keys(SHORT + LONG) == full


def test_text_encoder_uses_the_cache_and_matches_uncached_output(tiny_text_model):
    cache = EmbeddingCache(memory_bytes=1 << 22)
    texts = ["one", "two", "three", "two"]
    cached_enc = TextEncoder(tiny_text_model, cache=cache)
    first = cached_enc.transform(texts)
    assert cache.stats.misses >= 3
    hits_before = cache.stats.hits
    second = cached_enc.transform(texts)
    assert cache.stats.hits - hits_before == 4
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, TextEncoder(tiny_text_model, cache=None).transform(texts), atol=1e-6)


def test_out_of_memory_halves_the_batch_and_retries():
    seen = []

    def encode_batch(chunk):
        seen.append(len(chunk))
        if len(chunk) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return np.ones((len(chunk), 1))

    with pytest.warns(RuntimeWarning, match="batch_size=4"):
        parts = run_in_batches(encode_batch, list(range(10)), 8)
    assert sum(len(p) for p in parts) == 10
    assert seen[:3] == [8, 4, 2] and set(seen[3:]) <= {2}


def test_other_errors_are_not_swallowed_as_out_of_memory():
    def encode_batch(chunk):
        raise RuntimeError("shape mismatch in layer 3")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_in_batches(encode_batch, [1, 2, 3], 2)


def test_out_of_memory_at_batch_one_is_raised():
    def encode_batch(chunk):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.warns(RuntimeWarning), pytest.raises(torch.cuda.OutOfMemoryError):
        run_in_batches(encode_batch, [1, 2], 2)
