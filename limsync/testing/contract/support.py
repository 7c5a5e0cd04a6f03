"""What every contract check shares: the fast settings, the failure type, value helpers."""

from __future__ import annotations

import types
import typing
import uuid
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any

from limsync.sync.report import StreamReport
from limsync.testing.toolkit import as_datetime

#: Applied under the author's settings: retries without waiting, no client-side rate limit.
FAST_SETTINGS: Mapping[str, Any] = {
    "backoff_factor": 0.0,
    "backoff_max": 0.0,
    "rate_limit_per_minute": None,
    "read_timeout": 30.0,
}

#: Key field types that identify a record reliably (compared exactly, hashable, printable).
KEY_TYPES = (str, int, uuid.UUID, date, datetime, Decimal, Enum)
WRONG_VALUE = {"wrong": ["type"]}


class ContractError(AssertionError):
    """A contract check failed; the message says which stream and what to fix."""


def fail(message: str) -> typing.NoReturn:
    """Fail the current check with ``message`` (a :class:`ContractError`)."""
    raise ContractError(message)


# --- value helpers ------------------------------------------------------------------------------


def cursor_order(value: str) -> tuple[int, Any]:
    """Sort key for cursor strings: as datetimes when they are ISO datetimes, else as text."""
    moment = as_datetime(value)
    if moment is not None:
        # Naive and aware values cannot be compared; aware ones sort by their UTC instant.
        return (1, moment.replace(tzinfo=None) - (moment.utcoffset() or timedelta(0)))
    return (0, value)


def later(value: Any) -> Any:
    """A cursor value later than ``value``, in the same form (ISO text, date, number)."""
    moment = as_datetime(value)
    if moment is not None:
        moved = moment + timedelta(days=1)
        return moved.isoformat() if isinstance(value, str) else moved
    if isinstance(value, date):
        return value + timedelta(days=1)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value + 1
    raise ContractError(
        f"cannot make a later value than {value!r}: override change_record() in the contract class"
    )


def key_type_ok(annotation: Any) -> bool:
    """Whether a key field of this type identifies records exactly (see ``KEY_TYPES``)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return key_type_ok(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return True
    if origin in (typing.Union, types.UnionType):
        return all(key_type_ok(a) for a in typing.get_args(annotation) if a is not type(None))
    return (
        isinstance(annotation, type)
        and issubclass(annotation, KEY_TYPES)
        and not issubclass(annotation, float)
    )


def summary(sr: StreamReport) -> str:
    """One stream's counts, for failure messages."""
    return (
        f"read {sr.read}, new {sr.new}, changed {sr.changed}, unchanged {sr.unchanged}, "
        f"quarantined {sr.quarantined}, gone {sr.gone}, deleted {sr.deleted}, "
        f"rows written {sr.rows_written}"
    )


class PageBudgetExceededError(Exception):
    """A read yielded more pages than its budget (taken as a loop)."""
