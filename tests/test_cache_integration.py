"""The cache seen from the encoders: grid searches embed each text once, across processes too."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from skdeep import EmbeddingCache, TextEncoder
from skdeep.cache import DB_FILENAME, CacheWarning
from skdeep.engine import ENCODE_LOG_ENV

C_VALUES = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0]
WORDS = ["good", "bad", "film", "plot", "acting", "dull", "great", "slow", "fun", "long"]


def _corpus(n=60, seed=0):
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(2, 7))) + f" #{i}" for i in range(n)]
    labels = np.array([int("good" in t or "great" in t or "fun" in t) for t in texts])
    return texts, labels


def _encoded_rows(log) -> list[int]:
    return [int(x) for x in log.read_text().split()] if log.exists() else []


@pytest.fixture
def encode_log(tmp_path, monkeypatch):
    log = tmp_path / "encoded.log"
    monkeypatch.setenv(ENCODE_LOG_ENV, str(log))
    # loky workers inherit the environment when spawned: start fresh ones that see the log path.
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)
    yield log
    get_reusable_executor().shutdown(wait=True)


def _grid(encoder):
    return GridSearchCV(
        make_pipeline(encoder, LogisticRegression(max_iter=500)), {"logisticregression__C": C_VALUES}, cv=5
    )


def test_grid_search_embeds_each_unique_text_once_in_memory(tiny_text_model, encode_log):
    texts, labels = _corpus()
    grid = _grid(TextEncoder(tiny_text_model, cache=EmbeddingCache())).fit(texts, labels)
    # 8 candidates x 5 folds + refit = 41 fits over the same 60 texts: 60 rows reach the model.
    assert sum(_encoded_rows(encode_log)) == len(set(texts))
    uncached = _grid(TextEncoder(tiny_text_model, cache=None)).fit(texts, labels)
    np.testing.assert_allclose(grid.cv_results_["mean_test_score"], uncached.cv_results_["mean_test_score"])


def test_default_cache_is_shared_by_clones(tiny_text_model, encode_log):
    texts, _ = _corpus(seed=1)
    enc = TextEncoder(tiny_text_model)  # cache="auto": the process-wide memory cache
    enc.fit_transform(texts)
    clone(enc).transform(texts)
    assert sum(_encoded_rows(encode_log)) == len(texts)


def test_parallel_grid_search_with_disk_cache_embeds_each_text_once(tiny_text_model, encode_log, tmp_path):
    texts, labels = _corpus(n=80, seed=2)
    encoder = TextEncoder(tiny_text_model, cache=str(tmp_path / "cache"))
    grid = _grid(encoder).set_params(n_jobs=2).fit(texts, labels)
    rows = _encoded_rows(encode_log)
    # Two loky workers miss the same texts at the same moment; compute claims make one wait for
    # the other instead of embedding them twice.
    assert sum(rows) == len(set(texts)), rows
    serial = _grid(TextEncoder(tiny_text_model, cache=None)).fit(texts, labels)
    np.testing.assert_allclose(grid.cv_results_["mean_test_score"], serial.cv_results_["mean_test_score"])


def test_second_process_with_same_disk_cache_embeds_nothing(tiny_text_model, encode_log, tmp_path):
    texts, _ = _corpus(seed=3)
    cache_dir = tmp_path / "cache"
    first = TextEncoder(tiny_text_model, cache=str(cache_dir)).transform(texts)
    assert sum(_encoded_rows(encode_log)) == len(texts)
    np.save(tmp_path / "first.npy", first)
    code = f"""
        import numpy as np
        from skdeep import TextEncoder
        out = TextEncoder({tiny_text_model!r}, cache={str(cache_dir)!r}).transform({texts!r})
        np.testing.assert_array_equal(out, np.load({str(tmp_path / "first.npy")!r}))
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert sum(_encoded_rows(encode_log)) == len(texts)  # nothing new reached a model


def test_encoders_with_different_settings_sharing_a_directory_never_mix(tiny_text_model, tmp_path):
    texts, _ = _corpus(n=20, seed=4)
    cache_dir = str(tmp_path / "shared")
    variants = [{}, {"normalize": True}, {"pooling": "cls"}, {"max_length": 5}]
    for params in variants:  # fill the shared cache with every variant
        TextEncoder(tiny_text_model, cache=cache_dir, **params).transform(texts)
    for params in variants:  # and read each back: must equal the uncached output of that variant
        got = TextEncoder(tiny_text_model, cache=EmbeddingCache(cache_dir), **params).transform(texts)
        np.testing.assert_allclose(got, TextEncoder(tiny_text_model, cache=None, **params).transform(texts), atol=1e-6)


