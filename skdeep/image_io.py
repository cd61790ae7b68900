"""Image inputs: validate what users pass, identify each image by content, and decode it to RGB.

Every image, whatever its source, ends up as an 8-bit RGB :class:`PIL.Image.Image` through the same
steps, so that a file, its bytes, the PIL image and the equivalent array all give the same pixels:

1. EXIF orientation is applied (:func:`PIL.ImageOps.exif_transpose`).
2. The mode is converted deliberately:

   * ``RGB`` is kept; ``L`` / ``1`` (greyscale) are replicated to three channels;
   * ``P`` (palette), ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` use PIL's conversion to ``RGB``
     (embedded ICC profiles are ignored, as in the pipelines pretrained weights were trained with);
   * 16-bit greyscale (``I;16*``, and ``I`` with values in 0..65535) is scaled to 8 bits over its full
     range (``round(v * 255 / 65535)``), never clipped;
   * 32-bit float greyscale (``F``) must lie in [0, 1] and is scaled by 255;
   * images with alpha (``RGBA``, ``LA``, ``PA``, palette or colour-key transparency) are composited
     on a white background (:data:`ALPHA_BACKGROUND`).

3. Arrays: integers must lie in 0..255 and floats in [0, 1] (unless ``pixel_range`` says otherwise);
   floats are scaled to 8 bits with rounding. Shapes (H, W), (H, W, 1), (H, W, 3), (H, W, 4).

Content keys (what the embedding cache is keyed on) are the *file bytes* for paths and bytes (never
the path string: a renamed file is still a hit, an edited file a miss), the raw pixel data with shape
and dtype for arrays, and the RGB pixels for PIL images. Decoding happens only for cache misses.

Files: only regular files are ever opened (symlinks are followed first), never a named pipe, device or
socket, which could block or never end; at most :data:`MAX_IMAGE_FILE_BYTES` are read from one file.
Folders are listed by :func:`list_image_files`, the one rule the library and the command line share.
"""

from __future__ import annotations

import glob
import hashlib
import io
import math
import os
import stat
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ._containers import order_problem

#: Largest image, in pixels, that is decoded by default; the same threshold as PIL's own warning.
DEFAULT_MAX_PIXELS = 89_478_485
#: Colour that transparent pixels are composited on.
ALPHA_BACKGROUND = (255, 255, 255)
#: Largest image file, in bytes, that is read; larger files are unreadable (a guard against huge or endless
#: files). Far above any real photograph; read at call time, so it may be changed at run time.
MAX_IMAGE_FILE_BYTES = 512 * 1024 * 1024

_DIGEST_BYTES = 32
_HASH_CHUNK = 1 << 20
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_VALID_CHANNELS = (1, 3, 4)


class UnreadableImageError(ValueError):
    """An image could not be read: missing file, not an image, truncated, or too large."""


class ImageTooLargeError(UnreadableImageError):
    """An image's header claims more pixels than ``max_pixels`` allows (a decompression bomb guard)."""


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# one image


