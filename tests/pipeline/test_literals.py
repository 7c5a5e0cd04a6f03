"""Tests for limsync.pipeline.literals: encoded rows as MySQL literals."""

from __future__ import annotations

import datetime as dt
import decimal

import pytest

from limsync.pipeline.columns import ColumnType
from limsync.pipeline.literals import LiteralError, literal, row_literals


def test_each_kind_has_its_literal() -> None:
    types = [
        ColumnType("uuid"),
        ColumnType("varchar", length=8),
        ColumnType("int64"),
        ColumnType("float32"),
        ColumnType("decimal", precision=5, scale=2),
        ColumnType("datetime", precision=6),
        ColumnType("date"),
        ColumnType("json"),
    ]
    row = (
        b"\x00\xff",
        "a'\\é",
        -7,
        0.5,
        decimal.Decimal("20.50"),
        dt.datetime(2024, 1, 2, 3, 4, 5, 6),
        dt.date(2024, 1, 2),
        '{"a":1}',
    )
    assert row_literals(types)(row) == ",".join(
        [
            "x'00ff'",
            "_utf8mb4 x'" + "a'\\é".encode().hex() + "'",
            "-7",
            "0.5e0",
            "20.50",
            "TIMESTAMP'2024-01-02 03:04:05.000006'",
            "DATE'2024-01-02'",
            "_utf8mb4 x'" + b'{"a":1}'.hex() + "'",
        ]
    )
    assert row_literals(types)((None,) * len(types)) == ",".join(["NULL"] * len(types))


def test_unexpected_types_take_the_generic_path() -> None:
    f = row_literals([ColumnType("date"), ColumnType("int64"), ColumnType("varchar", length=9)])
    assert f(("2024-01-02", True, 3)) == "_utf8mb4 x'" + b"2024-01-02".hex() + "',1,3"
    assert literal(1e300) == "1e+300"


@pytest.mark.parametrize("value", [float("inf"), float("nan"), decimal.Decimal("NaN"), object()])
def test_values_without_a_literal(value: object) -> None:
    with pytest.raises(LiteralError):
        literal(value)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (decimal.Decimal("1.23E-10"), "0.000000000123"),
        (decimal.Decimal("1E+2"), "100"),
        (decimal.Decimal("-20.50"), "-20.50"),
    ],
)
def test_decimals_are_exact_literals_never_exponents(value: decimal.Decimal, text: str) -> None:
    assert literal(value) == text
