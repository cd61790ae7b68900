"""Pickling encoders by reference, or with their weights bundled.

By default a fitted encoder pickles as its parameters plus ``model_fingerprint_``: a few hundred
bytes. Loading checks that the model found on this machine has that fingerprint. With
``bundle_weights=True`` the model's files travel inside the pickle and are unpacked, once per
fingerprint, under ``$SKDEEP_HOME/bundles`` (default ``~/.cache/skdeep/bundles``) when loaded.
"""

from __future__ import annotations

import os
import tempfile
import threading
import warnings
from pathlib import Path

from .sources import FingerprintMismatchError, ModelNotFoundError, ModelSource, fingerprint_path

BUNDLE_FORMAT = 1

_bundled: dict[tuple, ModelSource] = {}
_bundled_lock = threading.Lock()


def skdeep_home() -> Path:
    return Path(os.environ.get("SKDEEP_HOME", Path.home() / ".cache" / "skdeep"))


def bundle_state(source: ModelSource) -> dict:
    """Everything needed to rebuild ``source`` on a machine that lacks it."""
    if source.path is None:
        # Random-init models are rebuilt from code and seed: nothing to carry.
        files, is_file = {}, False
    else:
        files = {rel: path.read_bytes() for rel, path in source.files().items()}
        is_file = Path(source.path).is_file()
    return {
        "format": BUNDLE_FORMAT,
        "name": source.name,
        "origin": source.origin,
        "fingerprint": source.fingerprint,
        "extra": dict(source.extra),
        "is_file": is_file,
        "files": files,
    }


def restore_bundle(bundle: dict, identity: tuple) -> ModelSource:
    """Unpack a bundle (once per fingerprint) and make it stand in for ``identity`` in this process."""
    if bundle.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"Unsupported skdeep bundle format {bundle.get('format')!r}.")
    fingerprint = bundle["fingerprint"]
    if bundle["files"]:
        root = skdeep_home() / "bundles" / fingerprint
        if not root.exists():
            root.parent.mkdir(parents=True, exist_ok=True)
            # Unpack beside the target and rename: concurrent loaders never see a half-written folder.
            tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{fingerprint}-"))
            for rel, data in bundle["files"].items():
                target = (tmp / rel).resolve()
                if tmp.resolve() not in target.parents:
                    raise ValueError(f"Refusing bundle entry {rel!r} that escapes the bundle folder.")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            try:
                os.rename(tmp, root)
            except OSError:  # another process won the race; its copy is identical
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
        path = root / next(iter(bundle["files"])) if bundle["is_file"] else root
        actual = fingerprint_path(path)
        if actual != fingerprint:
            raise FingerprintMismatchError(
                f"The weights bundled for {bundle['name']!r} unpacked to {str(path)!r} with fingerprint {actual}, "
                f"expected {fingerprint}: the bundle or the folder is damaged. Delete {str(root)!r} and load again."
            )
        source = ModelSource(bundle["name"], "bundle", str(path), fingerprint, bundle["extra"])
    else:
        source = ModelSource(bundle["name"], bundle["origin"], None, fingerprint, bundle["extra"])
    with _bundled_lock:
        _bundled[identity] = source
    return source


def bundled_source(identity: tuple) -> ModelSource | None:
    """The source restored from a bundle for this model identity in this process, if any."""
    return _bundled.get(identity)


def verify_on_load(encoder) -> None:
    """Fail at load time when the model found here has other weights than the fitted ones.

    A model that cannot be found at all is not an error yet: the pipeline can still be inspected,
    and the first ``transform`` raises :class:`ModelNotFoundError` with instructions.
    """
    try:
        encoder._source()
    except ModelNotFoundError as exc:
        warnings.warn(
            f"Loaded {type(encoder).__name__}(model={encoder.model!r}) but its model is not available here: {exc}",
            UserWarning,
            stacklevel=3,
        )
