"""Tests for limsync.pipeline.database: URLs, names, transactions, reads and dropping schemas."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from example import LAB, SCHEMAS, TABLES, Lab, Session, Subject, session_row, subject_row

from limsync.errors import (
    ConfigError,
    DatabaseError,
    DatabaseUnreachableError,
    DeclarationError,
)
from limsync.pipeline import Database, upsert
from limsync.pipeline.database import _is_connect_error, safe_url


@pytest.mark.parametrize(
    ("url", "prefix", "message"),
    [
        ("not a url", "", "not a valid SQLAlchemy URL"),
        ("oracle://scott:tiger@127.0.0.1/x", "", "unsupported backend 'oracle'"),
        ("sqlite://", "Lab-", "schema_prefix 'Lab-'"),
    ],
)
def test_configuration_errors(url: str, prefix: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        Database(url, schema_prefix=prefix)
    assert "tiger" not in str(info.value)


def test_passwords_never_show() -> None:
    url = "mysql+pymysql://sync:s3cret@127.0.0.1:1/lab"
    assert safe_url(url) == "mysql+pymysql://sync:***@127.0.0.1:1/lab"
    assert "s3cret" not in repr(Database(url))
    assert safe_url("::not a url::") == "<unparseable database URL>"


@pytest.mark.parametrize(
    "url",
    [
        "mysql+pymysql://sync:s3cret@127.0.0.1:1/lab",
        "postgresql+psycopg://sync:s3cret@127.0.0.1:1/lab",
    ],
)
def test_an_unreachable_server_is_a_clear_error(url: str) -> None:
    db = Database(url, engine_options={"connect_args": {"connect_timeout": 2}})
    with (
        pytest.raises(DatabaseUnreachableError, match="cannot connect to database") as info,
        db.transaction(),
    ):
        pass
    assert "s3cret" not in str(info.value)
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("message", "connect"),
    [
        ("(2003, \"Can't connect to MySQL server on '10.0.0.1' (timed out)\")", True),
        ("connection failed: connection timeout expired", True),
        ('FATAL:  password authentication failed for user "sync"', True),
        ("(1205, 'Lock wait timeout exceeded; try restarting transaction')", False),
        ("canceling statement due to statement timeout", False),
        ("(1213, 'Deadlock found when trying to get lock')", False),
    ],
)
def test_only_connection_failures_count_as_unreachable(message: str, connect: bool) -> None:
    exc = sa.exc.OperationalError("SELECT 1", {}, Exception(message))
    assert _is_connect_error(exc) is connect


def test_physical_names(db: Database) -> None:
    assert db.physical_schema("subject") == db.schema_prefix + "subject"
    schema, name = db.physical(Lab.spec)
    if db.dialect == "sqlite":
        assert (schema, name) == (None, f"{db.schema_prefix}subject.#lab")
        assert db.qualified(Lab.spec) == f'"{db.schema_prefix}subject.#lab"'
    else:
        assert (schema, name) == (f"{db.schema_prefix}subject", "#lab")
        q = "`" if db.dialect == "mysql" else '"'
        assert db.qualified(Lab.spec) == f"{q}{db.schema_prefix}subject{q}.{q}#lab{q}"
    expected = "(`rig_temperature` + 0E0)" if db.dialect == "mysql" else db.quote("rig_temperature")
    assert db.select_column(Session.spec, "rig_temperature") == expected


def test_registry(db: Database) -> None:
    with pytest.raises(DeclarationError, match=r"unknown table 'subject\.subject'"):
        db.spec("subject.subject")
    db.declare(*SCHEMAS)
    assert {s.qualname for s in db.specs} == {t.spec.qualname for t in TABLES}
    table = db.table(Subject.spec)
    db.register(Subject.spec)  # the same spec again: nothing is rebuilt
    assert db.table(Subject.spec) is table


def test_transactions_commit_or_roll_back(db: Database) -> None:
    db.declare(*SCHEMAS)
    with db.transaction() as conn:
        upsert(db, conn, Lab, [LAB])
        assert db.count(Lab, conn) == 1  # the transaction sees its own rows
    with pytest.raises(RuntimeError), db.transaction() as conn:
        upsert(db, conn, Subject, [subject_row(1), subject_row(2)])
        assert db.count(Subject, conn) == 2
        raise RuntimeError("abort")
    assert db.count(Subject) == 0
    assert db.count(Lab) == 1
    assert db.fetch(Lab) == [LAB]


# Statements that fail with an OperationalError that has nothing to do with connecting.
OPERATIONAL_FAILURES = {
    "sqlite": ["SELECT * FROM no_such_table"],
    "mysql": ["SET SESSION max_statement_time = 0.01", "SELECT SLEEP(1)"],  # MariaDB
    "postgresql": ["SET LOCAL statement_timeout = 10", "SELECT pg_sleep(1)"],
}


def test_other_operational_errors_are_database_errors(db: Database) -> None:
    with pytest.raises(DatabaseError, match="database ") as info, db.transaction() as conn:
        for statement in OPERATIONAL_FAILURES[db.dialect]:
            conn.exec_driver_sql(statement)
    assert not isinstance(info.value, DatabaseUnreachableError)


def test_drop_schemas_in_any_order(db: Database) -> None:
    db.declare(*SCHEMAS)
    with db.transaction() as conn:
        upsert(db, conn, Lab, [LAB])
        upsert(db, conn, Subject, [subject_row(1)])
        upsert(db, conn, Session, [session_row(1, 1)])
    # "subject" is referenced from "acquisition": drop the parent schema first on purpose.
    db.drop_schemas([db.physical_schema("subject"), db.physical_schema("acquisition")])
    insp = sa.inspect(db.engine)
    if db.dialect == "sqlite":
        assert not [n for n in insp.get_table_names() if n.startswith(db.schema_prefix)]
    else:
        assert not [s for s in insp.get_schema_names() if s.startswith(db.schema_prefix)]
    assert set(db.declare(*SCHEMAS)) == {t.spec.qualname for t in TABLES}
