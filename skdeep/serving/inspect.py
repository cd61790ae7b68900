"""What a fitted model is: its skdeep encoders, its input kind, the step behind ``/transform``.

Used by the server and by ``skdeep info`` / ``skdeep predict``; imports nothing from FastAPI.
"""

from __future__ import annotations

import numpy as np

from ..engine import BaseEncoder


def _type_name(obj) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def find_encoders(estimator) -> list:
    """``(path, encoder)`` for every skdeep encoder inside ``estimator``, in step order.

    Looks at parameters (pipeline steps, ``encoder=...``), then at fitted attributes such as
    ``encoder_``. A path is a parameter name (``"textencoder"``) or ``"<owner>.<attribute>"``. A
    parameter whose fitted copy exists (``encoder`` and ``encoder_``) is reported once, as the copy
    that actually runs.
    """
    params = estimator.get_params(deep=True) if hasattr(estimator, "get_params") else {}
    owners = [("", estimator)] + [(k, v) for k, v in params.items() if hasattr(v, "get_params")]
    fitted = {}
    for path, owner in owners:
        for attr, value in vars(owner).items():
            if attr.endswith("_") and not attr.startswith("_") and isinstance(value, BaseEncoder):
                fitted[f"{path}.{attr}" if path else attr] = value
    found = [("", estimator)] if isinstance(estimator, BaseEncoder) else []
    for path, value in params.items():
        if isinstance(value, BaseEncoder):
            owner, _, last = path.rpartition("__")
            if (f"{owner}.{last}_" if owner else f"{last}_") not in fitted:
                found.append((path, value))
    found += list(fitted.items())
    unique, seen = [], set()
    for path, encoder in found:
        if id(encoder) not in seen:
            seen.add(id(encoder))
            unique.append((path, encoder))
    return unique


def _image_encoder_class():
    try:
        from ..image import ImageEncoder
    except ImportError:
        return None
    return ImageEncoder


def input_kind(estimator) -> str:
    """``"text"`` or ``"image"``: what the model's first skdeep encoder (or the model itself) takes."""
    image_cls = _image_encoder_class()
    candidates = [enc for _, enc in find_encoders(estimator)] or [estimator]
    first = candidates[0]
    if image_cls is not None and isinstance(first, image_cls):
        return "image"
    tags = first.__sklearn_tags__() if hasattr(first, "__sklearn_tags__") else None
    if tags is not None and tags.input_tags.string:
        return "text"
    raise ValueError(
        f"Cannot tell whether {type(estimator).__name__} takes texts or images (no skdeep encoder found); "
        "pass input_kind='text' or input_kind='image'."
    )


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
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def describe(estimator) -> dict:
    """Steps, classes, encoders (model, fingerprint, origin) and expected input of a fitted model."""
    steps = getattr(estimator, "steps", None)
    if steps is not None:
        step_list = [{"name": name, "class": _type_name(step)} for name, step in steps]
    else:
        step_list = [{"name": None, "class": _type_name(estimator)}]
    encoders = []
    for path, enc in find_encoders(estimator):
        encoders.append(
            {
                "parameter": path or None,
                "class": _type_name(enc),
                "model": str(enc.model),
                "fingerprint": getattr(enc, "model_fingerprint_", None),
                "origin": getattr(enc, "model_origin_", None),
                "n_features_out": getattr(enc, "n_features_out_", None),
                "bundle_weights": bool(getattr(enc, "bundle_weights", False)),
            }
        )
    classes = getattr(estimator, "classes_", None)
    try:
        kind = input_kind(estimator)
    except ValueError:
        kind = None
    return {
        "estimator": _type_name(estimator),
        "steps": step_list,
        "classes": None if classes is None else _plain(np.asarray(classes)),
        "input_kind": kind,
        "encoders": encoders,
        "methods": {
            "predict": hasattr(estimator, "predict"),
            "predict_proba": hasattr(estimator, "predict_proba"),
            "transform": embedding_model(estimator) is not None,
        },
    }
