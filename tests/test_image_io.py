"""Image inputs: every mode to RGB the same way, array checks, input shapes, content keys, broken files."""

from __future__ import annotations

import io
import os

import numpy as np
import pandas as pd
import pytest
from image_fixtures import (
    encode,
    jpeg_with_orientation,
    png_with_claimed_size,
    rgb_array,
    truncated_jpeg,
    write,
)
from PIL import Image
from promptly import call_promptly, needs_fifo

import skdeep.image_io as image_io
from skdeep.image_io import (
    ImageInput,
    ImageTooLargeError,
    UnreadableImageError,
    check_array_image,
    list_image_files,
    read_image_file,
    to_rgb,
    validate_images,
)


def load_bytes(data: bytes, **kwargs) -> np.ndarray:
    return np.asarray(ImageInput("bytes", data, 0).load(**kwargs))


def load_array(a: np.ndarray, pixel_range=None) -> np.ndarray:
    return np.asarray(ImageInput("array", check_array_image(a, 0, pixel_range), 0, pixel_range).load())


def composite_on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None].astype(np.float64) / 255
    return rgb.astype(np.float64) * a + 255 * (1 - a)


# ---------------------------------------------------------------------------------------------
# modes -> RGB


def test_greyscale_png_is_replicated_to_three_channels():
    grey = rgb_array(1)[..., 0]
    out = load_bytes(encode(Image.fromarray(grey, "L")))
    assert out.shape == grey.shape + (3,)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_one_bit_image_becomes_black_and_white():
    bits = rgb_array(2)[..., 0] > 128
    out = load_bytes(encode(Image.fromarray(bits)))  # mode "1"
    np.testing.assert_array_equal(out[..., 0], np.where(bits, 255, 0))


def test_rgba_is_composited_on_white():
    rgb = rgb_array(3)
    alpha = np.linspace(0, 255, rgb.shape[1]).astype(np.uint8)[None, :].repeat(rgb.shape[0], 0)
    rgba = np.dstack([rgb, alpha])
    out = load_bytes(encode(Image.fromarray(rgba, "RGBA")))
    np.testing.assert_allclose(out, composite_on_white(rgb, alpha), atol=1.01)
    assert (out[:, 0] == 255).all()  # alpha 0 -> pure background


def test_la_is_composited_on_white():
    grey = rgb_array(4)[..., 1]
    alpha = np.full_like(grey, 100)
    out = load_bytes(encode(Image.fromarray(np.dstack([grey, alpha]), "LA")))
    expected = composite_on_white(np.repeat(grey[..., None], 3, -1), alpha)
    np.testing.assert_allclose(out, expected, atol=1.01)


def test_palette_with_and_without_transparency():
    rgb = rgb_array(5)
    pal = Image.fromarray(rgb).quantize(colors=16)
    out = load_bytes(encode(pal))
    np.testing.assert_array_equal(out, np.asarray(pal.convert("RGB")))

    index = np.asarray(pal)
    transparent = int(index[0, 0])
    data = encode(pal, transparency=transparent)
    assert Image.open(io.BytesIO(data)).mode == "P"
    out = load_bytes(data)
    assert (out[index == transparent] == 255).all()
    kept = index != transparent
    np.testing.assert_array_equal(out[kept], np.asarray(pal.convert("RGB"))[kept])


def test_cmyk_uses_pil_conversion():
    cmyk = Image.fromarray(rgb_array(6)).convert("CMYK")
    out = np.asarray(ImageInput("pil", cmyk, 0).load())
    np.testing.assert_array_equal(out, np.asarray(cmyk.convert("RGB")))
    assert load_bytes(encode(cmyk, "JPEG")).shape == (40, 48, 3)


def test_sixteen_bit_png_is_scaled_not_clipped():
    values = np.linspace(0, 65535, 40 * 48).reshape(40, 48).astype(np.uint16)
    data = encode(Image.fromarray(values))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = load_bytes(data)
    expected = np.rint(values.astype(np.float64) * 255 / 65535)
    np.testing.assert_allclose(out[..., 0], expected, atol=1)
    assert out.max() == 255 and out.min() == 0


