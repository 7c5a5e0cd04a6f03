"""Column types: from Python annotations to DataJoint core types, and back from the database.

A :class:`ColumnType` is the one description of a column's type that every other part uses: the
DDL emitter turns it into SQL per dialect, the codecs turn values into driver parameters and back,
and DataJoint reads it from the ``:type:`` column comment. Its :attr:`ColumnType.dj_type` is the
DataJoint core-type spelling (``varchar(64)``, ``int64``, ``uuid``, ``<blob>``, ...).
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import re
import types
import typing
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from annotated_types import MaxLen
from pydantic.fields import FieldInfo

from limsync.errors import DeclarationError

Kind = Literal[
    "varchar",
    "char",
    "text",
    "int8",
    "int16",
    "int32",
    "int64",
    "float32",
    "float64",
    "decimal",
    "bool",
    "date",
    "datetime",
    "uuid",
    "enum",
    "json",
    "blob",
    "bytes",
]

DEFAULT_VARCHAR = 255
DEFAULT_DATETIME_PRECISION = 6
_INT_KINDS = ("int8", "int16", "int32", "int64")


@dataclass(frozen=True)
class ColumnType:
    """A column's type, independent of the SQL dialect."""

    kind: Kind
    length: int | None = None  # varchar / char
    precision: int | None = None  # decimal digits, or datetime fractional seconds
    scale: int | None = None  # decimal places
    values: tuple[str, ...] = ()  # enum members

    @property
    def dj_type(self) -> str:
        """The DataJoint spelling, as stored in the ``:type:`` column comment."""
        if self.kind in ("varchar", "char"):
            return f"{self.kind}({self.length})"
        if self.kind == "decimal":
            return f"decimal({self.precision},{self.scale})"
        if self.kind == "datetime":
            return f"datetime({self.precision})" if self.precision else "datetime"
        if self.kind == "enum":
            return "enum(" + ", ".join(_sql_string(v) for v in self.values) + ")"
        if self.kind == "blob":
            return "<blob>"
        return self.kind

    @classmethod
    def parse(cls, spelling: str) -> ColumnType:
        """Parse a DataJoint type spelling (the inverse of :attr:`dj_type`)."""
        s = spelling.strip()
        low = s.lower()
        if m := re.fullmatch(r"(varchar|char)\((\d+)\)", low):
            return cls(m.group(1), length=int(m.group(2)))  # type: ignore[arg-type]
        if m := re.fullmatch(r"decimal\((\d+),\s*(\d+)\)", low):
            return cls("decimal", precision=int(m.group(1)), scale=int(m.group(2)))
        if m := re.fullmatch(r"datetime(?:\((\d)\))?", low):
            return cls("datetime", precision=int(m.group(1) or 0))
        if low.startswith("enum(") and low.endswith(")"):
            members = re.findall(r"'((?:[^']|'')*)'", s[5:-1])
            return cls("enum", values=tuple(m.replace("''", "'") for m in members))
        if low in ("<blob>", "blob", "longblob"):
            return cls("blob")
        simple = {
            "text": "text", "int8": "int8", "int16": "int16", "int32": "int32",
            "int64": "int64", "float32": "float32", "float64": "float64", "bool": "bool",
            "date": "date", "uuid": "uuid", "json": "json", "bytes": "bytes",
            "int": "int32", "bigint": "int64", "smallint": "int16", "tinyint": "int8",
            "float": "float32", "double": "float64", "boolean": "bool",
        }  # fmt: skip
        if low in simple:
            return cls(simple[low])  # type: ignore[arg-type]
        raise DeclarationError(f"unknown column type {spelling!r}")


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class SqlType:
    """Annotation marker overriding the inferred type: ``Annotated[int, SqlType("int32")]``."""

    spelling: str


class _KeyMarker:
    """Annotation marker for primary-key columns: ``Annotated[UUID, Key]``."""

    def __repr__(self) -> str:
        return "Key"


