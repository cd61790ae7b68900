"""Generated images for the image tests: every PIL mode, broken files, oversize headers, checkpoints."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# Parameters of a tiny random-init model that the image tests share (one load per process).
# On a GPU the same image gives rows that differ in the last digits with the batch it is in (cuDNN picks
# algorithms by shape; TF32): equal on the CPU, close on a GPU. CI runs on the CPU.
ON_GPU = torch.cuda.is_available()
CLOSE = dict(rtol=1e-3, atol=3e-4) if ON_GPU else dict(rtol=1e-5, atol=1e-6)
# Against a reference computed another way (the model called directly).
CLOSE_TO_MODEL = CLOSE if ON_GPU else dict(rtol=1e-4, atol=1e-5)


def assert_same_rows(actual, expected):
    """Rows that must be identical on the CPU (and agree to float precision on a GPU)."""
    if ON_GPU:
        np.testing.assert_allclose(actual, expected, **CLOSE)
    else:
        np.testing.assert_array_equal(actual, expected)


TINY = dict(model="timm:test_resnet", weights=None, image_size=32, cache=None, num_workers=0)
TINY_TV = dict(model="resnet18", weights=None, image_size=32, cache=None, num_workers=0)


def rgb_array(seed: int = 0, size=(40, 48)) -> np.ndarray:
    """A smooth random colour image (H, W, 3) uint8: gradients plus noise, so resizing matters."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), (xx + yy) * 127 / max(h + w - 2, 1)], -1)
    noisy = base + rng.normal(0, 20, size=base.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def encode(img: Image.Image | np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def write(path: Path, data: bytes) -> str:
    Path(path).write_bytes(data)
    return str(path)


def truncated_jpeg(seed: int = 0) -> bytes:
    data = encode(rgb_array(seed, (64, 64)), "JPEG", quality=90)
    return data[: len(data) // 2]


def png_with_claimed_size(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` (valid CRC) followed by a tiny IDAT: a bomb header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def jpeg_with_orientation(arr: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(arr, "JPEG", quality=95, exif=exif)


def save_random_state_dict(model_name: str, target: Path, seed: int = 1) -> Path:
    """Save a random-init torchvision model's state dict at ``target`` (e.g. a fake hub checkpoint)."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.get_model(model_name, weights=None)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), target)
    return target


def save_random_timm_state_dict(model_name: str, target: Path, seed: int = 1) -> Path:
    """Save a random-init timm model's state dict at ``target`` (a small local checkpoint)."""
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model(model_name)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), target)
    return target
