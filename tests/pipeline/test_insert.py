"""Tests for limsync.pipeline.insert: plain INSERTs of new rows, and the errors that name a row."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from example import LAB, SCHEMAS, Lab, Session, Subject, probe_row, session_row, subject_row

from limsync.errors import MissingParentError, RowError
from limsync.pipeline import ChangeSet, Database, insert_new, upsert
from limsync.pipeline.insert import enforces_foreign_keys, prepare_insert
from limsync.testing.sql import statements


@pytest.fixture
def pipeline(db: Database) -> Database:
    """The example pipeline declared, with its one lab."""
    db.declare(*SCHEMAS)
    with db.transaction() as conn:
        upsert(db, conn, Lab, [LAB])
    return db


def insert(db: Database, table: Any, rows: list[dict[str, Any]], **options: Any) -> ChangeSet:
    with db.transaction() as conn:
        return insert_new(db, conn, table, rows, **options)


def failing(db: Database, table: Any, rows: list[dict[str, Any]], **options: Any) -> RowError:
    """The RowError of an insert that must fail; its transaction rolls back."""
    with pytest.raises(RowError) as info, db.transaction() as conn:
        insert_new(db, conn, table, rows, **options)
    return info.value


def uid(n: int) -> uuid.UUID:
    return uuid.UUID(int=n + 1)


def test_rows_land_as_upsert_would_store_them(pipeline: Database) -> None:
    db = pipeline
    subjects = [subject_row(n) for n in range(5)]
    sessions = [session_row(n, k) for n in range(5) for k in range(2)]
    probes = [probe_row(n, 0, name) for n in range(5) for name in ("probe00", "probe01")]
    with statements(db) as sent:
        cs = insert(db, Subject, subjects)
        insert(db, Session, sessions)
        insert(db, Session.Probe, probes)
    assert cs.table == "subject.subject"
    assert cs.inserted == [(uid(n),) for n in range(5)] and not cs.updated and not cs.unchanged
    mine = [s for s in sent if s.lstrip().upper().startswith(("INSERT", "WITH", "SELECT"))]
    assert len(mine) == 3 and all(s.startswith("INSERT INTO") for s in mine)
    assert not any("ON CONFLICT" in s or "ON DUPLICATE" in s or "JOIN" in s for s in sent)
    assert db.count(Subject) == 5 and db.count(Session) == 10 and db.count(Session.Probe) == 10
    # Stored exactly as the upsert stores them: upserting the same rows changes nothing.
    with db.transaction() as conn:
        for table, rows in ((Subject, subjects), (Session, sessions), (Session.Probe, probes)):
            again = upsert(db, conn, table, rows)
            assert not again.changed and len(again.unchanged) == len(rows), table


def test_rows_with_one_key_are_one_row_the_last_winning(pipeline: Database) -> None:
    rows = [subject_row(1, nickname="first"), subject_row(2), subject_row(1, nickname="last")]
    cs = insert(pipeline, Subject, rows)
    assert cs.inserted == [(uid(1),), (uid(2),)]
    assert {r["nickname"] for r in pipeline.fetch(Subject)} == {"last", "SW002"}


def test_batches_are_bounded_by_rows_and_bytes(pipeline: Database) -> None:
    db = pipeline
    with statements(db) as sent:
        cs = insert(db, Subject, [subject_row(n) for n in range(5)], batch_rows=2)
    assert len([s for s in sent if s.startswith("INSERT INTO")]) == 3
    assert len(cs.inserted) == 5
    with statements(db) as sent:
        insert(db, Subject, [subject_row(n) for n in range(5, 9)], batch_bytes=1)
    assert len([s for s in sent if s.startswith("INSERT INTO")]) == 4
    assert db.count(Subject) == 9


def test_a_row_already_stored_fails_and_nothing_is_written(pipeline: Database) -> None:
    db = pipeline
    insert(db, Subject, [subject_row(1)])
    err = failing(db, Subject, [subject_row(0), subject_row(1), subject_row(2)])
    assert not isinstance(err, MissingParentError)
    assert (err.table, err.key) == ("subject.subject", {"subject_uuid": uid(1)})
    assert "already stored" in err.problem
    assert db.count(Subject) == 1


def test_a_missing_parent_is_named(pipeline: Database) -> None:
    db = pipeline
    insert(db, Subject, [subject_row(0)])
    rows = [session_row(0, 0), session_row(5, 0), session_row(0, 1)]
    err = failing(db, Session, rows)
    assert isinstance(err, MissingParentError)
    assert (err.table, err.column) == ("acquisition.session", "subject_uuid")
    assert err.key == {"subject_uuid": uid(5), "session_start": rows[1]["session_start"]}
    assert err.problem == (
        f"references subject.subject (subject_uuid={uid(5)!r}), which does not exist"
    )
    assert db.count(Session) == 0
    # a nullable reference to a lab that does not exist
    err = failing(db, Session, [session_row(0, 3, lab_name="nolab")])
    assert isinstance(err, MissingParentError) and err.column == "lab_name"
    assert "references subject.#lab (lab_name='nolab'), which does not exist" in str(err)


def test_bad_values_are_named(pipeline: Database) -> None:
    db = pipeline
    err = failing(db, Subject, [subject_row(1), subject_row(2, sex="X")])
    assert (err.table, err.key, err.column) == ("subject.subject", {"subject_uuid": uid(2)}, "sex")
    # Not validated: the database refuses, and says which column.
    good = Subject.Row.model_validate(subject_row(1)).model_dump()
    bad = {**Subject.Row.model_validate(subject_row(2)).model_dump(), "nickname": None}
    err = failing(db, Subject, [bad], validate=False)
    assert (err.table, err.key, err.column) == (
        "subject.subject",
        {"subject_uuid": uid(2)},
        "nickname",
    )
    if db.dialect != "sqlite":  # SQLite does not enforce varchar lengths
        long = {**good, "subject_uuid": uid(3), "nickname": "x" * 65}
        err = failing(db, Subject, [good, long], validate=False)
        assert err.table == "subject.subject" and "long" in err.problem.lower()
        if db.dialect == "mysql":  # which names the row too
            assert (err.key, err.column) == ({"subject_uuid": uid(3)}, "nickname")
    assert db.count(Subject) == 0


def test_a_prepared_insert_sends_later_what_insert_new_sends(pipeline: Database) -> None:
    """Encoded and cut into statements with no connection at hand, then sent in a transaction
    opened afterwards: the same statements, rows and ChangeSet as insert_new."""
    db = pipeline
    rows = [subject_row(n) for n in range(5)]
    prepared = prepare_insert(db, Subject, rows, batch_rows=2)
    assert len(prepared.parts) == 3 and prepared.inserted == [(uid(n),) for n in range(5)]
    with statements(db) as sent, db.transaction() as conn:
        cs = prepared.send(db, conn)
    assert cs.inserted == [(uid(n),) for n in range(5)] and not cs.updated
    assert len([s for s in sent if s.startswith("INSERT INTO")]) == 3
    assert db.count(Subject) == 5
    # Sent again, the rows are stored: refused as insert_new refuses them.
    with pytest.raises(RowError, match="already stored"), db.transaction() as conn:
        prepared.send(db, conn)
    assert db.count(Subject) == 5


def test_a_row_that_fails_its_model_is_refused_before_anything_is_sent(
    pipeline: Database,
) -> None:
    with pytest.raises(RowError) as info:
        prepare_insert(pipeline, Subject, [subject_row(1), subject_row(2, sex="X")])
    assert (info.value.key, info.value.column) == ({"subject_uuid": uid(2)}, "sex")


def test_the_database_enforces_foreign_keys(db: Database) -> None:
    with db.engine.connect() as conn:
        assert enforces_foreign_keys(conn)
    # A connection that does not: what insert_new must not be used on.
    off = {
        "sqlite": "PRAGMA foreign_keys=OFF",
        "mysql": "SET SESSION foreign_key_checks = 0",
        "postgresql": "SET session_replication_role = replica",
    }[db.dialect]
    with db.engine.connect() as conn:
        if db.dialect == "sqlite":  # no effect inside a transaction: before SQLAlchemy's BEGIN
            conn.connection.dbapi_connection.execute(off)  # type: ignore[union-attr]
        else:
            conn.exec_driver_sql(off)
        assert not enforces_foreign_keys(conn)
        conn.invalidate()  # not back into the pool with checks off
