"""The HTTP model server: a real uvicorn server on 127.0.0.1 and a real HTTP client (httpx)."""

from __future__ import annotations

import asyncio
import base64
import io
import threading

import httpx
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.svm import LinearSVC

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from _server import ServerThread  # noqa: E402

from skdeep.persistence import save  # noqa: E402
from skdeep.serving import ItemFailedError, MicroBatcher, create_app, describe, embedding_model, input_kind  # noqa: E402
from skdeep.text import TextEncoder  # noqa: E402

TEXTS = ["good film", "bad film", "a good movie", "the bad movie", "good", "bad"] * 2
LABELS = ["pos", "neg"] * 6
LIMITS = dict(max_body_bytes=20_000, max_items=8, max_text_length=200)


def _fit_text_pipeline(model_path, *steps, final=None):
    encoder = TextEncoder(model_path, cache=None)
    return make_pipeline(*steps, encoder, final or LogisticRegression()).fit(TEXTS, LABELS)


@pytest.fixture(scope="module")
def text_pipe(tiny_text_model):
    return _fit_text_pipeline(tiny_text_model)


@pytest.fixture(scope="module")
def text_server(text_pipe):
    with ServerThread(create_app(text_pipe, max_wait_ms=2, **LIMITS)) as server:
        yield server


@pytest.fixture
def client(text_server):
    with httpx.Client(base_url=text_server.url, timeout=60) as c:
        yield c


# ------------------------------------------------------------------------- correct answers


