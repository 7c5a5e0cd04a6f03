"""Encoded rows as MySQL/MariaDB SQL literals, for the upsert's multi-row statements.

PyMySQL has no server-side parameters: it escapes every parameter in Python (a type dispatch
and a ``str.translate`` per value, ~60% of a MariaDB first load). The upsert writes the rows'
literals itself instead, with one generated function per table (as :func:`codecs.row_encoder`)
that knows each column's kind and so needs no dispatch:

* text as ``_utf8mb4 x'<hex of the UTF-8>'``: a character string whatever the connection's
  character set or ``sql_mode`` (no backslash rules, no quoting to get wrong);
* bytes and uuids as ``x'<hex>'``; datetimes and dates as ``TIMESTAMP'...'`` / ``DATE'...'``
  (typed, so comparisons with stored values are temporal, not textual);
* numbers as digits; floats as ``repr`` with an exponent (a DOUBLE literal, exact), never
  ``inf``/``nan``, which MySQL cannot store.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Callable, Sequence
from typing import Any

from limsync.pipeline.columns import ColumnType

_BINARY = ("uuid", "bytes", "blob")
_TEXT = ("varchar", "char", "text", "enum", "json")
_INTEGER = ("int8", "int16", "int32", "int64", "bool")


class LiteralError(ValueError):
    """A value that has no MySQL literal (a non-finite number, an unknown type)."""


def _text(v: str) -> str:
    return "_utf8mb4 x'" + v.encode("utf-8", "surrogatepass").hex() + "'"


def _float(v: float) -> str:
    r = repr(float(v))
    if r in ("inf", "-inf", "nan"):
        raise LiteralError(f"{r} cannot be stored in MySQL")
    return r if "e" in r else r + "e0"


def _decimal(v: decimal.Decimal) -> str:
    if not v.is_finite():
        raise LiteralError(f"{v} cannot be stored in MySQL")
    # Positional notation: str() writes small or large values with an exponent ("1.23E-10"),
    # which MySQL reads as an approximate DOUBLE, not an exact DECIMAL.
    return format(v, "f")


def literal(v: Any) -> str:
    """Any parameter value as a literal (the generic path, for unexpected types)."""
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(int(v))
    if isinstance(v, float):
        return _float(v)
    if isinstance(v, decimal.Decimal):
        return _decimal(v)
    if isinstance(v, bytes | bytearray | memoryview):
        return "x'" + bytes(v).hex() + "'"
    if isinstance(v, dt.datetime):
        return "TIMESTAMP'" + v.isoformat(" ") + "'"
    if isinstance(v, dt.date):
        return "DATE'" + v.isoformat() + "'"
    if isinstance(v, str):
        return _text(v)
    raise LiteralError(f"no MySQL literal for a {type(v).__name__}")


def row_literals(types: Sequence[ColumnType]) -> Callable[[tuple[Any, ...]], str]:
    """One function turning an encoded row (a tuple in column order) into ``a,b,c``."""
    env: dict[str, Any] = {
        "_text": _text,
        "_float": _float,
        "_decimal": _decimal,
        "lit": literal,
        "datetime": dt.datetime,
        "date": dt.date,
    }
    parts = []
    for i, t in enumerate(types):
        v = f"v{i}"
        # Each branch checks the exact type the codec produces and falls back to the generic
        # path otherwise (rows written with validate=False may carry anything).
        if t.kind in _BINARY:
            expr = f'"x\'" + {v}.hex() + "\'" if {v}.__class__ is bytes else lit({v})'
        elif t.kind in _TEXT:
            expr = f"_text({v}) if {v}.__class__ is str else lit({v})"
        elif t.kind in _INTEGER:
            expr = f"str({v}) if {v}.__class__ is int else lit({v})"
        elif t.kind in ("float32", "float64"):
            expr = f"_float({v}) if {v}.__class__ is float else lit({v})"
        elif t.kind == "decimal":
            expr = f"_decimal({v}) if {v}.__class__ is Decimal else lit({v})"
            env["Decimal"] = decimal.Decimal
        elif t.kind == "datetime":
            expr = f"\"TIMESTAMP'\" + {v}.isoformat(' ') + \"'\""
            expr += f" if {v}.__class__ is datetime else lit({v})"
        else:  # date: the codec passes values through, whatever they are
            expr = f'"DATE\'" + {v}.isoformat() + "\'" if {v}.__class__ is date else lit({v})'
        parts.append(f"('NULL' if ({v} := row[{i}]) is None else ({expr}))")
    src = "def literals(row):\n    return " + ' + "," + '.join(parts) + "\n"
    exec(compile(src, "<limsync row literals>", "exec"), env)  # only our own expressions
    return env["literals"]  # type: ignore[no-any-return]
