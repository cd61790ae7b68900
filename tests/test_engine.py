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


@pytest.mark.parametrize(
    "change, same_key",
    [
        ({"batch_size": 2}, True),
        ({"device": "cpu"}, True),
        ({"show_progress": True}, True),
        # Normalisation is applied after the cache (a grid over it embeds nothing new; issue #14).
        ({"normalize": True}, True),
        ({"max_length": 8}, False),
        ({"pooling": "cls"}, False),
        ({"precision": "bf16"}, False),
    ],
)
def test_only_output_changing_settings_change_the_key(tiny_text_model, change, same_key):
    from skdeep.sources import resolve_text_model

    source = resolve_text_model(tiny_text_model)
    base = TextEncoder(tiny_text_model)
    other = TextEncoder(tiny_text_model, **change)
    key_a = settings_namespace(base._output_settings(source))
    key_b = settings_namespace(other._output_settings(source))
    assert (key_a == key_b) is same_key


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