def test_predictions_equal_the_in_process_pipeline(client, text_pipe):
    texts = ["good movie", "the bad film", "", "a"]
    r = client.post("/predict", json={"inputs": texts})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == text_pipe.predict(texts).tolist()

    r = client.post("/predict_proba", json={"inputs": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["classes"] == ["neg", "pos"]
    np.testing.assert_allclose(body["probabilities"], text_pipe.predict_proba(texts), rtol=1e-6)

    r = client.post("/transform", json={"inputs": texts})
    assert r.status_code == 200, r.text
    expected = text_pipe[0].transform(texts)  # a classifier pipeline: /transform is the encoder's output
    assert r.json()["dim"] == expected.shape[1]
    np.testing.assert_allclose(r.json()["embeddings"], expected, rtol=1e-6)


def test_health_and_metadata(client, text_pipe):
    assert client.get("/health").json() == {"status": "ok"}
    meta = client.get("/metadata").json()
    assert meta["input_kind"] == "text"
    assert meta["classes"] == ["neg", "pos"]
    assert [s["name"] for s in meta["steps"]] == ["textencoder", "logisticregression"]
    (enc,) = meta["encoders"]
    assert enc["fingerprint"] == text_pipe[0].model_fingerprint_
    assert enc["n_features_out"] == 32
    assert meta["limits"]["max_items"] == LIMITS["max_items"]
    assert meta["methods"] == {"predict": True, "predict_proba": True, "transform": True}


def test_openapi_schema_documents_inputs_and_limits(client):
    schema = client.get("/openapi.json").json()
    assert {"/predict", "/predict_proba", "/transform", "/health", "/metadata"} <= set(schema["paths"])
    assert "/predict/files" not in schema["paths"]  # uploads are for image models
    request = schema["components"]["schemas"]["TextRequest"]["properties"]["inputs"]
    assert request["maxItems"] == LIMITS["max_items"] and request["minItems"] == 1
    assert request["items"]["maxLength"] == LIMITS["max_text_length"]


# ------------------------------------------------------------------------- bad requests


def _chunks(total):
    yield b'{"inputs": ["'
    for _ in range(total // 1000):
        yield b"x" * 1000
    yield b'"]}'


BAD_REQUESTS = {
    "invalid JSON": dict(content=b'{"inputs": [', headers={"content-type": "application/json"}),
    "not JSON at all": dict(content=b"hello", headers={"content-type": "text/plain"}),
    "JSON list instead of object": dict(json=["good film"]),
    "missing field": dict(json={"texts": ["good film"]}),
    "extra field": dict(json={"inputs": ["a"], "images": ["b"]}),
    "string instead of list": dict(json={"inputs": "good film"}),
    "number in list": dict(json={"inputs": ["good", 3]}),
    "null in list": dict(json={"inputs": [None]}),
    "nested list": dict(json={"inputs": [["good"]]}),
    "empty list": dict(json={"inputs": []}),
    "too many items": dict(json={"inputs": ["a"] * (LIMITS["max_items"] + 1)}),
    "text too long": dict(json={"inputs": ["a" * (LIMITS["max_text_length"] + 1)]}),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_422_with_a_message(client, case):
    r = client.post("/predict", **BAD_REQUESTS[case])
    assert r.status_code == 422, (case, r.status_code, r.text)
    assert r.json()["detail"]


def test_oversize_body_gets_413_declared_or_streamed(client):
    big = {"inputs": ["x" * 150] * 200}  # within item/text limits, over the body limit
    r = client.post("/predict", json=big)
    assert r.status_code == 413 and "limit of 20000 bytes" in r.json()["detail"]
    # Chunked upload: no Content-Length, so the limit is enforced while reading.
    r = client.post("/predict", content=_chunks(50_000), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    assert client.get("/health").status_code == 200  # the server is fine afterwards


def test_file_upload_to_a_text_model_is_refused(client):
    r = client.post("/predict/files", files={"files": ("a.png", b"\x89PNG...")})
    assert r.status_code == 415 and "takes texts" in r.json()["detail"]


def test_missing_methods_answer_404_with_a_message(tiny_text_model):
    svc = _fit_text_pipeline(tiny_text_model, final=LinearSVC())
    encoder_only = make_pipeline(TextEncoder(tiny_text_model, cache=None)).fit(TEXTS)
    with ServerThread(create_app(svc)) as s1, ServerThread(create_app(encoder_only)) as s2:
        r = httpx.post(f"{s1.url}/predict_proba", json={"inputs": ["good"]})
        assert r.status_code == 404 and "LinearSVC" in r.json()["detail"]
        assert "/predict_proba" not in httpx.get(f"{s1.url}/openapi.json").json()["paths"]
        assert (
            httpx.post(f"{s1.url}/predict", json={"inputs": ["good"]}).json()["predictions"]
            == svc.predict(["good"]).tolist()
        )
        # A transformer pipeline: /transform is the pipeline's own transform, /predict does not exist.
        r = httpx.post(f"{s2.url}/transform", json={"inputs": ["good", "bad"]})
        np.testing.assert_allclose(r.json()["embeddings"], encoder_only.transform(["good", "bad"]), rtol=1e-6)
        assert httpx.post(f"{s2.url}/predict", json={"inputs": ["good"]}).status_code == 404


# ------------------------------------------------------------------------- micro-batching


async def _post_concurrently(url, path, bodies):
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        return await asyncio.gather(*(c.post(path, json=b) for b in bodies))


def test_concurrent_requests_are_batched_and_answered_correctly(text_pipe):
    texts = [f"film number {i}" for i in range(24)]
    with ServerThread(create_app(text_pipe, max_batch_size=64, max_wait_ms=100, warmup=False)) as server:
        responses = asyncio.run(_post_concurrently(server.url, "/predict_proba", [{"inputs": [t]} for t in texts]))
        stats = httpx.get(f"{server.url}/metadata").json()["stats"]["predict_proba"]
    expected = text_pipe.predict_proba(texts)
    for r, row in zip(responses, expected):
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["probabilities"][0], row, rtol=1e-6)  # each gets its own row
    assert stats["requests"] == len(texts)
    assert stats["model_calls"] < len(texts)
    assert stats["largest_batch"] > 1


def _fail_on_boom(texts):
    if any("boom" in t for t in texts):
        raise ValueError("the word 'boom' is not allowed")
    return texts


def test_a_bad_request_never_affects_the_others_in_its_batch(tiny_text_model):
    pipe = _fit_text_pipeline(tiny_text_model, FunctionTransformer(_fail_on_boom))
    bodies = [{"inputs": [f"good {i}"]} for i in range(6)]
    bodies.insert(3, {"inputs": ["boom"]})
    with ServerThread(create_app(pipe, max_batch_size=64, max_wait_ms=200, warmup=False)) as server:
        responses = asyncio.run(_post_concurrently(server.url, "/predict", bodies))
        stats = httpx.get(f"{server.url}/metadata").json()["stats"]["predict"]
    assert responses[3].status_code == 422 and "boom" in responses[3].json()["detail"]
    for i, r in enumerate(responses):
        if i != 3:
            assert r.status_code == 200 and r.json()["predictions"] == pipe.predict(bodies[i]["inputs"]).tolist()
    assert stats["fallback_batches"] >= 1


def _run(coro):
    return asyncio.run(coro)


def test_micro_batcher_limits_batches_and_isolates_failures():
    calls = []

    def run(items):
        calls.append(list(items))
        if "bad" in items:
            raise ValueError("bad item")
        return [x.upper() for x in items]

    async def scenario(max_batch_size, requests):
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as ex:
            batcher = MicroBatcher(run, ex, max_batch_size=max_batch_size, max_wait_ms=50)
            await batcher.start()
            try:
                results = await asyncio.gather(*(batcher.submit(r) for r in requests), return_exceptions=True)
            finally:
                await batcher.stop()
        return results, batcher.stats

    results, stats = _run(scenario(4, [["a"], ["b", "c"], ["d"], ["e", "f"], ["g"]]))
    assert results == [["A"], ["B", "C"], ["D"], ["E", "F"], ["G"]]
    assert [len(c) for c in calls] == [4, 3]  # full batch of 4, never a split small request
    assert stats.model_calls == 2 and stats.requests == 5

    calls.clear()
    results, stats = _run(scenario(2, [["a", "b", "c"], ["d"]]))
    assert results == [["A", "B", "C"], ["D"]]
    # A request larger than a call is served in slices, and the small request does not wait for all of it.
    assert max(len(c) for c in calls) <= 2 and sorted(x for c in calls for x in c) == ["a", "b", "c", "d"]
    assert calls.index(["d"]) < len(calls) - 1 and stats.large_requests == 1

    calls.clear()
    results, stats = _run(scenario(1, [["a"], ["b"], ["c"]]))  # batching off
    assert calls == [["a"], ["b"], ["c"]] and results == [["A"], ["B"], ["C"]]

    calls.clear()
    results, stats = _run(scenario(8, [["a"], ["bad"], ["c"]]))
    assert results[0] == ["A"] and results[2] == ["C"]
    assert isinstance(results[1], ItemFailedError) and isinstance(results[1].error, ValueError)
    assert results[1].index == 0 and results[1].isolated  # the other inputs of its call worked
    assert stats.fallback_batches == 1 and calls[0] == ["a", "bad", "c"]


def test_micro_batcher_rejects_bad_settings():
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(lambda x: x, None, max_batch_size=0, max_wait_ms=1)
    with pytest.raises(ValueError, match="max_wait_ms"):
        MicroBatcher(lambda x: x, None, max_batch_size=1, max_wait_ms=-1)
    with pytest.raises(ValueError, match="max_batch_cost"):
        MicroBatcher(lambda x: x, None, max_batch_size=1, max_wait_ms=1, max_batch_cost=0)
    with pytest.raises(ValueError, match="max_queue"):
        MicroBatcher(lambda x: x, None, max_batch_size=1, max_wait_ms=1, max_queue=0)
    with pytest.raises(ValueError, match="large_share"):
        MicroBatcher(lambda x: x, None, max_batch_size=1, max_wait_ms=1, large_share=1.0)


def test_micro_batcher_bounds_the_cost_of_each_call():
    calls = []

    def run(items):
        calls.append(list(items))
        return [len(x) for x in items]

    async def scenario():
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as ex:
            batcher = MicroBatcher(run, ex, max_batch_size=8, max_wait_ms=20, max_batch_cost=400, padded_cost=True)
            await batcher.start()
            try:
                texts = ["x" * n for n in (10, 20, 30, 100, 90, 10, 5, 200)]
                return await batcher.submit(texts, costs=[len(t) for t in texts]), texts
            finally:
                await batcher.stop()

    out, texts = _run(scenario())
    assert out == [len(t) for t in texts]  # rows in order, whatever the slicing
    assert all(len(c) == 1 or len(c) * max(map(len, c)) <= 400 for c in calls)  # padded cost per call
    assert len(calls) >= 3


# ------------------------------------------------------------------------- model files and inspection


def test_serves_a_saved_skops_file(text_pipe, tmp_path):
    path = save(text_pipe, tmp_path / "model.skops")
    with ServerThread(create_app(path)) as server:
        meta = httpx.get(f"{server.url}/metadata").json()
        r = httpx.post(f"{server.url}/predict", json={"inputs": TEXTS[:3]})
    assert meta["source_file"] == path.name  # the file's name, never the server's path
    assert r.json()["predictions"] == text_pipe.predict(TEXTS[:3]).tolist()


def test_describe_and_embedding_model(text_pipe):
    info = describe(text_pipe)
    assert info["encoders"][0]["parameter"] == "textencoder"
    assert info["estimator"] == "sklearn.pipeline.Pipeline"
    assert input_kind(text_pipe) == "text"
    assert embedding_model(text_pipe).steps == text_pipe[:1].steps
    with pytest.raises(ValueError, match="input_kind"):
        input_kind(LogisticRegression())


def test_describe_finds_fitted_encoders_once(tiny_text_model):
    zero_shot = pytest.importorskip("skdeep.zero_shot")
    clf = zero_shot.ZeroShotClassifier(TextEncoder(tiny_text_model, cache=None), labels=["good", "bad"]).fit(TEXTS)
    (enc,) = describe(clf)["encoders"]  # the encoder parameter and its fitted copy encoder_: reported once
    assert enc["parameter"] == "encoder_" and enc["fingerprint"] == clf.encoder_.model_fingerprint_
    assert input_kind(clf) == "text"
    # No transform of its own: /transform serves the fitted encoder's embeddings.
    assert embedding_model(clf) is clf.encoder_


# ------------------------------------------------------------------------- schemathesis


def _fuzz(url, mode, max_examples):
    """Run schemathesis cases generated from the server's own OpenAPI schema; no case may get a 5xx."""
    schemathesis = pytest.importorskip("schemathesis")
    hypothesis = pytest.importorskip("hypothesis")
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    statuses = []

    @hypothesis.given(case=schema.as_strategy(schemathesis.GenerationMode(mode)))
    @hypothesis.settings(
        max_examples=max_examples, deadline=None, database=None, suppress_health_check=list(hypothesis.HealthCheck)
    )
    def check(case):
        response = case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])
        statuses.append(response.status_code)

    check()
    return statuses


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_openapi_fuzzing_never_yields_a_server_error(text_server, mode):
    statuses = _fuzz(text_server.url, mode, max_examples=40)
    assert statuses and max(statuses) < 500
    if mode == "negative":
        assert any(400 <= s < 500 for s in statuses)  # the generator really sent invalid requests


# ------------------------------------------------------------------------- images


def _png(seed, size=24):
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def image_pipe():
    image = pytest.importorskip("skdeep.image")
    images = [_png(i) for i in range(6)]
    encoder = image.ImageEncoder("resnet18", weights=None, image_size=32, num_workers=0, cache=None)
    return make_pipeline(encoder, LogisticRegression()).fit(images, [0, 1] * 3)


@pytest.fixture(scope="module")
def image_server(image_pipe):
    with ServerThread(create_app(image_pipe, max_items=4, max_body_bytes=100_000)) as server:
        yield server


def test_image_server_base64_and_uploads_equal_in_process(image_server, image_pipe):
    images = [_png(10), _png(11, size=40)]
    expected = image_pipe.predict_proba(images)
    b64 = [base64.b64encode(b).decode() for b in images]
    b64[1] = "data:image/png;base64," + b64[1]
    with httpx.Client(base_url=image_server.url, timeout=60) as c:
        assert c.get("/metadata").json()["input_kind"] == "image"
        r = c.post("/predict_proba", json={"images": b64})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["probabilities"], expected, rtol=1e-5)
        files = [("files", (f"img{i}.png", data, "image/png")) for i, data in enumerate(images)]
        r = c.post("/predict_proba/files", files=files)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["probabilities"], expected, rtol=1e-5)
        r = c.post("/transform/files", files=files[:1])
        np.testing.assert_allclose(r.json()["embeddings"], image_pipe[0].transform(images[:1]), rtol=1e-5)
        assert "/predict/files" in c.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"images": ["not base64 !!!"]}, "images[0] is not valid base64"),
        ({"images": [base64.b64encode(b"plain text, not an image").decode()]}, "images[0] is not an image"),
        ({"images": [base64.b64encode(_png(1)).decode(), ""]}, "images[1] is empty"),
        ({"inputs": ["a text"]}, "images"),
        ({"images": []}, "at least 1"),
    ],
)
def test_image_server_rejects_bad_images_with_422(image_server, body, fragment):
    r = httpx.post(f"{image_server.url}/predict", json=body)
    assert r.status_code == 422, r.text
    assert fragment in str(r.json()["detail"])


