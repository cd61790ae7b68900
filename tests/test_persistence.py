"""save/load with skops (safe) and joblib: trusted types, references and bundles, fingerprints on load."""

from __future__ import annotations

import shutil
import warnings
import zipfile

import numpy as np
import pytest
from conftest import build_tiny_text_model, run_fresh_process
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from skdeep.persistence import (
    PickleNotAllowedError,
    UntrustedTypesError,
    format_for,
    is_skdeep_estimator_type,
    load,
    save,
    untrusted_types,
)
from skdeep.sources import FingerprintMismatchError
from skdeep.text import TextEncoder

sio = pytest.importorskip("skops.io")

TEXTS = ["good film", "bad film", "a good movie", "the bad movie", "good", "bad"] * 2
LABELS = [1, 0, 1, 0, 1, 0] * 2


def lowercase(texts):
    return [t.lower() for t in texts]


class Shout(TransformerMixin, BaseEstimator):
    """A user-defined transformer: skops must not trust it by default."""

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return [t.upper() for t in X]


def _fit(model_path, *steps, **encoder_params):
    encoder = TextEncoder(model_path, cache=None, **encoder_params)
    return make_pipeline(*steps, encoder, LogisticRegression()).fit(TEXTS, LABELS)


def test_skops_round_trip_needs_no_trusted_argument(tiny_text_model, tmp_path):
    pipe = _fit(tiny_text_model)
    path = save(pipe, tmp_path / "pipe.skops")
    assert zipfile.is_zipfile(path)
    # skops itself flags only skdeep's encoder; skdeep trusts it, so nothing remains.
    assert sio.get_untrusted_types(file=path) == ["skdeep.text.TextEncoder"]
    assert untrusted_types(path) == []
    loaded = load(path)
    np.testing.assert_array_equal(loaded.predict_proba(TEXTS), pipe.predict_proba(TEXTS))
    assert loaded[0].model_fingerprint_ == pipe[0].model_fingerprint_
    assert loaded[0].get_params() == pipe[0].get_params()
    assert path.stat().st_size < 100_000  # by reference: the weights are not inside
    reference = tmp_path / "reference"
    reference.write_bytes(b"")
    assert path.stat().st_mode == reference.stat().st_mode  # the usual permissions, not a temp file's 0600


def test_skops_load_checks_the_fingerprint(own_model, tmp_path):
    path = save(_fit(own_model), tmp_path / "pipe.skops")
    shutil.rmtree(own_model)
    build_tiny_text_model(own_model, seed=2)  # same name, other weights
    with pytest.raises(FingerprintMismatchError, match="weights changed since fitting"):
        load(path)


def test_skops_missing_model_loads_with_a_warning_and_fails_on_use(own_model, tmp_path):
    path = save(_fit(own_model), tmp_path / "pipe.skops")
    shutil.rmtree(own_model)
    with pytest.warns(UserWarning, match="not available here"):
        loaded = load(path)
    with pytest.raises(FileNotFoundError, match="not found offline"):
        loaded.predict(TEXTS)


def test_skops_bundle_loads_in_fresh_process_without_the_model(own_model, tmp_path):
    pipe = _fit(own_model, bundle_weights=True)
    path = save(pipe, tmp_path / "bundled.skops")
    assert path.stat().st_size > sum(f.stat().st_size for f in pipe[0]._source().files().values()) * 0.5
    np.save(tmp_path / "expected.npy", pipe.predict_proba(TEXTS))
    shutil.rmtree(own_model)
    out = run_fresh_process(
        f"""
        import numpy as np
        from skdeep.persistence import load
        pipe = load({str(path)!r})
        np.testing.assert_allclose(pipe.predict_proba({TEXTS!r}), np.load({str(tmp_path / "expected.npy")!r}),
                                   atol=1e-6)
        print(pipe[0]._source().origin)
        """,
        tmp_path,
    )
    assert out.strip() == "bundle"


def test_untrusted_function_is_listed_and_can_be_trusted(tiny_text_model, tmp_path):
    pipe = _fit(tiny_text_model, FunctionTransformer(lowercase))
    path = save(pipe, tmp_path / "fn.skops")
    with pytest.raises(UntrustedTypesError) as info:
        load(path)
    name = f"{__name__}.lowercase"
    assert info.value.untrusted == [name]
    message = str(info.value)
    assert name in message and "trusted=" in message and f"--trust {name}" in message
    assert isinstance(info.value, sio.exceptions.UntrustedTypesFoundException)
    loaded = load(path, trusted=[name])
    np.testing.assert_array_equal(loaded.predict(TEXTS), pipe.predict(TEXTS))


def test_untrusted_custom_class_is_listed(tiny_text_model, tmp_path):
    path = save(_fit(tiny_text_model, Shout()), tmp_path / "cls.skops")
    with pytest.raises(UntrustedTypesError, match=f"{__name__}.Shout"):
        load(path)
    assert untrusted_types(path) == [f"{__name__}.Shout"]
    assert isinstance(load(path, trusted=[Shout])[0], Shout)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("skdeep.text.TextEncoder", True),
        ("skdeep.domain.CORAL", True),
        ("skdeep.domain.SubspaceAlignment", True),
        ("skdeep.text.validate_texts", False),  # a function, not an estimator class
        ("skdeep.persistence.load", False),
        ("skdeep.sources.ModelSource", False),  # a class, but not an estimator
        ("skdeep.text.BaseEncoder", False),  # imported there, defined elsewhere
        ("skdeep.nope.Thing", False),
        ("skdeepevil.TextEncoder", False),
        ("os.system", False),
    ],
)
def test_only_skdeep_estimator_classes_are_trusted(name, expected):
    if name.startswith("skdeep.domain"):
        pytest.importorskip("skdeep.domain")
    assert is_skdeep_estimator_type(name) is expected


