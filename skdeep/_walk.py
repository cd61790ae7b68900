"""Walk a fitted scikit-learn model the way it runs, at any depth.

Pipeline steps, the *fitted* clones a ColumnTransformer keeps in ``transformers_``, the members of a
FeatureUnion, the fitted attributes of meta-estimators (``estimators_``, ``best_estimator_``,
``encoder_``). The unfitted templates those were cloned from are skipped. Imports nothing from
skdeep, so that persistence (below the estimators) and serving (above them) can both use it.
"""

from __future__ import annotations

from collections.abc import Callable


def _is_estimator(value) -> bool:
    return hasattr(value, "get_params") and not isinstance(value, type)


def _estimators_in(value) -> list:
    """``(key, estimator, columns)`` for the estimators a parameter or fitted attribute holds.

    ``key`` is None for a single estimator, a name for named lists (``steps``, ``transformers``,
    ``transformer_list``) and an index otherwise; ``columns`` is a ColumnTransformer entry's column
    selection.
    """
    if _is_estimator(value):
        return [(None, value, None)]
    if isinstance(value, dict):
        return [(str(k), v, None) for k, v in value.items() if _is_estimator(v)]
    if not isinstance(value, (list, tuple)):
        return []
    found = []
    for i, entry in enumerate(value):
        if _is_estimator(entry):
            found.append((i, entry, None))
        elif isinstance(entry, tuple) and len(entry) >= 2 and isinstance(entry[0], str) and _is_estimator(entry[1]):
            found.append((entry[0], entry[1], entry[2] if len(entry) > 2 else None))
    return found


def column_names(owner, columns) -> list[str] | None:
    """The input column names a ColumnTransformer entry selects, when they can be told."""
    import numpy as np

    if isinstance(columns, str):
        return [columns]
    try:
        selected = np.asarray(columns)
    except (TypeError, ValueError):
        return None
    if selected.ndim != 1:
        return None
    if selected.dtype.kind in "OU" and all(isinstance(c, str) for c in selected.tolist()):
        return [str(c) for c in selected.tolist()]
    names = getattr(owner, "feature_names_in_", None)
    if names is not None and selected.dtype.kind in "iub":
        return [str(c) for c in np.asarray(names)[selected].tolist()]
    return None


def walk(estimator, is_leaf: Callable) -> list:
    """``(path, leaf, columns)`` for every object inside ``estimator`` for which ``is_leaf`` holds.

    ``path`` joins parameter names with ``__`` as ``set_params`` does, fitted attributes (and all
    that follows them) with dots, list entries in brackets: ``"textencoder"``,
    ``"columntransformer.transformers_[text]"``, ``"best_estimator_.textencoder"``. ``columns``
    lists the input columns a ColumnTransformer feeds the leaf, when known.
    """
    found: list = []
    seen: set[int] = set()

    def visit(obj, path: str, columns, chain: bool) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if is_leaf(obj):
            found.append((path, obj, columns))
            return
        fitted = []
        for attr, value in vars(obj).items() if hasattr(obj, "__dict__") else ():
            if attr.endswith("_") and not attr.startswith("_"):
                fitted += [(attr, key, child, cols) for key, child, cols in _estimators_in(value)]
        if fitted:
            # A fitted meta-estimator: what runs are its fitted attributes, not its parameters.
            for attr, key, child, cols in fitted:
                where = attr if key is None else f"{attr}[{key}]"
                own = column_names(obj, cols) if cols is not None else None
                visit(child, f"{path}.{where}" if path else where, own if own is not None else columns, False)
            return
        params = obj.get_params(deep=False) if _is_estimator(obj) else {}
        for name, value in params.items():
            for key, child, cols in _estimators_in(value):
                part = name if key is None else str(key)
                own = column_names(obj, cols) if cols is not None else None
                # set_params syntax while the path is a chain of parameters, attribute syntax after.
                sep = "__" if chain else "."
                visit(child, f"{path}{sep}{part}" if path else part, own if own is not None else columns, chain)

    visit(estimator, "", None, True)
    return found
