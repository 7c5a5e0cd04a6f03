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
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator
from pydantic_core import PydanticCustomError

from limsync.connectors.base import StreamSettings

__all__ = [
    "INVALID_FIELD",
    "SOURCE_FIELD",
    "KeyTracker",
    "RecordStreamSettings",
    "content_fingerprint",
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
    """A permissive source model: any columns, the ``key`` ones present and not blank."""

    def _reject_invalid(data: Any) -> Any:
        if isinstance(data, Mapping) and data.get(INVALID_FIELD):
            raise PydanticCustomError("invalid_record", "{reason}", {"reason": data[INVALID_FIELD]})
        return data

    def _not_blank(value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            raise PydanticCustomError("blank_key", "key column is empty")
        return value

    validators: dict[str, Any] = {
        "reject_invalid": model_validator(mode="before")(_reject_invalid),
        "not_blank": field_validator(*key)(_not_blank),
    }
    fields: dict[str, Any] = {column: (Any, ...) for column in key}
    return create_model(
        f"{_camel(stream)}Record",
        __config__=ConfigDict(extra="allow"),
        __validators__=validators,
        **fields,
    )


def content_fingerprint(values: Iterable[Any]) -> int:
    """A cheap in-process fingerprint of a record's values (equal values, equal fingerprint)."""
    items = tuple(values)
    try:
        return hash(items)
    except TypeError:  # lists or dicts among the values (JSON records)
        return hash(repr(items))


class KeyTracker:
    """Which keys one scan has produced so far, in about 8 bytes a key.

    Keys are remembered by a 64-bit hash in two sorted numpy arrays: a small recent one that
    takes each page, merged into the large one when it grows past ``buffer``. Pages are
    checked with vectorised binary searches, so the cost per record is a few array operations.
    A hit is only a *candidate* duplicate (hashes can collide): the caller confirms it by
    comparing real keys.
    """

    def __init__(self, buffer: int = 65_536) -> None:
        self._sorted = np.empty(0, dtype=np.int64)
        self._recent = np.empty(0, dtype=np.int64)
        self._buffer = buffer

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent)

    def add_page(self, hashes: Sequence[int]) -> list[bool]:
        """Record a page of key hashes; True for each one seen before (in this page or earlier)."""
        if not hashes:
            return []
        probe = np.fromiter(hashes, dtype=np.int64, count=len(hashes))
        before = _members(self._sorted, probe) | _members(self._recent, probe)
        unique, first = np.unique(probe, return_index=True)
        repeated = np.ones(len(probe), dtype=bool)
        repeated[first] = False
        fresh = unique[~before[first]]  # sorted, as np.unique returns them
        if len(fresh):
            self._recent = np.insert(self._recent, np.searchsorted(self._recent, fresh), fresh)
        if len(self._recent) >= self._buffer:
            at = np.searchsorted(self._sorted, self._recent)
            self._sorted = np.insert(self._sorted, at, self._recent)
            self._recent = np.empty(0, dtype=np.int64)
        seen: list[bool] = (before | repeated).tolist()
        return seen


def _members(haystack: np.ndarray[Any, Any], probe: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Which values of ``probe`` are in the sorted array ``haystack``."""
    if not len(haystack):
        return np.zeros(len(probe), dtype=bool)
    at = np.searchsorted(haystack, probe)
    at[at == len(haystack)] = 0
    found: np.ndarray[Any, Any] = haystack[at] == probe
    return found


def key_hash(values: tuple[Any, ...]) -> int:
    """The 64-bit hash :class:`KeyTracker` stores for a key."""
    return hash(values)