class ImageInput:
    """One validated image and where it came from.

    Parameters
    ----------
    kind : {"file", "bytes", "array", "pil"}
    data : str, bytes, ndarray or PIL.Image.Image
        The file path (absolute), the encoded bytes, the checked array, or the PIL image.
    position : int
        Row of the input this image came from (named in error messages).
    pixel_range : tuple of two floats or None
        For arrays: the values that map to black and white.
    max_pixels : int or None
        Largest image to decode (a decompression-bomb guard); None: PIL's own limit only.
    """

    __slots__ = ("kind", "data", "position", "pixel_range", "max_pixels", "_digest", "error")

    def __init__(self, kind: str, data, position: int, pixel_range=None, max_pixels=DEFAULT_MAX_PIXELS):
        self.kind = kind
        self.data = data
        self.position = position
        self.pixel_range = pixel_range
        # Decoding limit of the encoder that validated this image (backends are shared by encoders).
        self.max_pixels = max_pixels
        self._digest: bytes | None = None
        # Set when the image is known to be unreadable before decoding (e.g. a missing file).
        self.error: Exception | None = None

    def describe(self) -> str:
        if self.kind == "file":
            return f"image file {self.data!r} at position {self.position}"
        if self.kind == "bytes":
            return f"encoded image ({len(self.data)} bytes) at position {self.position}"
        if self.kind == "array":
            return f"array image of shape {self.data.shape} at position {self.position}"
        return f"PIL image ({self.data.mode}, {self.data.size[0]}x{self.data.size[1]}) at position {self.position}"

    # ----------------------------------------------------------------- content key
    def payload(self) -> bytes:
        """Bytes that identify what the model will see: file content, pixels, never a path."""
        if self.kind in ("file", "bytes"):
            digest = self._encoded_digest()
            if digest is None:  # unreadable file: a key that matches nothing, and is never cached
                return b"unreadable\0" + os.urandom(16)
            return b"encoded\0" + digest
        if self.kind == "array":
            a = self.data
            header = f"array\0{a.dtype.str}\0{a.shape}\0{self.pixel_range}\0".encode()
            return header + hashlib.blake2b(np.ascontiguousarray(a).data, digest_size=_DIGEST_BYTES).digest()
        rgb = to_rgb(self.data)
        header = f"pil\0{rgb.size}\0".encode()
        return header + hashlib.blake2b(rgb.tobytes(), digest_size=_DIGEST_BYTES).digest()

    def _encoded_digest(self) -> bytes | None:
        if self._digest is None:
            if self.kind == "bytes":
                self._digest = hashlib.blake2b(self.data, digest_size=_DIGEST_BYTES).digest()
            else:
                try:
                    self._digest = _hash_file(self.data)
                except (OSError, UnreadableImageError) as exc:
                    self.error = exc
                    return None
        return self._digest

    # ----------------------------------------------------------------- decoding
    def load(self, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
        """Decode to an 8-bit RGB PIL image, raising :class:`UnreadableImageError` naming the image."""
        try:
            if self.error is not None:
                raise self.error
            if self.kind == "array":
                return array_to_rgb(self.data, self.pixel_range)
            if self.kind == "pil":
                return to_rgb(_checked_size(self.data, max_pixels, self))
            data = self.data if self.kind == "bytes" else read_image_file(self.data)
            if self.kind == "file" and self._digest is not None:
                # The key was computed from the bytes read earlier; refuse to cache pixels of other bytes.
                if hashlib.blake2b(data, digest_size=_DIGEST_BYTES).digest() != self._digest:
                    raise UnreadableImageError("the file changed while it was being encoded")
            return decode_bytes(data, max_pixels, self)
        except UnreadableImageError as exc:
            if self.describe() in str(exc):
                raise
            raise type(exc)(f"Cannot read {self.describe()}: {exc}") from exc
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise UnreadableImageError(f"Cannot read {self.describe()}: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "it is a directory"
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image file PIL can identify"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _file_problem(path: str, st: os.stat_result) -> str | None:
    """Why the file ``st`` describes must not be read as an image, or None."""
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "not a regular file")
        target = f"a symlink to {os.path.realpath(path)!r}, which is " if os.path.islink(path) else ""
        return f"it is {target}{kind}; images are read only from regular files"
    if st.st_size > MAX_IMAGE_FILE_BYTES:
        return (
            f"the file has {st.st_size:,} bytes, more than MAX_IMAGE_FILE_BYTES = {MAX_IMAGE_FILE_BYTES:,} "
            "(skdeep.image_io.MAX_IMAGE_FILE_BYTES)"
        )
    return None


def _read_file(path: str, consume) -> None:
    """Pass the bytes of the regular file ``path`` to ``consume`` in chunks, refusing anything else.

    The path is checked before opening (opening a FIFO blocks, opening a device may act on it); the
    open file is checked again through its descriptor, so a file swapped in between is caught too.
    O_NONBLOCK keeps even that swapped-in FIFO's open from blocking; regular files ignore it.
    """
    problem = _file_problem(path, os.stat(path))
    if problem is not None:
        raise UnreadableImageError(problem)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    with open(fd, "rb", buffering=0) as fh:  # closes fd
        st = os.fstat(fd)
        problem = _file_problem(path, st)
        if problem is not None:
            raise UnreadableImageError(f"{problem} (the file was replaced while being opened)")
        limit = MAX_IMAGE_FILE_BYTES
        buffer = memoryview(bytearray(min(_HASH_CHUNK, st.st_size + 1)))  # small files: one read, then EOF
        total = 0
        while n := fh.readinto(buffer):
            total += n
            if total > limit:  # it grew after the check
                raise UnreadableImageError(f"the file grew beyond MAX_IMAGE_FILE_BYTES = {limit:,} while being read")
            consume(buffer[:n])
        if n is None:  # a non-blocking read found no data: not a plain file on disk
            raise UnreadableImageError("reading the file would block")


def read_image_file(path: str) -> bytes:
    """The bytes of an image file: a regular file of at most :data:`MAX_IMAGE_FILE_BYTES` (symlinks followed).

    Raises
    ------
    UnreadableImageError
        For a named pipe, device, socket or directory (never opened), or a file that is too large.
    OSError
        When the file is missing or cannot be opened.
    """
    sink = io.BytesIO()
    _read_file(path, sink.write)
    return sink.getvalue()  # CPython hands over BytesIO's buffer without copying it


def _hash_file(path: str) -> bytes:
    digest = hashlib.blake2b(digest_size=_DIGEST_BYTES)
    _read_file(path, digest.update)
    return digest.digest()


def _checked_size(img: Image.Image, max_pixels: int | None, item: ImageInput) -> Image.Image:
    width, height = img.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"Cannot read {item.describe()}: its header claims {width}x{height} = {width * height:,} pixels, "
            f"more than max_pixels={max_pixels:,} (a guard against decompression bombs). Raise max_pixels "
            "if the image is genuine."
        )
    return img


