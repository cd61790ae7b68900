"""CPU backends (issue #15): bf16 on the CPU, OpenVINO, int8 variants, backend="auto", threads, sources once."""

from __future__ import annotations

import importlib.util
import json
import time
import warnings

import numpy as np
import pytest
import torch
from conftest import build_tiny_text_model
from image_fixtures import TINY, TINY_TV, encode, rgb_array, write

from skdeep import ImageEncoder, TextEncoder, devices
from skdeep.backends import auto, clear_backends
from skdeep.backends import onnx as onnx_backend
from skdeep.backends import text as text_backends
from skdeep.backends.text import SentenceTransformerBackend, casts_weights, effective_dtype
from skdeep.serving.inspect import describe
from skdeep.sources import _common, resolve_text_model

TEXTS = [
    "hello world",
    "the good film",
    "A BAD MOVIE!!",
    "a much longer sentence, with punctuation; it pads the others in its batch " * 3,
    "x",
]
# Measured before any test patches it: OpenVINO's own bfloat16 needs the real thing.
REAL_CPU_BF16 = devices.cpu_supports_bf16()
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed")


def _cosine(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(autouse=True)
def _fresh_backends():
    clear_backends()
    yield
    clear_backends()


@pytest.fixture
def bf16_cpu(monkeypatch):
    """Pretend the CPU computes bfloat16 natively (torch runs it emulated where it does not)."""
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: True)


@pytest.fixture
def no_bf16_cpu(monkeypatch):
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: False)


# ---------------------------------------------------------------------------------------------
# every backend within its stated tolerance of torch float32


@needs_openvino
def test_openvino_text_matches_torch(tiny_text_model):
    ref = TextEncoder(tiny_text_model, cache=None).fit_transform(TEXTS)
    enc = TextEncoder(tiny_text_model, cache=None, backend="openvino", num_threads=1)
    np.testing.assert_allclose(enc.fit_transform(TEXTS), ref, atol=1e-4, rtol=1e-4)
    assert (enc.backend_, enc.dtype_) == ("openvino", "float32")
    if REAL_CPU_BF16:
        half = TextEncoder(tiny_text_model, cache=None, backend="openvino", dtype="bfloat16")
        out = half.fit_transform(TEXTS)
        assert half.dtype_ == "bfloat16"
        assert _cosine(out, ref).min() >= 0.999 and not np.allclose(out, ref, atol=1e-5)


def test_int8_all_layers_quantises_the_first_layer_too(tiny_text_model):
    ref = TextEncoder(tiny_text_model, cache=None).fit_transform(TEXTS)
    enc = TextEncoder(tiny_text_model, cache=None, backend="onnx-int8-all")
    out = enc.fit_transform(TEXTS)
    assert enc.backend_ == "onnx-int8-all" and enc.dtype_ == "float32"
    assert _cosine(out, ref).min() >= 0.97 and not np.allclose(out, ref, atol=1e-6)
    import onnx

    source = resolve_text_model(tiny_text_model)
    graph = onnx.load(str(onnx_backend.onnx_dir(source.fingerprint, "int8-all") / onnx_backend.MODEL_FILE)).graph
    # The first layer's weight matrices are int8 too (only activation x activation products stay float).
    first_layer_int8 = [n.name for n in graph.node if n.op_type == "MatMulInteger" and "layer.0/" in n.name]
    assert len(first_layer_int8) >= 4
    # The safe int8 stays the default int8, in its own file.
    assert onnx_backend.onnx_dir(source.fingerprint, True) != onnx_backend.onnx_dir(source.fingerprint, "int8-all")
    # A different backend is a different cache namespace.
    assert enc._item_keys(TEXTS) != TextEncoder(tiny_text_model, backend="onnx-int8")._item_keys(TEXTS)


@pytest.mark.parametrize("backend", ["onnx", pytest.param("openvino", marks=needs_openvino)])
@pytest.mark.parametrize("params", [TINY, dict(TINY_TV, layers=["layer2", "layer3"], pooling="gem")])
def test_image_backends_match_torch(backend, params):
    images = [rgb_array(i, (36, 44)) for i in range(4)]
    ref = ImageEncoder(**params).fit_transform(images)
    enc = ImageEncoder(**params, backend=backend, num_threads=1)
    out = enc.fit_transform(images)
    assert out.shape == ref.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-4)
    assert enc.backend_ == backend and enc.dtype_ == "float32"
    assert list(enc.get_feature_names_out()) == list(ImageEncoder(**params).fit(images).get_feature_names_out())