def test_image_server_rejects_non_image_and_truncated_uploads(image_server):
    truncated = _png(3)[:60]
    for name, data in [("notes.txt", b"hello"), ("cut.png", truncated)]:
        r = httpx.post(f"{image_server.url}/predict/files", files=[("files", (name, data, "image/png"))])
        assert r.status_code == 422 and name in r.json()["detail"], r.text
    r = httpx.post(f"{image_server.url}/predict/files", data={"other": "x"})
    assert 400 <= r.status_code < 500
    r = httpx.post(f"{image_server.url}/predict/files", files=[("files", ("big.png", _png(0, size=300), "image/png"))])
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    many = [("files", (f"{i}.png", _png(i), "image/png")) for i in range(5)]
    r = httpx.post(f"{image_server.url}/predict/files", files=many)
    assert r.status_code == 422 and "limit of 4" in r.json()["detail"]


def test_server_thread_stops_cleanly(text_pipe):
    before = threading.active_count()
    with ServerThread(create_app(text_pipe, warmup=False)) as server:
        url = server.url
        assert httpx.get(f"{url}/health").status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=2)
    assert threading.active_count() <= before + 1


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_openapi_fuzzing_of_the_image_server(image_server, mode):
    # Generated strings are rarely images: this exercises base64 / image checks and multipart parsing.
    statuses = _fuzz(image_server.url, mode, max_examples=25)
    assert statuses and max(statuses) < 500