def test_image_encoder_is_trusted_when_available():
    pytest.importorskip("skdeep.image")
    assert is_skdeep_estimator_type("skdeep.image.ImageEncoder")


def test_joblib_path_and_format_choice(tiny_text_model, tmp_path):
    pipe = _fit(tiny_text_model)
    for name in ("p.joblib", "p.pkl"):
        path = save(pipe, tmp_path / name)
        assert not zipfile.is_zipfile(path)
        with pytest.raises(PickleNotAllowedError, match="allow_pickle=True"):
            load(path)  # unpickling runs code: never by default
        np.testing.assert_array_equal(load(path, allow_pickle=True).predict_proba(TEXTS), pipe.predict_proba(TEXTS))
    # Unknown suffixes: explicit format to save, content sniffing to load (a zip is never unpickled).
    path = save(pipe, tmp_path / "model.bin", format="skops")
    assert zipfile.is_zipfile(path)
    np.testing.assert_array_equal(load(path).predict(TEXTS), pipe.predict(TEXTS))
    with pytest.raises(ValueError, match="suffix '.bin'"):
        save(pipe, tmp_path / "other.bin")
    with pytest.raises(ValueError, match="format must be one of"):
        format_for("x.skops", "pickle")
    with pytest.raises(FileNotFoundError, match="No saved model"):
        load(tmp_path / "absent.skops")


def test_a_pickle_named_skops_is_refused(tiny_text_model, tmp_path):
    path = save(_fit(tiny_text_model), tmp_path / "p.joblib")
    fake = tmp_path / "fake.skops"
    fake.write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match="not a readable .skops file"):
        load(fake)


class Unsavable:
    def __getstate__(self):
        raise RuntimeError("cannot save me")


@pytest.mark.parametrize("suffix", [".skops", ".joblib"])
def test_failed_save_leaves_no_file(tmp_path, suffix):
    target = tmp_path / f"p{suffix}"
    target.write_bytes(b"previous model")
    with pytest.raises(RuntimeError, match="cannot save me"):
        save(FunctionTransformer(kw_args={"x": Unsavable()}), target)
    # The previous file is intact and no temporary file is left behind.
    assert target.read_bytes() == b"previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_cache_objects_are_saved_as_their_directory(tiny_text_model, tmp_path):
    from skdeep.cache import EmbeddingCache

    cache = EmbeddingCache(tmp_path / "cache")
    pipe = _fit(tiny_text_model).set_params(textencoder__cache=cache)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # default settings: nothing is lost, so no warning
        path = save(pipe, tmp_path / "p.skops")
    assert pipe[0].cache is cache  # the caller's pipeline is left alone
    assert load(path)[0].cache == str(tmp_path / "cache")

    pipe.set_params(textencoder__cache=EmbeddingCache(tmp_path / "cache", storage_dtype="float16"))
    with pytest.warns(UserWarning, match="storage_dtype"):
        save(pipe, tmp_path / "p16.skops")


def _toolbox_estimator(name, model_path):
    rng = np.random.default_rng(0)
    if name == "CORAL":
        domain = pytest.importorskip("skdeep.domain")
        return make_pipeline(
            TextEncoder(model_path, cache=None), domain.CORAL(target=rng.normal(size=(20, 32))), LogisticRegression()
        )
    if name == "SubspaceAlignment":
        domain = pytest.importorskip("skdeep.domain")
        return make_pipeline(
            TextEncoder(model_path, cache=None),
            domain.SubspaceAlignment(n_components=4, target=rng.normal(size=(20, 32))),
            LogisticRegression(),
        )
    if name == "ZeroShotClassifier":
        zero_shot = pytest.importorskip("skdeep.zero_shot")
        return zero_shot.ZeroShotClassifier(
            TextEncoder(model_path, cache=None), labels={1: "a good film", 0: "a bad film"}
        )
    finetune = pytest.importorskip("skdeep.finetune")
    return finetune.FineTunedTextClassifier(model_path, max_steps=2, random_state=0, cache=None, early_stopping=False)


@pytest.mark.parametrize("name", ["CORAL", "SubspaceAlignment", "ZeroShotClassifier", "FineTunedTextClassifier"])
def test_toolbox_estimators_round_trip_through_skops_as_trusted_types(tiny_text_model, tmp_path, name):
    estimator = _toolbox_estimator(name, tiny_text_model).fit(TEXTS, LABELS)
    path = save(estimator, tmp_path / "model.skops")
    flagged = sio.get_untrusted_types(file=path)
    assert any(t.endswith(f".{name}") for t in flagged)  # skops alone would refuse it...
    assert untrusted_types(path) == []  # ...skdeep trusts its own estimators
    np.testing.assert_array_equal(load(path).predict(TEXTS), estimator.predict(TEXTS))


def test_image_pipeline_round_trips_through_skops(tmp_path):
    image = pytest.importorskip("skdeep.image")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(6)]
    encoder = image.ImageEncoder("resnet18", weights=None, image_size=32, num_workers=0, cache=None)
    pipe = make_pipeline(encoder, LogisticRegression()).fit(images, [0, 1] * 3)
    path = save(pipe, tmp_path / "images.skops")
    assert untrusted_types(path) == []
    np.testing.assert_allclose(load(path).predict_proba(images), pipe.predict_proba(images), rtol=1e-6)
