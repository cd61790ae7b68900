"""Request inputs: strict JSON, base64 images, image header checks, per-item costs, safe echoes.

Everything here runs before a request joins the queue, and fails with :class:`InputError`, whose
message names the bad item and never repeats more than a short excerpt of it.
"""

from __future__ import annotations

import base64
import binascii
import json
import math

from .limits import TEXT_COST_OVERHEAD

#: Longest excerpt of client input an error message repeats.
ECHO_LIMIT = 120
#: Longest error message (characters) the server sends.
DETAIL_LIMIT = 300


class InputError(ValueError):
    """A request's content is invalid; the message says which item and why (answered 422)."""


def excerpt(value, limit: int = ECHO_LIMIT) -> str:
    """A short, printable, JSON-safe rendering of client input for error messages."""
    if isinstance(value, (bytes, bytearray)):
        text = repr(bytes(value[: limit + 1]))
    elif isinstance(value, str):
        text = repr(value[: limit + 1])
    else:
        text = repr(value)
    # Lone surrogates cannot be encoded as UTF-8: escape them so the message is always sendable.
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short(text, limit: int = DETAIL_LIMIT) -> str:
    """``text`` as UTF-8-safe text of at most ``limit`` characters (lone surrogates escaped)."""
    text = str(text).encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# JSON


def _refuse_constant(name: str):
    raise InputError(f"The JSON body contains {name}, which is not valid JSON (numbers must be finite).")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InputError(f"The JSON body contains the number {excerpt(text, 40)}, which overflows to infinity.")
    return value


def _surrogate_position(text: str) -> int:
    for i, ch in enumerate(text):
        if "\ud800" <= ch <= "\udfff":
            return i
    return -1


def _check_strings(value) -> None:
    """Raise on the first string (key or value) holding a lone UTF-16 surrogate."""
    stack = [((), value)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict):
            for key, child in node.items():
                if not key.isascii() and _surrogate_position(key) >= 0:
                    raise InputError(f"A JSON key ({excerpt(key, 40)}) holds a lone UTF-16 surrogate.")
                stack.append((path + (key,), child))
        elif isinstance(node, list):
            stack.extend((path + (i,), child) for i, child in enumerate(node))
        elif isinstance(node, str) and not node.isascii():
            pos = _surrogate_position(node)
            if pos >= 0:
                where = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else p) for i, p in enumerate(path))
                raise InputError(
                    f"{where or 'The body'} holds a lone UTF-16 surrogate ({node[pos]!r} at character {pos}); "
                    "texts must be valid Unicode."
                )


def parse_json(body: bytes):
    """Parse a request body as strict JSON: finite numbers only, valid Unicode strings, sane nesting.

    Python's :func:`json.loads` accepts ``NaN``, ``Infinity``, ``1e999`` (as infinity) and lone
    surrogates such as ``"\\ud800"``; none of them can be echoed back in a JSON error or reach a
    tokenizer safely, so they are refused here with :class:`InputError`.
    """
    try:
        value = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except InputError:
        raise
    except json.JSONDecodeError as exc:
        raise InputError(f"The body is not valid JSON: {exc.msg} at character {exc.pos}.") from None
    except UnicodeDecodeError:
        raise InputError("The body is not valid UTF-8 text.") from None
    except RecursionError:
        raise InputError("The JSON body is nested too deeply.") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise InputError(f"The JSON body holds an invalid value ({excerpt(str(exc), 80)}).") from None
    _check_strings(value)
    return value


# ---------------------------------------------------------------------------------------------
# images and costs


def decode_base64_image(text: str, index: int) -> bytes:
    """Bytes of a base64 image (plain or a ``data:`` URL); :class:`InputError` names the index."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"images[{index}] is not valid base64 ({exc}).") from None
    if not data:
        raise InputError(f"images[{index}] is empty.")
    return data


def probe_images(blobs: list, labels: list, max_pixels: int) -> list:
    """Pixels of each image, from its header only; :class:`InputError` names the first bad one."""
    from ..image_io import ImageTooLargeError, UnreadableImageError, probe_image

    pixels = []
    for i, (data, label) in enumerate(zip(blobs, labels)):
        if not data:
            raise InputError(f"{label} is empty.")
        try:
            width, height, _ = probe_image(data, max_pixels, position=i)
        except ImageTooLargeError as exc:
            raise InputError(f"{label} is too large: {_after_colon(exc)}") from None
        except UnreadableImageError as exc:
            reason = _after_colon(exc)
            if "not an image file" in reason:
                raise InputError(f"{label} is not an image (no image format recognised).") from None
            raise InputError(f"{label} is not a readable image: {reason}") from None
        pixels.append(width * height)
    return pixels


def _after_colon(exc: Exception) -> str:
    # image_io messages read "Cannot read <what it is> at position i: <reason>"; the label replaces the first part.
    return str(exc).split(": ", 1)[-1]


def text_costs(texts: list) -> list:
    """Cost of each text for the batcher: its length plus a fixed share (see DEFAULT_MAX_BATCH_CHARS)."""
    return [len(t) + TEXT_COST_OVERHEAD for t in texts]
