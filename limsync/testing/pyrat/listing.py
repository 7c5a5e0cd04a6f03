"""PyRAT's list grammar, server side: ``k`` projection, ``s`` sorting, filters, ``l``/``o``.

Each collection is described by a :class:`Collection`: the keys ``k`` may name (anything else is
a 400), the keys returned without ``k``, the sortable keys, and the filters with the record
field each one matches. Repeated values of one filter are OR-ed, different filters AND-ed, ``*``
is a wildcard, unknown parameters are ignored, as the contract's mock checklist says.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

Record = dict[str, Any]


class ListError(ValueError):
    """A malformed list query (answered with 400)."""


@dataclass(frozen=True)
class Collection:
    """What one list endpoint accepts."""

    keys: tuple[str, ...]
    default_keys: tuple[str, ...]
    sortable: frozenset[str]
    filters: Mapping[str, str] = field(default_factory=dict)
    """Filter parameter -> record field it matches."""
    defaults: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Filter values applied when the parameter is absent (``state`` -> ``live``)."""


def _matches(value: Any, patterns: Sequence[str]) -> bool:
    text = "" if value is None else str(value)
    return any(
        fnmatch.fnmatchcase(text.lower(), p.lower()) if "*" in p else text == p for p in patterns
    )


def _int(raw: str | None, name: str, default: int | None) -> int | None:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ListError(f"{name} must be an integer, not {raw!r}") from None
    if value < 0:
        raise ListError(f"{name} must not be negative")
    return value


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (0, "")
    if isinstance(value, int | float):
        return (1, value)
    return (2, str(value))


def _field_sort_key(name: str, record: Record) -> tuple[int, Any]:
    return _sort_key(record.get(name))


def run_query(
    spec: Collection,
    records: list[Record],
    query: Mapping[str, list[str]],
    view: Callable[[Record], Record] = dict,
) -> tuple[list[Record], int]:
    """(the page, projected; the total before paging) for a list request."""
    keys = tuple(query.get("k", [])) or spec.default_keys
    unknown = [k for k in keys if k not in spec.keys]
    if unknown:
        raise ListError(f"invalid key(s) for k: {', '.join(unknown)}")
    sorts: list[tuple[str, bool]] = []
    for item in query.get("s", []):
        name, _, direction = item.partition(":")
        if name not in spec.sortable:
            raise ListError(f"cannot sort by {name!r}")
        if direction not in ("", "asc", "desc"):
            raise ListError(f"sort direction must be asc or desc, not {direction!r}")
        sorts.append((name, direction == "desc"))
    limit = _int(query.get("l", [None])[-1], "l", None)
    offset = _int(query.get("o", [None])[-1], "o", 0) or 0
    rows = [view(r) for r in records]
    for param, fieldname in spec.filters.items():
        wanted = query.get(param) or list(spec.defaults.get(param, ()))
        if wanted:
            rows = [r for r in rows if _matches(r.get(fieldname), wanted)]
    for name, descending in reversed(sorts):  # stable: the first sort key wins
        rows.sort(key=partial(_field_sort_key, name), reverse=descending)
    total = len(rows)
    rows = rows[offset:] if limit is None else rows[offset : offset + limit]
    return [{k: r.get(k) for k in keys} for r in rows], total
