"""Pickling encoders by reference, or with their weights bundled.

By default a fitted encoder pickles as its parameters plus ``model_fingerprint_``: a few hundred
bytes. Loading checks that the model found on this machine has that fingerprint. With
``bundle_weights=True`` the model's files travel inside the pickle and are unpacked, once per
fingerprint, under ``$SKDEEP_HOME/bundles`` (default ``~/.cache/skdeep/bundles``) when loaded.

:func:`save` and :func:`load` store whole pipelines either with skops (``.skops``: a safe format that
rebuilds only trusted types; skdeep's own estimators are trusted) or with joblib (``.joblib``,
``.pkl``: a pickle). Both go through the encoders' ``__getstate__`` / ``__setstate__``, so weights
are referenced or bundled, and fingerprints checked, the same way in either format.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import os
import tempfile
import threading
import uuid
import warnings
from pathlib import Path

from .sources import FingerprintMismatchError, ModelNotFoundError, ModelSource, fingerprint_path

BUNDLE_FORMAT = 1

_bundled: dict[tuple, ModelSource] = {}
_bundled_lock = threading.Lock()


from ._config import skdeep_home  # noqa: E402  (re-exported: the ONNX backend imports it from here)


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


# ---------------------------------------------------------------------------------------------
# saving and loading whole pipelines: skops (safe) or joblib (pickle)

SKOPS_SUFFIXES = (".skops",)
JOBLIB_SUFFIXES = (".joblib", ".pkl", ".pickle")
FORMATS = ("skops", "joblib")
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"  # protocol 2 and later


def _skops_io():
    try:
        import skops.io as sio
    except ImportError as exc:  # pragma: no cover - skops is in the serve extra
        raise ImportError("Saving and loading .skops files needs skops: pip install 'skdeep[serve]'.") from exc
    return sio


def _untrusted_error_base():
    try:
        from skops.io.exceptions import UntrustedTypesFoundException
    except ImportError:  # pragma: no cover
        return TypeError
    return UntrustedTypesFoundException


class UntrustedTypesError(_untrusted_error_base()):
    """A ``.skops`` file holds types that are neither skdeep's nor trusted by the caller.

    Attributes
    ----------
    untrusted : list of str
        The fully qualified names of those types.
    """

    def __init__(self, path, untrusted):
        self.untrusted = sorted(untrusted)
        listed = "\n".join(f"  - {name}" for name in self.untrusted)
        trust_args = " ".join(f"--trust {name}" for name in self.untrusted)
        message = (
            f"{str(path)!r} contains types that are not trusted:\n{listed}\n"
            "Loading them could run code from those modules. Review them, and if you trust this file, "
            f"load it with skdeep.persistence.load(path, trusted={self.untrusted!r}) "
            f"(on the command line: {trust_args})."
        )
        # TypeError.__init__ directly: skops' own __init__ would rebuild its shorter message.
        TypeError.__init__(self, message)


def format_for(path, format=None) -> str:
    """The persistence format for ``path``: ``format`` if given, else its suffix.

    ``.skops`` -> ``"skops"``; ``.joblib``, ``.pkl``, ``.pickle`` -> ``"joblib"``.
    """
    if format is not None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {format!r}.")
        return format
    suffix = Path(path).suffix.lower()
    if suffix in SKOPS_SUFFIXES:
        return "skops"
    if suffix in JOBLIB_SUFFIXES:
        return "joblib"
    raise ValueError(
        f"Cannot tell the format of {str(path)!r} from its suffix {suffix!r}: use .skops (safe, "
        f"recommended) or one of {', '.join(JOBLIB_SUFFIXES)} (pickle), or pass format=..."
    )


def is_skdeep_estimator_type(type_name: str) -> bool:
    """Whether ``type_name`` names one of skdeep's own public estimator classes.

    Only classes are trusted, never functions, and only scikit-learn estimators defined in a
    ``skdeep`` module: loading them runs nothing but their ``__setstate__``, which skdeep controls
    (fingerprint check, bundle unpacking inside ``$SKDEEP_HOME``).
    """
    from sklearn.base import BaseEstimator

    module, _, class_name = type_name.rpartition(".")
    if not (module == "skdeep" or module.startswith("skdeep.")) or not class_name or class_name.startswith("_"):
        return False
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return False
    cls = getattr(mod, class_name, None)
    return isinstance(cls, type) and issubclass(cls, BaseEstimator) and cls.__module__ == module


def _flagged_types(path) -> list[str]:
    import zipfile

    try:
        return _skops_io().get_untrusted_types(file=path)
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ValueError(f"{str(path)!r} is not a readable .skops file ({exc}).") from exc


def untrusted_types(path, trusted=None) -> list[str]:
    """Types in a ``.skops`` file that would stop :func:`load`: not trusted by skops by default,
    not skdeep's own estimators, and not in ``trusted``."""
    return _remaining(_flagged_types(path), trusted)


def _remaining(flagged, trusted) -> list[str]:
    extra = {t if isinstance(t, str) else f"{t.__module__}.{t.__qualname__}" for t in (trusted or ())}
    return [name for name in flagged if name not in extra and not is_skdeep_estimator_type(name)]