def decode_bytes(data: bytes, max_pixels: int | None, item: ImageInput) -> Image.Image:
    """Decode an encoded image (the first frame of animations) to RGB, checking its size first."""
    if not data:
        raise UnreadableImageError("the file is empty (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        # PIL's own guard (twice Image.MAX_IMAGE_PIXELS) fired before ours could.
        raise ImageTooLargeError(
            f"Cannot read {item.describe()}: {exc} Raise max_pixels and PIL.Image.MAX_IMAGE_PIXELS if the "
            "image is genuine."
        ) from exc
    _checked_size(img, max_pixels, item)
    img.load()  # header only so far: this is where truncated or corrupt data fails
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB the way the module docstring describes."""
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    has_key_transparency = "transparency" in img.info
    if mode == "RGB" and not has_key_transparency:
        return img
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        arr = np.asarray(img)
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise UnreadableImageError(
                f"a 32-bit integer image (mode {mode!r}) with values in {lo}..{hi}; only 0..65535 (16-bit) is supported"
            )
        grey = ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "F":
        return Image.fromarray(_float_to_uint8(np.asarray(img), "a 32-bit float image (mode 'F')"), mode="L").convert(
            "RGB"
        )
    if mode == "La":
        img, mode = img.convert("RGBa"), "RGBa"
    if mode in _ALPHA_MODES or has_key_transparency:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _float_to_uint8(a: np.ndarray, what: str) -> np.ndarray:
    if not np.all(np.isfinite(a)):
        raise UnreadableImageError(f"{what} contains NaN or infinite values")
    if a.size and (a.min() < 0 or a.max() > 1):
        raise UnreadableImageError(f"{what} has values in [{a.min():.4g}, {a.max():.4g}]; expected [0, 1]")
    return np.rint(a.astype(np.float64) * 255).astype(np.uint8)


def array_to_rgb(a: np.ndarray, pixel_range=None) -> Image.Image:
    """Turn a checked (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array into an RGB PIL image."""
    if pixel_range is not None:
        lo, hi = pixel_range
        scaled = (a.astype(np.float64) - lo) / (hi - lo)
        pixels = np.rint(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)  # values already range-checked
    elif a.dtype == np.uint8:
        pixels = a
    elif a.dtype.kind in "ui":
        pixels = a.astype(np.uint8)
    else:
        pixels = np.rint(a.astype(np.float64) * 255).astype(np.uint8)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(pixels), mode="L").convert("RGB")
    mode = "RGB" if pixels.shape[2] == 3 else "RGBA"
    return to_rgb(Image.fromarray(np.ascontiguousarray(pixels), mode=mode))


# ---------------------------------------------------------------------------------------------
# validation of whole inputs


def check_array_image(a: np.ndarray, position: int, pixel_range=None) -> np.ndarray:
    """Check one array image's dtype, rank, channels and value range; raise naming the position."""
    where = f"Image at position {position}"
    kind = a.dtype.kind
    if kind == "b":
        raise TypeError(f"{where} is a boolean array; convert it to uint8 first (e.g. mask.astype(np.uint8) * 255).")
    if kind not in "uif":
        raise TypeError(
            f"{where} is an array of dtype {a.dtype}; expected uint8 (0..255), another integer type in 0..255, "
            "or floats in [0, 1]."
        )
    if a.ndim not in (2, 3):
        raise ValueError(
            f"{where} is an array of shape {a.shape} (rank {a.ndim}); expected (H, W), (H, W, 1), (H, W, 3) or "
            "(H, W, 4)."
        )
    if a.ndim == 3 and a.shape[2] not in _VALID_CHANNELS:
        hint = " It looks channels-first: use np.moveaxis(image, 0, -1)." if a.shape[0] in _VALID_CHANNELS else ""
        raise ValueError(f"{where} has shape {a.shape}: {a.shape[2]} channels, expected 1, 3 or 4.{hint}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{where} is empty (shape {a.shape}).")
    if pixel_range is not None:
        lo, hi = pixel_range
        if kind == "f" and not np.all(np.isfinite(a)):
            raise ValueError(f"{where} contains NaN or infinite values.")
        amin, amax = a.min(), a.max()
        if amin < lo or amax > hi:
            raise ValueError(f"{where} has values in [{amin:.6g}, {amax:.6g}], outside pixel_range=({lo!r}, {hi!r}).")
    elif kind == "f":
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{where} contains NaN or infinite values.")
        amin, amax = a.min(), a.max()
        if amin < 0 or amax > 1:
            raise ValueError(
                f"{where} is a float array with values in [{amin:.6g}, {amax:.6g}]; float images must lie in "
                "[0, 1] (divide by 255, or set pixel_range=(low, high) to declare another range)."
            )
    elif a.dtype != np.uint8:
        amin, amax = int(a.min()), int(a.max())
        if amin < 0 or amax > 255:
            raise ValueError(
                f"{where} is a {a.dtype} array with values in {amin}..{amax}; integer images must lie in 0..255 "
                "(set pixel_range=(0, 65535) for 16-bit data, or another range)."
            )
    return a


def check_pixel_range(pixel_range):
    """Validate the ``pixel_range`` parameter: None or (low, high) with low < high, both finite."""
    if pixel_range is None:
        return None
    if (
        not isinstance(pixel_range, (tuple, list))
        or len(pixel_range) != 2
        or not all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) for v in pixel_range)
        or not pixel_range[0] < pixel_range[1]
    ):
        raise ValueError(f"pixel_range must be None or (low, high) with finite low < high, got {pixel_range!r}.")
    return (float(pixel_range[0]), float(pixel_range[1]))


