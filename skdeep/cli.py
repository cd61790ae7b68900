"""The ``skdeep`` command line: embed files, predict with a saved pipeline, serve it, inspect it.

::

    skdeep embed reviews.txt --model all-MiniLM-L6-v2 --out reviews.npy
    skdeep embed data.csv --column text --out data.parquet --cache ~/.cache/skdeep/embeddings
    skdeep embed photos/ --model efficientnet_lite0 --out photos.parquet --on-error skip
    skdeep embed products.csv --column title --id-column sku --keep-columns price --out products.parquet
    skdeep predict model.skops reviews.txt --proba --out scores.csv
    skdeep predict table_model.skops listings.csv --out prices.csv
    skdeep serve model.skops --host 127.0.0.1 --port 8000
    skdeep info model.skops

Exit status: 0 on success, 2 for bad usage, missing files and invalid input or models, 1 for
anything unexpected.

Only the standard library is imported until the arguments are parsed, so ``--help``, ``--version``
and usage errors answer at once; numpy, scikit-learn and torch load when a command runs.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from pathlib import Path

from ._cli_io import (
    EMBED_OUTPUTS,
    PREDICT_OUTPUTS,
    TABLE_SUFFIXES,
    UsageError,
    check_suffix,
    read_inputs,
    read_model_table,
    write_embeddings,
    write_predictions,
)
from ._cli_runtime import _positive_int, add_runtime_options, runtime_params
from .serving import limits as serving

#: ``skdeep.image_io.DEFAULT_MAX_PIXELS`` (PIL's own limit), repeated here so that ``--help`` imports
#: no image code; a test keeps the two equal.
DEFAULT_MAX_PIXELS = 89_478_485
#: Longest error message the command prints (one line).
MESSAGE_LIMIT = 500

__all__ = ["main", "build_parser", "read_inputs", "UsageError", "TABLE_SUFFIXES", "EMBED_OUTPUTS", "PREDICT_OUTPUTS"]


# ---------------------------------------------------------------------------------------------
# commands


def _cache_spec(args):
    if args.no_cache:
        return None
    return args.cache if args.cache is not None else "auto"


def _encoder_for(kind: str, args):
    params = {
        "batch_size": args.batch_size,
        "device": args.device,
        "cache": _cache_spec(args),
        "show_progress": not args.no_progress,
    }
    if args.model is not None:
        params["model"] = args.model
    params.update(runtime_params(args))
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


def _embed_images_reporting_failures(encoder, items: list, on_error: str):
    """Embed, turning ImageEncoder's unreadable-image warning into a note on stderr; returns the
    vectors and the positions of the inputs they belong to (without the skipped ones)."""
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
    rows = [i for i in range(len(items)) if not (on_error == "skip" and i in failed)]
    if len(rows) != vectors.shape[0]:  # pragma: no cover - the encoder broke its own contract
        raise RuntimeError(f"{vectors.shape[0]} embeddings for {len(rows)} inputs.")
    return vectors, rows


def _listed(values) -> list:
    """Values of a repeatable, comma-separated option."""
    return [v.strip() for value in values or () for v in value.split(",") if v.strip()]


def _kept_columns(args) -> list:
    keep = _listed(args.keep_columns)
    wanted = ([args.id_column] if args.id_column else []) + [c for c in keep if c != args.id_column]
    if len(set(wanted)) != len(wanted):
        raise UsageError(f"--keep-columns names a column twice: {keep!r}.")
    if wanted and Path(args.out).suffix.lower() != ".parquet":
        raise UsageError("--keep-columns and --id-column need a .parquet --out (a .npy file holds only the vectors).")
    if args.column is not None and args.column in wanted:
        raise UsageError(f"{args.column!r} is the embedded column (written as 'text' or 'path'); do not keep it too.")
    for name in wanted:
        if name in ("text", "path", "embedding"):
            raise UsageError(f"A kept column cannot be named {name!r}: skdeep embed writes a column of that name.")
    return wanted


def _check_ids(values: list, column: str) -> None:
    seen: set = set()
    for i, value in enumerate(values):
        if value is None or value != value:  # None or NaN
            raise UsageError(f"--id-column {column!r} is empty at row {i}; every row needs an id.")
        if value in seen:
            raise UsageError(
                f"--id-column {column!r} holds {str(value)[:60]!r} twice (again at row {i}); ids must be unique."
            )
        seen.add(value)


def embedding_provenance(encoder, *, kind: str, source: str | None = None, column: str | None = None) -> dict:
    """What ``skdeep embed`` records in its Parquet output: model, fingerprint, settings, versions."""
    from . import __version__

    # Every parameter that can change a vector (model settings and post-processing alike); not the ones
    # that only say how the work runs.
    runtime = {"model", "batch_size", "device", "show_progress", "cache", "num_workers", "bundle_weights"}
    settings = {
        name: value if value is None or isinstance(value, (bool, int, float, str)) else str(value)
        for name, value in encoder.get_params(deep=False).items()
        if name not in runtime
    }
    # As they run: "auto" settings resolved for this model.
    settings.update({name: encoder._setting_value(name) for name in encoder._model_settings})
    cls = type(encoder)
    return {
        "skdeep_version": __version__,
        "encoder": f"{cls.__module__}.{cls.__qualname__}",
        "model": str(encoder.model),
        "fingerprint": getattr(encoder, "model_fingerprint_", None),
        "origin": getattr(encoder, "model_origin_", None),
        "dim": getattr(encoder, "n_features_out_", None),
        "kind": kind,
        "settings": settings,
        "input": None if source is None else os.path.basename(source),
        "column": column,
    }


def cmd_embed(args) -> int:
    check_suffix(args.out, EMBED_OUTPUTS)
    keep = _kept_columns(args)
    inputs = read_inputs(args.input, column=args.column, kind=args.kind, recursive=args.recursive, keep=keep)
    items, kind = inputs.items, inputs.kind
    if not items:
        raise UsageError(f"{args.input!r} holds no inputs.")
    if args.id_column:
        _check_ids(inputs.kept[args.id_column], args.id_column)
    encoder = _encoder_for(kind, args)
    if args.on_error == "skip" and Path(args.out).suffix.lower() != ".parquet":
        # A bare matrix could not say which rows are missing.
        raise UsageError(
            "--on-error skip needs a .parquet output, whose 'path' column lists the images kept; "
            "with .npy use --on-error zero (failed images become rows of zeros, rows stay aligned)."
        )
    n_inputs = len(items)
    if kind == "image":
        vectors, rows = _embed_images_reporting_failures(encoder, items, args.on_error)
        if len(rows) < n_inputs:
            items = [items[i] for i in rows]
            inputs.kept = {name: [values[i] for i in rows] for name, values in inputs.kept.items()}
    else:
        vectors = encoder.fit_transform(items)
    metadata = embedding_provenance(encoder, kind=kind, source=args.input, column=args.column)
    write_embeddings(args.out, vectors, items, kind, inputs.kept, metadata)
    skipped = f" ({n_inputs - len(items)} of {n_inputs} images skipped)" if len(items) < n_inputs else ""
    print(f"Wrote {vectors.shape[0]} x {vectors.shape[1]} embeddings to {args.out}{skipped}", file=sys.stderr)
    return 0


def _load_model(path: str, args):
    from . import persistence

    if not Path(path).is_file():
        raise UsageError(f"Model file {path!r} does not exist.")
    return persistence.load(path, trusted=args.trust, allow_pickle=args.allow_pickle)


def _override_encoders(model, args) -> None:
    from .serving.inspect import find_encoders

    overrides = {
        "batch_size": getattr(args, "batch_size", None),
        "device": getattr(args, "device", None),
        "show_progress": not args.no_progress if hasattr(args, "no_progress") else None,
        **runtime_params(args),
    }
    missing = getattr(args, "missing", None)
    if getattr(args, "no_cache", False):
        overrides["cache"] = None
    elif getattr(args, "cache", None) is not None:
        overrides["cache"] = args.cache
    # The fitted encoders that run, wherever they sit (a ColumnTransformer keeps fitted clones).
    for _, encoder in find_encoders(model):
        encoder.set_params(**{k: v for k, v in overrides.items() if v is not None or k == "cache"})
        if missing is not None and "missing" in encoder.get_params(deep=False):
            encoder.set_params(missing=missing)


def cmd_predict(args) -> int:
    from .serving.inspect import column_kinds, input_columns, input_kind

    check_suffix(args.out, PREDICT_OUTPUTS)
    model = _load_model(args.model, args)
    try:
        kind = input_kind(model)
    except ValueError:
        kind = "auto"
    if kind == "table":
        X = read_model_table(args.input, input_columns(model), column_kinds(model), args.column)
    else:
        X = read_inputs(
            args.input, column=args.column, kind=args.kind if args.kind != "auto" else kind, recursive=args.recursive
        ).items
    if not len(X):
        raise UsageError(f"{args.input!r} holds no inputs.")
    _override_encoders(model, args)
    if args.proba:
        if not hasattr(model, "predict_proba"):
            raise UsageError(f"The model in {args.model!r} has no predict_proba; drop --proba.")
        write_predictions(args.out, model.predict_proba(X), model.classes_)
    else:
        if not hasattr(model, "predict"):
            raise UsageError(f"The model in {args.model!r} has no predict (is it a transformer? use its steps).")
        write_predictions(args.out, model.predict(X))
    return 0


def cmd_serve(args) -> int:
    from .serving import serve

    if not Path(args.model).is_file():
        raise UsageError(f"Model file {args.model!r} does not exist.")
    if args.api_key_file is not None and not Path(args.api_key_file).is_file():
        raise UsageError(f"API key file {args.api_key_file!r} does not exist.")

    def seconds(value):  # 0 turns a time limit off
        return value or None

    serve(
        args.model,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        api_key_file=args.api_key_file,
        allowed_origins=_listed(args.allowed_origins) or None,
        allowed_hosts=_listed(args.allowed_hosts) or None,
        header_timeout=seconds(args.header_timeout),
        body_timeout=seconds(args.body_timeout),
        keep_alive_timeout=args.keep_alive_timeout,
        max_connections=args.max_connections,
        forwarded_allow_ips=args.forwarded_allow_ips,
        timeout=seconds(args.timeout),
        max_batch_size=1 if args.no_batching else args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_body_bytes=args.max_body_bytes,
        max_items=args.max_items,
        max_text_length=args.max_text_length,
        max_image_pixels=args.max_image_pixels,
        max_batch_chars=args.max_batch_chars,
        max_batch_pixels=args.max_batch_pixels,
        max_queue=args.max_queue,
        input_kind_override=args.kind,
        encoder_params=runtime_params(args) or None,
        trusted=args.trust,
        allow_pickle=args.allow_pickle,
    )
    return 0


def _format_info(info: dict) -> str:
    lines = [
        f"file:        {info['file']} ({info['format']}, {info['size_bytes']:,} bytes)",
        f"estimator:   {info['estimator']}",
        f"input:       {info['input_kind'] or 'unknown'}",
    ]
    if info.get("input_columns"):
        lines.append(f"columns:     {', '.join(info['input_columns'])}")
    if len(info["steps"]) > 1 or info["steps"][0]["name"] is not None:
        lines.append("steps:")
        lines += [f"  {i}. {s['name']}: {s['class']}" for i, s in enumerate(info["steps"])]
    if info["classes"] is not None:
        lines.append(f"classes:     {info['classes']}")
    methods = [m for m, ok in info["methods"].items() if ok]
    lines.append(f"methods:     {', '.join(methods) or 'none'}")
    for enc in info["encoders"]:
        lines.append(f"encoder {enc['parameter'] or '(top level)'}: {enc['class']}")
        if enc.get("columns"):
            lines.append(f"  columns:     {', '.join(enc['columns'])}")
        lines.append(f"  model:       {enc['model']}")
        lines.append(f"  fingerprint: {enc['fingerprint']}")
        lines.append(f"  origin:      {enc['origin']}   weights bundled: {'yes' if enc['bundle_weights'] else 'no'}")
        lines.append(f"  dimension:   {enc['n_features_out']}")
        if enc.get("backend") is not None:
            lines.append(f"  runs on:     backend {enc['backend']}, dtype {enc.get('dtype') or 'unknown'}")
    if info.get("trusted_types"):
        lines.append("types trusted beyond skops' defaults: " + ", ".join(info["trusted_types"]))
    if info.get("requirements"):
        lines.append("requirements: " + " ".join(info["requirements"]))
        lines += [f"  note: {note}" for note in info.get("requirement_notes", ())]
    return "\n".join(lines) + "\n"


def cmd_info(args) -> int:
    import json

    from . import persistence
    from .serving.inspect import describe

    model = _load_model(args.model, args)
    info = {"file": args.model, "size_bytes": Path(args.model).stat().st_size}
    info["format"] = persistence.detect_format(args.model)
    if info["format"] == "skops":
        info["trusted_types"] = persistence._flagged_types(args.model)
    info.update(describe(model))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        info["requirements"] = persistence.pip_requirements(model)
    info["requirement_notes"] = [_one_line(w.message) for w in caught if issubclass(w.category, UserWarning)]
    sys.stdout.write(json.dumps(info, indent=2) + "\n" if args.json else _format_info(info))
    return 0


# ---------------------------------------------------------------------------------------------
# argument parsing


def _add_encoder_options(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=32 if defaults else None,
        help="inputs per forward pass" + (" (default: 32)" if defaults else " (default: as saved)"),
    )
    p.add_argument(
        "--device",
        default="auto" if defaults else None,
        help="auto, cpu, cuda, cuda:N or mps" + (" (default: auto)" if defaults else " (default: as saved)"),
    )
    cache = p.add_mutually_exclusive_group()
    cache.add_argument(
        "--cache",
        metavar="DIR",
        default=None,
        help="embedding cache folder, shared across runs (default: "
        + ("$SKDEEP_CACHE_DIR, else memory only)" if defaults else "as saved)"),
    )
    cache.add_argument("--no-cache", action="store_true", help="do not cache embeddings")
    add_runtime_options(p, defaults=defaults)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--column", help="column to read from a CSV/TSV/Parquet input")
    p.add_argument(
        "--kind",
        choices=("auto", "text", "image"),
        default="auto",
        help="read INPUT as texts or images (default: image for folders, else text)",
    )
    p.add_argument(
        "--missing",
        choices=("raise", "empty", "zero"),
        default="raise" if defaults else None,
        help="texts: what an empty CSV/TSV cell or a null Parquet cell becomes: 'raise' stops with an error "
        "naming the row, 'empty' embeds the empty text, 'zero' writes a row of zeros (default: "
        + ("raise)" if defaults else "as saved)")
        + "; blank lines of a text file are empty texts",
    )
    p.add_argument(
        "--recursive",
        action="store_true",
        help="image folders: read the images in subfolders too (default: the folder's own files only, "
        "as ImageEncoder().transform(folder) does); hidden files and symlinked folders are never read",
    )


def _add_load_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust", action="append", metavar="TYPE", help="trust this type in a .skops file (repeatable)")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load a .joblib / .pkl pickle: unpickling runs any code the file contains, so pass "
        "this only for files you made (.skops files never need it)",
    )


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
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="skdeep", description="Pretrained deep encoders as scikit-learn transformers: embed, predict, serve."
    )
    parser.add_argument("--version", action="version", version=f"skdeep {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "embed",
        help="embed a text file, a CSV column or an image folder",
        description="Embed INPUT with a pretrained encoder and save the vectors.",
    )
    p.add_argument(
        "input",
        metavar="INPUT",
        help="text file (one text per line), '-' for stdin, .csv/.tsv/.parquet/.json/.jsonl (with --column), "
        "or a folder of images",
    )
    p.add_argument(
        "--model", help="model name or folder (default: all-MiniLM-L6-v2 for text, efficientnet_lite0 for images)"
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="output .npy (float32 matrix) or .parquet (kept columns, the input column and an 'embedding' "
        "list column; its schema metadata records the model, its fingerprint and settings)",
    )
    p.add_argument(
        "--id-column",
        metavar="COL",
        help="table inputs: copy this column (unique, non-empty ids) into the .parquet output, first",
    )
    p.add_argument(
        "--keep-columns",
        action="append",
        metavar="COL[,COL...]",
        help="table inputs: copy these columns into the .parquet output (repeatable)",
    )
    p.add_argument("--normalize", action="store_true", help="unit-length text embeddings")
    p.add_argument("--prompt", help="text models: a prompt put before every text, e.g. 'query: '")
    p.add_argument("--truncate-dim", type=_positive_int, metavar="K", help="text models: keep the first K dimensions")
    p.add_argument(
        "--long-text",
        choices=("truncate", "chunk"),
        help="text models: texts longer than the model's limit are truncated (default) or embedded in "
        "overlapping windows whose vectors are averaged",
    )
    p.add_argument(
        "--weights",
        help="image models: weights name or checkpoint file, or 'none' for a random "
        "initialisation (default: the model's pretrained weights)",
    )
    p.add_argument(
        "--on-error",
        choices=("raise", "skip", "zero"),
        default="raise",
        help="images that cannot be read (missing, not an image, truncated, too large, not a regular "
        "file): 'raise' stops with an error naming the file (default); 'zero' writes a row of zeros, "
        "so rows stay aligned with the input; 'skip' leaves the row out and needs a .parquet --out, "
        "whose 'path' column lists the images kept. Both print the failures on stderr",
    )
    p.add_argument(
        "--max-pixels",
        type=_max_pixels,
        metavar="N",
        help="refuse images whose header claims more than N pixels (a decompression bomb guard), or "
        f"'none' for no limit beyond PIL's own (default: {DEFAULT_MAX_PIXELS})",
    )
    _add_encoder_options(p, defaults=True)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser(
        "predict",
        help="predict with a saved pipeline",
        description="Run a saved pipeline's predict (or predict_proba) on INPUT.",
    )
    p.add_argument("model", metavar="MODEL", help="a .skops or .joblib file")
    p.add_argument(
        "input",
        metavar="INPUT",
        help="as for 'skdeep embed'; for a model fitted on a DataFrame, a .csv/.tsv/.parquet/.json/.jsonl "
        "table holding the columns it was fitted on (see 'skdeep info')",
    )
    p.add_argument(
        "--out",
        metavar="FILE",
        help="output .csv/.txt, .npy or .parquet (default: stdout, "
        "one prediction per line, or CSV with a header of classes for --proba)",
    )
    p.add_argument("--proba", action="store_true", help="class probabilities instead of labels")
    _add_load_options(p)
    _add_encoder_options(p, defaults=False)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "serve",
        help="serve a saved pipeline over HTTP",
        description="Serve a saved pipeline over HTTP (FastAPI + uvicorn) with fair micro-batching. "
        "Limits, authentication and deployment: docs/serving.md.",
    )
    p.add_argument("model", metavar="MODEL", help="a .skops or .joblib file")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="default: 8000")
    g = p.add_argument_group("access")
    g.add_argument(
        "--api-key-file",
        metavar="FILE",
        help="require 'Authorization: Bearer <key>' with the key in "
        "FILE on every endpoint but /health (default: $SKDEEP_API_KEY if set, else no authentication)",
    )
    g.add_argument(
        "--allowed-origins",
        action="append",
        metavar="ORIGIN[,ORIGIN...]",
        help="browser origins (https://app.example.com, or '*') allowed to call the server besides its "
        "own, with CORS; requests from other origins are refused (403)",
    )
    g.add_argument(
        "--allowed-hosts",
        action="append",
        metavar="HOST[,HOST...]",
        help="accepted Host header values ('*.example.com' wildcards); default: localhost, 127.0.0.1 "
        "and ::1 when bound to loopback, else any",
    )
    g.add_argument(
        "--forwarded-allow-ips",
        metavar="IPS",
        help="proxies trusted to set X-Forwarded-For/-Proto (uvicorn's option; default: 127.0.0.1)",
    )
    g = p.add_argument_group("limits")
    g.add_argument(
        "--max-items",
        type=_positive_int,
        default=serving.DEFAULT_MAX_ITEMS,
        help=f"most texts or images per request (default: {serving.DEFAULT_MAX_ITEMS})",
    )
    g.add_argument(
        "--max-text-length",
        type=_positive_int,
        default=serving.DEFAULT_MAX_TEXT_LENGTH,
        help=f"most characters per text (default: {serving.DEFAULT_MAX_TEXT_LENGTH})",
    )
    g.add_argument(
        "--max-image-pixels",
        type=_positive_int,
        default=serving.DEFAULT_MAX_IMAGE_PIXELS,
        help="most pixels an image header may declare, checked before decoding "
        f"(default: {serving.DEFAULT_MAX_IMAGE_PIXELS})",
    )
    g.add_argument(
        "--max-body-bytes",
        type=_positive_int,
        default=serving.DEFAULT_MAX_BODY_BYTES,
        help=f"largest request body (default: {serving.DEFAULT_MAX_BODY_BYTES})",
    )
    g.add_argument(
        "--max-queue",
        type=_positive_int,
        default=serving.DEFAULT_MAX_QUEUE,
        help=f"most inputs waiting for the model; beyond, 503 with Retry-After (default: {serving.DEFAULT_MAX_QUEUE})",
    )
    g.add_argument(
        "--max-connections",
        type=_positive_int,
        default=None,
        help="most open connections; beyond, 503 (default: no limit)",
    )
    g = p.add_argument_group("time limits (seconds; 0 turns one off)")
    g.add_argument(
        "--timeout",
        type=_non_negative_float,
        default=serving.DEFAULT_TIMEOUT,
        help=f"from a request's body to its answer; beyond, 504 (default: {serving.DEFAULT_TIMEOUT:g})",
    )
    g.add_argument(
        "--header-timeout",
        type=_non_negative_float,
        default=serving.DEFAULT_HEADER_TIMEOUT,
        help="for a client to send a request's headers; beyond, 408 and the connection is closed "
        f"(default: {serving.DEFAULT_HEADER_TIMEOUT:g})",
    )
    g.add_argument(
        "--body-timeout",
        type=_non_negative_float,
        default=serving.DEFAULT_BODY_TIMEOUT,
        help="for a client to send a request's body once its headers are in "
        f"(default: {serving.DEFAULT_BODY_TIMEOUT:g})",
    )
    g.add_argument(
        "--keep-alive-timeout",
        type=_positive_int,
        default=serving.DEFAULT_KEEP_ALIVE_TIMEOUT,
        help=f"idle keep-alive connections are closed after this (default: {serving.DEFAULT_KEEP_ALIVE_TIMEOUT})",
    )
    g = p.add_argument_group("batching")
    g.add_argument(
        "--max-batch-size",
        type=_positive_int,
        default=serving.DEFAULT_MAX_BATCH_SIZE,
        help=f"most inputs per model call (default: {serving.DEFAULT_MAX_BATCH_SIZE})",
    )
    g.add_argument(
        "--max-batch-chars",
        type=_positive_int,
        default=serving.DEFAULT_MAX_BATCH_CHARS,
        help="most characters per model call, counted as n_texts * (longest + 32); larger requests "
        f"are served in slices (default: {serving.DEFAULT_MAX_BATCH_CHARS})",
    )
    g.add_argument(
        "--max-batch-pixels",
        type=_positive_int,
        default=serving.DEFAULT_MAX_BATCH_PIXELS,
        help=f"most image pixels per model call (default: {serving.DEFAULT_MAX_BATCH_PIXELS})",
    )
    g.add_argument(
        "--max-wait-ms",
        type=_non_negative_float,
        default=serving.DEFAULT_MAX_WAIT_MS,
        help=f"how long a batch waits for more requests (default: {serving.DEFAULT_MAX_WAIT_MS})",
    )
    g.add_argument("--no-batching", action="store_true", help="one input per model call")
    p.add_argument(
        "--kind",
        choices=("text", "image"),
        default=None,
        help="input kind, when the model has no skdeep encoder to tell",
    )
    add_runtime_options(p.add_argument_group("model runtime (set on every encoder of the model)"), defaults=False)
    _add_load_options(p)
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "info",
        help="describe a saved pipeline",
        description="Show a saved pipeline's steps, classes, encoders and expected input.",
    )
    p.add_argument("model", metavar="MODEL", help="a .skops or .joblib file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_load_options(p)
    p.set_defaults(func=cmd_info)
    return parser


def _one_line(message, limit: int = MESSAGE_LIMIT) -> str:
    # Library messages may quote a decoder's multi-line text, or a whole input: a CLI error stays one
    # short line.
    text = re.sub(r"\s*\n\s*", " ", str(message)).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _expected_errors() -> tuple:
    """Errors whose message says what to fix (exit status 2); imported only once one was raised."""
    errors = [UsageError, FileNotFoundError, ImportError, ValueError, TypeError]
    if "skdeep.persistence" in sys.modules:
        errors.append(sys.modules["skdeep.persistence"].UntrustedTypesError)
    return tuple(errors)


def main(argv=None) -> int:
    """Entry point of the ``skdeep`` console script; returns the exit status."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    # An except clause's tuple is evaluated only when an exception reaches it: nothing is imported before.
    except _expected_errors() as exc:
        # Missing models, files or code, changed weights, invalid input: the message says what to fix.
        parser.exit(2, f"skdeep {args.command}: error: {_one_line(exc)}\n")
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `skdeep predict ... | head`: stop quietly, like other Unix tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