def test_image_onnx_export_is_reused_and_keyed_by_settings(tmp_path):
    images = [rgb_array(i) for i in range(2)]
    first = ImageEncoder(**TINY, backend="onnx").fit(images)
    backend = first._backend(first._source())
    assert backend.exported and backend.path.is_file()
    clear_backends()
    again = ImageEncoder(**TINY, backend="onnx").fit(images)
    assert again._backend(again._source()).exported is False
    other = ImageEncoder(**dict(TINY, image_size=48), backend="onnx").fit(images)
    assert other._backend(other._source()).path != backend.path  # another graph, another file


# ---------------------------------------------------------------------------------------------
# bf16 on the CPU: native where supported, a warning and float32 where not


def test_bf16_on_a_cpu_without_support_warns_and_falls_back(tiny_text_model, no_bf16_cpu):
    ref = TextEncoder(tiny_text_model, cache=None)
    with pytest.warns(UserWarning, match="bfloat16 natively"):
        enc = TextEncoder(tiny_text_model, cache=None, dtype="bfloat16").fit(TEXTS)
    assert enc.dtype_ == "float32"
    with pytest.warns(UserWarning, match="bfloat16 natively"):
        out = enc.transform(TEXTS)
    np.testing.assert_array_equal(out, ref.fit_transform(TEXTS))
    assert enc._item_keys(TEXTS) == ref._item_keys(TEXTS)  # float32 ran: float32's cache entries
    with pytest.warns(UserWarning, match="bfloat16 natively"):
        image = ImageEncoder(**TINY, dtype="bfloat16").fit([rgb_array(0)])
    assert image.dtype_ == "float32"


def test_bf16_on_a_cpu_with_support_autocasts_and_has_its_own_keys(tiny_text_model, bf16_cpu):
    ref = TextEncoder(tiny_text_model, cache=None).fit_transform(TEXTS)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*(natively|not supported)")  # no fallback warning
        enc = TextEncoder(tiny_text_model, cache=None, dtype="bfloat16")
        out = enc.fit_transform(TEXTS)
    assert enc.dtype_ == "bfloat16"
    assert _cosine(out, ref).min() >= 0.99 and not np.allclose(out, ref, atol=1e-6)
    assert enc._item_keys(TEXTS) != TextEncoder(tiny_text_model)._item_keys(TEXTS)
    images = [rgb_array(i) for i in range(3)]
    image_ref = ImageEncoder(**TINY).fit_transform(images)
    image = ImageEncoder(**TINY, dtype="bfloat16")
    image_out = image.fit_transform(images)
    assert image.dtype_ == "bfloat16" and _cosine(image_out, image_ref).min() >= 0.99


def test_float16_on_the_cpu_warns_and_runs_float32(tiny_text_model):
    with pytest.warns(UserWarning, match="float16' is not supported on the CPU"):
        assert effective_dtype("float16", torch.device("cpu"), warn=True) == "float32"
    assert effective_dtype("auto", torch.device("cpu")) == "float32"


def test_image_precision_is_deprecated_for_dtype(no_bf16_cpu):
    with pytest.warns(FutureWarning, match="use dtype='bfloat16'"), pytest.warns(UserWarning, match="natively"):
        enc = ImageEncoder(**TINY, precision="bf16").fit([rgb_array(0)])
    assert enc.dtype_ == "float32"
    with pytest.raises(ValueError, match="conflicts with dtype"):
        ImageEncoder(**TINY, precision="fp16", dtype="bfloat16").fit([rgb_array(0)])
    # Old pickles: the compute precision moves to dtype, float32 keys stay those of earlier releases.
    old = ImageEncoder(**TINY)
    state = old.__dict__.copy()
    for name in ("dtype", "backend", "num_threads"):
        del state[name]
    state["precision"] = "fp32"
    restored = ImageEncoder.__new__(ImageEncoder)
    restored.__setstate__(state)
    assert (restored.dtype, restored.precision, restored.backend) == ("float32", None, "torch")
    source = old._source()
    assert old._output_settings(source)["precision"] == "fp32" and "backend" not in old._output_settings(source)