def test_corrupted_store_warns_and_recomputes_correct_vectors(tiny_text_model, tmp_path):
    texts, _ = _corpus(n=30, seed=5)
    cache_dir = tmp_path / "cache"
    expected = TextEncoder(tiny_text_model, cache=None).transform(texts)
    TextEncoder(tiny_text_model, cache=EmbeddingCache(cache_dir, memory_bytes=0)).transform(texts)
    db = cache_dir / DB_FILENAME
    for suffix in ("-wal", "-shm"):
        (cache_dir / (DB_FILENAME + suffix)).unlink(missing_ok=True)
    data = bytearray(db.read_bytes())
    data[:100] = os.urandom(100)  # destroy the header
    db.write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        got = TextEncoder(tiny_text_model, cache=EmbeddingCache(cache_dir, memory_bytes=0)).transform(texts)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert any(issubclass(w.category, CacheWarning) for w in seen)
    # The store was rebuilt: the next encoder reads from it again.
    cache = EmbeddingCache(cache_dir, memory_bytes=0)
    again = TextEncoder(tiny_text_model, cache=cache).transform(texts)
    np.testing.assert_allclose(again, expected, atol=1e-6)
    assert cache.stats.hits == len(texts)


def test_cache_travels_with_clone_and_pickle_as_a_reference(tiny_text_model, tmp_path):
    import pickle

    cache_dir = str(tmp_path / "c")
    enc = TextEncoder(tiny_text_model, cache=EmbeddingCache(cache_dir))
    enc.transform(_corpus(n=200)[0])
    blob = pickle.dumps(enc)
    assert len(blob) < 5_000
    restored = pickle.loads(blob)
    assert str(restored.cache.directory) == cache_dir
    assert str(clone(enc).cache.directory) == cache_dir


def test_parallel_grid_search_with_the_default_cache_embeds_each_text_once(tiny_text_model, encode_log):
    from skdeep.cache import _auto

    shared = _auto.session_dir()
    texts, labels = _corpus(n=80, seed=11)
    try:
        # cache="auto" (the default): the loky workers share one temporary disk cache named after this
        # process, and the refit here reads it, so 41 fits across 2 workers embed each text once.
        grid = _grid(TextEncoder(tiny_text_model)).set_params(n_jobs=2).fit(texts, labels)
        rows = _encoded_rows(encode_log)
        assert sum(rows) == len(set(texts)), rows
        assert shared.is_dir()
        serial = _grid(TextEncoder(tiny_text_model, cache=None)).fit(texts, labels)
        np.testing.assert_allclose(grid.cv_results_["mean_test_score"], serial.cv_results_["mean_test_score"])
    finally:
        import shutil

        shutil.rmtree(shared, ignore_errors=True)


def test_stale_shared_directories_of_dead_parents_are_removed(tmp_path):
    from skdeep.cache import _auto

    root = _auto.session_dir().parent
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = root / f"{int(dead.stdout)}-123"
    stale.mkdir()
    alive = root / f"{os.getpid()}-{_auto._process_start(os.getpid())}"
    alive.mkdir(exist_ok=True)
    try:
        _auto._swept = False
        _auto._sweep(root)
        assert not stale.exists() and alive.exists()
    finally:
        import shutil

        shutil.rmtree(alive, ignore_errors=True)
        shutil.rmtree(stale, ignore_errors=True)


def test_grid_over_post_processing_embeds_each_text_once(tiny_text_model, encode_log):
    texts, labels = _corpus(n=60, seed=12)
    grid = GridSearchCV(
        make_pipeline(TextEncoder(tiny_text_model, cache=EmbeddingCache()), LogisticRegression(max_iter=300)),
        {
            "textencoder__normalize": [False, True],
            "textencoder__truncate_dim": [None, 8],
            "textencoder__precision": ["float32", "int8", "binary"],
        },
        cv=3,
    ).fit(texts, labels)
    assert len(grid.cv_results_["params"]) == 12
    # 12 candidates x 3 folds + refit, and fit() of int8 embeds too: still each text once.
    assert sum(_encoded_rows(encode_log)) == len(set(texts))


def test_grid_over_max_length_re_embeds_only_the_texts_it_cuts(tiny_text_model, encode_log):
    from skdeep.text import TextEncoder as _TE

    texts, labels = _corpus(n=60, seed=13)
    texts = [t + " and more" * (12 if i % 5 == 0 else 0) for i, t in enumerate(texts)]  # 12 long texts
    lengths = _TE(tiny_text_model)._backend(_TE(tiny_text_model)._source()).tokens(texts).lengths
    n_longer = int((lengths > 16).sum())
    assert 0 < n_longer < len(texts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        GridSearchCV(
            make_pipeline(TextEncoder(tiny_text_model, cache=EmbeddingCache()), LogisticRegression(max_iter=300)),
            {"textencoder__max_length": [None, 16]},
            cv=3,
        ).fit(texts, labels)
    # max_length=16 changes what the model sees only for texts longer than 16 tokens.
    assert sum(_encoded_rows(encode_log)) == len(set(texts)) + n_longer
