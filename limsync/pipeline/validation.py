"""Rows checked against their table's pydantic row model, one by one or a batch at a time.

A batch is validated in one call into pydantic-core (``TypeAdapter(list[Row])``); only when it
fails are its rows validated one by one, to name the first bad row in one clear error: table,
key, column and problem.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import pydantic

from limsync.errors import RowError
from limsync.pipeline.tables import TableSpec


def validate_row(spec: TableSpec, row: Mapping[str, Any]) -> dict[str, Any]:
    """Validate one row against its table's model; RowError names table, key and column."""
    assert spec.row_model is not None
    try:
        return dict(spec.row_model.model_validate(row).__dict__)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        column = ".".join(str(p) for p in err["loc"]) or None
        key = {k: row[k] for k in spec.primary_key if k in row}
        problem = err["msg"]
        if err["type"] == "extra_forbidden":
            problem = "is not a column of this table"
        elif err["type"] == "missing":
            problem = "is required"
        n = exc.error_count()
        if n > 1:
            problem += f" (and {n - 1} more problem{'s' if n > 2 else ''} in this row)"
        raise RowError(spec.qualname, key, column, problem) from None


def validate_rows(
    spec: TableSpec, rows: Iterable[Mapping[str, Any]]
) -> tuple[list[dict[str, Any]], list[tuple[int, RowError]]]:
    """Validate many rows; returns the valid ones and (index, error) for the others."""
    good: list[dict[str, Any]] = []
    bad: list[tuple[int, RowError]] = []
    for i, row in enumerate(rows):
        try:
            good.append(validate_row(spec, row))
        except RowError as exc:
            bad.append((i, exc))
    return good, bad


@functools.lru_cache(maxsize=512)
def _list_adapter(model: type[pydantic.BaseModel]) -> pydantic.TypeAdapter[list[Any]]:
    return pydantic.TypeAdapter(list[model])  # type: ignore[valid-type]


def validate_batch(spec: TableSpec, rows: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Validate a batch in one call into pydantic-core; a bad row is named by validate_row."""
    assert spec.row_model is not None
    try:
        return [m.__dict__ for m in _list_adapter(spec.row_model).validate_python(rows)]
    except pydantic.ValidationError:
        for row in rows:
            validate_row(spec, row)  # raises the RowError of the first bad row
        raise  # pragma: no cover (the batch failed, so one of its rows does)
