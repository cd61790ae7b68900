"""Fitted pipelines pickle by reference, load in a fresh process, and guard against changed weights."""

from __future__ import annotations

import os
import shutil
import warnings

import joblib
import numpy as np
import pytest
from conftest import build_tiny_text_model, run_fresh_process
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from skdeep import FingerprintMismatchError, ModelNotFoundError, TextEncoder

TEXTS = ["good film", "bad film", "a good movie", "the bad movie", "good", "bad"] * 3
LABELS = [1, 0, 1, 0, 1, 0] * 3


def _fit_pipeline(model_path, **encoder_params):
    pipe = make_pipeline(TextEncoder(model_path, cache=None, **encoder_params), LogisticRegression())
    return pipe.fit(TEXTS, LABELS)


def test_pickle_is_small_and_loads_in_fresh_process_with_identical_predictions(own_model, tmp_path):
    pipe = _fit_pipeline(own_model)
    path = tmp_path / "pipe.joblib"
    joblib.dump(pipe, path)
    assert path.stat().st_size < 20_000  # by reference: no weights inside
    expected = pipe.predict_proba(TEXTS)
    np.save(tmp_path / "expected.npy", expected)
    out = run_fresh_process(
        f"""
        import joblib, numpy as np
        pipe = joblib.load({str(path)!r})
        got = pipe.predict_proba({TEXTS!r})
        np.testing.assert_allclose(got, np.load({str(tmp_path / "expected.npy")!r}),
                                   atol=1e-6)
        print("same", pipe[0].model_fingerprint_)
        """,
        tmp_path,
    )
    assert out.startswith("same " + pipe[0].model_fingerprint_)


def test_changed_weights_fail_clearly_on_load(own_model, tmp_path):
    pipe = _fit_pipeline(own_model)
    path = tmp_path / "pipe.joblib"
    joblib.dump(pipe, path)
    # Replace the weights with another random model under the same folder name.
    shutil.rmtree(own_model)
    build_tiny_text_model(own_model, seed=2)
    with pytest.raises(FingerprintMismatchError, match="weights changed since fitting"):
        joblib.load(path)


def test_missing_model_warns_on_load_and_fails_clearly_on_use(own_model, tmp_path):
    pipe = _fit_pipeline(own_model)
    path = tmp_path / "pipe.joblib"
    joblib.dump(pipe, path)
    shutil.rmtree(own_model)
    with pytest.warns(UserWarning, match="not available here"):
        loaded = joblib.load(path)
    with pytest.raises(ModelNotFoundError, match=os.path.basename(own_model)):
        loaded.predict(TEXTS)


def test_bundled_weights_load_without_the_original_model(own_model, tmp_path):
    pipe = _fit_pipeline(own_model, bundle_weights=True)
    expected = pipe.predict_proba(TEXTS)
    path = tmp_path / "bundled.joblib"
    joblib.dump(pipe, path)
    assert path.stat().st_size > 50_000  # the weights are inside
    shutil.rmtree(own_model)
    np.save(tmp_path / "expected.npy", expected)
    run_fresh_process(
        f"""
        import joblib, numpy as np
        from sklearn.base import clone
        pipe = joblib.load({str(path)!r})
        np.testing.assert_allclose(pipe.predict_proba({TEXTS!r}), np.load({str(tmp_path / "expected.npy")!r}),
                                   atol=1e-6)
        # Clones (GridSearchCV) of a loaded bundled pipeline find the unpacked model too.
        refit = clone(pipe).fit({TEXTS!r}, {LABELS!r})
        np.testing.assert_allclose(refit.predict_proba({TEXTS!r}), np.load({str(tmp_path / "expected.npy")!r}),
                                   atol=1e-6)
        """,
        tmp_path,
    )


def test_pipeline_saved_with_cuda_predicts_on_cpu(own_model, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only fallback")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        pipe = _fit_pipeline(own_model, device="cuda")
    path = tmp_path / "cuda.joblib"
    joblib.dump(pipe, path)
    expected = _fit_pipeline(own_model).predict_proba(TEXTS)
    np.save(tmp_path / "expected.npy", expected)
    out = run_fresh_process(
        f"""
        import joblib, numpy as np, warnings
        pipe = joblib.load({str(path)!r})
        assert pipe[0].device == "cuda"
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            got = pipe.predict_proba({TEXTS!r})
        np.testing.assert_allclose(got, np.load({str(tmp_path / "expected.npy")!r}),
                                   atol=1e-6)
        print(any("CUDA is not available" in str(w.message) for w in seen))
        """,
        tmp_path,
    )
    assert out.strip() == "True"