def _replace_cache_objects(obj):
    """A copy of ``obj`` whose ``EmbeddingCache`` parameters are replaced by their directory.

    skops stores parameters, not live objects with locks and connections; a cache parameter is a
    reference anyway (joblib pickles it as its directory and settings too).
    """
    from sklearn.base import BaseEstimator

    try:
        from .cache import EmbeddingCache
    except ImportError:  # pragma: no cover - the cache module is part of skdeep
        return obj
    if not isinstance(obj, BaseEstimator):
        return obj
    swaps = {k: v for k, v in obj.get_params(deep=True).items() if isinstance(v, EmbeddingCache)}
    if not swaps:
        return obj
    defaults = {
        name: p.default
        for name, p in inspect.signature(EmbeddingCache).parameters.items()
        if p.default is not inspect.Parameter.empty and name != "directory"
    }
    replaced = {k: "auto" if v.directory is None else str(v.path.parent) for k, v in swaps.items()}
    lost = [k for k, v in swaps.items() if any(getattr(v, name, d) != d for name, d in defaults.items())]
    obj = copy.deepcopy(obj)
    obj.set_params(**replaced)
    if not lost:
        return obj
    warnings.warn(
        "skops stores cache settings as a directory: "
        + ", ".join(f"{k}={replaced[k]!r}" for k in lost)
        + f"; the other settings of those EmbeddingCache objects ({', '.join(defaults)}) are not saved "
        "and the loaded pipeline uses the defaults.",
        UserWarning,
        stacklevel=3,
    )
    return obj


def _write_atomically(path: Path, write) -> None:
    # Write beside the target and rename: a crash never leaves a half-written model file behind.
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name rather than mkstemp: the writer creates the file, so it gets the usual permissions.
    tmp = str(path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"))
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(obj, path, format=None) -> Path:
    """Save a fitted estimator or pipeline to ``path``.

    Parameters
    ----------
    obj : estimator
        Typically a fitted :class:`~sklearn.pipeline.Pipeline` starting with a skdeep encoder.
    path : str or path-like
        Destination file. Its suffix chooses the format unless ``format`` is given.
    format : {"skops", "joblib"}, default=None
        ``"skops"`` (suffix ``.skops``): a zip of JSON and arrays that loads without running
        arbitrary code; only trusted types are rebuilt. ``"joblib"`` (``.joblib``, ``.pkl``):
        a pickle, which can run any code when loaded, so only load pickles you made.

    Returns
    -------
    pathlib.Path
        The written file.

    Notes
    -----
    Model weights are referenced in both formats: the file holds each encoder's model name and
    the fingerprint of its weights, checked again on load. Encoders with ``bundle_weights=True``
    carry their model's files inside the saved file instead.
    """
    path = Path(path)
    fmt = format_for(path, format)
    if fmt == "skops":
        sio = _skops_io()
        obj = _replace_cache_objects(obj)
        _write_atomically(path, lambda tmp: sio.dump(obj, tmp))
    else:
        import joblib

        _write_atomically(path, lambda tmp: joblib.dump(obj, tmp))
    return path


def load(path, trusted=None):
    """Load an estimator saved with :func:`save` (or with ``skops.io.dump`` / ``joblib.dump``).

    Parameters
    ----------
    path : str or path-like
        A ``.skops`` file, or a ``.joblib`` / ``.pkl`` pickle. Other suffixes are recognised by
        content (a zip is read as skops, never unpickled).
    trusted : list of str or type, default=None
        For ``.skops`` files: types to trust beyond scikit-learn's defaults and skdeep's own
        estimators, e.g. ``["mypackage.MyTransformer"]``. Ignored for pickles, which trust
        everything.

    Returns
    -------
    estimator

    Raises
    ------
    UntrustedTypesError
        If a ``.skops`` file holds types that are not trusted; the message lists them.
    FingerprintMismatchError
        If an encoder's model is found here with other weights than the ones it was fitted with.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No saved model at {str(path)!r}.")
    try:
        fmt = format_for(path)
    except ValueError:
        with open(path, "rb") as fh:
            head = fh.read(4)
        if head == _ZIP_MAGIC:
            fmt = "skops"
        elif head[:1] == _PICKLE_MAGIC:
            fmt = "joblib"
        else:
            raise ValueError(
                f"{str(path)!r} is neither a .skops file nor an uncompressed pickle; saved models end in "
                f"{', '.join(SKOPS_SUFFIXES + JOBLIB_SUFFIXES)}."
            ) from None
    if fmt == "joblib":
        import joblib

        with _explained_import_errors(path):
            return joblib.load(path)
    flagged = _flagged_types(path)
    remaining = _remaining(flagged, trusted)
    if remaining:
        raise UntrustedTypesError(path, remaining)
    # Everything skops flags is now either skdeep's own estimator or trusted by the caller.
    with _explained_import_errors(path):
        return _skops_io().load(path, trusted=flagged)


class _explained_import_errors:
    """Turn "no module / no attribute" while rebuilding a saved object into an error that says why."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, (ImportError, AttributeError)):
            raise ImportError(
                f"{str(self.path)!r} refers to code that cannot be imported here ({exc}). Functions and classes "
                "are saved by name: make the module that defines them importable (functions defined in a "
                "script's __main__ cannot be found by other programs), then load again."
            ) from exc
        return False
