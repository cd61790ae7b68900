"""Inputs and outputs of the ``skdeep`` command: text files, tables, image folders, .npy / Parquet / CSV.

Kept apart from :mod:`skdeep.cli` so that parsing arguments (``--help``, usage errors) imports
nothing but the standard library; numpy, pandas and pyarrow are imported here, when a command runs.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".json", ".jsonl")
EMBED_OUTPUTS = (".npy", ".parquet")
PREDICT_OUTPUTS = (".csv", ".txt", ".npy", ".parquet")
#: Key of the Parquet schema metadata ``skdeep embed`` writes (JSON: model, fingerprint, settings, version).
PARQUET_METADATA_KEY = b"skdeep"
#: Strings read as missing in the non-text columns of a CSV (pandas' defaults); text columns keep them as text.
_NA_STRINGS = ["", "NA", "N/A", "n/a", "NaN", "nan", "-NaN", "-nan", "null", "NULL", "None", "#N/A", "<NA>"]
#: Longest list of column names an error message repeats.
_NAMES_SHOWN = 12


class UsageError(Exception):
    """Bad arguments or input: reported in one line with exit status 2."""


def names(values, limit: int = _NAMES_SHOWN) -> str:
    """A short rendering of a list of column names for error messages."""
    values = [str(v) for v in values]
    shown = ", ".join(repr(v[:60]) for v in values[:limit])
    return f"[{shown}{f', ... ({len(values) - limit} more)' if len(values) > limit else ''}]"


# ---------------------------------------------------------------------------------------------
# reading inputs


def _image_files(folder: Path, recursive: bool) -> list[str]:
    # The library's own rule, so that `skdeep embed photos/` and ImageEncoder().transform("photos/") agree.
    from .image_io import list_image_files

    try:
        files = list_image_files(folder, recursive=recursive)
    except OSError as exc:
        raise UsageError(f"Cannot list the folder {str(folder)!r}: {exc}") from exc
    subfolders = False
    if not recursive:
        with os.scandir(folder) as entries:
            subfolders = any(e.is_dir(follow_symlinks=False) and not e.name.startswith(".") for e in entries)
    if not files:
        hint = "; its subfolders are not read without --recursive" if subfolders else ""
        raise UsageError(f"{str(folder)!r} holds no image files PIL can open{hint}.")
    if subfolders:
        print(
            f"skdeep: note: the subfolders of {str(folder)!r} are not read; pass --recursive to include them.",
            file=sys.stderr,
        )
    return files


def _json_records(path: Path) -> list:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{str(path)!r} is not valid JSON: {exc.msg} at line {exc.lineno}.") from None
    if isinstance(records, dict) and set(records) == {"records"}:
        records = records["records"]  # the server's request body
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise UsageError(
            f"{str(path)!r} must hold records: a list of objects such as "
            '[{"text": "...", "price": 3.5}, ...] (or {"records": [...]}; .jsonl: one object per line).'
        )
    return records


def is_missing(value) -> bool:
    """None, NaN or pandas' NA: a missing cell."""
    return value is None or (isinstance(value, float) and value != value) or type(value).__name__ == "NAType"


def read_table(path: Path, text_columns=()):
    """A CSV / TSV / Parquet / JSON-records file as a DataFrame.

    CSV columns in ``text_columns`` (or every column, when it is None) are read as strings; the other
    columns get pandas' type inference. An empty CSV cell is a missing value, as a null is in Parquet:
    both follow the text encoder's ``missing`` rule (``--missing``).
    """
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix in (".json", ".jsonl"):
        return pd.DataFrame.from_records(_json_records(path))
    sep = "\t" if suffix == ".tsv" else ","
    if text_columns is None:
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""])
    header = pd.read_csv(path, sep=sep, nrows=0).columns
    text = [c for c in header if c in set(text_columns)]
    return pd.read_csv(
        path,
        sep=sep,
        dtype={c: str for c in text},
        keep_default_na=False,
        na_values={c: [""] if c in text else _NA_STRINGS for c in header},
    )


