"""Reading text input: lists, arrays and any dataframe library's column, with a rule for missing values.

pandas, polars and pyarrow Series and one-column frames are read through narwhals, so every
library's nulls (``None``, ``NaN``, ``pandas.NA``) are seen alike, and the column's name is kept for
feature names (``review_0``, ``review_1``, ...), as skrub's encoders name theirs.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ._containers import order_problem

MISSING_RULES = ("raise", "empty", "zero")


def _describe(item) -> str:
    text = repr(item)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_encodable(text: str, position: int) -> None:
    # A lone surrogate (e.g. from bytes decoded with errors="surrogateescape", or a "\ud800" JSON escape)
    # is not valid Unicode: tokenizers fail on it with an error that names no row.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"Text at position {position} contains a lone surrogate ({text[exc.start]!r} at character {exc.start}), "
            "which is not valid Unicode; fix the text, e.g. text.encode('utf-8', 'replace').decode('utf-8')."
        ) from None


def _missing_kind(item) -> str | None:
    """How ``item`` spells a missing value (``"None"``, ``"NaN"``, ``"pandas.NA"``), or None if it is not one."""
    if item is None:
        return "None"
    if isinstance(item, float) and math.isnan(item):
        return "NaN"
    kind = type(item).__name__
    if kind == "NAType":
        return "pandas.NA"
    if kind == "NaTType":
        return "pandas.NaT"
    return None


@dataclasses.dataclass
class TextColumn:
    """Validated text input.

    Attributes
    ----------
    texts : list of str
        One text per row; missing rows hold ``""`` (``missing="empty"`` or ``"zero"``).
    missing : ndarray of bool or None
        Rows that were missing and must become zero rows (``missing="zero"``); None if there are none.
    name : str or None
        The input column's name, when the input had one.
    """

    texts: list
    missing: np.ndarray | None = None
    name: str | None = None


def _from_dataframe_library(X):
    """``(list of values, column name)`` for a pandas / polars / pyarrow Series or one-column frame, else None."""
    module = type(X).__module__.split(".")[0]
    if module not in ("pandas", "polars", "pyarrow", "modin", "cudf"):
        return None
    if module == "pyarrow" and hasattr(X, "to_pylist") and not hasattr(X, "num_chunks") and not hasattr(X, "columns"):
        import pyarrow as pa

        if isinstance(X, pa.Array):
            X = pa.chunked_array([X])
    import narwhals.stable.v2 as nw

    native = nw.from_native(X, pass_through=True, allow_series=True, eager_only=True)
    if native is X:
        return None
    if isinstance(native, nw.DataFrame):
        if native.shape[1] != 1:
            raise ValueError(
                f"Expected a single text column, got a DataFrame with {native.shape[1]} columns "
                f"{list(native.columns)!r}; select one column, or use a ColumnTransformer."
            )
        name = native.columns[0]
        series = native[name]
    else:
        series = native
        name = series.name
    name = str(name) if name is not None and name != "" else None
    return series.to_list(), name


def _as_list(X) -> tuple[list, str | None]:
    if isinstance(X, (str, bytes)):
        raise TypeError(
            "Expected an iterable of strings (one per sample), got a single "
            f"{type(X).__name__}; wrap it in a list: [text]."
        )
    from_frame = _from_dataframe_library(X)
    if from_frame is not None:
        return from_frame
    if isinstance(X, np.ndarray):
        if X.ndim == 2:
            if X.shape[1] != 1:
                raise ValueError(f"Expected a 1-D array of strings or one column, got a 2-D array of shape {X.shape}.")
            X = X[:, 0]
        elif X.ndim != 1:
            raise ValueError(f"Expected a 1-D array of strings, got an array of shape {X.shape}.")
        return X.tolist() if X.dtype.kind == "U" else list(X), None
    problem = order_problem(X)
    if problem is not None:
        what, fix = problem
        raise TypeError(f"Expected a list, array or pandas Series of strings, got {type(X).__name__} ({what}); {fix}.")
    if not hasattr(X, "__iter__"):
        raise TypeError(f"Expected a list, array or pandas Series of strings, got {type(X).__name__}.")
    return list(X), None


def read_texts(X, missing: str = "raise") -> TextColumn:
    """Normalise text input, raising on the first bad item.

    Accepts a 1-D list / tuple / array of strings (the ``CountVectorizer`` convention), an array
    of shape (n, 1), or a pandas, polars or pyarrow Series or one-column frame. Empty strings are
    valid texts.

    Parameters
    ----------
    X : see above
    missing : {"raise", "empty", "zero"}, default="raise"
        What a missing value (None, NaN, ``pandas.NA``, a polars or Arrow null) becomes: an error
        naming its row, the empty text, or a row to be filled with zeros (its text is ``""``).

    Returns
    -------
    TextColumn
    """
    if missing not in MISSING_RULES:
        raise ValueError(f"missing must be one of {MISSING_RULES}, got {missing!r}.")
    texts, name = _as_list(X)
    if not texts:
        raise ValueError("Expected at least one text, got an empty input (0 samples).")
    where = f" (column {name!r})" if name else ""
    gaps = None
    for i, item in enumerate(texts):
        if isinstance(item, str):
            # isascii() is O(1) in CPython: only non-ASCII texts pay for the check.
            if not item.isascii():
                _check_encodable(item, i)
            continue
        kind = _missing_kind(item)
        if kind is not None:
            if missing == "raise":
                raise ValueError(
                    f"Text at position {i} is {kind} (a missing value){where}; fill or drop missing values "
                    "first, or pass missing='empty' (embed an empty text) or missing='zero' (a row of zeros)."
                )
            texts[i] = ""
            if missing == "zero":
                if gaps is None:
                    gaps = np.zeros(len(texts), dtype=bool)
                gaps[i] = True
            continue
        if isinstance(item, np.str_):
            texts[i] = str(item)
            continue
        if isinstance(item, (bytes, bytearray)):
            raise TypeError(f"Text at position {i} is bytes ({_describe(item)}){where}; decode it to str first.")
        if isinstance(item, (list, tuple, np.ndarray, dict, set)):
            raise TypeError(
                f"Text at position {i} is a nested {type(item).__name__} ({_describe(item)}){where}; "
                "expected one string per sample."
            )
        raise TypeError(
            f"Text at position {i} has type {type(item).__name__} ({_describe(item)}){where}; expected str."
        )
    return TextColumn(texts, gaps, name)


def validate_texts(X) -> list[str]:
    """Normalise text input to a list of ``str``, raising on the first bad item (missing values included).

    See :func:`read_texts` for the accepted containers.
    """
    return read_texts(X, "raise").texts
