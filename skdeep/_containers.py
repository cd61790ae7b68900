"""The container rule shared by text and image inputs: rows must come in a defined, repeatable order.

Output row i belongs to input row i, so an input must have a length and indexing (a list, tuple, array,
pandas object or another sequence). Sets have no order, mappings leave unclear whether keys or values
are meant, and iterators are consumed by ``fit`` before ``transform`` could read them again.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Set


def order_problem(X) -> tuple[str, str] | None:
    """``(what is wrong, how to fix it)`` when ``X`` has no defined row order, else None.

    Objects that are not iterable at all return None: the caller has its own message for those.
    """
    if isinstance(X, Set):  # set, frozenset, dict.keys(), dict.items()
        return "unordered: row order would be arbitrary", "pass a list in the order you want, e.g. sorted(X)"
    if isinstance(X, Mapping):
        return "a mapping", "pass list(X.values()) or list(X.keys()), whichever holds the inputs"
    if not hasattr(X, "__iter__"):
        return None
    if isinstance(X, Iterator) or not hasattr(X, "__len__"):
        return "an iterator without a length, which can be read only once", "pass list(X)"
    if not hasattr(X, "__getitem__"):
        return "a container without indexing, so row order is not defined", "pass a list"
    return None
