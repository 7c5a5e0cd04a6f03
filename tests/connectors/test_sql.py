"""The sql connector against a small legacy database on SQLite, MariaDB and PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from typing import Any

import pydantic
import pytest
import sqlalchemy as sa

from limsync.connectors import registry
from limsync.connectors.base import ReadContext, nothing_known
from limsync.connectors.sql import SqlConnector
from limsync.errors import AuthenticationError, ConfigError, SourceError, SourceUnreachableError

ANIMALS = [
    # (lab, animal_id, name, born, weight): a composite key, latin-1-ish names, NULLs.
    ("cortex", 1, "Mücke", date(2019, 4, 3), Decimal("21.40")),
    ("cortex", 2, "Blaß", date(2019, 4, 11), None),
    ("cortex", 3, "Kröte", None, Decimal("19.05")),
    ("hofer", 1, "Señor", date(2019, 5, 1), Decimal("22.00")),
    ("hofer", 2, "Zoë", date(2019, 5, 2), Decimal("20.10")),
]
# An old export table without a primary key: S2 twice (different), S3 twice (identical).
EXPORT = [
    ("S1", "a"), ("S2", "first"), ("S2", "second"), ("S3", "same"), ("S3", "same"),
    ("S4", "d"), (None, "lost key"),
]  # fmt: skip


@pytest.fixture
def legacy(db_url: str, backend: str, schema_prefix: str) -> Iterator[tuple[str, str]]:
    """The backend's URL and a unique table-name prefix with the legacy tables in place."""
    engine = sa.create_engine(db_url)
    meta = sa.MetaData()
    animals = sa.Table(
        f"{schema_prefix}animals", meta,
        sa.Column("lab", sa.String(16), primary_key=True),
        sa.Column("animal_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(32)),
        sa.Column("born", sa.Date),
        sa.Column("weight", sa.Numeric(6, 2)),
    )  # fmt: skip
    export = sa.Table(
        f"{schema_prefix}export", meta,
        sa.Column("subject", sa.String(8)),
        sa.Column("note", sa.String(32)),
    )  # fmt: skip
    try:
        meta.create_all(engine)
    except sa.exc.OperationalError as exc:
        pytest.skip(f"{backend} unreachable: {exc.orig}")
    with engine.begin() as conn:
        conn.execute(
            animals.insert(), [dict(zip(animals.c.keys(), r, strict=True)) for r in ANIMALS]
        )
        conn.execute(export.insert(), [dict(zip(export.c.keys(), r, strict=True)) for r in EXPORT])
    try:
        yield db_url, schema_prefix
    finally:
        meta.drop_all(engine)
        engine.dispose()


def connector(url: str, page_size: int = 2, **streams: dict[str, Any]) -> SqlConnector:
    settings = SqlConnector.parse_settings(
        {"type": "sql", "url": url, "page_size": page_size, "streams": streams}, name="oldlims"
    )
    return SqlConnector("oldlims", settings)


def read_all(c: SqlConnector, stream: str) -> list[dict[str, Any]]:
    ctx = ReadContext(full=True, cursor=None, known=nothing_known)
    with c:
        return [r for page in c.read(stream, ctx) for r in page]


def test_registered_as_sql() -> None:
    assert registry.get("sql") is SqlConnector


def test_table_in_key_order_across_pages(legacy: tuple[str, str]) -> None:
    url, prefix = legacy
    c = connector(url, animals={"table": f"{prefix}animals", "key": ["lab", "animal_id"]})
    records = read_all(c, "animals")
    assert [(r["lab"], r["animal_id"]) for r in records] == [(a[0], a[1]) for a in ANIMALS]
    assert records[0] == {
        "lab": "cortex", "animal_id": 1, "name": "Mücke", "born": date(2019, 4, 3),
        "weight": Decimal("21.40"), "_source": f"table {prefix}animals",
    }  # fmt: skip
    assert records[1]["weight"] is None and records[2]["born"] is None
    model = c.stream("animals").model
    assert all(model.model_validate(r) for r in records)


def test_page_size_one_still_reads_everything(legacy: tuple[str, str]) -> None:
    url, prefix = legacy
    c = connector(url, 1, animals={"table": f"{prefix}animals", "key": ["lab", "animal_id"]})
    assert len(read_all(c, "animals")) == len(ANIMALS)


def test_query_stream(legacy: tuple[str, str]) -> None:
    url, prefix = legacy
    query = f"SELECT lab, animal_id, name FROM {prefix}animals WHERE weight IS NOT NULL;"
    c = connector(url, animals={"query": query, "key": ["lab", "animal_id"]})
    records = read_all(c, "animals")
    assert [r["name"] for r in records] == ["Mücke", "Kröte", "Señor", "Zoë"]
    assert records[0]["_source"] == "query animals"


def test_table_without_primary_key_duplicates_and_null_keys(legacy: tuple[str, str]) -> None:
    url, prefix = legacy
    c = connector(url, export={"table": f"{prefix}export", "key": ["subject"]})
    records = read_all(c, "export")
    # Keyset paging on a non-unique key completes each key's rows: none skipped.
    assert sorted((r["subject"] or "", r["note"]) for r in records) == sorted(
        (s or "", n) for s, n in EXPORT
    )
    assert records[-1]["subject"] is None  # NULL keys come last
    marked = [(r["subject"], r["note"]) for r in records if r.get("_invalid")]
    assert len(marked) == 1 and marked[0][0] == "S2"  # S3's identical repeat is not marked
    model = c.stream("export").model
    for r in records:
        if r.get("_invalid") or r["subject"] is None:
            with pytest.raises(pydantic.ValidationError):
                model.model_validate(r)


def test_missing_table_column_and_broken_query(legacy: tuple[str, str]) -> None:
    url, prefix = legacy
    c = connector(
        url,
        gone={"table": f"{prefix}nothere", "key": ["id"]},
        nokey={"table": f"{prefix}animals", "key": ["animal_uuid"]},
        broken={"query": f"SELECT nonsense FROM {prefix}animals", "key": ["nonsense"]},
        animals={"table": f"{prefix}animals", "key": ["lab", "animal_id"]},
        fine={"query": f"SELECT * FROM {prefix}export", "key": ["subject"]},
    )
    with pytest.raises(SourceError, match=r"connectors\.oldlims\.streams\.gone\.table: no table"):
        read_all(c, "gone")
    with pytest.raises(SourceError, match=r"streams\.nokey\.key: no column 'animal_uuid'"):
        read_all(c, "nokey")
    with pytest.raises(SourceError, match=r"streams\.broken\.query: does not run"):
        read_all(c, "broken")
    results = {r.name: r for r in c.check()}
    assert results["connect"].ok
    assert [results[f"stream {s}"].ok for s in ("gone", "nokey", "broken")] == [False] * 3
    assert results["stream animals"].detail == "table exists, 1 row(s) read"
    assert results["stream fine"].detail == "query runs, 1 row(s) read"
    c.close()


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"table": "a", "query": "SELECT 1", "key": ["id"]}, "exactly one of table or query"),
        ({"key": ["id"]}, "exactly one of table or query"),
        ({"table": "a; DROP TABLE b", "key": ["id"]}, "streams.animals.table"),
        ({"query": " ; ", "key": ["id"]}, "query is empty"),
    ],
)
def test_bad_stream_settings(conf: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match="oldlims") as info:
        connector("sqlite://", animals=conf)
    assert message in str(info.value)