# ---------------------------------------------------------------------------------------------
# CUDA casts the weights (decision logic; the mechanism checked on the CPU)


def test_cuda_casts_weights_and_the_cpu_autocasts(tiny_text_model, monkeypatch, bf16_cpu):
    assert casts_weights(torch.device("cuda")) and not casts_weights(torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert effective_dtype("auto", torch.device("cuda")) == "bfloat16"
    source = resolve_text_model(tiny_text_model)
    autocast = SentenceTransformerBackend(source, torch.device("cpu"), "bfloat16")
    assert next(autocast.model.parameters()).dtype == torch.float32
    monkeypatch.setattr(text_backends, "casts_weights", lambda device: True)
    cast = SentenceTransformerBackend(source, torch.device("cpu"), "bfloat16")
    assert next(cast.model.parameters()).dtype == torch.bfloat16
    seqs = cast.tokens(TEXTS).sequences
    out = cast.forward(seqs)
    assert out.dtype == np.float32 and _cosine(out, autocast.forward(seqs)).min() >= 0.98


# ---------------------------------------------------------------------------------------------
# backend="auto"


class _Fake:
    """A backend wrapping torch's: ``wrong`` adds noise; both answer from a memo once warmed up (fast)."""

    def __init__(self, reference, name, wrong):
        self.reference, self.name, self.wrong = reference, name, wrong
        self.dtype = "float32"
        self.tokens, self.dim = reference.tokens, reference.dim
        self.prompts, self.default_prompt_name = reference.prompts, reference.default_prompt_name
        self.size = reference.size
        self.memo = {}

    def forward(self, batch, prompt_length=None):
        key = tuple(map(tuple, batch))
        if key not in self.memo:
            out = self.reference.forward(batch)
            if self.wrong:
                out = out + np.random.default_rng(0).normal(scale=0.5, size=out.shape).astype(np.float32)
            self.memo[key] = out
        return self.memo[key]


@pytest.fixture
def fake_backends(monkeypatch):
    loads = []

    def fake(name, wrong):
        def load(source, device, dtype, **options):
            loads.append(name)
            return _Fake(text_backends._load_torch(source, device, "float32", **options), name, wrong)

        return load

    monkeypatch.setitem(text_backends.TEXT_BACKEND_LOADERS, "fast-wrong", fake("fast-wrong", True))
    monkeypatch.setitem(text_backends.TEXT_BACKEND_LOADERS, "fast-right", fake("fast-right", False))
    return loads


def test_auto_never_chooses_a_path_outside_the_tolerance(tiny_text_model, monkeypatch, fake_backends):
    monkeypatch.setattr(auto, "cpu_candidates", lambda: [auto.REFERENCE, ("fast-wrong", "float32")])
    enc = TextEncoder(tiny_text_model, cache=None, backend="auto", device="cpu").fit(TEXTS)
    assert (enc.backend_, enc.dtype_) == ("torch", "float32")
    [path] = (auto.skdeep_home() / "backend-choice").glob("text-*.json")
    record = json.loads(path.read_text())
    wrong = next(m for m in record["measurements"] if m["backend"] == "fast-wrong")
    assert wrong["qualifies"] is False and wrong["cosine_min"] < auto.COSINE_TOLERANCE
    assert wrong["speedup"] > 1  # it was faster, and still not chosen
    np.testing.assert_array_equal(enc.transform(TEXTS), TextEncoder(tiny_text_model, cache=None).fit_transform(TEXTS))


def test_auto_choice_is_measured_once_remembered_and_visible(tiny_text_model, monkeypatch, fake_backends):
    candidates = [auto.REFERENCE, ("fast-wrong", "float32"), ("fast-right", "float32")]
    monkeypatch.setattr(auto, "cpu_candidates", lambda: candidates)
    enc = TextEncoder(tiny_text_model, cache=None, backend="auto", device="cpu").fit(TEXTS)
    assert (enc.backend_, enc.dtype_) == ("fast-right", "float32")
    info = describe(enc)["encoders"][0]
    assert (info["backend"], info["dtype"]) == ("fast-right", "float32")
    ref = TextEncoder(tiny_text_model, cache=None).fit_transform(TEXTS)
    assert _cosine(enc.transform(TEXTS), ref).min() >= auto.COSINE_TOLERANCE
    # Within tolerance of torch float32: its cache entries are torch float32's.
    assert enc._item_keys(TEXTS) == TextEncoder(tiny_text_model)._item_keys(TEXTS)

    # Another process (loaded models forgotten) reads the choice back without measuring.
    clear_backends()
    fake_backends.clear()
    monkeypatch.setattr(auto, "measure", lambda *a, **k: pytest.fail("measured again"))
    again = TextEncoder(tiny_text_model, cache=None, backend="auto", device="cpu").fit(TEXTS)
    assert again.backend_ == "fast-right" and fake_backends == ["fast-right"]

    # The choice is per model: other weights are measured on their own.
    other = build_tiny_text_model(auto.skdeep_home().parent / "other", seed=3)
    with pytest.raises(pytest.fail.Exception, match="measured again"):
        TextEncoder(other, cache=None, backend="auto", device="cpu").fit(TEXTS)


def test_auto_measures_again_when_the_remembered_file_is_damaged(tiny_text_model, monkeypatch, fake_backends):
    monkeypatch.setattr(auto, "cpu_candidates", lambda: [auto.REFERENCE, ("fast-right", "float32")])
    TextEncoder(tiny_text_model, cache=None, backend="auto", device="cpu").fit(TEXTS)
    [path] = (auto.skdeep_home() / "backend-choice").glob("text-*.json")
    path.write_text("{not json")
    clear_backends()
    enc = TextEncoder(tiny_text_model, cache=None, backend="auto", device="cpu").fit(TEXTS)
    assert enc.backend_ == "fast-right" and json.loads(path.read_text())["backend"] == "fast-right"


def test_auto_candidates_never_include_int8():
    assert all("int8" not in backend for backend, _ in auto.cpu_candidates())
    assert auto.cpu_candidates()[0] == auto.REFERENCE


def test_auto_on_an_accelerator_is_torch(tiny_text_model, monkeypatch):
    # No GPU here: the decision, with the device resolved to a fake accelerator.
    calls = []

    def load(name, source, device, dtype, **options):
        calls.append((name, device.type, dtype))
        return "loaded"

    monkeypatch.setattr("skdeep.text.load_text_backend", load)
    enc = TextEncoder(tiny_text_model, backend="auto", dtype="bfloat16")
    assert enc._load_auto(resolve_text_model(tiny_text_model), torch.device("cuda"), "bfloat16") == "loaded"
    assert calls == [("torch", "cuda", "bfloat16")]


# ---------------------------------------------------------------------------------------------
# threads


def test_threads_are_set_during_transform_and_restored(tiny_text_model, monkeypatch):
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    enc = TextEncoder(tiny_text_model, cache=None, num_threads=wanted).fit(TEXTS)
    backend = enc._backend(enc._source())
    seen = []
    real = backend.forward
    monkeypatch.setattr(backend, "forward", lambda *a, **k: (seen.append(torch.get_num_threads()), real(*a, **k))[1])
    enc.transform(TEXTS)
    assert seen and set(seen) == {wanted}
    assert torch.get_num_threads() == before

    # The environment setting, when the parameter is None; a bad value names the variable.
    monkeypatch.setenv("SKDEEP_NUM_THREADS", str(wanted))
    seen.clear()
    TextEncoder(tiny_text_model, cache=None).transform(TEXTS)
    assert set(seen) == {wanted} and torch.get_num_threads() == before
    monkeypatch.setenv("SKDEEP_NUM_THREADS", "many")
    with pytest.raises(ValueError, match="SKDEEP_NUM_THREADS"):
        TextEncoder(tiny_text_model, cache=None).transform(TEXTS)
    assert torch.get_num_threads() == before


def test_threads_are_restored_after_an_error_and_limit_blas():
    from threadpoolctl import threadpool_info

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"), devices.limit_threads(1):
        assert torch.get_num_threads() == 1
        blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        assert all(n == 1 for n in blas)
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="num_threads"):
        devices.check_num_threads(0)