def test_int32_and_float_modes():
    ints = np.linspace(0, 65535, 16).reshape(4, 4).astype(np.int32)
    out = np.asarray(to_rgb(Image.fromarray(ints)))  # mode "I"
    np.testing.assert_allclose(out[..., 0], np.rint(ints * 255 / 65535), atol=1)
    with pytest.raises(UnreadableImageError, match="0..65535"):
        to_rgb(Image.fromarray(np.full((4, 4), -5, dtype=np.int32)))
    floats = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    out = np.asarray(to_rgb(Image.fromarray(floats)))  # mode "F"
    np.testing.assert_array_equal(out[..., 2], np.rint(floats * 255))
    with pytest.raises(UnreadableImageError, match=r"\[0, 1\]"):
        to_rgb(Image.fromarray(floats * 3))


def test_exif_orientation_is_applied():
    arr = rgb_array(7, (32, 48))
    out = load_bytes(jpeg_with_orientation(arr, 6))  # 6: stored rotated, display turned 90 degrees clockwise
    assert out.shape == (48, 32, 3)
    right = np.abs(out.astype(float) - np.rot90(arr, k=-1)).mean()
    wrong = np.abs(out.astype(float) - np.rot90(arr, k=1)).mean()
    assert right < 12 < wrong


def test_sources_of_the_same_pixels_agree():
    rgb = rgb_array(8)
    from_png = load_bytes(encode(rgb))
    from_pil = np.asarray(ImageInput("pil", Image.fromarray(rgb), 0).load())
    from_float = load_array(rgb.astype(np.float32) / 255)
    from_int64 = load_array(rgb.astype(np.int64))
    for out in (from_png, from_pil, from_float, from_int64):
        np.testing.assert_array_equal(out, rgb)
    grey = rgb[..., 0]
    np.testing.assert_array_equal(load_array(grey), load_array(grey[..., None]))
    np.testing.assert_array_equal(load_array(grey), load_array(np.dstack([grey] * 3)))
    transparent = np.dstack([rgb, np.zeros_like(grey)])
    assert (load_array(transparent) == 255).all()


def test_pixel_range_maps_other_scales():
    digits = np.arange(17, dtype=np.float64).reshape(1, 17) * np.ones((3, 1))
    out = load_array(digits, pixel_range=(0, 16))
    np.testing.assert_array_equal(out[0, :, 0], np.rint(np.arange(17) * 255 / 16))
    sixteen = np.array([[0, 65535]], dtype=np.uint16)
    np.testing.assert_array_equal(load_array(sixteen, pixel_range=(0, 65535))[0, :, 0], [0, 255])
    with pytest.raises(ValueError, match="outside pixel_range"):
        check_array_image(digits + 1, 4, (0, 16))


# ---------------------------------------------------------------------------------------------
# array checks


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (np.zeros((4, 4), dtype=bool), TypeError, "boolean"),
        (np.zeros((4, 4), dtype=complex), TypeError, "complex"),
        (np.array([["a", "b"]], dtype=object), TypeError, "object"),
        (np.full((4, 4), 300, dtype=np.int64), ValueError, "0..255"),
        (np.full((4, 4), -1, dtype=np.int16), ValueError, "0..255"),
        (np.full((4, 4), np.nan), ValueError, "NaN"),
        (np.full((4, 4), 1.5, dtype=np.float32), ValueError, r"\[0, 1\]"),
        (np.zeros(16, dtype=np.uint8), ValueError, "rank 1"),
        (np.zeros((2, 4, 4, 3), dtype=np.uint8), ValueError, "rank 4"),
        (np.zeros((4, 4, 2), dtype=np.uint8), ValueError, "2 channels"),
        (np.zeros((3, 8, 8), dtype=np.uint8), ValueError, "channels-first"),
        (np.zeros((0, 4), dtype=np.uint8), ValueError, "empty"),
    ],
)
def test_bad_arrays_name_the_position(bad, error, match):
    good = np.zeros((4, 4, 3), dtype=np.uint8)
    with pytest.raises(error, match=match) as info:
        validate_images([good, good, bad])
    assert "position 2" in str(info.value)


def test_sixteen_bit_array_without_range_is_refused_with_a_hint():
    with pytest.raises(ValueError, match=r"pixel_range=\(0, 65535\)"):
        validate_images([np.full((4, 4), 1000, dtype=np.uint16)])


# ---------------------------------------------------------------------------------------------
# input shapes


