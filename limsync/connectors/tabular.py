"""What the configuration-defined record sources (files, SQL) share.

Their streams are defined per instance (see ``Connector.instance_streams``), so their source
model cannot be a hand-written class: :func:`record_model` builds a permissive one per stream.
Every column passes through as given (raw strings from files, database values from SQL; types
and names are the declarative mapping's job); only the key columns are checked, present and
not blank. Two extra fields ride along:

* ``_source`` (:data:`SOURCE_FIELD`): where the record came from (``subjects.csv:12``,
  ``export.xlsx:Subjects!7``, ``table animals``), declared volatile so that renaming or
  reordering a file is not a change;
* ``_invalid`` (:data:`INVALID_FIELD`): set by a connector on a record it knows is bad (a line
  that is not JSON, a duplicate key with different content); the model rejects such a record
  with that message, so the engine quarantines it with the raw record and the rest goes on.

:class:`KeyTracker` finds duplicate keys within one scan in bounded memory (8 bytes a key).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from limsync.connectors import (
    StreamSettings,
)

__all__ = [
    "INVALID_FIELD",
    "SOURCE_FIELD",
    "KeyTracker",
    "RecordStreamSettings",
    "content_fingerprint",
    "key_hash",
    "page_key_hashes",
    "record_model",
]

SOURCE_FIELD = "_source"
INVALID_FIELD = "_invalid"
META_FIELDS = frozenset({SOURCE_FIELD, INVALID_FIELD})


class RecordStreamSettings(StreamSettings):
    """Stream settings every configuration-defined record stream has: its source key."""

    key: list[str] = Field(min_length=1)
    """The source primary key: one or more column names."""

    @field_validator("key")
    @classmethod
    def _usable_key(cls, key: list[str]) -> list[str]:
        if len(set(key)) != len(key):
            raise ValueError("repeats a column")
        for column in key:
            if not column.strip():
                raise ValueError("a key column name must not be blank")
            if column.startswith("_"):
                raise ValueError(f"key column {column!r} must not start with '_'")
            if hasattr(BaseModel, column):
                raise ValueError(
                    f"key column {column!r} clashes with a pydantic model attribute; "
                    "rename the column in the source"
                )
        return key


def _camel(name: str) -> str:
    return "".join(part.title() for part in re.split(r"[^A-Za-z0-9]+", name) if part)


def record_model(stream: str, key: Sequence[str]) -> type[BaseModel]:
    """A permissive source model: any columns, the ``key`` ones present and not blank.

    Validation is on the path of every record read, so all checks are one Python function
    (a ``before`` model validator): ``_invalid`` set, then each key column's value ``None`` or
    a blank string. A blank key fails with the column as the error's location (``Animal ID: key
    column is empty``), as a field validator would, at a fraction of the cost of one validator
    call per key column. A missing key column is left to pydantic ("Field required").
    """
    columns = tuple(key)
    title = f"{_camel(stream)}Record"

    def _check(data: Any) -> Any:
        # isinstance(dict) first: the ABC check of Mapping costs more than the rest.
        if isinstance(data, dict) or isinstance(data, Mapping):  # noqa: SIM101
            # Operators rather than .get(): a method call per lookup is measurable here.
            if INVALID_FIELD in data and data[INVALID_FIELD]:  # noqa: RUF019
                reason = {"reason": data[INVALID_FIELD]}
                raise PydanticCustomError("invalid_record", "{reason}", reason)
            for column in columns:
                if column in data:  # a missing one: pydantic's "Field required"
                    value = data[column]
                    if value is None or (isinstance(value, str) and (not value or value.isspace())):
                        raise _key_errors(title, columns, data)
        return data

    validators: dict[str, Any] = {"check_record": model_validator(mode="before")(_check)}
    fields: dict[str, Any] = {column: (Any, ...) for column in columns}
    return create_model(
        title,
        __config__=ConfigDict(extra="allow"),
        __validators__=validators,
        **fields,
    )


def _key_errors(title: str, columns: tuple[str, ...], data: Mapping[str, Any]) -> ValidationError:
    """Every missing or blank key column of a record, each located at its column.

    A ValidationError raised in a validator keeps its errors and their locations, so the
    record fails as it would with a field validator per key column.
    """
    errors: list[InitErrorDetails] = []
    for column in columns:
        if column not in data:
            errors.append(InitErrorDetails(type="missing", loc=(column,), input=data))
            continue
        value = data[column]
        if value is None or (isinstance(value, str) and not value.strip()):
            blank = PydanticCustomError("blank_key", "key column is empty")
            errors.append(InitErrorDetails(type=blank, loc=(column,), input=value))
    return ValidationError.from_exception_data(title, errors)


def content_fingerprint(values: Iterable[Any]) -> int:
    """A cheap in-process fingerprint of a record's values (equal values, equal fingerprint)."""
    items = tuple(values)
    try:
        return hash(items)
    except TypeError:  # lists or dicts among the values (JSON records)
        return hash(repr(items))


