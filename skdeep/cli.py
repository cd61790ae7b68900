"""The ``skdeep`` command line: embed files, predict with a saved pipeline, serve it, inspect it.

::

    skdeep embed reviews.txt --model all-MiniLM-L6-v2 --out reviews.npy
    skdeep embed data.csv --column text --out data.parquet --cache ~/.cache/skdeep/embeddings
    skdeep embed photos/ --model efficientnet_lite0 --out photos.parquet --on-error skip
    skdeep predict model.skops reviews.txt --proba --out scores.csv
    skdeep serve model.skops --host 127.0.0.1 --port 8000
    skdeep info model.skops

Exit status: 0 on success, 2 for bad usage, missing files and invalid input or models, 1 for
anything unexpected.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import sys
import warnings
from pathlib import Path

import numpy as np

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
EMBED_OUTPUTS = (".npy", ".parquet")
PREDICT_OUTPUTS = (".csv", ".txt", ".npy", ".parquet")


class UsageError(Exception):
    """Bad arguments or input: reported in one line with exit status 2."""


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
        print(f"skdeep: note: the subfolders of {str(folder)!r} are not read; pass --recursive to include them.",
              file=sys.stderr)
    return files


def _read_table(path: Path, column: str | None):
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix == ".parquet":
        frame = pd.read_parquet(path)
    else:
        # An empty cell is a missing value, as a null is in Parquet: both follow the encoder's --missing rule.
        frame = pd.read_csv(
            path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False, na_values=[""]
        )
    if column is None:
        if frame.shape[1] != 1:
            raise UsageError(f"{str(path)!r} has columns {list(frame.columns)!r}; choose one with --column.")
        column = frame.columns[0]
    if column not in frame.columns:
        raise UsageError(f"{str(path)!r} has no column {column!r}; its columns are {list(frame.columns)!r}.")
    return [None if _is_missing(v) else v for v in frame[column].tolist()]


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value) or type(value).__name__ == "NAType"


def read_inputs(spec: str, *, column: str | None = None, kind: str = "auto",
                recursive: bool = False) -> tuple[list, str]:
    """Read INPUT: a text file (one text per line), '-' (stdin), a CSV/TSV/Parquet column, or an
    image folder. Returns ``(items, kind)`` with kind ``"text"`` or ``"image"``.

    Text files keep blank lines as empty texts, so output row i is always input line i. Image folders
    are listed by :func:`skdeep.image_io.list_image_files` (subfolders only with ``recursive``).
    """
    if spec == "-":
        if kind == "image":
            raise UsageError("Images cannot be read from stdin; pass a folder.")
        return sys.stdin.read().splitlines(), "text"
    path = Path(spec).expanduser()
    if not path.exists():
        raise UsageError(f"Input {spec!r} does not exist.")
    if path.is_dir():
        if kind == "text":
            raise UsageError(f"{spec!r} is a folder; text input must be a file.")
        return _image_files(path, recursive), "image"
    if path.suffix.lower() in TABLE_SUFFIXES:
        values = _read_table(path, column)
        if kind == "image":
            # Relative paths in a table are relative to the table's folder.
            values = ["" if v is None else str(v) for v in values]
            return [str((path.parent / v).resolve()) if v else v for v in values], "image"
        return values, "text"
    if column is not None:
        raise UsageError(f"--column applies to {', '.join(TABLE_SUFFIXES)} files, not {spec!r}.")
    if kind == "image":
        from .image_io import is_image_file_name

        if is_image_file_name(path.name):
            return [str(path)], "image"
        raise UsageError(f"{spec!r} is not an image folder or image file.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{spec!r} is not UTF-8 text ({exc}); pass a text file, a CSV or an image folder.") from exc
    return text.splitlines(), "text"


# ---------------------------------------------------------------------------------------------
# writing outputs


def _check_suffix(out: str | None, allowed: tuple) -> None:
    if out is not None and Path(out).suffix.lower() not in allowed:
        raise UsageError(f"--out {out!r}: use one of {', '.join(allowed)}.")


def write_embeddings(out: str, vectors: np.ndarray, items: list, kind: str) -> None:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".npy":
        np.save(path, vectors.astype(np.float32, copy=False))
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = vectors.shape[1]
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel(), type=pa.float32())
    table = pa.table(
        {
            "text" if kind == "text" else "path": pa.array(
                [None if x is None else str(x) for x in items], type=pa.string()
            ),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
        }
    )
    pq.write_table(table, path)


def _prediction_text(values, classes=None) -> str:
    buf = io.StringIO()
    if classes is None:
        for v in np.asarray(values).tolist():
            buf.write(f"{v}\n")
    else:
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([str(c) for c in np.asarray(classes).tolist()])
        for row in np.asarray(values):
            writer.writerow([f"{p:.6g}" for p in row])
    return buf.getvalue()


def write_predictions(out: str | None, values, classes=None) -> None:
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

        if classes is None:
            frame = pd.DataFrame({"prediction": np.asarray(values)})
        else:
            frame = pd.DataFrame(np.asarray(values), columns=[str(c) for c in np.asarray(classes).tolist()])
        frame.to_parquet(path, index=False)
    else:
        path.write_text(_prediction_text(values, classes), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# commands


def _cache_spec(args):
    if args.no_cache:
        return None
    return args.cache if args.cache is not None else "auto"


def _encoder_for(kind: str, args):
    params = {"batch_size": args.batch_size, "device": args.device, "cache": _cache_spec(args),
              "show_progress": not args.no_progress}
    if args.model is not None:
        params["model"] = args.model
    if kind == "text":
        from .text import TextEncoder

        cls = TextEncoder
        if args.normalize:
            params["normalize"] = True
        params["missing"] = args.missing
        for option in ("prompt", "truncate_dim", "long_text"):
            if getattr(args, option) is not None:
                params[option] = getattr(args, option)
        if args.weights is not None:
            raise UsageError("--weights applies to image models; for text models pass the model folder as --model.")
    else:
        try:
            from .image import ImageEncoder
        except ImportError as exc:
            raise UsageError(f"Image input needs skdeep's image support, which failed to import: {exc}") from exc
        cls = ImageEncoder
        if args.normalize:
            raise UsageError("--normalize applies to text models.")
        if args.weights is not None:
            params["weights"] = None if args.weights.lower() == "none" else args.weights
        params["on_error"] = args.on_error
        if args.max_pixels is not None:
            params["max_pixels"] = None if args.max_pixels == "none" else args.max_pixels
        for option in ("prompt", "truncate_dim", "long_text"):
            if getattr(args, option) is not None:
                raise UsageError(f"--{option.replace('_', '-')} applies to text models.")
    if kind == "text" and args.on_error != "raise":
        raise UsageError("--on-error applies to images; an invalid text always stops with an error naming its row.")
    if kind == "text" and args.max_pixels is not None:
        raise UsageError("--max-pixels applies to images.")
    # None means "no cache", "random weights" and "no pixel limit" for those three; for the others, the
    # encoder's default.
    return cls(**{k: v for k, v in params.items() if v is not None or k in ("cache", "weights", "max_pixels")})


def _embed_images_reporting_failures(encoder, items: list, on_error: str) -> tuple[np.ndarray, list]:
    """Embed, turning ImageEncoder's unreadable-image warning into a note on stderr; returns the
    vectors and the inputs they belong to (without the skipped ones)."""
    from .image import UnreadableImageWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnreadableImageWarning)
        vectors = encoder.fit_transform(items)
    failed: set[int] = set()
    for w in caught:
        if isinstance(w.message, UnreadableImageWarning):
            failed.update(w.message.positions)
            print(f"skdeep embed: warning: {_one_line(w.message)}", file=sys.stderr)
        else:  # not ours to swallow
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if on_error == "skip" and failed:
        items = [item for i, item in enumerate(items) if i not in failed]
    if len(items) != vectors.shape[0]:  # pragma: no cover - the encoder broke its own contract
        raise RuntimeError(f"{vectors.shape[0]} embeddings for {len(items)} inputs.")
    return vectors, items


def cmd_embed(args) -> int:
    _check_suffix(args.out, EMBED_OUTPUTS)
    items, kind = read_inputs(args.input, column=args.column, kind=args.kind, recursive=args.recursive)
    if not items:
        raise UsageError(f"{args.input!r} holds no inputs.")
    encoder = _encoder_for(kind, args)
    if args.on_error == "skip" and Path(args.out).suffix.lower() != ".parquet":
        # A bare matrix could not say which rows are missing.
        raise UsageError("--on-error skip needs a .parquet output, whose 'path' column lists the images kept; "
                         "with .npy use --on-error zero (failed images become rows of zeros, rows stay aligned).")
    n_inputs = len(items)
    if kind == "image":
        vectors, items = _embed_images_reporting_failures(encoder, items, args.on_error)
    else:
        vectors = encoder.fit_transform(items)
    write_embeddings(args.out, vectors, items, kind)
    skipped = f" ({n_inputs - len(items)} of {n_inputs} images skipped)" if len(items) < n_inputs else ""
    print(f"Wrote {vectors.shape[0]} x {vectors.shape[1]} embeddings to {args.out}{skipped}", file=sys.stderr)
    return 0


def _load_model(path: str, args):
    from . import persistence

    if not Path(path).is_file():
        raise UsageError(f"Model file {path!r} does not exist.")
    return persistence.load(path, trusted=args.trust, allow_pickle=args.allow_pickle)


def _override_encoders(model, args) -> None:
    from .serving import find_encoders

    overrides = {
        "batch_size": getattr(args, "batch_size", None),
        "device": getattr(args, "device", None),
        "show_progress": not args.no_progress if hasattr(args, "no_progress") else None,
    }
    missing = getattr(args, "missing", None)
    if getattr(args, "no_cache", False):
        overrides["cache"] = None
    elif getattr(args, "cache", None) is not None:
        overrides["cache"] = args.cache
    for _, encoder in find_encoders(model):
        encoder.set_params(**{k: v for k, v in overrides.items() if v is not None or k == "cache"})
        if missing is not None and "missing" in encoder.get_params(deep=False):
            encoder.set_params(missing=missing)


def cmd_predict(args) -> int:
    from .serving import input_kind

    _check_suffix(args.out, PREDICT_OUTPUTS)
    model = _load_model(args.model, args)
    try:
        kind = input_kind(model)
    except ValueError:
        kind = "auto"
    items, _ = read_inputs(args.input, column=args.column, kind=args.kind if args.kind != "auto" else kind,
                           recursive=args.recursive)
    if not items:
        raise UsageError(f"{args.input!r} holds no inputs.")
    _override_encoders(model, args)
    if args.proba:
        if not hasattr(model, "predict_proba"):
            raise UsageError(f"The model in {args.model!r} has no predict_proba; drop --proba.")
        write_predictions(args.out, model.predict_proba(items), model.classes_)
    else:
        if not hasattr(model, "predict"):
            raise UsageError(f"The model in {args.model!r} has no predict (is it a transformer? use its steps).")
        write_predictions(args.out, model.predict(items))
    return 0


def cmd_serve(args) -> int:
    from .serving import serve

    if not Path(args.model).is_file():
        raise UsageError(f"Model file {args.model!r} does not exist.")
    serve(
        args.model,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        max_batch_size=1 if args.no_batching else args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_body_bytes=args.max_body_bytes,
        max_items=args.max_items,
        max_text_length=args.max_text_length,
        input_kind_override=args.kind,
        trusted=args.trust,
        allow_pickle=args.allow_pickle,
    )
    return 0


def _format_info(info: dict) -> str:
    lines = [f"file:        {info['file']} ({info['format']}, {info['size_bytes']:,} bytes)",
             f"estimator:   {info['estimator']}",
             f"input:       {info['input_kind'] or 'unknown'}"]
    if len(info["steps"]) > 1 or info["steps"][0]["name"] is not None:
        lines.append("steps:")
        lines += [f"  {i}. {s['name']}: {s['class']}" for i, s in enumerate(info["steps"])]
    if info["classes"] is not None:
        lines.append(f"classes:     {info['classes']}")
    methods = [m for m, ok in info["methods"].items() if ok]
    lines.append(f"methods:     {', '.join(methods) or 'none'}")
    for enc in info["encoders"]:
        lines.append(f"encoder {enc['parameter'] or '(top level)'}: {enc['class']}")
        lines.append(f"  model:       {enc['model']}")
        lines.append(f"  fingerprint: {enc['fingerprint']}")
        lines.append(f"  origin:      {enc['origin']}   weights bundled: {'yes' if enc['bundle_weights'] else 'no'}")
        lines.append(f"  dimension:   {enc['n_features_out']}")
    if info.get("trusted_types"):
        lines.append("types trusted beyond skops' defaults: " + ", ".join(info["trusted_types"]))
    return "\n".join(lines) + "\n"


def cmd_info(args) -> int:
    from . import persistence
    from .serving import describe

    model = _load_model(args.model, args)
    info = {"file": args.model, "size_bytes": Path(args.model).stat().st_size}
    info["format"] = persistence.detect_format(args.model)
    if info["format"] == "skops":
        info["trusted_types"] = persistence._flagged_types(args.model)
    info.update(describe(model))
    sys.stdout.write(json.dumps(info, indent=2) + "\n" if args.json else _format_info(info))
    return 0


# ---------------------------------------------------------------------------------------------
# argument parsing


def _add_encoder_options(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    p.add_argument("--batch-size", type=_positive_int, default=32 if defaults else None,
                   help="inputs per forward pass" + (" (default: 32)" if defaults else " (default: as saved)"))
    p.add_argument("--device", default="auto" if defaults else None,
                   help="auto, cpu, cuda, cuda:N or mps" + (" (default: auto)" if defaults else " (default: as saved)"))
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--cache", metavar="DIR", default=None,
                       help="embedding cache folder, shared across runs (default: "
                       + ("$SKDEEP_CACHE_DIR, else memory only)" if defaults else "as saved)"))
    cache.add_argument("--no-cache", action="store_true", help="do not cache embeddings")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--column", help="column to read from a CSV/TSV/Parquet input")
    p.add_argument("--kind", choices=("auto", "text", "image"), default="auto",
                   help="read INPUT as texts or images (default: image for folders, else text)")
    p.add_argument("--missing", choices=("raise", "empty", "zero"), default="raise" if defaults else None,
                   help="texts: what an empty CSV/TSV cell or a null Parquet cell becomes: 'raise' stops with an error "
                   "naming the row, 'empty' embeds the empty text, 'zero' writes a row of zeros (default: "
                   + ("raise)" if defaults else "as saved)") + "; blank lines of a text file are empty texts")
    p.add_argument("--recursive", action="store_true",
                   help="image folders: read the images in subfolders too (default: the folder's own files only, "
                   "as ImageEncoder().transform(folder) does); hidden files and symlinked folders are never read")


def _add_load_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust", action="append", metavar="TYPE", help="trust this type in a .skops file (repeatable)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="load a .joblib / .pkl pickle: unpickling runs any code the file contains, so pass "
                   "this only for files you made (.skops files never need it)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _max_pixels(text: str):
    if text.strip().lower() == "none":
        return "none"
    return _positive_int(text)


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from . import serving
    from .image_io import DEFAULT_MAX_PIXELS

    parser = argparse.ArgumentParser(
        prog="skdeep", description="Pretrained deep encoders as scikit-learn transformers: embed, predict, serve."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("embed", help="embed a text file, a CSV column or an image folder",
                       description="Embed INPUT with a pretrained encoder and save the vectors.")
    p.add_argument("input", metavar="INPUT",
                   help="text file (one text per line), '-' for stdin, .csv/.tsv/.parquet (with --column), "
                   "or a folder of images")
    p.add_argument("--model", help="model name or folder (default: all-MiniLM-L6-v2 for text, "
                   "efficientnet_lite0 for images)")
    p.add_argument("--out", required=True, metavar="FILE", help="output .npy (float32 matrix) or .parquet "
                   "(input column plus an 'embedding' list column)")
    p.add_argument("--normalize", action="store_true", help="unit-length text embeddings")
    p.add_argument("--prompt", help="text models: a prompt put before every text, e.g. 'query: '")
    p.add_argument("--truncate-dim", type=_positive_int, metavar="K", help="text models: keep the first K dimensions")
    p.add_argument("--long-text", choices=("truncate", "chunk"),
                   help="text models: texts longer than the model's limit are truncated (default) or embedded in "
                   "overlapping windows whose vectors are averaged")
    p.add_argument("--weights", help="image models: weights name or checkpoint file, or 'none' for a random "
                   "initialisation (default: the model's pretrained weights)")
    p.add_argument("--on-error", choices=("raise", "skip", "zero"), default="raise",
                   help="images that cannot be read (missing, not an image, truncated, too large, not a regular "
                   "file): 'raise' stops with an error naming the file (default); 'zero' writes a row of zeros, "
                   "so rows stay aligned with the input; 'skip' leaves the row out and needs a .parquet --out, "
                   "whose 'path' column lists the images kept. Both print the failures on stderr")
    p.add_argument("--max-pixels", type=_max_pixels, metavar="N",
                   help="refuse images whose header claims more than N pixels (a decompression bomb guard), or "
                   f"'none' for no limit beyond PIL's own (default: {DEFAULT_MAX_PIXELS})")
    _add_encoder_options(p, defaults=True)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("predict", help="predict with a saved pipeline",
                       description="Run a saved pipeline's predict (or predict_proba) on INPUT.")
    p.add_argument("model", metavar="MODEL", help="a .skops or .joblib file")
    p.add_argument("input", metavar="INPUT", help="as for 'skdeep embed'")
    p.add_argument("--out", metavar="FILE", help="output .csv/.txt, .npy or .parquet (default: stdout, "
                   "one prediction per line, or CSV with a header of classes for --proba)")
    p.add_argument("--proba", action="store_true", help="class probabilities instead of labels")
    _add_load_options(p)
    _add_encoder_options(p, defaults=False)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("serve", help="serve a saved pipeline over HTTP",
                       description="Serve a saved pipeline over HTTP (FastAPI + uvicorn) with micro-batching.")
    p.add_argument("model", metavar="MODEL", help="a .skops or .joblib file")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="default: 8000")
    p.add_argument("--max-batch-size", type=_positive_int, default=serving.DEFAULT_MAX_BATCH_SIZE,
                   help=f"most inputs per model call (default: {serving.DEFAULT_MAX_BATCH_SIZE})")
    p.add_argument("--max-wait-ms", type=_non_negative_float, default=serving.DEFAULT_MAX_WAIT_MS,
                   help=f"how long a batch waits for more requests (default: {serving.DEFAULT_MAX_WAIT_MS})")
    p.add_argument("--no-batching", action="store_true", help="one model call per request")
    p.add_argument("--max-body-bytes", type=_positive_int, default=serving.DEFAULT_MAX_BODY_BYTES)
    p.add_argument("--max-items", type=_positive_int, default=serving.DEFAULT_MAX_ITEMS,
                   help="most texts or images per request")
    p.add_argument("--max-text-length", type=_positive_int, default=serving.DEFAULT_MAX_TEXT_LENGTH,
                   help="most characters per text")
    p.add_argument("--kind", choices=("text", "image"), default=None,
                   help="input kind, when the model has no skdeep encoder to tell")
    _add_load_options(p)
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("info", help="describe a saved pipeline",
                       description="Show a saved pipeline's steps, classes, encoders and expected input.")
    p.add_argument("model", metavar="MODEL", help="a .skops or .joblib file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_load_options(p)
    p.set_defaults(func=cmd_info)
    return parser


def _one_line(message) -> str:
    # Library messages may quote a decoder's multi-line text; a CLI error stays one line.
    return re.sub(r"\s*\n\s*", " ", str(message)).strip()


def main(argv=None) -> int:
    """Entry point of the ``skdeep`` console script; returns the exit status."""
    from .persistence import UntrustedTypesError

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        parser.exit(2, f"skdeep {args.command}: error: {_one_line(exc)}\n")
    except (UntrustedTypesError, FileNotFoundError, ImportError, ValueError, TypeError) as exc:
        # Missing models, files or code, changed weights, invalid input: the message says what to fix.
        parser.exit(2, f"skdeep {args.command}: error: {_one_line(exc)}\n")
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `skdeep predict ... | head`: stop quietly, like other Unix tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
