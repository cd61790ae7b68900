"""Loading saved models as an attacker would craft them (issue #10, items 1-4).

Each test reproduces an attack on a saved file and asserts the safe outcome: a clear error, nothing
written outside ``$SKDEEP_HOME``, no hang, no silently wrong model.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from promptly import call_promptly
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from skdeep.cli import main
from skdeep.persistence import CorruptFileError, PickleNotAllowedError, load, save
from skdeep.sources import BundleError, FingerprintMismatchError, UnsafeModelFileError
from skdeep.text import TextEncoder

pytest.importorskip("skops.io")

TEXTS = ["good film", "bad film", "a good movie", "the bad movie", "good", "bad"] * 2
LABELS = [1, 0, 1, 0, 1, 0] * 2


def _fit(model_path, **params):
    return make_pipeline(TextEncoder(model_path, cache=None, **params), LogisticRegression()).fit(TEXTS, LABELS)


def _files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _craft(src: Path, dst: Path, mutate) -> Path:
    """Copy a .skops file, letting ``mutate`` edit the JSON node of the encoder's weight bundle."""
    with zipfile.ZipFile(src) as zin:
        schema = json.loads(zin.read("schema.json"))
        blobs = {name: zin.read(name) for name in zin.namelist() if name != "schema.json"}

    def find(node):
        if isinstance(node, dict):
            if "_skdeep_bundle" in node:
                return node["_skdeep_bundle"]["content"]
            for value in node.values():
                found = find(value)
                if found is not None:
                    return found
        elif isinstance(node, list):
            for value in node:
                found = find(value)
                if found is not None:
                    return found
        return None

    bundle = find(schema)
    assert bundle is not None, "no weight bundle in the saved file"
    mutate(bundle)
    with zipfile.ZipFile(dst, "w") as zout:
        zout.writestr("schema.json", json.dumps(schema))
        for name, data in blobs.items():
            zout.writestr(name, data)
    return dst


def _json_str(value: str, node_id: int) -> dict:
    return {
        "__class__": "str",
        "__module__": "builtins",
        "__loader__": "JsonNode",
        "content": json.dumps(value),
        "is_json": True,
        "__id__": node_id,
    }


@pytest.fixture
def bundled_skops(own_model, tmp_path):
    return save(_fit(own_model, bundle_weights=True), tmp_path / "bundled.skops")


# ---------------------------------------------------------------------------------------------
# 1. a bundle may not write outside $SKDEEP_HOME, and nothing is installed before it verifies


@pytest.mark.parametrize("fingerprint", ["../../../../evil", "/tmp/evil-abs", "..", "f" * 31 + "/"])
def test_bundle_fingerprint_that_is_a_path_writes_nothing_outside_home(bundled_skops, tmp_path, fingerprint):
    crafted = _craft(
        bundled_skops,
        tmp_path / "crafted.skops",
        lambda b: b.__setitem__("fingerprint", _json_str(fingerprint, 987654321)),
    )
    home = Path(os.environ["SKDEEP_HOME"])
    before = _files_under(tmp_path)
    with pytest.raises(ValueError, match="not a model fingerprint"):
        load(crafted)
    created = _files_under(tmp_path) - before
    assert all(name.startswith(str(home.relative_to(tmp_path))) for name in created), created
    assert not Path("/tmp/evil-abs").exists()
    assert not list(home.rglob("*.py")) and not (home / "bundles" / "evil").exists()


@pytest.mark.parametrize("entry", ["../../sitecustomize.py", "/tmp/skdeep-evil.py", "a/../../b.py", ".hidden", ""])
def test_bundle_entry_that_leaves_its_folder_is_refused(bundled_skops, tmp_path, entry):
    def rename_first_file(bundle):
        files = bundle["files"]["content"]
        first = next(iter(files))
        files[entry] = files.pop(first)

    crafted = _craft(bundled_skops, tmp_path / "crafted.skops", rename_first_file)
    before = _files_under(tmp_path)
    with pytest.raises(BundleError, match="Refusing bundle entry"):
        load(crafted)
    assert _files_under(tmp_path) == before or all("skdeep_home" in n for n in _files_under(tmp_path) - before)
    assert not Path("/tmp/skdeep-evil.py").exists()
    home = Path(os.environ["SKDEEP_HOME"])
    assert not list((home / "bundles").glob("*/*")) if (home / "bundles").exists() else True


def test_bundle_whose_modules_json_names_other_code_is_refused(bundled_skops, tmp_path):
    def point_modules_at_os(bundle):
        files = bundle["files"]["content"]
        files["modules.json"] = {
            "__class__": "bytes",
            "__module__": "builtins",
            "__loader__": "BytesNode",
            "file": "evil-modules.bin",
            "__id__": 123456789,
        }

    crafted = _craft(bundled_skops, tmp_path / "crafted.skops", point_modules_at_os)
    with zipfile.ZipFile(crafted, "a") as zf:
        zf.writestr("evil-modules.bin", json.dumps([{"idx": 0, "name": "0", "path": "", "type": "os.system"}]))
    with pytest.raises(BundleError, match="outside sentence-transformers"):
        load(crafted)