def _check_columns(path: Path, frame, wanted: list, what: str) -> None:
    missing = [c for c in wanted if c not in frame.columns]
    if len(missing) == 1:
        raise UsageError(f"{str(path)!r} has no column {missing[0]!r}; its columns are {names(frame.columns)}.")
    if missing:
        raise UsageError(f"{str(path)!r} lacks the {what} {names(missing)}; its columns are {names(frame.columns)}.")


def _only_other_column(path: Path, keep) -> str | None:
    import pandas as pd

    header = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", nrows=0).columns
    others = [c for c in header if c not in keep]
    return others[0] if len(others) == 1 else None


@dataclass
class Inputs:
    """What ``read_inputs`` found: the items, their kind, and the columns kept beside them."""

    items: list
    kind: str
    kept: dict = field(default_factory=dict)  # column name -> values, one per item


def read_inputs(
    spec: str, *, column: str | None = None, kind: str = "auto", recursive: bool = False, keep=()
) -> Inputs:
    """Read INPUT: a text file (one text per line), '-' (stdin), a table column, or an image folder.

    Text files keep blank lines as empty texts, so output row i is always input line i. Image folders
    are listed by :func:`skdeep.image_io.list_image_files` (subfolders only with ``recursive``).
    ``keep`` names table columns to carry along (``--keep-columns``, ``--id-column``).
    """
    table_only = f"--keep-columns and --id-column apply to {', '.join(TABLE_SUFFIXES)} inputs"
    if spec == "-":
        if kind == "image":
            raise UsageError("Images cannot be read from stdin; pass a folder.")
        if keep:
            raise UsageError(f"{table_only}, not stdin.")
        return Inputs(sys.stdin.read().splitlines(), "text")
    path = Path(spec).expanduser()
    if not path.exists():
        raise UsageError(f"Input {spec!r} does not exist.")
    if path.suffix.lower() not in TABLE_SUFFIXES:
        if keep:
            raise UsageError(f"{table_only}, not {spec!r}.")
        if column is not None:
            raise UsageError(f"--column applies to {', '.join(TABLE_SUFFIXES)} files, not {spec!r}.")
    if path.is_dir():
        if kind == "text":
            raise UsageError(f"{spec!r} is a folder; text input must be a file.")
        return Inputs(_image_files(path, recursive), "image")
    if path.suffix.lower() in TABLE_SUFFIXES:
        if keep and column is None and path.suffix.lower() in (".csv", ".tsv"):
            column = _only_other_column(path, keep)
        # The input column as text; kept columns (ids, labels) with their own types.
        frame = read_table(path, text_columns=[column] if keep and column else None)
        if column is None:
            if frame.shape[1] - len(keep) != 1:
                raise UsageError(f"{spec!r} has columns {names(frame.columns)}; choose one with --column.")
            column = next(c for c in frame.columns if c not in keep)
        _check_columns(path, frame, [column], "column")
        _check_columns(path, frame, list(keep), "column(s) to keep")
        values = [None if is_missing(v) else v for v in frame[column].tolist()]
        kept = {c: frame[c].tolist() for c in keep}
        if kind == "image":
            # Relative paths in a table are relative to the table's folder.
            values = ["" if v is None else str(v) for v in values]
            return Inputs([str((path.parent / v).resolve()) if v else v for v in values], "image", kept)
        return Inputs(values, "text", kept)
    if kind == "image":
        from .image_io import is_image_file_name

        if is_image_file_name(path.name):
            return Inputs([str(path)], "image")
        raise UsageError(f"{spec!r} is not an image folder or image file.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{spec!r} is not UTF-8 text ({exc}); pass a text file, a CSV or an image folder.") from exc
    return Inputs(text.splitlines(), "text")