def test_session_backends_get_the_thread_count(tiny_text_model):
    enc = TextEncoder(tiny_text_model, cache=None, backend="onnx", num_threads=1).fit(TEXTS)
    assert enc._backend(enc._source()).session.get_session_options().intra_op_num_threads == 1
    # Another thread count is another compiled session, the same cache entries.
    two = TextEncoder(tiny_text_model, cache=None, backend="onnx", num_threads=2)
    assert two._backend(two._source()) is not enc._backend(enc._source())
    assert two._item_keys(TEXTS) == enc._item_keys(TEXTS)


# ---------------------------------------------------------------------------------------------
# sources resolved once per process


def test_model_folder_is_walked_once_and_rechecked_by_stat(own_model, monkeypatch):
    walks = []
    real = _common._walk_model
    monkeypatch.setattr(_common, "_walk_model", lambda root: (walks.append(root), real(root))[1])
    first = resolve_text_model(own_model)
    for _ in range(5):
        TextEncoder(own_model, cache=None).fit(TEXTS[:2])
    assert len(walks) <= 1 and resolve_text_model(own_model).fingerprint == first.fingerprint
    # A changed weight file is seen (its size / mtime changed), and fingerprinted anew.
    weights = next(p for p in _common.model_files(_common.Path(own_model)) if p.suffix == ".safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    time.sleep(0.01)
    weights.write_bytes(bytes(data))
    assert resolve_text_model(own_model).fingerprint != first.fingerprint
    # So is a new file in a subfolder (the folder's mtime changed).
    walks.clear()
    (_common.Path(own_model) / "1_Pooling" / "extra.json").write_text("{}")
    changed = resolve_text_model(own_model).fingerprint
    assert walks and changed != first.fingerprint


# ---------------------------------------------------------------------------------------------
# command line and server


def test_cli_embed_predict_and_serve_take_backend_dtype_and_threads(tiny_text_model, tmp_path, monkeypatch, capsys):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from skdeep.cli import main
    from skdeep.persistence import save
    from skdeep.serving.app import create_app

    lines = tmp_path / "in.txt"
    lines.write_text("\n".join(TEXTS[:3]) + "\n")
    out = tmp_path / "e.npy"
    args = ["embed", str(lines), "--model", tiny_text_model, "--out", str(out), "--no-progress", "--no-cache"]
    assert main([*args, "--backend", "onnx", "--dtype", "float32", "--num-threads", "1"]) == 0
    ref = TextEncoder(tiny_text_model, cache=None).fit_transform(TEXTS[:3])
    np.testing.assert_allclose(np.load(out), ref, atol=1e-4, rtol=1e-4)

    loaded = []
    real = text_backends.load_text_backend
    monkeypatch.setattr(
        "skdeep.text.load_text_backend",
        lambda name, *a, **k: (loaded.append((name, k["num_threads"])), real(name, *a, **k))[1],
    )
    pipe = make_pipeline(TextEncoder(tiny_text_model, cache=None), LogisticRegression()).fit(TEXTS[:4], [0, 1, 0, 1])
    path = save(pipe, tmp_path / "m.skops")
    clear_backends()
    loaded.clear()
    predict = ["predict", str(path), str(lines), "--out", str(tmp_path / "p.csv"), "--no-progress"]
    assert main([*predict, "--backend", "onnx-int8", "--num-threads", "1"]) == 0
    assert loaded == [("onnx-int8", 1)]

    app = create_app(str(path), encoder_params={"backend": "onnx", "num_threads": 1}, warmup=False)
    [encoder] = describe(app.state.model)["encoders"]
    assert encoder["backend"] == "onnx" and app.state.model[0].num_threads == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["embed", str(lines), "--model", tiny_text_model, "--out", str(out), "--backend", "tpu"])
    assert exit_info.value.code == 2
    # A backend the encoder does not have: exit status 2 and a message naming it, not a traceback.
    image = write(tmp_path / "a.png", encode(rgb_array(0)))
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "embed",
                str(image),
                "--kind",
                "image",
                "--model",
                "resnet18",
                "--weights",
                "none",
                "--out",
                str(out),
                "--backend",
                "auto",
            ]
        )
    assert exit_info.value.code == 2
    assert "'backend' parameter of ImageEncoder" in capsys.readouterr().err
