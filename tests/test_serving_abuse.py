"""Attacks on the HTTP server (issue #10, items 5 and 6), each reproduced against a real uvicorn server.

Item 5: bodies that used to give 500 (NaN, Infinity, 1e999, lone surrogates) and error answers
that echoed the whole input. Item 6: denial of service within the default limits: abandoned
requests still computed, one large request holding the model, an input that fails in the model
poisoning every batch it joins, images decoded twice, slow connections never timed out.

Timing-sensitive checks use events and the order of model calls, with generous bounds.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import struct
import threading
import time
import zlib

import httpx
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from _server import ServerThread  # noqa: E402

from skdeep.serving import create_app  # noqa: E402
from skdeep.text import TextEncoder  # noqa: E402

TEXTS = ["good film", "bad film", "a good movie", "the bad movie", "good", "bad"] * 2
LABELS = ["pos", "neg"] * 6


class FakeModel:
    """A text "model" for FunctionTransformer: records every call, can hold the model, sleeps per input.

    Rows are ``[len(text), 1.0]``; a text containing "nan!" gets a NaN row, "boom!" raises ValueError,
    "kaboom!" raises RuntimeError.
    """

    def __init__(self, seconds_per_item: float = 0.0):
        self.calls: list[list[str]] = []
        self.seconds_per_item = seconds_per_item
        self.hold = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()

    def __call__(self, texts):
        texts = list(texts)
        self.calls.append(texts)
        self.started.set()
        if any("hold!" in t for t in texts):
            self.release.wait(timeout=60)
        if any("boom!" in t and "kaboom!" not in t for t in texts):
            raise ValueError("texts with 'boom!' are refused")
        if any("kaboom!" in t for t in texts):
            raise RuntimeError("the model broke on 'kaboom!'")
        time.sleep(self.seconds_per_item * len(texts))
        return np.array([[np.nan if "nan!" in t else float(len(t)), 1.0] for t in texts])

    def seen(self) -> list[str]:
        return [t for call in list(self.calls) for t in call]


def fake_app(model: FakeModel, **options):
    pipe = make_pipeline(FunctionTransformer(model))
    return create_app(pipe, input_kind_override="text", warmup=False, **options)


@pytest.fixture(scope="module")
def text_pipe(tiny_text_model):
    return make_pipeline(TextEncoder(tiny_text_model, cache=None), LogisticRegression()).fit(TEXTS, LABELS)


@pytest.fixture(scope="module")
def default_server(text_pipe):
    """The default limits (16 MiB bodies): what an attacker gets against ``skdeep serve``."""
    with ServerThread(create_app(text_pipe, max_wait_ms=2)) as server:
        yield server


# ------------------------------------------------------------------------- item 5: inputs that gave 500

RAW_JSON = {
    "NaN": b'{"inputs": [NaN]}',
    "Infinity": b'{"inputs": ["a"], "extra": Infinity}',
    "-Infinity": b'{"inputs": [-Infinity]}',
    "1e999": b'{"inputs": [1e999]}',
    "lone high surrogate": b'{"inputs": ["\\ud800"]}',
    "lone low surrogate in a text": b'{"inputs": ["good", "a\\udc00b"]}',
    "surrogate in a key": b'{"\\ud800": ["a"]}',
    "UTF-8-encoded surrogate": b'{"inputs": ["\xed\xa0\x80"]}',
    "invalid UTF-8": b'{"inputs": ["\xff\xfe"]}',
    "deep nesting": b"[" * 5000 + b"]" * 5000,
    "5000-digit integer": b'{"inputs": [' + b"7" * 5000 + b"]}",
}
EXPECTED_WORDS = {
    "NaN": "NaN",
    "Infinity": "Infinity",
    "-Infinity": "Infinity",
    "1e999": "infinity",
    "lone high surrogate": "surrogate",
    "lone low surrogate in a text": "inputs[1]",
    "surrogate in a key": "surrogate",
    "UTF-8-encoded surrogate": "surrogate",
    "invalid UTF-8": "UTF-8",
    "deep nesting": "nested",
}


@pytest.mark.parametrize("path", ["/predict", "/predict_proba", "/transform"])
@pytest.mark.parametrize("case", list(RAW_JSON))
def test_raw_json_that_schemathesis_cannot_send_gets_a_short_422(default_server, case, path):
    r = httpx.post(default_server.url + path, content=RAW_JSON[case], headers={"content-type": "application/json"})
    assert r.status_code == 422, (case, r.status_code, r.text)
    detail = r.json()["detail"]  # the answer is valid JSON, whatever the input held
    assert isinstance(detail, str) and len(detail) < 300
    if case in EXPECTED_WORDS:
        assert EXPECTED_WORDS[case] in detail, detail


def test_nan_output_of_the_model_is_a_422_for_that_input_only():
    model = FakeModel()
    with ServerThread(fake_app(model, max_wait_ms=200)) as server:
        bodies = [{"inputs": ["fine"]}, {"inputs": ["ok", "nan! here"]}, {"inputs": ["also fine"]}]
        responses = asyncio.run(_post_all(server.url, "/transform", bodies))
    assert [r.status_code for r in responses] == [200, 422, 200]
    assert "inputs[1]" in responses[1].json()["detail"] and "NaN" in responses[1].json()["detail"]
    assert responses[0].json()["embeddings"] == [[4.0, 1.0]]


@pytest.mark.parametrize(
    "body",
    [
        {"inputs": "x" * 9_000_000},  # a string instead of a list
        {"inputs": ["a"], "extra": "y" * 9_000_000},
        {"inputs": [["z" * 9_000_000]]},
        {"inputs": ["w" * 9_000_000]},  # over max_text_length
        {"inputs": [1] * 1_000_000},  # a million errors
    ],
    ids=["string", "extra field", "nested", "long text", "many errors"],
)
def test_error_answers_never_echo_more_than_a_few_hundred_characters(default_server, body):
    content = json.dumps(body).encode()
    assert len(content) > 3_000_000  # within the default body limit
    r = httpx.post(
        default_server.url + "/predict", content=content, headers={"content-type": "application/json"}, timeout=60
    )
    assert r.status_code == 422, r.text[:500]
    assert len(r.content) < 2_000, len(r.content)
    assert r.json()["detail"]


# ------------------------------------------------------------------------- item 6: denial of service


async def _post_all(url, path, bodies, timeout=60):
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as c:
        return await asyncio.gather(*(c.post(path, json=b) for b in bodies))


def _stats(url, op="transform"):
    return httpx.get(f"{url}/metadata", timeout=30).json()["stats"][op]


def _wait_until(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_abandoned_requests_never_reach_the_model():
    model = FakeModel()
    model.release.clear()
    with ServerThread(fake_app(model, max_wait_ms=1)) as server:
        holder = threading.Thread(
            target=lambda: httpx.post(f"{server.url}/transform", json={"inputs": ["hold!"]}, timeout=60)
        )
        holder.start()
        assert model.started.wait(30)  # the model is busy with the first request
        for i in range(3):  # three clients give up (and close their connections) while queued
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(
                    f"{server.url}/transform", json={"inputs": [f"abandoned {i}-{j}" for j in range(8)]}, timeout=0.5
                )
        _wait_until(lambda: _stats(server.url)["cancelled_requests"] == 3, what="the server to notice")
        start = time.monotonic()
        good = threading.Thread(
            target=lambda: results.append(
                httpx.post(f"{server.url}/transform", json={"inputs": ["one text"]}, timeout=60)
            )
        )
        results: list = []
        good.start()
        time.sleep(0.2)
        model.release.set()
        good.join(60)
        holder.join(60)
        waited = time.monotonic() - start
        stats = _stats(server.url)
    assert results and results[0].status_code == 200
    assert waited < 10  # was 48 s: the abandoned work ran first
    assert not [t for t in model.seen() if t.startswith("abandoned")]
    assert stats["skipped_items"] == 24


def test_a_large_request_is_sliced_and_small_requests_pass_it():
    model = FakeModel(seconds_per_item=0.01)
    huge = [f"long text {i} " + "x" * 180 for i in range(256)]
    with ServerThread(fake_app(model, max_wait_ms=2, max_batch_chars=4096)) as server:
        done: dict = {}

        def send(name, texts):
            t0 = time.monotonic()
            r = httpx.post(f"{server.url}/transform", json={"inputs": texts}, timeout=120)
            done[name] = (r, time.monotonic() - t0, time.monotonic())

        big = threading.Thread(target=send, args=("huge", huge))
        big.start()
        assert model.started.wait(30)
        send("small", ["a short one"])
        big.join(120)
        stats = _stats(server.url)
    r_huge, t_huge, end_huge = done["huge"]
    r_small, t_small, end_small = done["small"]
    assert r_huge.status_code == 200 and r_small.status_code == 200
    np.testing.assert_array_equal(np.array(r_huge.json()["embeddings"])[:, 0], [len(t) for t in huge])  # in order
    assert end_small < end_huge and t_small < t_huge / 3  # it did not wait for the whole large request
    calls_with_huge = [i for i, c in enumerate(model.calls) if c[0].startswith("long text")]
    call_of_small = next(i for i, c in enumerate(model.calls) if "a short one" in c)
    assert call_of_small < calls_with_huge[-1]  # interleaved
    for call in model.calls:  # no call over the character budget: n * (longest + 32) <= 4096
        assert len(call) == 1 or len(call) * (max(map(len, call)) + 32) <= 4096
    assert stats["large_requests"] == 1 and len(calls_with_huge) >= 256 * 212 // 4096


def test_a_large_request_is_not_starved_by_a_stream_of_small_ones():
    model = FakeModel(seconds_per_item=0.01)
    huge = [f"long text {i} " + "x" * 300 for i in range(64)]  # about 0.64 s of model time
    with ServerThread(fake_app(model, max_wait_ms=1)) as server:
        stop = threading.Event()
        small_done = []

        def small_client(k):
            with httpx.Client(base_url=server.url, timeout=60) as c:
                while not stop.is_set():
                    small_done.append(c.post("/transform", json={"inputs": [f"small {k}"]}).status_code)

        smalls = [threading.Thread(target=small_client, args=(k,)) for k in range(4)]
        for t in smalls:
            t.start()
        _wait_until(lambda: len(small_done) > 20, what="small traffic")
        t0 = time.monotonic()
        r = httpx.post(f"{server.url}/transform", json={"inputs": huge}, timeout=120)
        elapsed = time.monotonic() - t0
        during = len(small_done)
        stop.set()
        for t in smalls:
            t.join(60)
    assert r.status_code == 200 and len(r.json()["embeddings"]) == 64
    # Large work gets at least a quarter of the model's time: about 4 x 0.64 s here, 15 s is generous.
    assert elapsed < 15
    assert set(small_done) == {200} and during > 30  # small requests kept being served meanwhile


def test_a_failing_input_is_isolated_once_then_refused_without_a_model_call():
    model = FakeModel()
    bodies = [{"inputs": [f"good {i}", f"fine {i}"]} for i in range(6)]
    bodies.insert(2, {"inputs": ["ok", "still ok", "boom! poisoned"]})
    with ServerThread(fake_app(model, max_wait_ms=300)) as server:
        responses = asyncio.run(_post_all(server.url, "/transform", bodies))
        first = _stats(server.url)
        n_calls = len(model.calls)
        again = httpx.post(f"{server.url}/transform", json={"inputs": ["new", "boom! poisoned"]}, timeout=30)
        second = _stats(server.url)
    assert responses[2].status_code == 422
    assert "inputs[2]" in responses[2].json()["detail"] and "boom!" in responses[2].json()["detail"]
    for i, r in enumerate(responses):
        if i != 2:
            assert r.status_code == 200 and len(r.json()["embeddings"]) == 2
    assert first["fallback_batches"] == 1 and first["failed_items"] == 1
    # Bisection: the failing input ran alone once; good inputs were re-run only on the way to it.
    assert model.calls.count(["boom! poisoned"]) == 1
    good_texts = [t for b in bodies for t in b["inputs"] if "boom" not in t]
    assert all(model.seen().count(t) <= 5 for t in good_texts)  # 1 + log2(15 inputs)
    assert n_calls <= 2 * 4 + 3 and len(model.seen()) <= 3 * 15 + 15
    # The same input again: refused at once, no model call.
    assert again.status_code == 422 and "inputs[1]" in again.json()["detail"]
    assert len(model.calls) == n_calls and second["known_bad_items"] == 1


def test_a_client_that_sent_a_failing_input_gets_calls_of_its_own():
    model = FakeModel()
    with (
        ServerThread(fake_app(model, max_wait_ms=300)) as server,
        httpx.Client(base_url=server.url, timeout=30) as attacker,
    ):  # one keep-alive connection
        assert attacker.post("/transform", json={"inputs": ["boom! 1"]}).status_code == 422
        before = _stats(server.url)

        async def mixed():
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as good:
                others = [good.post("/transform", json={"inputs": [f"good {i}"]}) for i in range(6)]
                poisoned = asyncio.to_thread(attacker.post, "/transform", json={"inputs": ["boom! 2 (a new one)"]})
                return await asyncio.gather(poisoned, *others)

        poisoned, *others = asyncio.run(mixed())
        after = _stats(server.url)
    assert poisoned.status_code == 422 and all(r.status_code == 200 for r in others)
    assert after["fallback_batches"] == before["fallback_batches"]  # no batch of others failed
    assert after["alone_requests"] == before["alone_requests"] + 1
    assert ["boom! 2 (a new one)"] in model.calls
    assert not [c for c in model.calls if len(c) > 1 and any("boom!" in t for t in c)]


def test_model_failures_are_422_when_input_specific_and_a_short_logged_500_when_the_model_is_broken(caplog):
    model = FakeModel()
    with ServerThread(fake_app(model, max_wait_ms=1)) as server:
        assert httpx.post(f"{server.url}/transform", json={"inputs": ["works"]}).status_code == 200
        r = httpx.post(f"{server.url}/transform", json={"inputs": ["kaboom! " + "k" * 5000]}, timeout=30)
    assert r.status_code == 422 and "RuntimeError" in r.json()["detail"] and len(r.json()["detail"]) <= 300

    broken = make_pipeline(FunctionTransformer(_always_broken))
    with caplog.at_level("ERROR", logger="skdeep.serving"):
        with ServerThread(create_app(broken, input_kind_override="text", warmup=False)) as server:
            r = httpx.post(f"{server.url}/transform", json={"inputs": ["anything"]}, timeout=30)
    assert r.status_code == 500
    assert r.json()["detail"] == "The model failed on inputs[0]; the server log has the details."
    assert "internal state lost" not in r.text  # details stay in the log
    assert any("internal state lost" in str(rec.exc_info[1]) for rec in caplog.records if rec.exc_info)


def _always_broken(texts):
    raise RuntimeError("internal state lost")


def test_full_queue_gets_503_with_retry_after_and_timeouts_get_504():
    model = FakeModel()
    model.release.clear()
    with ServerThread(fake_app(model, max_wait_ms=1, max_queue=4, timeout=2)) as server:
        holder = threading.Thread(
            target=lambda: httpx.post(f"{server.url}/transform", json={"inputs": ["hold!"]}, timeout=60)
        )
        holder.start()
        assert model.started.wait(30)
        waiting = threading.Thread(
            target=lambda: out.append(
                httpx.post(f"{server.url}/transform", json={"inputs": ["q1", "q2", "q3"]}, timeout=60)
            )
        )
        out: list = []
        waiting.start()
        _wait_until(lambda: httpx.get(f"{server.url}/metadata").json()["queue"]["transform"] == 3, what="queued")
        r = httpx.post(f"{server.url}/transform", json={"inputs": ["a", "b"]}, timeout=30)
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1 and "busy" in r.json()["detail"]
        waiting.join(30)  # the queued request is not answered within --timeout while the model is held
        model.release.set()
        holder.join(60)
        time.sleep(0.3)
    assert out[0].status_code == 504 and "limit of 2 s" in out[0].json()["detail"]
    assert not [t for t in model.seen() if t in ("q1", "q2", "q3")]  # dropped from the queue, never computed


# ------------------------------------------------------------------------- item 6: images decoded once


def _png(size, color=(30, 60, 90)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _png_header_only(width, height):
    """A PNG whose header declares width x height pixels but holds no pixel data (a few dozen bytes)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def image_pipe():
    image = pytest.importorskip("skdeep.image")
    images = [_png((24, 24), (i * 40, 0, 0)) for i in range(6)]
    encoder = image.ImageEncoder("resnet18", weights=None, image_size=32, num_workers=0, cache=None)
    return make_pipeline(encoder, LogisticRegression()).fit(images, [0, 1] * 3)


