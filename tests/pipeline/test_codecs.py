"""Tests for limsync.pipeline.codecs: values to driver parameters and back, per dialect.

These are unit tests of the conversions; the round trips through real databases are in
test_upsert.py.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import uuid
from decimal import Decimal

import numpy as np
import pytest

from limsync.pipeline import blob
from limsync.pipeline.codecs import canonical_json, codec_for
from limsync.pipeline.columns import ColumnType

DIALECTS = ("sqlite", "mysql", "postgresql")
U = uuid.UUID("12345678-1234-5678-1234-567812345678")


class Side(enum.Enum):
    LEFT = "left"


def test_canonical_json_ignores_key_order_and_spacing() -> None:
    assert canonical_json({"b": [1, 2], "a": {"y": 1, "x": None}}) == (
        '{"a":{"x":null,"y":1},"b":[1,2]}'
    )
    assert canonical_json({"when": dt.date(2024, 1, 2)}) == '{"when":"2024-01-02"}'


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(
    "kind",
    ["uuid", "json", "blob", "bytes", "date", "bool", "float32", "float64", "int32", "varchar"],
)
def test_none_travels_as_null_and_compares_only_to_null(dialect: str, kind: str) -> None:
    codec = codec_for(ColumnType(kind, length=8), dialect)  # type: ignore[arg-type]
    assert codec.encode(None) is None
    assert codec.decode(None) is None
    assert codec.same(None, None)
    assert not codec.same(None, b"x" if kind in ("uuid", "blob", "bytes") else "1")


def test_uuid_is_binary16_on_mysql_and_text_elsewhere() -> None:
    mysql = codec_for(ColumnType("uuid"), "mysql")
    assert mysql.encode(U) == U.bytes
    assert mysql.encode(str(U)) == U.bytes
    assert mysql.decode(bytearray(U.bytes)) == U
    assert mysql.same(U.bytes, bytearray(U.bytes))
    for dialect in ("sqlite", "postgresql"):
        codec = codec_for(ColumnType("uuid"), dialect)
        assert codec.encode(U) == str(U)
        assert codec.decode(str(U)) == U
        assert codec.same(str(U), U)  # a native PostgreSQL uuid column returns UUID objects


@pytest.mark.parametrize("dialect", DIALECTS)
def test_json_is_compared_canonically(dialect: str) -> None:
    codec = codec_for(ColumnType("json"), dialect)
    value = {"b": 1, "a": [1, {"z": True}]}
    encoded = codec.encode(value)
    assert json.loads(encoded) == value
    # MariaDB hands back text, PostgreSQL's jsonb a dict with its own key order and spacing.
    assert codec.same(encoded, '{"a": [1, {"z": true}], "b": 1}')
    assert codec.same(encoded, {"a": [1, {"z": True}], "b": 1})
    assert not codec.same(encoded, {"a": [1, {"z": False}], "b": 1})
    assert codec.decode(encoded) == value
    assert codec.decode(value) == value


@pytest.mark.parametrize("dialect", DIALECTS)
def test_blobs_are_datajoint_bytes(dialect: str) -> None:
    codec = codec_for(ColumnType("blob"), dialect)
    array = np.arange(6.0).reshape(2, 3)
    encoded = codec.encode(array)
    assert encoded == blob.pack(array)
    np.testing.assert_array_equal(codec.decode(memoryview(encoded)), array)
    assert codec.same(encoded, memoryview(encoded))  # psycopg returns memoryview for bytea
    assert not codec.same(encoded, blob.pack(array + 1))


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(("precision", "micro"), [(0, 0), (3, 123000), (6, 123456)])
def test_datetimes_are_truncated_to_the_column_precision(
    dialect: str, precision: int, micro: int
) -> None:
    codec = codec_for(ColumnType("datetime", precision=precision), dialect)
    value = dt.datetime(2024, 5, 6, 7, 8, 9, 123456)
    encoded = codec.encode(value)
    expected = value.replace(microsecond=micro)
    if dialect == "sqlite":
        assert encoded == expected.strftime("%Y-%m-%d %H:%M:%S.%f")
        assert codec.decode(encoded) == expected
        assert codec.same(encoded, expected.isoformat(sep=" "))
    else:
        assert encoded == expected
        assert codec.same(encoded, expected)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_aware_datetimes_are_stored_as_naive_utc(dialect: str) -> None:
    codec = codec_for(ColumnType("datetime", precision=6), dialect)
    paris = dt.timezone(dt.timedelta(hours=2))
    encoded = codec.encode(dt.datetime(2024, 5, 6, 9, 0, tzinfo=paris))
    assert codec.decode(encoded) == dt.datetime(2024, 5, 6, 7, 0)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_decimals_are_quantised_to_the_scale(dialect: str) -> None:
    codec = codec_for(ColumnType("decimal", precision=6, scale=2), dialect)
    encoded = codec.encode(Decimal("20.5"))
    assert codec.decode(encoded) == Decimal("20.50")
    assert codec.same(encoded, "20.50" if dialect == "sqlite" else Decimal("20.5000"))
    assert not codec.same(encoded, "20.51" if dialect == "sqlite" else Decimal("20.51"))


def test_dates_are_iso_text_on_sqlite_only() -> None:
    day = dt.date(2024, 2, 29)
    sqlite = codec_for(ColumnType("date"), "sqlite")
    assert sqlite.encode(day) == "2024-02-29"
    assert sqlite.decode("2024-02-29") == day
    assert codec_for(ColumnType("date"), "mysql").encode(day) == day


def test_bools_are_integers_except_on_postgresql() -> None:
    assert codec_for(ColumnType("bool"), "mysql").encode(True) == 1
    assert codec_for(ColumnType("bool"), "mysql").decode(1) is True
    assert codec_for(ColumnType("bool"), "sqlite").same(0, 0)
    pg = codec_for(ColumnType("bool"), "postgresql")
    assert pg.encode(1) is True
    assert pg.same(False, False)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_float32_compares_at_single_precision(dialect: str) -> None:
    codec = codec_for(ColumnType("float32"), dialect)
    encoded = codec.encode(1.2345678)
    assert encoded == float(np.float32(1.2345678))
    assert codec.same(encoded, float(np.float32(1.2345678)))
    assert codec.same(codec.encode(0.1), 0.10000000149011612)
    assert not codec.same(encoded, 1.2345)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_text_enums_and_ints(dialect: str) -> None:
    assert codec_for(ColumnType("enum", values=("left",)), dialect).encode(Side.LEFT) == "left"
    assert codec_for(ColumnType("varchar", length=5), dialect).encode("abc") == "abc"
    assert codec_for(ColumnType("int64"), dialect).same(3, 3)
    assert codec_for(ColumnType("bytes"), dialect).encode(bytearray(b"ab")) == b"ab"