class KeyTracker:
    """Which keys one scan has produced so far, in about 8 bytes a key.

    Keys are remembered by a 64-bit hash (see :func:`page_key_hashes`) in two sorted numpy
    int64 arrays: a small recent one that takes each page, merged into the large one when it
    grows past ``buffer``. So 1,000,000 keys take 8 MB (16 MB for a moment while merging),
    where a Python set of the same hashes would take ~60 MB. Pages are checked with
    vectorised binary searches of their sorted hashes: the cost per record is a few array
    operations. A hit is only a *candidate* duplicate (hashes can collide): the caller
    confirms it by comparing real keys.
    """

    def __init__(self, buffer: int = 65_536) -> None:
        self._sorted = np.empty(0, dtype=np.int64)
        self._recent = np.empty(0, dtype=np.int64)
        self._buffer = buffer

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent)

    def add_page(self, hashes: Sequence[int]) -> list[bool]:
        """Record a page of key hashes; True for each one seen before (in this page or earlier)."""
        if not len(hashes):
            return []
        seen: list[bool] = self.repeats(np.asarray(hashes, dtype=np.int64)).tolist()
        return seen

    def repeats(self, hashes: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Record an int64 array of key hashes; a bool array, True for each one seen before."""
        repeated = np.ones(len(hashes), dtype=bool)
        if not len(hashes):
            return repeated
        unique, first = np.unique(hashes, return_index=True)  # sorted: cache-friendly searches
        before = _members(self._sorted, unique) | _members(self._recent, unique)
        repeated[first[~before]] = False
        fresh = unique[~before]
        if len(fresh):
            self._recent = np.insert(self._recent, np.searchsorted(self._recent, fresh), fresh)
        if len(self._recent) >= self._buffer:
            at = np.searchsorted(self._sorted, self._recent)
            self._sorted = np.insert(self._sorted, at, self._recent)
            self._recent = np.empty(0, dtype=np.int64)
        return repeated


def _members(haystack: np.ndarray[Any, Any], probe: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Which values of ``probe`` are in the sorted array ``haystack``."""
    if not len(haystack):
        return np.zeros(len(probe), dtype=bool)
    at = np.searchsorted(haystack, probe)
    at[at == len(haystack)] = 0
    found: np.ndarray[Any, Any] = haystack[at] == probe
    return found


_MIX = 0x100000001B3  # the 64-bit FNV prime: spreads one column's hash before the next is mixed in
_MASK = (1 << 64) - 1
_SUSPECT = np.array([hash(None), hash("")], dtype=np.int64)


def _safe_hash(value: Any) -> int:
    try:
        return hash(value)
    except TypeError:  # a list or dict (JSON) as a key value
        return hash(repr(value))


def key_hash(values: Sequence[Any]) -> int:
    """The 64-bit hash :class:`KeyTracker` stores for a key (a tuple of column values).

    The same value as :func:`page_key_hashes` gives for a record with this key.
    """
    mixed = 0
    for i, value in enumerate(values):
        h = _safe_hash(value) & _MASK
        mixed = h if i == 0 else ((mixed * _MIX) & _MASK) ^ h
    return mixed - (1 << 64) if mixed >= 1 << 63 else mixed


def page_key_hashes(
    page: Sequence[Mapping[str, Any]], key: Sequence[str]
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """The key hashes of a page of records (int64), and which of them to track (bool).

    A key with ``None`` or ``""`` in it is not tracked: such a record fails validation anyway.
    Per column the values are hashed with ``hash`` in C (``map``), and the columns are mixed
    in numpy; no key tuple is built. Equal keys give equal hashes within one process (Python's
    string hashes are salted per process, which is fine for one scan).
    """
    n = len(page)
    mixed = np.zeros(n, dtype=np.uint64)
    tracked = np.ones(n, dtype=bool)
    for i, column in enumerate(key):
        try:
            values = list(map(itemgetter(column), page))  # in C; a short row lacks columns
        except KeyError:
            values = [r.get(column) for r in page]
        try:
            h = np.fromiter(map(hash, values), dtype=np.int64, count=n)
        except TypeError:
            h = np.fromiter(map(_safe_hash, values), dtype=np.int64, count=n)
        # hash(None) and hash("") (0, as for 0 and False) flag candidates, checked exactly.
        for at in np.flatnonzero(np.isin(h, _SUSPECT)).tolist():
            if values[at] is None or values[at] == "":
                tracked[at] = False
        u = h.view(np.uint64)
        mixed = u.copy() if i == 0 else (mixed * np.uint64(_MIX)) ^ u
    return mixed.view(np.int64), tracked