def test_input_containers(tmp_path):
    paths = [write(tmp_path / f"{i}.png", encode(rgb_array(i))) for i in range(3)]
    assert [it.kind for it in validate_images(paths)] == ["file"] * 3
    assert [it.data for it in validate_images(pd.Series(paths))] == [str(tmp_path / f"{i}.png") for i in range(3)]
    frame = pd.DataFrame({"img": paths})
    assert len(validate_images(frame)) == 3
    assert len(validate_images(np.array(paths)[:, None])) == 3
    with pytest.raises(ValueError, match="columns"):
        validate_images(pd.DataFrame({"img": paths, "other": ["a", "b", "c"]}))

    batch = np.stack([rgb_array(i) for i in range(3)])
    items = validate_images(batch)
    assert len(items) == 3 and items[1].data.shape == (40, 48, 3)
    assert len(validate_images(batch[..., 0])) == 3  # (N, H, W) greyscale stack
    with pytest.raises(ValueError, match=r"\[image\]"):
        validate_images(rgb_array(0))  # one (H, W, 3) image is ambiguous
    with pytest.raises(ValueError, match="image_shape"):
        validate_images(np.zeros((5, 64)))
    rows = validate_images(np.zeros((5, 64)), image_shape=(8, 8))
    assert len(rows) == 5 and rows[0].data.shape == (8, 8)
    assert validate_images(np.zeros((2, 12)), image_shape=(2, -1, 3))[0].data.shape == (2, 2, 3)
    with pytest.raises(ValueError, match="Cannot reshape"):
        validate_images(np.zeros((5, 63)), image_shape=(8, 8))
    mixed = validate_images([paths[0], encode(rgb_array(1)), Image.fromarray(rgb_array(2)), rgb_array(3)])
    assert [it.kind for it in mixed] == ["file", "bytes", "pil", "array"]