def test_bad_url_is_a_config_error_without_the_password() -> None:
    with pytest.raises(ConfigError, match="url: Value error, not a SQLAlchemy URL"):
        connector("not a url s3cret", animals={"table": "a", "key": ["id"]})


def test_unreachable_database_masks_the_password() -> None:
    c = connector(
        "postgresql+psycopg://reader:s3cret@127.0.0.1:1/oldlims",
        animals={"table": "a", "key": ["id"]},
    )
    with pytest.raises(SourceUnreachableError) as info:
        c.open()
    assert "s3cret" not in str(info.value) and "reader:***@127.0.0.1:1" in str(info.value)
    [settings, connect] = c.check()
    assert settings.ok and not connect.ok and "s3cret" not in connect.detail


def test_wrong_credentials_are_an_authentication_error() -> None:
    url = os.environ.get("LIMSYNC_TEST_MYSQL_URL")
    if not url:
        pytest.skip("LIMSYNC_TEST_MYSQL_URL not set")
    wrong = sa.engine.make_url(url).set(username="limsync_nobody")
    settings = {"table": "a", "key": ["id"]}
    c = SqlConnector(
        "oldlims",
        SqlConnector.parse_settings(
            {"type": "sql", "url": wrong.render_as_string(hide_password=False),
             "password": "wr0ng-pw", "streams": {"animals": settings}},
            name="oldlims",
        ),
    )  # fmt: skip
    with pytest.raises(AuthenticationError, match="refused the credentials") as info:
        c.open()
    assert "wr0ng-pw" not in str(info.value) and "limsync_nobody:***@" in str(info.value)
    assert info.value.exit_code == 2