Key = _KeyMarker()


@dataclass(frozen=True)
class AnnotationInfo:
    """What a field annotation says about its column."""

    type: ColumnType
    nullable: bool
    in_key: bool
    comment: str = ""  # a description found in a nested ``Field`` (pydantic drops it)


def column_type_from_annotation(annotation: Any, field: FieldInfo, where: str) -> AnnotationInfo:
    """Infer a column's type from a pydantic field (annotation plus metadata)."""
    metadata: list[Any] = list(field.metadata)
    comment = ""
    tp, metadata, comment = _unwrap(annotation, metadata, comment)
    nullable = False
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(tp))
        if len(args) != 1:
            raise DeclarationError(f"{where}: a column must have one type, not {tp!r}")
        # ``Annotated[Decimal, Field(max_digits=..)] | None``: pydantic leaves the inner
        # Annotated (and its FieldInfo) in place, so its constraints are collected here.
        tp, metadata, comment = _unwrap(args[0], metadata, comment)
        origin = typing.get_origin(tp)
    in_key = any(m is Key for m in metadata)
    override = next((m for m in reversed(metadata) if isinstance(m, SqlType)), None)
    if override is not None:
        return AnnotationInfo(ColumnType.parse(override.spelling), nullable, in_key, comment)
    return AnnotationInfo(_infer(tp, origin, metadata, where), nullable, in_key, comment)


def _unwrap(tp: Any, metadata: list[Any], comment: str) -> tuple[Any, list[Any], str]:
    """Strip ``Annotated`` layers, collecting their metadata (a FieldInfo's constraints too)."""
    while typing.get_origin(tp) is typing.Annotated:
        args = typing.get_args(tp)
        tp = args[0]
        for m in args[1:]:
            if isinstance(m, FieldInfo):
                metadata = [*metadata, *m.metadata]
                comment = comment or (m.description or "")
            else:
                metadata = [*metadata, m]
    return tp, metadata, comment


def _infer(tp: Any, origin: Any, metadata: list[Any], where: str) -> ColumnType:
    if origin is Literal:
        values = typing.get_args(tp)
        if not all(isinstance(v, str) for v in values):
            raise DeclarationError(f"{where}: Literal columns take strings only")
        return ColumnType("enum", values=tuple(values))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return ColumnType("enum", values=tuple(str(m.value) for m in tp))
    if origin in (dict, list) or tp in (dict, list) or tp is Any:
        return ColumnType("json")
    if tp is bool:
        return ColumnType("bool")
    if tp is int:
        return ColumnType("int64")
    if tp is float:
        return ColumnType("float64")
    if tp is str:
        length = next((m.max_length for m in metadata if isinstance(m, MaxLen)), DEFAULT_VARCHAR)
        return ColumnType("varchar", length=length)
    if tp is decimal.Decimal:
        digits = next(
            (getattr(m, "max_digits", None) for m in metadata if hasattr(m, "max_digits")), None
        )
        places = next(
            (getattr(m, "decimal_places", None) for m in metadata if hasattr(m, "decimal_places")),
            None,
        )
        if digits is None or places is None:
            raise DeclarationError(
                f"{where}: Decimal columns need Field(max_digits=..., decimal_places=...)"
            )
        return ColumnType("decimal", precision=digits, scale=places)
    if tp is dt.datetime:
        return ColumnType("datetime", precision=DEFAULT_DATETIME_PRECISION)
    if tp is dt.date:
        return ColumnType("date")
    if tp is uuid.UUID:
        return ColumnType("uuid")
    if tp is bytes:
        return ColumnType("bytes")
    if tp is np.ndarray:
        return ColumnType("blob")
    raise DeclarationError(f"{where}: no column type for annotation {tp!r}")


def is_integer(kind: str) -> bool:
    """True for the integer kinds."""
    return kind in _INT_KINDS
