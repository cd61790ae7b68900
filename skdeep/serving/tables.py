"""Tables over HTTP: the request schema of a row, rows to batcher items, items back to a DataFrame.

A model fitted on a DataFrame (``feature_names_in_``) takes ``{"records": [{"text": ..., "price": ...}]}``.
Each row is one item for the :class:`~skdeep.serving.batcher.MicroBatcher`: a JSON array of its values
in the model's column order (a string, so the batcher remembers rows that failed), turned back into a
DataFrame with those columns for each model call.
"""

from __future__ import annotations

import json
from typing import Annotated

from .inspect import column_kinds, encoder_kind, encoder_places, input_columns
from .limits import TEXT_COST_OVERHEAD


def records_frame(items: list, columns: list):
    """Rows of a table request (JSON arrays of values, in ``columns`` order) -> a DataFrame."""
    import pandas as pd

    return pd.DataFrame([json.loads(item) for item in items], columns=columns)


def table_columns(model) -> tuple[list, set]:
    """The columns a table model reads, and which of them are texts; refuses image columns."""
    kinds = column_kinds(model)
    images = [c for c, k in kinds.items() if k == "image"]
    if images or any(encoder_kind_or_none(p.encoder) == "image" for p in encoder_places(model)):
        raise ValueError(
            f"This model reads images from table columns ({images or 'an ImageEncoder step'}): a server would open "
            "files named by its clients. Serve a model that takes the images themselves, or embed the images "
            "beforehand (skdeep embed) and serve a model fitted on the embeddings."
        )
    return input_columns(model), {c for c, k in kinds.items() if k == "text"}


def encoder_kind_or_none(encoder) -> str | None:
    try:
        return encoder_kind(encoder)
    except ValueError:
        return None


def warm_table_encoders(model) -> None:
    # A table model has no sample row to warm it with: load its text encoders' weights directly.
    for place in encoder_places(model):
        if encoder_kind_or_none(place.encoder) == "text":
            place.encoder.transform(["skdeep warm-up"])


#: Integers a table cell may hold: what a 64-bit column can (larger ones cannot become numbers).
_INT64 = (-(2**63), 2**63 - 1)


def record_model(columns: list, text_columns: set, text_type):
    """The schema of one table row: every column required, texts as strings, others as JSON scalars."""
    from pydantic import ConfigDict, Field, StrictBool, StrictFloat, StrictInt, create_model

    Int = Annotated[StrictInt, Field(ge=_INT64[0], le=_INT64[1])]
    scalar = text_type | Int | StrictFloat | StrictBool | None
    fields = {
        f"c{i}": (text_type if name in text_columns else scalar, Field(alias=name)) for i, name in enumerate(columns)
    }
    return create_model("Record", __config__=ConfigDict(extra="forbid"), **fields)


def table_items(records: list, columns: list, text_columns: set) -> tuple[list, list, list]:
    """Validated rows -> batcher items (JSON arrays in column order), labels and costs."""
    items, costs = [], []
    for record in records:
        values = [getattr(record, f"c{i}") for i in range(len(columns))]
        items.append(json.dumps(values, ensure_ascii=False))
        costs.append(sum(len(v) for v in values if isinstance(v, str)))
    return items, [f"records[{i}]" for i in range(len(items))], [c + TEXT_COST_OVERHEAD for c in costs]
