"""Pickling ImageEncoder pipelines by reference or with bundled weights, across processes."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import joblib
import numpy as np
import pytest
from image_fixtures import encode, rgb_array, save_random_timm_state_dict, write
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from skdeep import backends
from skdeep.image import ImageEncoder
from skdeep.sources import FingerprintMismatchError, clear_registered

# Runs in a fresh interpreter: nothing loaded, nothing memoised. Prints the first pickle's
# probabilities, deletes the checkpoint, then loads the bundled pickle.
FRESH_PROCESS = textwrap.dedent(
    """
    import json, os, sys, warnings
    import joblib
    by_ref, bundled, checkpoint, files = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    first = joblib.load(by_ref).predict_proba(files)
    os.remove(checkpoint)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing model would only warn at load time
        second = joblib.load(bundled)
    print(json.dumps({"by_ref": first.tolist(), "bundled": second.predict_proba(files).tolist(),
                      "origin": second[0].model_origin_}))
    """
)


@pytest.fixture
def fitted(tmp_path):
    checkpoint = save_random_timm_state_dict("test_resnet", tmp_path / "weights" / "tuned.pth", seed=11)
    files = [write(tmp_path / f"{i}.png", encode(rgb_array(i))) for i in range(6)]
    y = np.array([0, 1, 0, 1, 0, 1])

    def make(**kwargs):
        enc = ImageEncoder("timm:test_resnet", weights=str(checkpoint), image_size=32, cache=None, **kwargs)
        return make_pipeline(enc, LogisticRegression(max_iter=500)).fit(files, y)

    return checkpoint, files, make


def test_round_trip_in_a_fresh_process_and_bundle_without_the_checkpoint(tmp_path, fitted):
    import json

    checkpoint, files, make = fitted
    by_ref, bundled = make(), make(bundle_weights=True)
    expected = by_ref.predict_proba(files)
    joblib.dump(by_ref, tmp_path / "by_ref.joblib")
    joblib.dump(bundled, tmp_path / "bundled.joblib")
    size_ref = os.path.getsize(tmp_path / "by_ref.joblib")
    assert size_ref < 20_000 < 1_000_000 < os.path.getsize(tmp_path / "bundled.joblib")  # the bundle: ~1.5 MB

    env = dict(os.environ, PYTHONPATH=os.getcwd())
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            FRESH_PROCESS,
            str(tmp_path / "by_ref.joblib"),
            str(tmp_path / "bundled.joblib"),
            str(checkpoint),
            json.dumps(files),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(got["by_ref"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["bundled"], expected, rtol=1e-5, atol=1e-6)
    assert got["origin"] == "path"  # fitted origin is kept; the weights now come from the bundle
    assert not checkpoint.exists()


def test_changed_weights_fail_on_load(tmp_path, fitted):
    checkpoint, files, make = fitted
    blob = pickle.dumps(make())
    save_random_timm_state_dict("test_resnet", checkpoint, seed=12)  # same path, other weights
    with pytest.raises(FingerprintMismatchError, match="weights changed since fitting"):
        pickle.loads(blob)


def test_bundle_in_process_after_checkpoint_removal(tmp_path, fitted):
    checkpoint, files, make = fitted
    pipe = make(bundle_weights=True)
    expected = pipe.predict_proba(files)
    blob = pickle.dumps(pipe)
    checkpoint.unlink()
    backends.clear_backends()
    try:
        loaded = pickle.loads(blob)
        np.testing.assert_allclose(loaded.predict_proba(files), expected, rtol=1e-5, atol=1e-6)
    finally:
        clear_registered()


def test_random_init_pickles_small_and_identical(tmp_path):
    images = [rgb_array(i) for i in range(3)]
    enc = ImageEncoder("timm:test_resnet", weights=None, image_size=32, cache=None, random_state=4).fit(images)
    blob = pickle.dumps(enc)
    assert len(blob) < 5_000
    backends.clear_backends()
    np.testing.assert_array_equal(pickle.loads(blob).transform(images), enc.transform(images))


def test_gpu_pipeline_predicts_on_cpu(fitted):
    checkpoint, files, make = fitted
    with pytest.warns(RuntimeWarning, match="CUDA is not available"):
        pipe = make(device="cuda")
    blob = pickle.dumps(pipe)
    with pytest.warns(RuntimeWarning, match="CUDA is not available"):
        assert pickle.loads(blob).predict(files).shape == (6,)
