"""Serving pipelines with several input columns (JSON records) and multi-output models; inspecting them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.multioutput import MultiOutputClassifier
from sklearn.pipeline import make_pipeline, make_union
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.svm import LinearSVC

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from _server import ServerThread  # noqa: E402
from test_serving import _fuzz  # noqa: E402

from skdeep.serving import create_app, describe, input_kind  # noqa: E402
from skdeep.serving.inspect import encoder_places, input_columns  # noqa: E402
from skdeep.text import TextEncoder  # noqa: E402

TEXTS = ["good film", "bad film", "a good movie", "the bad movie", "good", "bad"] * 3
FRAME = pd.DataFrame({"review": TEXTS, "price": np.arange(18.0), "stars": np.arange(18) % 5})
LABELS = ["pos", "neg"] * 9
ROWS = [{"review": "good movie", "price": 3.5, "stars": 4}, {"review": "the bad film", "price": 10, "stars": 1}]


def _table_pipe(model_path, final=None):
    columns = ColumnTransformer(
        [("text", TextEncoder(model_path, cache=None), "review"), ("num", StandardScaler(), ["price", "stars"])]
    )
    return make_pipeline(columns, final or LogisticRegression()).fit(FRAME, LABELS)


@pytest.fixture(scope="module")
def table_pipe(tiny_text_model):
    return _table_pipe(tiny_text_model)


@pytest.fixture(scope="module")
def table_server(table_pipe):
    with ServerThread(create_app(table_pipe, max_wait_ms=2, max_items=8, max_text_length=200)) as server:
        yield server


@pytest.fixture
def client(table_server):
    with httpx.Client(base_url=table_server.url, timeout=60) as c:
        yield c


# ------------------------------------------------------------------------- inspection


def test_describe_reports_the_fitted_encoder_inside_a_column_transformer(table_pipe):
    info = describe(table_pipe)
    assert info["input_kind"] == "table" and info["input_columns"] == ["review", "price", "stars"]
    (enc,) = info["encoders"]
    fitted = table_pipe[0].named_transformers_["text"]
    assert enc["parameter"] == "columntransformer.transformers_[text]"
    assert enc["fingerprint"] == fitted.model_fingerprint_ is not None
    assert enc["origin"] == "path" and enc["n_features_out"] == 32 and enc["columns"] == ["review"]
    # The unfitted parameter is never reported: its fingerprint is unknown.
    assert encoder_places(table_pipe)[0].encoder is fitted


def test_encoders_are_found_wherever_they_sit(tiny_text_model):
    encoder = TextEncoder(tiny_text_model, cache=None)
    lengths = FunctionTransformer(lambda X: np.c_[[len(t) for t in X]])
    union = make_pipeline(make_union(encoder, lengths), LogisticRegression()).fit(TEXTS, LABELS)
    nested = make_pipeline(
        ColumnTransformer([("t", make_pipeline(encoder, StandardScaler()), ["review"])]), LogisticRegression()
    ).fit(FRAME, LABELS)
    search = GridSearchCV(make_pipeline(encoder, LogisticRegression()), {"logisticregression__C": [1, 2]}, cv=2)
    search.fit(TEXTS, LABELS)
    cases = {
        "featureunion__textencoder": union,
        "columntransformer.transformers_[t].textencoder": nested,
        "best_estimator_.textencoder": search,
    }
    for path, model in cases.items():
        (place,) = encoder_places(model)
        assert place.path == path and place.encoder.n_features_out_ == 32, path
    assert encoder_places(nested)[0].columns == ["review"] and input_kind(nested) == "table"
    assert input_kind(union) == "text" and input_columns(union) is None


# ------------------------------------------------------------------------- records over HTTP


def test_records_give_the_pipelines_answers(client, table_pipe):
    frame = pd.DataFrame(ROWS)
    r = client.post("/predict", json={"records": ROWS})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == table_pipe.predict(frame).tolist()
    r = client.post("/predict_proba", json={"records": ROWS})
    assert r.json()["classes"] == ["neg", "pos"]
    np.testing.assert_allclose(r.json()["probabilities"], table_pipe.predict_proba(frame), rtol=1e-6)
    r = client.post("/transform", json={"records": ROWS})  # the ColumnTransformer's features
    np.testing.assert_allclose(r.json()["embeddings"], table_pipe[0].transform(frame), rtol=1e-5, atol=1e-6)
    assert r.json()["dim"] == 32 + 2
    meta = client.get("/metadata").json()
    assert meta["input_kind"] == "table" and meta["input_columns"] == ["review", "price", "stars"]


def test_concurrent_requests_each_get_their_own_rows(client, table_pipe):
    requests = [[{"review": TEXTS[i], "price": float(i), "stars": i % 5}] * (1 + i % 3) for i in range(12)]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda rows: client.post("/predict_proba", json={"records": rows}), requests))
    for rows, r in zip(requests, answers):
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["probabilities"], table_pipe.predict_proba(pd.DataFrame(rows)), rtol=1e-5)


BAD_ROWS = {
    "missing column": ([{"review": "good", "price": 1.0}], "stars"),
    "unknown column": ([{**ROWS[0], "colour": "red"}], "colour"),
    "number as text": ([{**ROWS[0], "review": 3}], "review"),
    "text too long": ([{**ROWS[0], "review": "a" * 201}], "review"),
    "huge integer": ([{**ROWS[0], "stars": 10**400}], "stars"),
    "nested value": ([{**ROWS[0], "price": [1, 2]}], "price"),
    "texts instead of records": ({"inputs": ["good"]}, "records"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_invalid_records_are_refused_naming_the_column(client, case):
    rows, column = BAD_ROWS[case]
    r = client.post("/predict", json=rows if isinstance(rows, dict) else {"records": rows})
    assert r.status_code == 422, r.text
    assert column in r.text and len(r.text) < 2000


def test_a_value_the_model_cannot_use_names_its_row(client):
    rows = [ROWS[0], {**ROWS[1], "price": "cheap"}]
    r = client.post("/predict", json={"records": rows})
    assert r.status_code == 422
    assert "records[1]" in r.json()["detail"] and "cheap" in r.json()["detail"]
    assert client.post("/predict", json={"records": [ROWS[0]]}).status_code == 200  # others still served


def test_openapi_describes_the_columns(client):
    schema = client.get("/openapi.json").json()
    record = schema["components"]["schemas"]["Record"]
    assert record["required"] == ["review", "price", "stars"] and record["additionalProperties"] is False
    assert record["properties"]["review"]["maxLength"] == 200
    body = schema["components"]["schemas"]["TableRequest"]["properties"]["records"]
    assert body["maxItems"] == 8 and body["minItems"] == 1


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_openapi_fuzzing_never_yields_a_server_error(table_server, mode):
    statuses = _fuzz(table_server.url, mode, max_examples=30)
    assert statuses and max(statuses) < 500


def test_a_table_model_that_reads_image_paths_is_not_served():
    image = pytest.importorskip("skdeep.image")
    from image_fixtures import TINY, encode, rgb_array

    frame = pd.DataFrame({"photo": [encode(rgb_array(i)) for i in range(4)], "size": np.arange(4.0)})
    columns = ColumnTransformer([("img", image.ImageEncoder(**TINY), "photo"), ("num", "passthrough", ["size"])])
    pipe = make_pipeline(columns, LogisticRegression()).fit(frame, [0, 1, 0, 1])
    with pytest.raises(ValueError, match="would open files named by its clients"):
        create_app(pipe)


# ------------------------------------------------------------------------- multi-output and missing methods


def test_multi_output_probabilities_are_one_table_per_output(tiny_text_model):
    y = np.c_[np.arange(18) % 2, np.arange(18) % 3]
    pipe = make_pipeline(TextEncoder(tiny_text_model, cache=None), MultiOutputClassifier(LogisticRegression()))
    pipe.fit(TEXTS, y)
    texts = ["good movie", "bad", "a film"]
    with ServerThread(create_app(pipe, max_wait_ms=2)) as server, httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.post("/predict", json={"inputs": texts})
        assert r.status_code == 200 and r.json()["predictions"] == pipe.predict(texts).tolist()
        r = c.post("/predict_proba", json={"inputs": texts})
        assert r.status_code == 200, r.text
        outputs = r.json()["outputs"]
        expected = pipe.predict_proba(texts)
        assert [o["classes"] for o in outputs] == [[0, 1], [0, 1, 2]]
        for got, want in zip(outputs, expected):
            np.testing.assert_allclose(got["probabilities"], want, rtol=1e-5)
        # Concurrent requests share model calls; each gets its own rows of each table.
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda t: c.post("/predict_proba", json={"inputs": [t]}), texts * 2))
        for text, answer in zip(texts * 2, answers):
            want = pipe.predict_proba([text])
            for got, table in zip(answer.json()["outputs"], want):
                np.testing.assert_allclose(got["probabilities"], table, rtol=1e-5)
        assert describe(pipe)["classes"] == [[0, 1], [0, 1, 2]]


class _NoProba(ClassifierMixin, BaseEstimator):
    """Advertises predict_proba but cannot compute it (as some wrappers do)."""

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        return np.full(len(X), self.classes_[0])

    def predict_proba(self, X):
        raise AttributeError("this estimator was fitted without probability estimates")


def test_models_without_probabilities_answer_4xx_never_500(tiny_text_model):
    svc = make_pipeline(TextEncoder(tiny_text_model, cache=None), MultiOutputClassifier(LinearSVC()))
    svc.fit(TEXTS, np.c_[np.arange(18) % 2, np.arange(18) % 3])
    broken = make_pipeline(TextEncoder(tiny_text_model, cache=None), _NoProba()).fit(TEXTS, LABELS)
    with ServerThread(create_app(svc, max_wait_ms=2)) as server:
        r = httpx.post(f"{server.url}/predict_proba", json={"inputs": ["good"]}, timeout=60)
        assert r.status_code == 404 and "predict_proba" in r.json()["detail"]
        assert httpx.post(f"{server.url}/predict", json={"inputs": ["good"]}, timeout=60).status_code == 200
    for warmup in (False, True):  # found out by the first request, or at start-up
        with ServerThread(create_app(broken, max_wait_ms=2, warmup=warmup)) as server:
            for inputs in (["good"], ["good", "bad", "a"]):
                r = httpx.post(f"{server.url}/predict_proba", json={"inputs": inputs}, timeout=60)
                assert r.status_code == 404, r.text
                assert "predict_proba" in r.json()["detail"]
            assert httpx.post(f"{server.url}/predict", json={"inputs": ["good"]}, timeout=60).status_code == 200