def check_image_shape(image_shape):
    """Validate ``image_shape``: (H, W) or (H, W, C), positive ints, at most one -1, C in {1, 3, 4}."""
    if image_shape is None:
        return None
    ok = (
        isinstance(image_shape, (tuple, list))
        and len(image_shape) in (2, 3)
        and all(isinstance(v, Integral) and not isinstance(v, bool) and (v >= 1 or v == -1) for v in image_shape)
        and sum(v == -1 for v in image_shape) <= 1
        and (len(image_shape) == 2 or image_shape[2] in (*_VALID_CHANNELS, -1))
    )
    if not ok:
        raise ValueError(
            f"image_shape must be None, (H, W) or (H, W, C) with C in {{1, 3, 4}}; one entry may be -1; "
            f"got {image_shape!r}."
        )
    return tuple(int(v) for v in image_shape)


def image_extensions() -> frozenset[str]:
    """File name extensions (lower case, with the dot) of the formats PIL can open, plugins included."""
    registered = Image.registered_extensions()  # imports PIL's plugins on first use
    # MPO (multi-picture JPEG) has no opener of its own: PIL's JPEG opener reads it.
    return frozenset(ext for ext, fmt in registered.items() if fmt in Image.OPEN or fmt == "MPO")


def is_image_file_name(name: str | os.PathLike) -> bool:
    """Whether a file name has an extension of a format PIL can open (case-insensitive)."""
    return os.path.splitext(os.fspath(name))[1].lower() in image_extensions()


