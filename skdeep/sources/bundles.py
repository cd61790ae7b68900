"""Weight bundles: a model's files carried inside a pickled estimator, and models registered by code.

``TextEncoder(..., bundle_weights=True)`` pickles its model's files with it (:func:`bundle_state`).
Loading the pickle calls :func:`restore_bundle`, which unpacks the files once per fingerprint under
``$SKDEEP_HOME/bundles/<fingerprint>`` and registers them, for this process, as the model of that
estimator's name: clones made later (``GridSearchCV``, Dask) find it there.

A bundle comes from a file that may have been crafted, so before anything is written:

* the fingerprint must be 32 hex digits (it names the folder);
* every entry must be a relative path of plain names (no ``..``, no absolute path, no empty or
  hidden component) holding bytes; a text model's ``modules.json`` may name only
  sentence-transformers module classes (it is how a folder says which code builds it);

then the files are written into a fresh temporary folder inside ``$SKDEEP_HOME/bundles``, their
fingerprint is verified, and only then is the folder renamed into place. A bundle that does not
verify leaves nothing behind.

:func:`register_model` is the supported way for code (a fine-tuner) to make freshly written weights
stand in for a model name in this process, with the same checks.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from pathlib import Path, PurePosixPath

from .._config import skdeep_home
from ._common import FingerprintMismatchError, ModelSource, check_fingerprint, fingerprint_path
from .image import ImageModelSpec

BUNDLE_FORMAT = 2
_READABLE_FORMATS = (1, 2)
_MAX_ENTRIES = 10_000
_ST_MODULE_PREFIX = "sentence_transformers."

_registered: dict[tuple, ModelSource] = {}
_registered_lock = threading.Lock()


class BundleError(ValueError):
    """A weight bundle is malformed or unsafe; nothing was written."""


def bundle_state(source: ModelSource) -> dict:
    """Everything needed to rebuild ``source`` on a machine that lacks it."""
    if source.path is None:
        # Random-init models are rebuilt from code and seed: nothing to carry.
        files, is_file = {}, False
    else:
        files = {rel: path.read_bytes() for rel, path in source.files().items()}
        is_file = Path(source.path).is_file()
    spec = source.spec.to_dict() if isinstance(source.spec, ImageModelSpec) else None
    return {
        "format": BUNDLE_FORMAT,
        "name": source.name,
        "origin": source.origin,
        "fingerprint": source.fingerprint,
        "spec": spec,
        "is_file": is_file,
        "files": files,
    }


def _check_entry(rel) -> PurePosixPath:
    """A bundle entry name as a safe relative path, or :class:`BundleError`."""
    if not isinstance(rel, str) or not rel or len(rel) > 1024 or "\0" in rel or "\\" in rel:
        raise BundleError(f"Refusing bundle entry {str(rel)[:120]!r}: not a plain relative file name.")
    path = PurePosixPath(rel)
    if path.is_absolute() or any(part in ("", ".", "..") or part.startswith(".") for part in path.parts):
        raise BundleError(f"Refusing bundle entry {rel[:120]!r}: it would leave the bundle folder.")
    return path


def _check_modules_json(data: bytes) -> None:
    """A sentence-transformers ``modules.json`` may only name sentence-transformers classes."""
    try:
        modules = json.loads(data)
        types = [m["type"] for m in modules]
    except (ValueError, TypeError, KeyError) as exc:
        raise BundleError(f"Refusing a bundle whose modules.json is not a list of modules ({exc}).") from exc
    bad = [t for t in types if not (isinstance(t, str) and t.startswith(_ST_MODULE_PREFIX))]
    if bad:
        raise BundleError(
            f"Refusing a bundle whose modules.json names code outside sentence-transformers: {bad[:3]!r}."
        )


def _check_bundle(bundle) -> tuple[str, dict, ImageModelSpec | None]:
    if not isinstance(bundle, dict) or bundle.get("format") not in _READABLE_FORMATS:
        shown = bundle.get("format") if isinstance(bundle, dict) else type(bundle).__name__
        raise BundleError(f"Unsupported skdeep bundle format {shown!r}.")
    fingerprint = check_fingerprint(bundle.get("fingerprint"))
    files = bundle.get("files")
    if not isinstance(files, dict) or len(files) > _MAX_ENTRIES:
        raise BundleError("A bundle's files must be a mapping of at most 10,000 entries.")
    for rel, data in files.items():
        _check_entry(rel)
        if not isinstance(data, (bytes, bytearray)):
            raise BundleError(f"Bundle entry {rel!r} does not hold bytes.")
        if PurePosixPath(rel).name == "modules.json":
            _check_modules_json(bytes(data))
    if bundle.get("is_file") and len(files) != 1:
        raise BundleError("A single-file bundle must hold exactly one file.")
    if not isinstance(bundle.get("name"), str) or not isinstance(bundle.get("origin"), str):
        raise BundleError("A bundle's name and origin must be strings.")
    raw_spec = bundle.get("spec", bundle.get("extra")) if bundle["format"] == 1 else bundle.get("spec")
    spec = ImageModelSpec.from_dict(raw_spec) if raw_spec else None
    return fingerprint, files, spec


def _unpack_verified(files: dict, fingerprint: str, is_file: bool, parent: Path) -> Path:
    """Write ``files`` into a fresh folder inside ``parent``; return it once its fingerprint matches."""
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{fingerprint}-"))
    try:
        for rel, data in files.items():
            target = tmp.joinpath(*_check_entry(rel).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            # O_EXCL | O_NOFOLLOW: write a new regular file, never through a link.
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        weights = tmp / next(iter(files)) if is_file else tmp
        actual = fingerprint_path(weights)
        if actual != fingerprint:
            raise FingerprintMismatchError(
                f"The bundled weights have fingerprint {actual}, but the bundle claims {fingerprint}: "
                "the file is damaged or was tampered with. Nothing was installed."
            )
        return tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _install(files: dict, fingerprint: str, is_file: bool) -> Path:
    """The verified folder of these files under ``$SKDEEP_HOME/bundles`` (unpacked once per fingerprint)."""
    parent = skdeep_home() / "bundles"
    parent.mkdir(parents=True, exist_ok=True)
    root = parent / fingerprint
    first = next(iter(files))

    def verified(folder: Path) -> bool:
        try:
            return not folder.is_symlink() and fingerprint_path(folder / first if is_file else folder) == fingerprint
        except (OSError, ValueError):
            return False

    if root.is_dir() and verified(root):
        return root
    fresh = _unpack_verified(files, fingerprint, is_file, parent)
    try:
        os.rename(fresh, root)
    except OSError:
        if root.is_dir() and verified(root):  # another process won the race; its copy is identical
            shutil.rmtree(fresh, ignore_errors=True)
            return root
        # A damaged earlier copy (or a stray file): move it aside, then put ours in place.
        trash = Path(tempfile.mkdtemp(dir=parent, prefix=f".trash-{fingerprint}-"))
        if root.is_symlink() or root.exists():
            os.rename(root, trash / "old")
        os.rename(fresh, root)
        shutil.rmtree(trash, ignore_errors=True)
    return root


def restore_bundle(bundle: dict, identity: tuple) -> ModelSource:
    """Check and unpack a bundle (once per fingerprint); it then stands in for ``identity`` in this process.

    Parameters
    ----------
    bundle : dict
        From :func:`bundle_state`, as found in a loaded file.
    identity : tuple
        The estimator's model identity (class name and model parameters).

    Returns
    -------
    ModelSource

    Raises
    ------
    BundleError
        If the bundle is malformed or unsafe (nothing is written).
    FingerprintMismatchError
        If the unpacked files do not have the fingerprint the bundle claims (nothing is installed).
    """
    fingerprint, files, spec = _check_bundle(bundle)
    if files:
        root = _install(files, fingerprint, bool(bundle["is_file"]))
        path = root / next(iter(files)) if bundle["is_file"] else root
        source = ModelSource(bundle["name"], "bundle", str(path), fingerprint, spec)
    else:
        source = ModelSource(bundle["name"], bundle["origin"], None, fingerprint, spec)
    with _registered_lock:
        _registered[identity] = source
    return source


def register_model(folder, identity: tuple, *, name: str, origin: str = "registered") -> ModelSource:
    """Copy a model folder into ``$SKDEEP_HOME/bundles`` and let it stand in for ``identity`` here.

    For code that writes weights itself (a fine-tuner): the folder is fingerprinted, installed
    under its fingerprint with the same checks as a bundle, and found by encoders whose model
    identity is ``identity``.

    Parameters
    ----------
    folder : path-like
        A model folder (e.g. one saved by sentence-transformers).
    identity : tuple
        The model identity of the encoders that should find it, e.g. ``("TextEncoder", name)``.
    name : str
        The model name recorded in the source.
    origin : str, default="registered"

    Returns
    -------
    ModelSource
    """
    folder = Path(folder)
    fingerprint = fingerprint_path(folder)
    files = {
        rel: path.read_bytes() for rel, path in ModelSource(name, origin, str(folder), fingerprint).files().items()
    }
    root = _install(files, fingerprint, False)
    source = ModelSource(name, origin, str(root), fingerprint)
    with _registered_lock:
        _registered[identity] = source
    return source


def bundled_source(identity: tuple) -> ModelSource | None:
    """The source restored or registered for this model identity in this process, if any."""
    return _registered.get(identity)


def clear_registered() -> None:
    """Forget every restored or registered model of this process (as a fresh process would)."""
    with _registered_lock:
        _registered.clear()