def test_directory_and_glob_expand_sorted(tmp_path):
    for name in ["b.png", "a.jpg", "c.PNG"]:
        write(tmp_path / name, encode(rgb_array(0), "PNG"))
    write(tmp_path / "notes.txt", b"not an image")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "d.png", encode(rgb_array(1)))
    names = [it.data.rsplit("/", 1)[1] for it in validate_images(str(tmp_path))]
    assert names == ["a.jpg", "b.png", "c.PNG"]  # image extensions only, not recursive
    assert [it.data.rsplit("/", 1)[1] for it in validate_images(str(tmp_path / "*.png"))] == ["b.png"]
    recursive = validate_images(str(tmp_path / "**" / "*.png"))
    assert [it.data.rsplit("/", 1)[1] for it in recursive] == ["b.png", "d.png"]
    assert len(validate_images(tmp_path / "b.png")) == 1  # one existing file
    with pytest.raises(ValueError, match="not an existing file"):
        validate_images(str(tmp_path / "missing.png"))
    with pytest.raises(ValueError, match="matches no files"):
        validate_images(str(tmp_path / "*.webp"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image files"):
        validate_images(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="position 1 is a directory"):
        validate_images([str(tmp_path / "b.png"), str(tmp_path / "sub")])


@pytest.mark.parametrize(
    "X, error, match",
    [
        ([], ValueError, "empty input"),
        (np.zeros((0, 4, 4, 3), dtype=np.uint8), ValueError, "empty input"),
        ([np.zeros((4, 4, 3), np.uint8), None], ValueError, "position 1 is a missing value"),
        ([np.zeros((4, 4, 3), np.uint8), float("nan")], ValueError, "position 1 is a missing value"),
        ([np.zeros((4, 4, 3), np.uint8), 7], TypeError, "position 1 has type int"),
        ([[0, 1], [2, 3]], TypeError, "position 0 has type list"),
        (b"\x89PNG", TypeError, "single bytes"),
        (Image.new("RGB", (4, 4)), TypeError, "single PIL image"),
        (42, TypeError, "got int"),
        (np.zeros(5), ValueError, "shape"),
        (np.zeros((2, 2), dtype=bool), TypeError, "bool"),
    ],
)
def test_bad_inputs(X, error, match):
    with pytest.raises(error, match=match):
        validate_images(X)


def test_missing_file_fails_at_validation_unless_deferred(tmp_path):
    missing = str(tmp_path / "gone.jpg")
    with pytest.raises(UnreadableImageError, match=r"gone\.jpg.*position 0.*no such file"):
        validate_images([missing])
    (item,) = validate_images([missing], check_files=False)
    item.payload()  # the key of an unreadable file is unique and never raises
    with pytest.raises(UnreadableImageError, match=r"gone\.jpg.*position 0.*no such file"):
        item.load()


# ---------------------------------------------------------------------------------------------
# content keys


def test_keys_follow_file_content_not_path(tmp_path):
    data = encode(rgb_array(0))
    a = validate_images([write(tmp_path / "a.png", data)])[0]
    b = validate_images([write(tmp_path / "renamed.png", data)])[0]
    raw = ImageInput("bytes", data, 0)
    assert a.payload() == b.payload() == raw.payload()
    write(tmp_path / "a.png", encode(rgb_array(1)))
    assert validate_images([str(tmp_path / "a.png")])[0].payload() != b.payload()


def test_keys_of_arrays_and_pil_images():
    rgb = rgb_array(0)
    key = validate_images([rgb])[0].payload()
    assert validate_images([rgb.copy()])[0].payload() == key
    assert validate_images([rgb.astype(np.int32)])[0].payload() != key  # dtype is part of the key
    assert validate_images([rgb.reshape(48, 40, 3)])[0].payload() != key  # shape too
    pil = validate_images([Image.fromarray(rgb)])[0].payload()
    assert validate_images([Image.fromarray(rgb).convert("RGBA")])[0].payload() == pil  # same RGB pixels
    changed = rgb.copy()
    changed[0, 0, 0] ^= 1
    assert validate_images([Image.fromarray(changed)])[0].payload() != pil


def test_file_changed_after_hashing_is_refused(tmp_path):
    path = write(tmp_path / "a.png", encode(rgb_array(0)))
    (item,) = validate_images([path])
    item.payload()
    write(tmp_path / "a.png", encode(rgb_array(1)))
    with pytest.raises(UnreadableImageError, match="changed"):
        item.load()


# ---------------------------------------------------------------------------------------------
# broken and hostile files


def test_unreadable_files_name_file_and_position(tmp_path):
    good = write(tmp_path / "good.png", encode(rgb_array(0)))
    cases = {
        "truncated.jpg": (truncated_jpeg(), "truncated"),
        "notes.jpg": (b"this is text, not a JPEG", "not an image"),
        "empty.png": (b"", "empty"),
    }
    for name, (data, reason) in cases.items():
        items = validate_images([good, write(tmp_path / name, data)])
        items[0].load()
        with pytest.raises(UnreadableImageError, match=rf"{name}.*position 1.*{reason}"):
            items[1].load()


def test_decompression_bomb_header_is_refused_before_decoding():
    huge = png_with_claimed_size(100_000, 100_000)  # 10^10 pixels: PIL's own guard fires first
    with pytest.raises(ImageTooLargeError, match="position 0"):
        load_bytes(huge)
    claimed = png_with_claimed_size(3000, 3000)
    with pytest.raises(ImageTooLargeError, match=r"3000x3000.*max_pixels=1,000,000"):
        load_bytes(claimed, max_pixels=1_000_000)
    big_enough = encode(rgb_array(0, (20, 30)))
    assert load_bytes(big_enough, max_pixels=600).shape == (20, 30, 3)
    with pytest.raises(ImageTooLargeError):
        load_bytes(big_enough, max_pixels=599)


# ---------------------------------------------------------------------------------------------
# files that are not regular files, and files too large to read


@pytest.fixture
def hostile(tmp_path):
    """A good image, a named pipe and a symlink to /dev/zero, all with image extensions."""
    good = write(tmp_path / "good.png", encode(rgb_array(0)))
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.jpg"
    zero.symlink_to("/dev/zero")
    return good, str(fifo), str(zero)


@needs_fifo
def test_pipes_and_devices_are_refused_without_being_opened(hostile):
    good, fifo, zero = hostile
    for bad, kind in [(fifo, r"named pipe \(FIFO\)"), (zero, r"symlink to '/dev/zero', which is a character device")]:
        with pytest.raises(UnreadableImageError, match=rf"{os.path.basename(bad)}.*position 1: it is .*{kind}"):
            call_promptly(lambda: validate_images([good, bad]))
        # Deferred (on_error "skip" / "zero"): hashing records the error, decoding reports it.
        items = call_promptly(lambda: validate_images([good, bad], check_files=False))
        call_promptly(lambda: [item.payload() for item in items])
        assert items[1].error is not None
        with pytest.raises(UnreadableImageError, match=rf"{os.path.basename(bad)}.*position 1.*{kind}"):
            call_promptly(items[1].load)
        with pytest.raises(UnreadableImageError, match="regular files"):
            call_promptly(lambda: read_image_file(bad))
        with pytest.raises(UnreadableImageError, match="regular files"):
            call_promptly(lambda: validate_images(bad))  # the path string as the whole input
    assert call_promptly(lambda: validate_images([good])[0].load()).size == (48, 40)


@needs_fifo
def test_a_pipe_swapped_in_after_the_check_is_caught_on_the_open_descriptor(hostile, monkeypatch):
    good, fifo, _ = hostile
    checks = []
    real = image_io._file_problem

    def first_check_passes(path, st):  # as if the path were a regular file when it was checked
        checks.append(path)
        return None if len(checks) == 1 else real(path, st)

    monkeypatch.setattr(image_io, "_file_problem", first_check_passes)
    with pytest.raises(UnreadableImageError, match=r"named pipe.*replaced while being opened"):
        call_promptly(lambda: read_image_file(fifo))  # a blocking open would never return
    assert len(checks) == 2


def test_files_over_the_size_cap_are_unreadable(tmp_path, monkeypatch):
    data = encode(rgb_array(0))
    small = write(tmp_path / "small.png", encode(rgb_array(1, (2, 2))))
    big = write(tmp_path / "big.png", data)
    monkeypatch.setattr(image_io, "MAX_IMAGE_FILE_BYTES", len(data) - 1)
    assert validate_images([small])[0].load().size == (2, 2)
    with pytest.raises(UnreadableImageError, match=rf"big\.png.*position 1.*{len(data):,} bytes.*MAX_IMAGE_FILE_BYTES"):
        validate_images([small, big])
    (item,) = validate_images([big], check_files=False)
    item.payload()
    with pytest.raises(UnreadableImageError, match=r"big\.png.*position 0.*MAX_IMAGE_FILE_BYTES"):
        item.load()
    # The cap also holds for the bytes actually read (a file that grows after its size was checked).
    monkeypatch.setattr(image_io, "_file_problem", lambda path, st: None)
    with pytest.raises(UnreadableImageError, match="grew beyond"):
        read_image_file(big)
    assert image_io.MAX_IMAGE_FILE_BYTES == len(data) - 1  # read at call time, so it can be changed


@needs_fifo
def test_list_image_files_keeps_regular_image_files_only(tmp_path, hostile):
    root = tmp_path
    for sub in ("a/deeper", ".cache"):
        (root / sub).mkdir(parents=True)
    write(root / "b.jpg", encode(rgb_array(1), "JPEG"))
    write(root / "C.PNG", encode(rgb_array(2)))
    write(root / "notes.txt", b"not an image")
    write(root / ".hidden.png", encode(rgb_array(3)))
    (root / "broken.png").symlink_to(root / "nowhere.png")
    (root / "link.png").symlink_to(root / "b.jpg")  # a symlink to a regular file is read
    write(root / "a" / "z.png", encode(rgb_array(4)))
    write(root / "a" / "deeper" / "y.gif", encode(rgb_array(5), "GIF"))
    write(root / ".cache" / "x.png", encode(rgb_array(6)))
    os.mkfifo(root / "a" / "pipe.jpg")
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)  # a cycle, never followed
    names = lambda files: [os.path.relpath(f, root) for f in files]  # noqa: E731
    flat = call_promptly(lambda: list_image_files(root))
    assert names(flat) == ["C.PNG", "b.jpg", "good.png", "link.png"]
    assert all(f.startswith(str(root)) for f in flat)
    deep = call_promptly(lambda: list_image_files(str(root), recursive=True))
    assert names(deep) == ["C.PNG", "a/deeper/y.gif", "a/z.png", "b.jpg", "good.png", "link.png"]
    # ImageEncoder's folder input reads exactly these files, as absolute paths.
    assert [it.data for it in call_promptly(lambda: validate_images(str(root)))] == [os.path.abspath(f) for f in flat]
    with pytest.raises(NotADirectoryError):
        list_image_files(root / "b.jpg")
    with pytest.raises(FileNotFoundError):
        list_image_files(root / "missing")


@pytest.mark.parametrize(
    "make, fragment",
    [
        (set, r"got set \(unordered: row order would be arbitrary\)"),
        (frozenset, r"got frozenset \(unordered"),
        (lambda xs: dict.fromkeys(xs), r"got dict \(a mapping\)"),
        (lambda xs: dict.fromkeys(xs).keys(), r"got dict_keys \(unordered"),
        (lambda xs: (x for x in xs), r"got generator \(an iterator without a length"),
        (iter, r"got list_iterator \(an iterator"),
    ],
    ids=["set", "frozenset", "dict", "dict-keys", "generator", "iterator"],
)
def test_containers_without_row_order_are_refused(tmp_path, make, fragment):
    paths = [write(tmp_path / f"{i}.png", encode(rgb_array(i))) for i in range(3)]
    with pytest.raises(TypeError, match=fragment):
        validate_images(make(paths))
    assert len(validate_images(tuple(paths))) == 3  # ordered containers still work
