"""What a fitted model is: its skdeep encoders, its input, the step behind ``/transform``.

Used by the server and by ``skdeep info`` / ``skdeep predict``; imports nothing from FastAPI.

A model is walked the way it runs: pipeline steps, the *fitted* clones a
:class:`~sklearn.compose.ColumnTransformer` keeps in ``transformers_``, the members of a
:class:`~sklearn.pipeline.FeatureUnion`, and the fitted attributes of meta-estimators
(``estimators_``, ``best_estimator_``, ``encoder_``), at any depth. The unfitted templates those
estimators were cloned from are never reported: their fingerprint, origin and dimension are unknown.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._walk import walk
from ..engine import BaseEncoder

INPUT_KINDS = ("text", "image", "table")


def _type_name(obj) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass
class EncoderPlace:
    """Where a skdeep encoder sits in a model.

    Attributes
    ----------
    path : str
        ``"textencoder"``, ``"columntransformer.transformers_[text]"``, ``"encoder_"``,
        ``"best_estimator_.textencoder"``: parameter names joined by ``__`` as in ``set_params``,
        fitted attributes (and what follows them) after a dot, list entries in brackets. Empty for a
        model that is itself an encoder.
    encoder : BaseEncoder
        The fitted encoder that runs (set its runtime parameters here, not through ``set_params``
        on the model, which would reach only an unfitted template).
    columns : list of str or None
        The input columns a ColumnTransformer feeds it, when known.
    """

    path: str
    encoder: BaseEncoder
    columns: list | None = None


def encoder_places(estimator) -> list[EncoderPlace]:
    """Every skdeep encoder inside ``estimator`` that runs, in the order the model reaches them."""
    return [EncoderPlace(*found) for found in walk(estimator, lambda obj: isinstance(obj, BaseEncoder))]


def find_encoders(estimator) -> list:
    """``(path, encoder)`` for every skdeep encoder inside ``estimator`` that runs, in order.

    See :func:`encoder_places`, which also says which input columns feed each encoder.
    """
    return [(place.path, place.encoder) for place in encoder_places(estimator)]


def _image_encoder_class():
    try:
        from ..image import ImageEncoder
    except ImportError:
        return None
    return ImageEncoder


def input_columns(estimator) -> list[str] | None:
    """The columns the model was fitted on (``feature_names_in_``), or None for non-tabular input."""
    names = getattr(estimator, "feature_names_in_", None)
    if names is None:
        steps = getattr(estimator, "steps", None)
        names = getattr(steps[0][1], "feature_names_in_", None) if steps else None
    return None if names is None else [str(n) for n in np.asarray(names).tolist()]


def encoder_kind(encoder) -> str:
    """``"text"`` or ``"image"``: what one skdeep encoder (or a string-taking estimator) embeds."""
    image_cls = _image_encoder_class()
    if image_cls is not None and isinstance(encoder, image_cls):
        return "image"
    tags = encoder.__sklearn_tags__() if hasattr(encoder, "__sklearn_tags__") else None
    if tags is not None and tags.input_tags.string:
        return "text"
    raise ValueError(f"Cannot tell whether {type(encoder).__name__} takes texts or images.")


def input_kind(estimator) -> str:
    """What the model takes: ``"text"``, ``"image"``, or ``"table"`` (rows with named columns).

    ``"table"`` for models fitted on a DataFrame with several columns, or whose encoders read a
    column chosen by a ColumnTransformer: they take DataFrames with the columns in
    ``feature_names_in_`` (see :func:`input_columns`). Otherwise the kind of the first skdeep
    encoder (or of the model itself).
    """
    places = encoder_places(estimator)
    columns = input_columns(estimator)
    if columns is not None and (len(columns) > 1 or any(p.columns is not None for p in places)):
        return "table"
    try:
        return encoder_kind(places[0].encoder if places else estimator)
    except ValueError:
        pass
    if columns is not None:
        return "table"
    raise ValueError(
        f"Cannot tell whether {type(estimator).__name__} takes texts or images (no skdeep encoder found); "
        "pass input_kind='text' or input_kind='image'."
    )


def column_kinds(estimator) -> dict:
    """``{column: "text" | "image"}`` for the input columns that feed skdeep encoders directly."""
    kinds = {}
    for place in encoder_places(estimator):
        for column in place.columns or ():
            try:
                kinds.setdefault(column, encoder_kind(place.encoder))
            except ValueError:
                continue
    return kinds


def embedding_model(estimator):
    """What ``/transform`` runs: the model's own ``transform``, else the steps up to its first encoder."""
    if hasattr(estimator, "transform"):
        return estimator
    steps = getattr(estimator, "steps", None)
    if steps is not None:
        for i, (_, step) in enumerate(steps):
            if find_encoders(step):
                return estimator[: i + 1]
        return None
    encoders = find_encoders(estimator)
    return encoders[0][1] if encoders else None


def _plain(value):
    """Numpy scalars and arrays -> built-in Python values that JSON can carry."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def class_labels(estimator):
    """``classes_`` as JSON values: a list, a list of lists (one per output), or None."""
    classes = getattr(estimator, "classes_", None)
    if classes is None:
        return None
    if isinstance(classes, list):  # multi-output: one array of labels per output
        return [_plain(np.asarray(c)) for c in classes]
    return _plain(np.asarray(classes))


def _runs_on(encoder) -> dict:
    """The backend and compute dtype that run (``backend="auto"``: its choice, from the fitted attributes).

    A backend set after fitting (``skdeep serve --backend``) shows as set, its dtype unknown until it runs.
    """
    fitted = getattr(encoder, "backend_", None)
    wanted = getattr(encoder, "backend", None)
    if fitted is not None and wanted in (fitted, "auto", None):
        return {"backend": fitted, "dtype": getattr(encoder, "dtype_", None)}
    return {"backend": wanted, "dtype": None}


def describe(estimator) -> dict:
    """Steps, classes, encoders (model, fingerprint, origin, columns) and expected input of a fitted model."""
    steps = getattr(estimator, "steps", None)
    if steps is not None:
        step_list = [{"name": name, "class": _type_name(step)} for name, step in steps]
    else:
        step_list = [{"name": None, "class": _type_name(estimator)}]
    encoders = []
    for place in encoder_places(estimator):
        enc = place.encoder
        encoders.append(
            {
                "parameter": place.path or None,
                "class": _type_name(enc),
                "model": str(enc.model),
                "fingerprint": getattr(enc, "model_fingerprint_", None),
                "origin": getattr(enc, "model_origin_", None),
                "n_features_out": getattr(enc, "n_features_out_", None),
                **_runs_on(enc),
                "bundle_weights": bool(getattr(enc, "bundle_weights", False)),
                "columns": place.columns,
            }
        )
    try:
        kind = input_kind(estimator)
    except ValueError:
        kind = None
    return {
        "estimator": _type_name(estimator),
        "steps": step_list,
        "classes": class_labels(estimator),
        "input_kind": kind,
        "input_columns": input_columns(estimator),
        "encoders": encoders,
        "methods": {
            "predict": hasattr(estimator, "predict"),
            "predict_proba": hasattr(estimator, "predict_proba"),
            "transform": embedding_model(estimator) is not None,
        },
    }