def list_image_files(folder: str | os.PathLike, recursive: bool = False) -> list[str]:
    """The image files in a folder: what ``ImageEncoder().transform(folder)`` and ``skdeep embed folder`` read.

    A file is listed when its extension is one PIL can open (:func:`image_extensions`) and it is a
    regular file once symlinks are followed: named pipes, devices, sockets and broken symlinks are left
    out. Names starting with "." (hidden files and folders, macOS ``._*`` resource forks) are left out.

    Parameters
    ----------
    folder : str or path-like
        The folder to list.
    recursive : bool, default=False
        Also list the files in subfolders, at any depth. Symlinks to folders are not followed (no
        cycles, no escape from the tree).

    Returns
    -------
    list of str
        Paths made by joining ``folder`` as given with the file's path below it, in a fixed order:
        sorted by name, a subfolder's files at the subfolder's place (``a/z.png`` before ``b.png``).

    Raises
    ------
    FileNotFoundError, NotADirectoryError, PermissionError
        When ``folder`` (or, with ``recursive``, a subfolder) cannot be listed.
    """
    root = os.fspath(folder)
    if not stat.S_ISDIR(os.stat(root).st_mode):
        raise NotADirectoryError(f"{root!r} is not a folder.")
    extensions = image_extensions()
    found: list[str] = []

    def scan(directory: str) -> None:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                if recursive:
                    scan(os.path.join(directory, entry.name))
                continue
            if os.path.splitext(entry.name)[1].lower() not in extensions:
                continue
            try:
                regular = stat.S_ISREG(entry.stat(follow_symlinks=True).st_mode)  # stat only: nothing is opened
            except OSError:  # a broken symlink
                continue
            if regular:
                found.append(os.path.join(directory, entry.name))

    scan(root)
    return found


def expand_path_string(spec: str | os.PathLike) -> list[str]:
    """A single path string: one file, every image file in a directory, or the files a glob matches.

    Directories are listed by :func:`list_image_files`, not recursively (use a ``**`` glob for
    that). Glob matches are kept when they are regular files, whatever their extension (the pattern is
    the user's choice). Results are sorted, so row order is reproducible.
    """
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.is_file():
        return [str(path.resolve())]
    if path.is_dir():
        files = [os.path.abspath(f) for f in list_image_files(path)]
        if not files:
            raise ValueError(
                f"The directory {text!r} holds no image files (looked for {_extensions_hint()}; subfolders are not "
                "searched: use a pattern such as 'photos/**/*.jpg' for those)."
            )
        return files
    if path.exists():  # neither a regular file nor a directory: never opened
        raise UnreadableImageError(f"Cannot read {text!r}: {_file_problem(str(path), path.stat())}.")
    if glob.has_magic(text):
        files = sorted(str(Path(p).resolve()) for p in glob.glob(os.path.expanduser(text), recursive=True))
        files = [f for f in files if os.path.isfile(f)]
        if not files:
            raise ValueError(f"The pattern {text!r} matches no files.")
        return files
    raise ValueError(
        f"{text!r} is not an existing file, directory or glob pattern with matches. Pass a list of paths, "
        "a directory, a pattern such as 'photos/*.jpg', or image arrays."
    )


