"""Access control of the HTTP server (issue #10, item 7) and its /metrics, against a real uvicorn server.

Item 7: no authentication; ``Origin`` and ``Host`` not checked, so a cross-origin form post to
``/predict/files`` ran a model call; ``/metadata`` showed the server's absolute model path.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from _server import ServerThread  # noqa: E402

from skdeep.persistence import save  # noqa: E402
from skdeep.serving import create_app, serve  # noqa: E402
from skdeep.serving.security import resolve_api_key  # noqa: E402
from skdeep.text import TextEncoder  # noqa: E402

KEY = "s3cret-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
TEXTS = ["good film", "bad film", "a good movie", "the bad movie", "good", "bad"] * 2
LABELS = ["pos", "neg"] * 6


def _embed(texts):
    _embed.calls += 1
    return np.array([[float(len(t)), 1.0] for t in texts])


_embed.calls = 0


def fake_app(**options):
    pipe = make_pipeline(FunctionTransformer(_embed))
    return create_app(pipe, input_kind_override="text", warmup=False, max_wait_ms=1, **options)


def _png(color) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def image_pipe():
    image = pytest.importorskip("skdeep.image")
    images = [_png((40 * i, 0, 0)) for i in range(6)]
    encoder = image.ImageEncoder("resnet18", weights=None, image_size=32, num_workers=0, cache=None)
    return make_pipeline(encoder, LogisticRegression()).fit(images, [0, 1] * 3)


# ------------------------------------------------------------------------- authentication


def test_api_key_is_required_everywhere_but_health(monkeypatch):
    from skdeep.serving import security

    compared = []
    original = security.hmac.compare_digest
    monkeypatch.setattr(security.hmac, "compare_digest", lambda a, b: (compared.append(1), original(a, b))[1])
    with ServerThread(fake_app(api_key=KEY)) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        before = _embed.calls
        assert c.get("/health").status_code == 200
        for method, path in [
            ("POST", "/transform"),
            ("GET", "/metadata"),
            ("GET", "/metrics"),
            ("GET", "/openapi.json"),
            ("GET", "/docs"),
            ("POST", "/predict/files"),
        ]:
            r = c.request(method, path, json={"inputs": ["a"]} if method == "POST" else None)
            assert r.status_code == 401, (path, r.status_code)
            assert r.headers["www-authenticate"].startswith("Bearer") and "Authorization: Bearer" in r.json()["detail"]
        for header in [f"Bearer {KEY}x", f"Bearer {KEY[:-1]}", f"Basic {KEY}", "Bearer", KEY]:
            r = c.post("/transform", json={"inputs": ["a"]}, headers={"Authorization": header})
            assert r.status_code == 401, header
        assert (
            'error="invalid_token"'
            in c.post("/transform", json={"inputs": ["a"]}, headers={"Authorization": "Bearer wrong"}).headers[
                "www-authenticate"
            ]
        )
        assert _embed.calls == before  # nothing unauthenticated reached the model
        r = c.post("/transform", json={"inputs": ["abc"]}, headers=AUTH)
        assert r.status_code == 200 and r.json()["embeddings"] == [[3.0, 1.0]]
        assert c.get("/metadata", headers={"authorization": f"bearer {KEY}"}).status_code == 200  # scheme is case-free
    assert compared  # the token is compared in constant time


def test_api_key_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("SKDEEP_API_KEY", raising=False)
    assert resolve_api_key() is None
    monkeypatch.setenv("SKDEEP_API_KEY", " from-env \n")
    assert resolve_api_key() == "from-env"
    assert resolve_api_key(api_key="explicit") == "explicit"
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    key_file.chmod(0o600)
    assert resolve_api_key(api_key="explicit", api_key_file=key_file) == "from-file"
    key_file.chmod(0o644)
    with pytest.warns(UserWarning, match="chmod 600"):
        resolve_api_key(api_key_file=key_file)
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(ValueError, match="is empty"):
        resolve_api_key(api_key_file=tmp_path / "empty")
    with pytest.raises(ValueError, match="Cannot read"):
        resolve_api_key(api_key_file=tmp_path / "absent")
    with pytest.raises(ValueError, match="empty"):
        fake_app(api_key="  ")


def _captured_serve(monkeypatch, **options):
    """Run :func:`serve` up to uvicorn, and return the app and config it would have served."""
    import uvicorn

    captured = {}

    def fake_run(self, sockets=None):
        captured["config"] = self.config
        self.started = True

    with monkeypatch.context() as patched:
        patched.setattr(uvicorn.Server, "run", fake_run)
        serve(make_pipeline(FunctionTransformer(_embed)), input_kind_override="text", warmup=False, **options)
    return captured["config"]


def test_serve_wires_the_key_the_host_check_and_the_read_deadlines(monkeypatch):
    monkeypatch.setenv("SKDEEP_API_KEY", KEY)
    config = _captured_serve(monkeypatch, host="127.0.0.1", header_timeout=3.0, body_timeout=7.0)
    assert config.http.__name__ == "TimeoutH11Protocol" and config.timeout_keep_alive == 5
    with ServerThread(config.app) as server:
        local = {"Host": f"localhost:{server.port}", **AUTH}
        assert httpx.post(f"{server.url}/transform", json={"inputs": ["a"]}, headers=local).status_code == 200
        assert (
            httpx.post(
                f"{server.url}/transform", json={"inputs": ["a"]}, headers={"Host": f"localhost:{server.port}"}
            ).status_code
            == 401
        )  # key from the environment
        # A page on another domain that re-binds its name to 127.0.0.1 (DNS rebinding) is refused.
        r = httpx.post(f"{server.url}/transform", json={"inputs": ["a"]}, headers={**AUTH, "Host": "evil.example:80"})
        assert r.status_code == 400 and "evil.example" in r.json()["detail"]
    monkeypatch.delenv("SKDEEP_API_KEY")
    with pytest.warns(UserWarning, match="without an API key"):
        _captured_serve(monkeypatch, host="0.0.0.0")


def test_cli_serve_with_an_api_key_file(tiny_text_model, tmp_path):
    pipe = make_pipeline(TextEncoder(tiny_text_model, cache=None), LogisticRegression()).fit(TEXTS, LABELS)
    model_file = save(pipe, tmp_path / "model.skops")
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SKDEEP_HOME": str(tmp_path / "home"), "TOKENIZERS_PARALLELISM": "false"}
    env.pop("SKDEEP_API_KEY", None)
    cmd = [
        sys.executable,
        "-m",
        "skdeep.cli",
        "serve",
        str(model_file),
        "--port",
        str(port),
        "--api-key-file",
        str(key_file),
        "--timeout",
        "30",
        "--header-timeout",
        "5",
        "--max-queue",
        "100",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        assert httpx.post(f"{url}/predict", json={"inputs": ["good"]}).status_code == 401
        r = httpx.post(f"{url}/predict", json={"inputs": ["good", "bad"]}, headers=AUTH, timeout=30)
        assert r.json()["predictions"] == pipe.predict(["good", "bad"]).tolist()
        meta = httpx.get(f"{url}/metadata", headers=AUTH).json()
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output
    assert meta["source_file"] == "model.skops" and meta["limits"]["timeout_s"] == 30
    assert meta["limits"]["max_queue"] == 100
    assert str(tmp_path) not in str(meta) and str(tiny_text_model) not in str(meta)  # no server paths


# ------------------------------------------------------------------------- Origin and Host


def test_cross_origin_form_post_to_the_upload_endpoint_never_runs(image_pipe):
    files = [("files", ("a.png", _png((1, 2, 3)), "image/png"))]
    with ServerThread(create_app(image_pipe, max_wait_ms=1, allowed_origins=["https://app.example"])) as server:
        url = f"{server.url}/predict/files"

        def requests_so_far():
            return httpx.get(f"{server.url}/metadata").json()["stats"]["predict"]["requests"]

        before = requests_so_far()
        # What a browser sends for <form method=post enctype=multipart/form-data action=...> on evil.example:
        r = httpx.post(url, files=files, headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 403 and "evil.example" in r.json()["detail"]
        r = httpx.post(url, files=files, headers={"Sec-Fetch-Site": "cross-site"})  # no Origin: still refused
        assert r.status_code == 403
        r = httpx.post(url, files=files, headers={"Origin": "null"})  # sandboxed frames, file:// pages
        assert r.status_code == 403
        assert requests_so_far() == before  # none of them reached the model
        assert httpx.post(url, files=files).status_code == 200  # curl, scripts: no Origin
        same = httpx.post(url, files=files, headers={"Origin": server.url, "Sec-Fetch-Site": "same-origin"})
        assert same.status_code == 200  # the server's own pages (/docs)
        allowed = httpx.post(url, files=files, headers={"Origin": "https://app.example"})
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://app.example"
        preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
        r = httpx.options(url, headers={"Origin": "https://app.example", **preflight})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        assert httpx.options(url, headers={"Origin": "https://evil.example", **preflight}).status_code == 403
        assert requests_so_far() == before + 3


def test_cross_origin_text_posts_are_refused_before_validation():
    with ServerThread(fake_app(api_key=KEY, allowed_origins=["https://app.example"])) as server:
        r = httpx.post(f"{server.url}/transform", data={"inputs": "x"}, headers={"Origin": "http://evil.example"})
        assert r.status_code == 403  # not a 422: nothing of the request was looked at
        preflight = httpx.options(
            f"{server.url}/transform",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 200  # preflights carry no token
        r = httpx.post(
            f"{server.url}/transform", json={"inputs": ["a"]}, headers={"Origin": "https://app.example", **AUTH}
        )
        assert r.status_code == 200


def test_host_header_is_checked_when_hosts_are_given():
    with ServerThread(fake_app(allowed_hosts=["api.example.com", "*.internal"])) as server:

        def status(host):
            return httpx.post(f"{server.url}/transform", json={"inputs": ["a"]}, headers={"Host": host}).status_code

        assert status("api.example.com") == 200 and status("API.example.com:8443") == 200
        assert status("model.internal") == 200
        assert status("evil.example") == 400 and status("api.example.com.evil.example") == 400
        assert status("internal") == 400
    with pytest.raises(ValueError, match="allowed host"):
        fake_app(allowed_hosts=["ex*ample.com"])
    with pytest.raises(ValueError, match="allowed origin"):
        fake_app(allowed_origins=["app.example"])


def test_metadata_shows_names_never_server_paths(tiny_text_model, tmp_path):
    pipe = make_pipeline(TextEncoder(tiny_text_model, cache=None), LogisticRegression()).fit(TEXTS, LABELS)
    folder = tmp_path / "secret-dir"
    folder.mkdir()
    path = save(pipe, folder / "model.skops")
    with ServerThread(create_app(path, warmup=False)) as server:
        meta = httpx.get(f"{server.url}/metadata").json()
    assert meta["source_file"] == "model.skops"
    assert meta["encoders"][0]["model"] == os.path.basename(str(tiny_text_model))
    assert "secret-dir" not in str(meta) and str(tiny_text_model) not in str(meta)


# ------------------------------------------------------------------------- metrics


def test_metrics_in_prometheus_text_format():
    parser = pytest.importorskip("prometheus_client.parser")
    with (
        ServerThread(fake_app(api_key=KEY, max_batch_size=4)) as server,
        httpx.Client(base_url=server.url, timeout=30, headers=AUTH) as c,
    ):
        for _ in range(3):
            assert c.post("/transform", json={"inputs": ["a", "bb"]}).status_code == 200
        assert c.post("/transform", json={"inputs": [3]}).status_code == 422
        bad_key = {"Authorization": "Bearer no"}
        assert c.post("/transform", json={"inputs": ["a" * 40]}, headers=bad_key).status_code == 401
        assert httpx.get(f"{server.url}/metrics").status_code == 401  # protected by the key
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in parser.text_string_to_metric_families(r.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert samples[("skdeep_http_requests_total", (("endpoint", "/transform"), ("status", "200")))] == 3
    assert samples[("skdeep_http_requests_total", (("endpoint", "/transform"), ("status", "422")))] == 1
    assert samples[("skdeep_http_requests_total", (("endpoint", "/transform"), ("status", "401")))] == 1
    assert samples[("skdeep_http_request_duration_seconds_count", (("endpoint", "/transform"),))] == 5
    assert samples[("skdeep_model_batch_size_count", (("operation", "transform"),))] == 3
    assert samples[("skdeep_model_batch_size_sum", (("operation", "transform"),))] == 6
    assert samples[("skdeep_queue_items", (("operation", "transform"),))] == 0
    assert samples[("skdeep_rejected_requests_total", (("reason", "invalid_input"),))] == 1
    assert samples[("skdeep_rejected_requests_total", (("reason", "auth"),))] == 2
    assert samples[("skdeep_rejected_requests_total", (("reason", "queue_full"),))] == 0