def read_model_table(spec: str, columns: list, column_kinds: dict, column: str | None):
    """The rows of a table file as a DataFrame with exactly ``columns`` (the model's
    ``feature_names_in_``), in that order; a one-line error names the columns that are missing."""
    if column is not None:
        raise UsageError(f"The model reads the columns {names(columns)} of a table, not one column: drop --column.")
    path = Path(spec).expanduser()
    if spec == "-" or path.suffix.lower() not in TABLE_SUFFIXES or path.is_dir():
        raise UsageError(
            f"The model was fitted on a table with the columns {names(columns)}: pass a "
            f"{', '.join(TABLE_SUFFIXES)} file holding them, not {spec!r}."
        )
    if not path.is_file():
        raise UsageError(f"Input {spec!r} does not exist.")
    frame = read_table(path, text_columns=list(column_kinds))
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise UsageError(
            f"{spec!r} lacks {len(missing)} of the {len(columns)} columns the model was fitted on: {names(missing)}; "
            f"its columns are {names(frame.columns)}."
        )
    frame = frame[columns]
    for name, kind in column_kinds.items():
        if kind == "image" and name in frame.columns:
            frame[name] = [
                str((path.parent / str(v)).resolve()) if isinstance(v, str) and v else v for v in frame[name]
            ]
    return frame


# ---------------------------------------------------------------------------------------------
# writing outputs


def check_suffix(out: str | None, allowed: tuple) -> None:
    if out is not None and Path(out).suffix.lower() not in allowed:
        raise UsageError(f"--out {out!r}: use one of {', '.join(allowed)}.")


def _column_values(values: list):
    import pyarrow as pa

    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types: keep them as text
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def write_embeddings(out: str, vectors, items: list, kind: str, kept: dict | None = None, metadata=None) -> None:
    """Save ``vectors``: a float32 ``.npy`` matrix, or Parquet with the kept columns, the input
    column (``text`` or ``path``) and an ``embedding`` list column; ``metadata`` (a JSON-able dict)
    goes into the Parquet schema under :data:`PARQUET_METADATA_KEY`."""
    import numpy as np

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".npy":
        np.save(path, vectors.astype(np.float32, copy=False))
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = vectors.shape[1]
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel(), type=pa.float32())
    columns = {name: _column_values(values) for name, values in (kept or {}).items()}
    column = [None if x is None else str(x) for x in items]
    columns["text" if kind == "text" else "path"] = pa.array(column, type=pa.string())
    columns["embedding"] = pa.FixedSizeListArray.from_arrays(flat, dim)
    table = pa.table(columns)
    if metadata is not None:
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), PARQUET_METADATA_KEY: json.dumps(metadata, default=str).encode()}
        )
    pq.write_table(table, path)


def read_embedding_metadata(path) -> dict | None:
    """The provenance ``skdeep embed`` recorded in a Parquet file, or None."""
    import pyarrow.parquet as pq

    raw = (pq.read_schema(path).metadata or {}).get(PARQUET_METADATA_KEY)
    return None if raw is None else json.loads(raw)


def _flatten_outputs(values, classes):
    """Multi-output probabilities (a list of tables) -> one table, columns ``output<j>:<class>``."""
    import numpy as np

    if not isinstance(values, list):
        return np.asarray(values), classes
    arrays = [np.asarray(v) for v in values]
    labels = [f"output{j}:{c}" for j, cl in enumerate(classes) for c in np.asarray(cl).tolist()]
    return np.hstack(arrays), labels


def _prediction_text(values, classes=None) -> str:
    import numpy as np

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    values = np.asarray(values)
    if classes is None:
        if values.ndim == 2:  # multi-output predictions: one CSV row per input
            writer.writerows(values.tolist())
        else:
            for v in values.tolist():
                buf.write(f"{v}\n")
    else:
        writer.writerow([str(c) for c in np.asarray(classes).tolist()])
        for row in values:
            writer.writerow([f"{p:.6g}" for p in row])
    return buf.getvalue()


def write_predictions(out: str | None, values, classes=None) -> None:
    import numpy as np

    if classes is not None:
        values, classes = _flatten_outputs(values, classes)
    if out is None:
        sys.stdout.write(_prediction_text(values, classes))
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        np.save(path, np.asarray(values))
    elif suffix == ".parquet":
        import pandas as pd

        values = np.asarray(values)
        if classes is None and values.ndim == 2:
            frame = pd.DataFrame(values, columns=[f"prediction{j}" for j in range(values.shape[1])])
        elif classes is None:
            frame = pd.DataFrame({"prediction": values})
        else:
            frame = pd.DataFrame(values, columns=[str(c) for c in np.asarray(classes).tolist()])
        frame.to_parquet(path, index=False)
    else:
        path.write_text(_prediction_text(values, classes), encoding="utf-8")