def _spy_on_decoding(monkeypatch) -> list:
    """Sizes of the images PIL really decodes (``load`` with pixel data still to read)."""
    from PIL import ImageFile

    decoded = []
    original = ImageFile.ImageFile.load

    def load(self):
        if self.tile:
            decoded.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return decoded


def test_probe_image_reads_only_the_header():
    from skdeep.image_io import ImageTooLargeError, UnreadableImageError, probe_image

    assert probe_image(_png((30, 20)), 1000) == (30, 20, "PNG")
    assert probe_image(_png_header_only(6000, 6000), None) == (6000, 6000, "PNG")  # no pixels needed
    with pytest.raises(ImageTooLargeError, match="6000x6000 = 36,000,000 pixels.*max_pixels=1,000,000"):
        probe_image(_png_header_only(6000, 6000), 1_000_000, position=3)
    with pytest.raises(UnreadableImageError, match="at position 2: not an image file"):
        probe_image(b"plain text", position=2)
    with pytest.raises(UnreadableImageError, match="empty"):
        probe_image(b"")


def test_huge_image_headers_are_refused_without_decoding(image_pipe, monkeypatch):
    decoded = _spy_on_decoding(monkeypatch)
    bombs = [_png_header_only(6000, 6000) for _ in range(32)]  # 36 M pixels each, as in the report
    with ServerThread(create_app(image_pipe, max_image_pixels=1_000_000, max_wait_ms=1)) as server:
        decoded.clear()  # the warm-up image
        t0 = time.monotonic()
        r = httpx.post(
            f"{server.url}/predict/files",
            timeout=60,
            files=[("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(bombs)],
        )
        elapsed = time.monotonic() - t0
        # Within the limit but without pixel data: the model's own (single) decode reports it, for that file.
        cut = httpx.post(
            f"{server.url}/predict/files",
            timeout=60,
            files=[("files", ("cut.png", _png_header_only(900, 900), "image/png"))],
        )
    assert r.status_code == 422 and "file 0 ('0.png') is too large" in r.json()["detail"], r.text
    assert elapsed < 10 and decoded == []  # refused from the header: nothing decoded, nothing allocated
    assert cut.status_code == 422 and "cut.png" in cut.json()["detail"] and "UnreadableImageError" in cut.text


def test_large_images_are_decoded_once_in_bounded_calls(image_pipe, monkeypatch):
    # 9 M pixels each, small files: within the default limits, the kind of upload the report used.
    images = [_png((3000, 3000), (40 * i, 255 - 40 * i, 7)) for i in range(5)]
    decoded = _spy_on_decoding(monkeypatch)
    with ServerThread(create_app(image_pipe, max_batch_pixels=20_000_000, max_wait_ms=1)) as server:
        decoded.clear()  # the warm-up image
        files = [("files", (f"big{i}.png", data, "image/png")) for i, data in enumerate(images)]
        r = httpx.post(f"{server.url}/predict_proba/files", files=files, timeout=120)
        stats = httpx.get(f"{server.url}/metadata").json()["stats"]["predict_proba"]
    assert r.status_code == 200, r.text
    assert decoded == [(3000, 3000)] * 5  # each image decoded exactly once (it was twice)
    assert stats["largest_batch"] <= 2  # at most 20 M pixels per model call
    np.testing.assert_allclose(r.json()["probabilities"], image_pipe.predict_proba(images), rtol=1e-5)


# ------------------------------------------------------------------------- item 6: slow connections


def _closed_within(sock, seconds, trickle=None):
    """Seconds until the server closes ``sock`` (sending ``trickle`` every 0.2 s meanwhile), and what it sent."""
    sock.settimeout(0.2)
    received = b""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            if trickle is not None:
                try:
                    sock.sendall(trickle)
                except OSError:
                    return time.monotonic() - start, received
            continue
        except OSError:
            return time.monotonic() - start, received
        if not data:
            return time.monotonic() - start, received
        received += data
    return None, received


def _time_to_close(sock, limit, trickle=None):
    """Seconds from now until the server closes ``sock``, sending ``trickle`` every 0.2 s; and what it sent."""
    sock.settimeout(0.2)
    received = b""
    start = time.monotonic()
    sent_after_start = 0
    while time.monotonic() - start < limit:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            if trickle is not None:
                try:
                    sock.sendall(trickle)
                    sent_after_start += 1
                except OSError:
                    break
            continue
        except OSError:
            break
        if not data:
            break
        received += data
    else:
        return None, received, sent_after_start
    return time.monotonic() - start, received, sent_after_start


def test_slow_connections_are_closed_within_the_limits():
    from concurrent.futures import ThreadPoolExecutor

    model = FakeModel(seconds_per_item=1.5)  # slower than the header limit: a slow model is not a slow client
    with ServerThread(fake_app(model, max_wait_ms=1), header_timeout=1.0, body_timeout=1.5) as server:

        def slowloris():
            s = socket.create_connection((server.host, server.port))
            s.sendall(b"POST /transform HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            return _time_to_close(s, 10, trickle=b"X-Slow: 1\r\n")

        def idle():
            return _time_to_close(socket.create_connection((server.host, server.port)), 10)

        def slow_body():
            s = socket.create_connection((server.host, server.port))
            s.sendall(
                b"POST /transform HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"inputs": ['
            )
            return _time_to_close(s, 10, trickle=b" ")

        with ThreadPoolExecutor(9) as pool:
            futures = [pool.submit(slowloris) for _ in range(6)]  # six at once, as in the report
            futures += [pool.submit(idle), pool.submit(slow_body)]
            normal = pool.submit(httpx.post, f"{server.url}/transform", json={"inputs": ["takes 1.5 s"]}, timeout=30)
            results = [f.result() for f in futures]
        metrics = httpx.get(f"{server.url}/metrics").text
    assert normal.result().status_code == 200
    for elapsed, received, _trickled in results:
        assert elapsed is not None, "a slow connection stayed open"
        assert 0.5 < elapsed < 6  # limits 1.0 s / 1.5 s, generous bounds for a loaded machine
        assert received.startswith(b"HTTP/1.1 408 "), received[:100]
    assert all(trickled >= 2 for _, _, trickled in results[:6])  # trickling bytes did not keep them open
    assert 'skdeep_rejected_requests_total{reason="header_timeout"} 7.0' in metrics
    assert 'skdeep_rejected_requests_total{reason="body_timeout"} 1.0' in metrics


def test_the_image_json_route_takes_the_same_probe(image_pipe):
    with ServerThread(create_app(image_pipe, max_image_pixels=1_000_000, max_wait_ms=1)) as server:
        bomb = base64.b64encode(_png_header_only(6000, 6000)).decode()
        r = httpx.post(f"{server.url}/predict", json={"images": [base64.b64encode(_png((8, 8))).decode(), bomb]})
    assert r.status_code == 422 and "images[1] is too large" in r.json()["detail"]
