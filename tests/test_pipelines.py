"""TextEncoder inside the standard scikit-learn machinery, with sklearn and XGBoost downstream."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import FeatureUnion, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from skdeep import TextEncoder

POS = ["good film", "a good movie", "good good", "the film was good", "good acting", "a good plot"]
NEG = ["bad film", "a bad movie", "bad bad", "the film was bad", "bad acting", "a bad plot"]
TEXTS = POS + NEG
LABELS = np.array([1] * len(POS) + [0] * len(NEG))


@pytest.fixture
def encoder(tiny_text_model):
    return TextEncoder(tiny_text_model, cache=None)


def test_pipeline_with_logistic_regression_learns(encoder):
    pipe = make_pipeline(encoder, StandardScaler(), LogisticRegression(C=10.0, max_iter=1000))
    pipe.fit(TEXTS, LABELS)
    assert pipe.score(TEXTS, LABELS) >= 0.9


def test_cross_val_score_and_grid_search(encoder):
    pipe = make_pipeline(encoder, SVC())
    scores = cross_val_score(pipe, TEXTS, LABELS, cv=3)
    assert scores.shape == (3,) and np.isfinite(scores).all()
    grid = GridSearchCV(pipe, {"svc__C": [0.1, 10.0], "textencoder__normalize": [False, True]}, cv=3)
    grid.fit(TEXTS, LABELS)
    assert set(grid.cv_results_["param_svc__C"]) == {0.1, 10.0}
    assert grid.best_estimator_[0].n_features_out_ == 32


def test_xgboost_downstream(encoder):
    xgb = pytest.importorskip("xgboost")
    pipe = make_pipeline(encoder, xgb.XGBClassifier(n_estimators=20, max_depth=2, n_jobs=1))
    pipe.fit(TEXTS, LABELS)
    proba = pipe.predict_proba(TEXTS)
    assert proba.shape == (len(TEXTS), 2)
    assert (pipe.predict(TEXTS) == LABELS).mean() >= 0.9


def test_column_transformer_on_a_dataframe_text_column(encoder):
    frame = pd.DataFrame({"review": TEXTS, "length": [len(t) for t in TEXTS]})
    ct = ColumnTransformer([("text", encoder, "review"), ("num", StandardScaler(), ["length"])])
    ct.set_output(transform="pandas")
    out = ct.fit_transform(frame, LABELS)
    assert out.shape == (len(TEXTS), 33)
    # Output features are named after the input column (issue #14), as skrub names them.
    assert "text__review_0" in out.columns and "num__length" in out.columns
    np.testing.assert_allclose(out.filter(like="text__").to_numpy(), encoder.transform(TEXTS), atol=1e-6)
    # A one-column list selection hands the encoder a DataFrame: same result.
    ct2 = ColumnTransformer([("text", encoder, ["review"])])
    np.testing.assert_allclose(ct2.fit_transform(frame), encoder.transform(TEXTS), atol=1e-6)
    model = make_pipeline(ct, LogisticRegression(max_iter=1000)).fit(frame, LABELS)
    assert model.predict(frame).shape == (len(TEXTS),)


def test_feature_union_next_to_tfidf(encoder):
    union = FeatureUnion([("tfidf", TfidfVectorizer()), ("bert", encoder)])
    out = union.fit_transform(TEXTS)
    n_vocab = len(TfidfVectorizer().fit(TEXTS).vocabulary_)
    assert out.shape == (len(TEXTS), n_vocab + 32)
    names = union.get_feature_names_out()
    assert names[-1] == "bert__textencoder31"
    pipe = make_pipeline(union, LogisticRegression(max_iter=1000)).fit(TEXTS, LABELS)
    assert pipe.score(TEXTS, LABELS) == 1.0