def _extensions_hint() -> str:
    return ".jpg, .jpeg, .png, .bmp, .gif, .tif, .webp and the other extensions PIL registers"


def _rows_of_2d(X: np.ndarray, image_shape) -> list[np.ndarray]:
    n, n_features = X.shape
    if image_shape is None:
        raise ValueError(
            f"Got a 2-D numeric array of shape {X.shape}. ImageEncoder reads 2-D arrays as one flattened image "
            "per row only when image_shape is set (e.g. image_shape=(8, 8) for sklearn's load_digits); pass a "
            "list [image] for one greyscale image."
        )
    try:
        shaped = X.reshape((n, *image_shape))
    except ValueError:
        raise ValueError(f"Cannot reshape rows of {n_features} values into image_shape={image_shape}.") from None
    return list(shaped)


def _array_batch(X: np.ndarray, image_shape) -> list[np.ndarray]:
    """Split a numeric ndarray given as the whole input into one array per image."""
    if X.ndim == 4:
        return list(X)
    if X.ndim == 3:
        if X.shape[-1] in _VALID_CHANNELS:
            raise ValueError(
                f"Got a 3-D array of shape {X.shape}: ImageEncoder reads a 3-D array as N greyscale images "
                f"(N, H, W), but a last axis of {X.shape[-1]} suggests one (H, W, C) image. Pass [image] for one "
                "image, or image[None] for a batch of one."
            )
        return list(X)
    if X.ndim == 2:
        return _rows_of_2d(X, image_shape)
    raise ValueError(
        f"Got a numeric array of shape {X.shape}; expected (N, H, W, C), (N, H, W), or (n_samples, n_pixels) "
        "with image_shape set."
    )


def validate_images(X, *, image_shape=None, pixel_range=None, check_files: bool = True) -> list[ImageInput]:
    """Normalise any supported input into a list of :class:`ImageInput`, raising on the first bad item.

    Parameters
    ----------
    X : see :class:`skdeep.ImageEncoder`
    image_shape : tuple or None
        Shape each row of a 2-D numeric array is reshaped to.
    pixel_range : tuple or None
        Value range of array images (None: 0..255 for integers, [0, 1] for floats).
    check_files : bool, default=True
        Fail here on a path that is not an existing file. With False (``on_error`` is "skip" or
        "zero") such a path is kept and reported when it is decoded.

    Returns
    -------
    list of ImageInput
    """
    image_shape = check_image_shape(image_shape)
    pixel_range = check_pixel_range(pixel_range)
    if isinstance(X, (str, os.PathLike)):
        raw = expand_path_string(X)
    elif isinstance(X, (bytes, bytearray, memoryview)):
        raise TypeError("Expected a sequence of images, got a single bytes object; wrap it in a list: [data].")
    elif isinstance(X, Image.Image):
        raise TypeError("Expected a sequence of images, got a single PIL image; wrap it in a list: [image].")
    else:
        problem = None if isinstance(X, np.ndarray) or hasattr(X, "to_numpy") else order_problem(X)
        if problem is not None:
            what, fix = problem
            raise TypeError(
                f"Expected a list, array or pandas Series of images, got {type(X).__name__} ({what}); {fix}."
            )
        if hasattr(X, "columns") and hasattr(X, "iloc"):  # pandas DataFrame
            if X.shape[1] == 1 and getattr(X.dtypes.iloc[0], "kind", "O") not in "biufc":
                X = X.iloc[:, 0]
            elif all(getattr(dtype, "kind", "O") in "biufc" for dtype in X.dtypes):
                X = X.to_numpy()
            else:
                raise ValueError(
                    f"Expected one column of image paths (or numeric pixel columns with image_shape), got a DataFrame "
                    f"with columns {list(X.columns)!r}; select the image column, or use a ColumnTransformer."
                )
        if hasattr(X, "to_numpy") and not isinstance(X, np.ndarray):  # pandas Series / Index
            X = X.to_numpy(dtype=object)
        if isinstance(X, np.ndarray) and X.dtype.kind in "biufc":
            if X.dtype.kind in "bc":
                raise TypeError(
                    f"Got an array of dtype {X.dtype}; images must be integers in 0..255 or floats in [0, 1]."
                )
            raw = _array_batch(X, image_shape)
        elif isinstance(X, np.ndarray):
            if X.ndim == 2 and X.shape[1] == 1:
                X = X[:, 0]
            elif X.ndim != 1:
                raise ValueError(f"Expected a 1-D array of image paths or one column, got shape {X.shape}.")
            raw = list(X)
        elif hasattr(X, "__iter__") and hasattr(X, "__len__"):
            raw = list(X)
        else:
            raise TypeError(
                f"Expected a list, array or pandas Series of images (paths, bytes, PIL images or arrays), got "
                f"{type(X).__name__}."
            )
    if not raw:
        raise ValueError("Expected at least one image, got an empty input (0 samples).")
    return [_validate_item(item, i, pixel_range, check_files) for i, item in enumerate(raw)]


