"""Tests for limsync.pipeline.reflect and Database.reflect: reading tables someone else made."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import numpy as np
import pydantic
import pytest
import sqlalchemy as sa
from example import SCHEMAS, Session, Subject
from sqlalchemy.dialects import mysql, postgresql

from limsync.errors import DeclarationError
from limsync.pipeline import Database, Tier, upsert
from limsync.pipeline.columns import ColumnType
from limsync.pipeline.reflect import (
    differences,
    parse_default,
    row_model_for,
    tier_of,
    type_from_sql,
)
from limsync.pipeline.tables import NO_DEFAULT, ColumnSpec


@pytest.mark.parametrize(
    ("name", "tier"),
    [
        ("#lab", Tier.LOOKUP),
        ("subject", Tier.MANUAL),
        ("_recording", Tier.IMPORTED),
        ("__session_stats", Tier.COMPUTED),
        ("session__probe", Tier.PART),
        ("__stats__unit", Tier.PART),
        ("#lab__member", Tier.PART),
        ("_recording__channel", Tier.PART),
    ],
)
def test_tier_from_the_table_name(name: str, tier: Tier) -> None:
    assert tier_of(name) is tier


@pytest.mark.parametrize(
    ("sqltype", "comment", "dj_type", "plain"),
    [
        (mysql.BINARY(16), ":uuid:LIMS id", "uuid", "LIMS id"),
        (mysql.BINARY(16), "just bytes", "bytes", "just bytes"),
        (mysql.LONGBLOB(), ":<blob>:numpy array", "<blob>", "numpy array"),
        (mysql.LONGBLOB(), None, "bytes", ""),
        (mysql.LONGBLOB(), ":<attach>:file", "bytes", "file"),  # a codec we do not know
        (mysql.LONGTEXT(), ":json:", "json", ""),  # MariaDB reports json as longtext
        (mysql.LONGTEXT(), "", "text", ""),
        (mysql.VARCHAR(12), "eartag", "varchar(12)", "eartag"),
        (mysql.CHAR(36), None, "char(36)", ""),
        (mysql.TINYINT(), ":bool:", "bool", ""),
        (mysql.TINYINT(), None, "int8", ""),
        (mysql.SMALLINT(), None, "int16", ""),
        (mysql.INTEGER(), None, "int32", ""),
        (mysql.BIGINT(), None, "int64", ""),
        (mysql.FLOAT(), None, "float32", ""),
        (mysql.DOUBLE(), None, "float64", ""),
        (mysql.DECIMAL(8, 3), None, "decimal(8,3)", ""),
        (mysql.DATETIME(fsp=3), None, "datetime(3)", ""),
        (mysql.DATE(), None, "date", ""),
        (mysql.ENUM("a", "b"), None, "enum('a', 'b')", ""),
        (mysql.JSON(), None, "json", ""),
        (postgresql.TIMESTAMP(precision=6), None, "datetime(6)", ""),
        (postgresql.DOUBLE_PRECISION(), None, "float64", ""),
        (postgresql.REAL(), None, "float32", ""),
        (postgresql.BYTEA(), ":<blob>:", "<blob>", ""),
        (postgresql.JSONB(), None, "json", ""),
        (postgresql.UUID(), None, "uuid", ""),
        (postgresql.BOOLEAN(), None, "bool", ""),
        (sa.Text(), None, "text", ""),
    ],
)
def test_types_come_from_the_comment_marker_first(
    sqltype: Any, comment: str | None, dj_type: str, plain: str
) -> None:
    ctype, text = type_from_sql(sqltype, comment)
    assert (ctype.dj_type, text) == (dj_type, plain)


def test_unsupported_sql_types_are_declaration_errors() -> None:
    with pytest.raises(DeclarationError, match="not supported"):
        type_from_sql(postgresql.INTERVAL(), None)


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        (None, "varchar", NO_DEFAULT),
        ("'U''x'", "varchar", "U'x"),
        ("'UTC'::character varying", "varchar", "UTC"),
        ("'b'::\"lab_x\".enum_123", "enum", "b"),
        ("NULL", "varchar", None),
        ("NULL::character varying", "varchar", None),
        ("5", "int32", 5),
        ("'5'", "int32", 5),  # MySQL 8 quotes numbers
        ("(-5)", "int32", -5),
        ("1.5", "float64", 1.5),
        ("1.50", "decimal", Decimal("1.50")),
        ("1", "bool", True),
        ("false", "bool", False),
        ("'2024-01-02'", "date", dt.date(2024, 1, 2)),
        ("current_timestamp(3)", "datetime", NO_DEFAULT),
        ("CURRENT_TIMESTAMP", "datetime", NO_DEFAULT),
        ("'{}'", "json", NO_DEFAULT),
        ("'x'", "int32", NO_DEFAULT),  # unreadable: no default rather than a wrong one
    ],
)
def test_server_defaults_become_python_values(text: str | None, kind: str, value: Any) -> None:
    ctype = ColumnType(kind, precision=6, scale=2)  # type: ignore[arg-type]
    assert parse_default(text, ctype) == value


def test_reflected_row_models() -> None:
    cols = (
        ColumnSpec("k", ColumnType("varchar", length=4), in_key=True),
        ColumnSpec("e", ColumnType("enum", values=("a", "b")), default="a"),
        ColumnSpec("d", ColumnType("decimal", precision=4, scale=1), nullable=True, default=None),
        ColumnSpec("u", ColumnType("uuid")),
        ColumnSpec("arr", ColumnType("blob"), nullable=True, default=None),
        ColumnSpec("j", ColumnType("json")),
    )
    model = row_model_for("thing", cols)
    row = model.model_validate({"k": "ab", "u": str(uuid.UUID(int=1)), "j": [1]})
    assert row.e == "a" and row.d is None and row.u == uuid.UUID(int=1)  # type: ignore[attr-defined]
    for bad in ({"k": "abcde"}, {"e": "c"}, {"d": Decimal("1234.5")}, {"arr": [1, 2]}):
        with pytest.raises(pydantic.ValidationError):
            model.model_validate({"k": "ab", "u": uuid.UUID(int=1), "j": 1, **bad})
    assert model.model_validate({"k": "a", "u": uuid.UUID(int=1), "j": 1, "arr": np.zeros(2)})


def test_differences_compare_types_nullability_and_keys() -> None:
    spec = Subject.spec
    assert differences(spec, spec, "mysql") == []
    altered = type(spec)(
        schema=spec.schema,
        name=spec.name,
        tier=spec.tier,
        columns=tuple(
            ColumnSpec(c.name, c.type, nullable=not c.nullable, in_key=c.in_key)
            if c.name == "sex"
            else c
            for c in spec.columns
            if c.name != "alive"
        ),
        primary_key=spec.primary_key,
    )
    assert differences(spec, altered, "postgresql") == [
        "column sex is nullable, declared NOT NULL",
        "column alive is missing",
    ]


def test_reflecting_a_missing_table_fails(db: Database) -> None:
    with pytest.raises(DeclarationError, match="does not exist"):
        db.reflect("nowhere", "nothing")


def _handmade_ddl(dialect: str, a: str, b: str) -> list[str]:
    """Two schemas of tables made without limsync, as a DataJoint user might have them."""

    def q(schema: str, table: str) -> str:
        if dialect == "sqlite":
            return f'"{schema}.{table}"'
        if dialect == "mysql":
            return f"`{schema}`.`{table}`"
        return f'"{schema}"."{table}"'

    uuid_type, uuid_marker = ("binary(16)", ":uuid:") if dialect == "mysql" else ("char(36)", "")
    c = {"mysql": " COMMENT '{}'", "postgresql": "", "sqlite": ""}[dialect]
    blob = "longblob" if dialect == "mysql" else ("bytea" if dialect == "postgresql" else "blob")
    now = "CURRENT_TIMESTAMP(3)" if dialect == "mysql" else "CURRENT_TIMESTAMP"
    ts = "datetime(3)" if dialect != "postgresql" else "timestamp(3)"
    statements = []
    if dialect == "mysql":
        statements += [f"CREATE DATABASE `{a}`", f"CREATE DATABASE `{b}`"]
    elif dialect == "postgresql":
        statements += [f'CREATE SCHEMA "{a}"', f'CREATE SCHEMA "{b}"']
    statements += [
        f"CREATE TABLE {q(a, '#lab')} (lab varchar(16) NOT NULL PRIMARY KEY)",
        f"""CREATE TABLE {q(a, "subject")} (
            subject_id varchar(16) NOT NULL{c.format(":varchar(16):nickname")},
            lab varchar(16) NOT NULL,
            lims_uuid {uuid_type} NOT NULL{c.format(uuid_marker)},
            notes varchar(100) NOT NULL DEFAULT '',
            n_cages int NOT NULL DEFAULT 5,
            weight double precision NULL,
            trace {blob} NULL{c.format(":<blob>:")},
            created {ts} NOT NULL DEFAULT {now},
            _lims_hash char(64) NULL,
            PRIMARY KEY (subject_id),
            FOREIGN KEY (lab) REFERENCES {q(a, "#lab")} (lab) ON UPDATE CASCADE
        )""",
        f"""CREATE TABLE {q(b, "session")} (
            subject_id varchar(16) NOT NULL,
            session_id int NOT NULL,
            PRIMARY KEY (subject_id, session_id),
            FOREIGN KEY (subject_id) REFERENCES {q(a, "subject")} (subject_id) ON UPDATE CASCADE
        )""",
    ]
    return statements


def test_reflect_handmade_tables_across_schemas_outside_the_prefix(db: Database) -> None:
    a, b = f"{db.schema_prefix}handa", f"{db.schema_prefix}handb"
    with db.engine.begin() as conn:
        for statement in _handmade_ddl(db.dialect, a, b):
            conn.exec_driver_sql(statement)
    # A database with another prefix: these schemas are outside it, so physical names are kept.
    other = Database(db.url, schema_prefix=db.schema_prefix + "other_")
    try:
        session = other.reflect(b, "session", physical=True)
        assert session.qualname == f"{b}.session"
        assert session.tier is Tier.MANUAL and not session.declared
        (fk,) = session.foreign_keys
        assert fk.parent == f"{a}.subject" and fk.primary
        subject = other.spec(f"{a}.subject")  # the parent, and its parent, were reflected too
        assert other.spec(f"{a}.#lab").tier is Tier.LOOKUP
        assert "_lims_hash" not in subject.column_names  # hidden: never ours to write
        assert subject.column("notes").default == ""
        assert subject.column("n_cages").default == 5
        assert subject.column("weight").default is None
        assert not subject.column("created").has_default  # CURRENT_TIMESTAMP: rows must say
        if db.dialect == "mysql":
            assert subject.column("lims_uuid").type.kind == "uuid"
            assert subject.column("trace").type.kind == "blob"
            assert subject.column("subject_id").comment == "nickname"
        lims = uuid.UUID(int=7)
        uuid_value: Any = lims if db.dialect == "mysql" else str(lims)
        with other.transaction() as conn:
            conn.exec_driver_sql(
                f"INSERT INTO {other.qualified(other.spec(f'{a}.#lab'))} (lab) VALUES ('cortex')"
            )
            created = dt.datetime(2024, 1, 2, 3, 4, 5, 678000)
            # notes, n_cages, weight and trace left out: their defaults are written
            row = {"subject_id": "SW1", "lab": "cortex", "lims_uuid": uuid_value}
            cs = upsert(other, conn, subject, [{**row, "created": created}])
            assert cs.inserted == [("SW1",)]
            upsert(other, conn, session, [{"subject_id": "SW1", "session_id": 1}])
        fetched = other.fetch(subject)
        assert fetched[0]["notes"] == "" and fetched[0]["n_cages"] == 5
        assert fetched[0]["created"] == created
        with db.engine.connect() as conn:
            hidden = conn.exec_driver_sql(f"SELECT _lims_hash FROM {other.qualified(subject)}")
            assert hidden.scalar() is None
    finally:
        other.dispose()


def test_a_declared_table_reflects_back_without_differences(db: Database) -> None:
    db.declare(*SCHEMAS)
    fresh = Database(db.url, schema_prefix=db.schema_prefix)
    try:
        probe = fresh.reflect("acquisition", "session__probe")
        assert probe.tier is Tier.PART
        assert probe.database_schema is None  # inside the prefix: logical names
        assert differences(Session.Probe.spec, probe, db.dialect) == []
        assert fresh.spec("acquisition.session").row_model is not None
        assert fresh.spec("subject.subject").primary_key == ("subject_uuid",)
        assert differences(Session.spec, fresh.spec("acquisition.session"), db.dialect) == []
    finally:
        fresh.dispose()
