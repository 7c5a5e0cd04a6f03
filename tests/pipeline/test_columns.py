"""Tests for limsync.pipeline.columns: Python annotations to DataJoint core types and back."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from decimal import Decimal
from typing import Annotated, Any, Literal

import numpy as np
import pytest
from pydantic import Field
from pydantic.fields import FieldInfo

from limsync.errors import DeclarationError
from limsync.pipeline.columns import (
    ColumnType,
    Key,
    SqlType,
    column_type_from_annotation,
    is_integer,
)


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


def infer(annotation: Any, default: Any = ...) -> tuple[str, bool, bool, str]:
    """(DataJoint type, nullable, in key, comment) of an annotated field."""
    finfo = (
        FieldInfo.from_annotation(annotation)
        if default is ...
        else FieldInfo.from_annotated_attribute(annotation, default)
    )
    info = column_type_from_annotation(annotation, finfo, "test")
    return info.type.dj_type, info.nullable, info.in_key, info.comment


@pytest.mark.parametrize(
    ("annotation", "dj_type"),
    [
        (int, "int64"),
        (float, "float64"),
        (bool, "bool"),
        (str, "varchar(255)"),
        (Annotated[str, Field(max_length=32)], "varchar(32)"),
        (Annotated[Decimal, Field(max_digits=8, decimal_places=3)], "decimal(8,3)"),
        (dt.datetime, "datetime(6)"),
        (dt.date, "date"),
        (uuid.UUID, "uuid"),
        (bytes, "bytes"),
        (np.ndarray, "<blob>"),
        (dict[str, Any], "json"),
        (list[int], "json"),
        (dict, "json"),
        (Any, "json"),
        (Literal["M", "F", "U"], "enum('M', 'F', 'U')"),
        (Color, "enum('red', 'blue')"),
        (Annotated[int, SqlType("int8")], "int8"),
        (Annotated[int, SqlType("int16")], "int16"),
        (Annotated[int, SqlType("int32")], "int32"),
        (Annotated[float, SqlType("float32")], "float32"),
        (Annotated[dt.datetime, SqlType("datetime(3)")], "datetime(3)"),
        (Annotated[str, SqlType("char(36)")], "char(36)"),
        (Annotated[str, SqlType("text")], "text"),
    ],
)
def test_every_annotation_maps_to_its_core_type(annotation: Any, dj_type: str) -> None:
    assert infer(annotation)[0] == dj_type


def test_optional_makes_a_column_nullable_and_key_marks_the_key() -> None:
    assert infer(int | None) == ("int64", True, False, "")
    assert infer(Annotated[uuid.UUID, Key]) == ("uuid", False, True, "")


def test_constraints_inside_an_optional_are_kept() -> None:
    """``Annotated[Decimal, Field(..)] | None``: pydantic leaves the Field nested in the union."""
    assert infer(Annotated[Decimal, Field(max_digits=6, decimal_places=2)] | None) == (
        "decimal(6,2)",
        True,
        False,
        "",
    )
    assert infer(Annotated[str, Field(max_length=12, description="eartag")] | None) == (
        "varchar(12)",
        True,
        False,
        "eartag",
    )
    assert infer(Annotated[float, SqlType("float32")] | None)[:2] == ("float32", True)


def test_decimal_needs_digits() -> None:
    with pytest.raises(DeclarationError, match="max_digits"):
        infer(Decimal)
    with pytest.raises(DeclarationError, match="max_digits"):
        infer(Annotated[Decimal, Field(max_digits=5)])


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        (complex, "no column type"),
        (set[int], "no column type"),
        (int | str, "one type"),
        (Literal[1, 2], "strings only"),
        (Annotated[int, SqlType("int128")], "unknown column type"),
    ],
)
def test_unsupported_annotations_are_declaration_errors(annotation: Any, message: str) -> None:
    with pytest.raises(DeclarationError, match=message):
        infer(annotation)


@pytest.mark.parametrize(
    "spelling",
    [
        "varchar(64)",
        "char(36)",
        "text",
        "int8",
        "int16",
        "int32",
        "int64",
        "float32",
        "float64",
        "decimal(6,2)",
        "bool",
        "date",
        "datetime",
        "datetime(3)",
        "datetime(6)",
        "uuid",
        "json",
        "<blob>",
        "bytes",
        "enum('M', 'F', 'U')",
        "enum('it''s', 'plain')",
    ],
)
def test_parse_is_the_inverse_of_dj_type(spelling: str) -> None:
    assert ColumnType.parse(spelling).dj_type == spelling


def test_parse_reads_quoted_enum_members_and_native_spellings() -> None:
    assert ColumnType.parse("enum('it''s', 'b')").values == ("it's", "b")
    assert ColumnType.parse("decimal(6, 2)") == ColumnType("decimal", precision=6, scale=2)
    assert ColumnType.parse("int").kind == "int32"
    assert ColumnType.parse("double").kind == "float64"
    assert ColumnType.parse("longblob").kind == "blob"
    with pytest.raises(DeclarationError, match="unknown column type"):
        ColumnType.parse("<attach>")


def test_is_integer() -> None:
    assert all(is_integer(k) for k in ("int8", "int16", "int32", "int64"))
    assert not is_integer("float32")