def test_tampered_bundle_is_verified_before_it_is_installed(bundled_skops, tmp_path):
    """Right fingerprint format, wrong content: nothing is moved into the bundles folder."""
    crafted = _craft(
        bundled_skops,
        tmp_path / "crafted.skops",
        lambda b: b.__setitem__("fingerprint", _json_str("0" * 32, 987654322)),
    )
    with pytest.raises(FingerprintMismatchError, match="Nothing was installed"):
        load(crafted)
    bundles = Path(os.environ["SKDEEP_HOME"]) / "bundles"
    assert not (bundles / ("0" * 32)).exists()
    assert [p.name for p in bundles.iterdir()] == []  # the temporary folder is gone too


def test_damaged_unpacked_bundle_is_replaced_not_trusted(bundled_skops, own_model, tmp_path):
    import shutil

    fingerprint = load(bundled_skops)[0].model_fingerprint_
    root = Path(os.environ["SKDEEP_HOME"]) / "bundles" / fingerprint
    weights = next(root.rglob("*.safetensors"))
    weights.write_bytes(b"damaged")  # e.g. a disk error, or another user's tampering
    shutil.rmtree(own_model)
    from skdeep.sources import clear_registered

    clear_registered()
    loaded = load(bundled_skops)
    assert loaded[0]._source().path == str(root)
    assert weights.read_bytes() != b"damaged"


# ---------------------------------------------------------------------------------------------
# 2. a model folder holding a FIFO or a link to /dev/zero does not hang the loader


@pytest.mark.parametrize("kind", ["fifo", "dev-zero-link"])
def test_model_folder_with_a_fifo_or_device_does_not_hang_load(own_model, tmp_path, kind):
    path = save(_fit(own_model), tmp_path / "pipe.skops")
    target = Path(own_model) / "1_Pooling" / "config.json"
    target.unlink()
    if kind == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to("/dev/zero")
    from skdeep.sources._common import _fingerprint_memo

    _fingerprint_memo.clear()
    with pytest.raises(UnsafeModelFileError) as error:
        call_promptly(lambda: load(path), timeout=60)
    assert ("FIFO" if kind == "fifo" else "device") in str(error.value)
    with pytest.raises(SystemExit) as error:
        call_promptly(lambda: main(["info", str(path)]), timeout=60)
    assert error.value.code == 2


# ---------------------------------------------------------------------------------------------
# 3. damaged, truncated and empty files give one clear error


def _flip_middle(path: Path, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("suffix", [".joblib", ".skops"])
def test_flipped_bytes_are_detected_before_anything_is_rebuilt(tiny_text_model, tmp_path, suffix):
    path = save(_fit(tiny_text_model), tmp_path / f"pipe{suffix}")
    _flip_middle(path)
    with pytest.raises(CorruptFileError, match="damaged"):
        load(path, allow_pickle=True)


@pytest.mark.parametrize("suffix", [".joblib", ".skops"])
@pytest.mark.parametrize("keep", [0, 0.5])
def test_truncated_or_empty_files_are_one_clear_error(tiny_text_model, tmp_path, suffix, keep):
    path = save(_fit(tiny_text_model), tmp_path / f"pipe{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CorruptFileError):
        load(path, allow_pickle=True)


def test_plain_joblib_file_truncated_is_a_corrupt_file_error(tiny_text_model, tmp_path):
    import joblib

    path = tmp_path / "plain.joblib"
    joblib.dump(_fit(tiny_text_model), path)  # no skdeep header: no checksum
    path.write_bytes(path.read_bytes()[:200])
    with pytest.warns(UserWarning, match="no checksum"), pytest.raises(CorruptFileError, match="truncated"):
        load(path, allow_pickle=True)


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
def test_cli_reports_a_damaged_file_in_one_line_with_exit_2(tiny_text_model, tmp_path, capsys, damage):
    path = save(_fit(tiny_text_model), tmp_path / "pipe.joblib")
    if damage == "flip":
        _flip_middle(path)
    else:
        path.write_bytes(path.read_bytes()[:100] if damage == "truncate" else b"")
    texts = tmp_path / "texts.txt"
    texts.write_text("good\nbad\n")
    with pytest.raises(SystemExit) as info:
        main(["predict", str(path), str(texts), "--allow-pickle"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "damaged" in err or "truncated" in err or "empty" in err


# ---------------------------------------------------------------------------------------------
# 4. pickles are never loaded without an explicit permission


@pytest.mark.parametrize("command", ["info", "predict"])
@pytest.mark.parametrize("name", ["pipe.joblib", "pipe.model"])
def test_cli_refuses_pickles_without_allow_pickle(tiny_text_model, tmp_path, capsys, command, name):
    pipe = _fit(tiny_text_model)
    path = save(pipe, tmp_path / name, format="joblib")
    texts = tmp_path / "texts.txt"
    texts.write_text("good\nbad\n")
    argv = [command, str(path)] + ([str(texts)] if command == "predict" else [])
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--allow-pickle" in err and "runs any code" in err
    assert main(argv + ["--allow-pickle"]) == 0
    if command == "predict":
        predicted = capsys.readouterr().out.split()
        assert predicted == [str(v) for v in pipe.predict(["good", "bad"])]


def test_library_load_refuses_pickles_by_default(tiny_text_model, tmp_path):
    path = save(_fit(tiny_text_model), tmp_path / "pipe.pkl")
    with pytest.raises(PickleNotAllowedError):
        load(path)
    np.testing.assert_array_equal(load(path, allow_pickle=True).predict(TEXTS), _fit(tiny_text_model).predict(TEXTS))