def _validate_item(item, i: int, pixel_range, check_files: bool) -> ImageInput:
    if isinstance(item, (str, os.PathLike)):
        path = Path(item).expanduser()
        try:
            st = os.stat(path)  # follows symlinks; opens nothing
            problem = None
        except OSError as exc:
            st = None
            problem = "no such file" if isinstance(exc, (FileNotFoundError, NotADirectoryError)) else _reason(exc)
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise ValueError(
                f"Image at position {i} is a directory ({os.fspath(item)!r}); pass the directory itself as X to "
                "use every image in it."
            )
        if check_files:
            if st is not None:
                problem = _file_problem(str(path), st)
            if problem is not None:
                raise UnreadableImageError(f"Cannot read image file {os.fspath(item)!r} at position {i}: {problem}.")
        # Otherwise (on_error "skip" / "zero") a bad file is found, and reported, when it is hashed.
        return ImageInput("file", str(path.absolute()), i)
    if isinstance(item, (bytes, bytearray, memoryview)):
        return ImageInput("bytes", bytes(item), i)
    if isinstance(item, Image.Image):
        return ImageInput("pil", item, i)
    if isinstance(item, np.ndarray):
        return ImageInput("array", check_array_image(item, i, pixel_range), i, pixel_range)
    if item is None or (isinstance(item, float) and math.isnan(item)):
        raise ValueError(f"Image at position {i} is a missing value ({item!r}); fill or drop missing values first.")
    try:
        import pandas as pd

        if item is pd.NA or item is pd.NaT:
            raise ValueError(f"Image at position {i} is a missing value ({item!r}); fill or drop missing values first.")
    except ImportError:  # pragma: no cover - pandas is a dependency
        pass
    raise TypeError(
        f"Image at position {i} has type {type(item).__name__} ({_short(item)}); expected a path, bytes, a PIL image "
        "or a numpy array."
    )


# ---------------------------------------------------------------------------------------------
# header probe


def probe_image(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS, position: int = 0) -> tuple[int, int, str]:
    """Read only an encoded image's header: ``(width, height, format)``, without decoding pixels.

    For checking uploads before they queue for a model (the model decodes each image once, and
    reports truncated or corrupt pixel data then).

    Parameters
    ----------
    data : bytes
        The encoded image (PNG, JPEG, ...).
    max_pixels : int or None, default=89_478_485
        Most pixels the header may declare.
    position : int, default=0
        Named in error messages.

    Returns
    -------
    tuple of (int, int, str)

    Raises
    ------
    ImageTooLargeError
        The header declares more than ``max_pixels`` pixels.
    UnreadableImageError
        The data is empty or not an image format PIL recognises.
    """
    item = ImageInput("bytes", data, position)
    if not data:
        raise UnreadableImageError(f"Cannot read {item.describe()}: the file is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            _checked_size(img, max_pixels, item)
            return int(img.width), int(img.height), str(img.format)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"Cannot read {item.describe()}: {exc}") from exc
    except UnreadableImageError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        raise UnreadableImageError(f"Cannot read {item.describe()}: {_reason(exc)}") from exc
