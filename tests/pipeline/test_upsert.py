"""Tests for limsync.pipeline.upsert: exact ChangeSets, batching, round trips and bad input."""

from __future__ import annotations

import datetime as dt
import gc
import tempfile
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pytest
from example import (
    LAB,
    SCHEMAS,
    Lab,
    Projection,
    Session,
    SessionStats,
    Subject,
    probe_row,
    session_row,
    subject_row,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import Field

from limsync.errors import MissingParentError, RowError
from limsync.pipeline import ChangeSet, Database, Key, Manual, Schema, SqlType, upsert
from limsync.pipeline.upsert import missing_parents, validate_rows
from limsync.testing.sql import statements


@pytest.fixture
def pipeline(db: Database) -> Database:
    """The example pipeline declared, with its one lab."""
    db.declare(*SCHEMAS)
    with db.transaction() as conn:
        upsert(db, conn, Lab, [LAB])
    return db


def write(db: Database, table: Any, rows: Any, **options: Any) -> ChangeSet:
    """Upsert in a transaction of its own."""
    with db.transaction() as conn:
        return upsert(db, conn, table, rows, **options)


def subject_key(n: int) -> tuple[uuid.UUID]:
    return (uuid.UUID(int=n + 1),)


# --- exact ChangeSets ---------------------------------------------------------------------------


def test_changesets_are_exact_and_a_repeat_changes_nothing(pipeline: Database) -> None:
    db = pipeline
    rows = [subject_row(n) for n in range(5)]
    cs = write(db, Subject, rows)
    assert cs.table == "subject.subject"
    assert cs.inserted == [subject_key(n) for n in range(5)]
    assert cs.updated == [] and cs.unchanged == []
    assert cs.changed and cs.counts() == {"inserted": 5, "updated": 0, "unchanged": 0}

    again = write(db, Subject, rows)
    assert again.counts() == {"inserted": 0, "updated": 0, "unchanged": 5}
    assert not again.changed

    changed = [
        subject_row(0),
        subject_row(1, nickname="renamed"),
        subject_row(2, json_extra={"cage": "C9"}),
        subject_row(3),
        subject_row(7),
    ]
    cs = write(db, Subject, changed)
    assert cs.inserted == [subject_key(7)]
    assert cs.updated == [subject_key(1), subject_key(2)]
    assert cs.unchanged == [subject_key(0), subject_key(3)]
    assert db.count(Subject) == 6
    total = ChangeSet("subject.subject")
    total.extend(again)
    total.extend(cs)
    assert total.counts() == {"inserted": 1, "updated": 2, "unchanged": 7}


def test_every_column_type_round_trips_and_is_idempotent(pipeline: Database) -> None:
    db = pipeline
    subjects = [subject_row(0), subject_row(1, birth_date=None, weight=None, json_extra=None)]
    sessions = [
        session_row(
            0, 0, rig_temperature=1.2345678, end_time=dt.datetime(2024, 1, 1, 0, 0, 0, 999999)
        ),
        session_row(
            0,
            1,
            lab_name="cortexlab",
            n_trials=None,
            task_protocol=None,
            extended_qc=None,
            trace=None,
            end_time=None,
            rig_temperature=None,
        ),
        session_row(
            1, 0, trace=np.arange(12, dtype=np.int16).reshape(3, 4), extended_qc={"list": [1, "x"]}
        ),
    ]
    probes = [
        probe_row(0, 0, "probe00"),
        probe_row(0, 0, "probe01", raw_header=None, depth_um=None),
    ]
    stats = [
        {
            "subject_uuid": s["subject_uuid"],
            "session_start": s["session_start"],
            "mean_trace": 0.1 + i,
            "n_samples": 16,
        }
        for i, s in enumerate(sessions)
    ]
    plan = [
        (Subject, subjects),
        (Session, sessions),
        (Session.Probe, probes),
        (SessionStats, stats),
    ]
    for table, rows in plan:
        assert len(write(db, table, rows).inserted) == len(rows)
    for table, rows in plan:
        assert write(db, table, rows).counts()["unchanged"] == len(rows), table.spec.name

    fetched = db.fetch(Subject)
    assert fetched[0] == {**subjects[0], "weight": Decimal("20.50"), "alive": True}
    assert fetched[1]["birth_date"] is None and fetched[1]["json_extra"] is None
    assert isinstance(fetched[0]["subject_uuid"], uuid.UUID)
    assert isinstance(fetched[0]["birth_date"], dt.date)

    by_key = {(r["subject_uuid"], r["session_start"]): r for r in db.fetch(Session)}
    first = by_key[(sessions[0]["subject_uuid"], sessions[0]["session_start"])]
    np.testing.assert_array_equal(first["trace"], sessions[0]["trace"])
    assert first["session_uuid"] == sessions[0]["session_uuid"]
    assert first["session_start"].microsecond == 123456  # datetime(6) keeps microseconds
    assert first["end_time"] == dt.datetime(2024, 1, 1, 0, 0, 0, 999000)  # datetime(3) truncates
    assert first["rig_temperature"] == float(np.float32(1.2345678))  # exactly, even on MariaDB
    assert first["extended_qc"] == sessions[0]["extended_qc"]
    assert first["qc"] == "PASS" and first["lab_name"] is None and first["n_trials"] == 400
    empty = by_key[(sessions[1]["subject_uuid"], sessions[1]["session_start"])]
    assert empty["lab_name"] == "cortexlab"
    assert all(empty[c] is None for c in ("n_trials", "trace", "end_time", "rig_temperature"))
    ints = by_key[(sessions[2]["subject_uuid"], sessions[2]["session_start"])]
    assert ints["trace"].dtype == np.int16 and ints["trace"].shape == (3, 4)
    assert ints["extended_qc"] == {"list": [1, "x"]}

    fetched_probes = db.fetch(Session.Probe)
    assert fetched_probes[0] == {**probes[0], "projection": Projection.RIGHT.value}
    assert fetched_probes[1]["raw_header"] is None and fetched_probes[1]["depth_um"] is None
    assert [r["mean_trace"] for r in db.fetch(SessionStats)] == sorted(
        s["mean_trace"] for s in stats
    )


def test_inputs_may_be_strings_and_iterators(pipeline: Database) -> None:
    db = pipeline

    def rows() -> Iterator[dict[str, Any]]:
        for n in range(3):
            yield subject_row(
                n, subject_uuid=str(uuid.UUID(int=n + 1)), birth_date=f"2023-02-0{n + 1}"
            )

    cs = write(db, Subject, rows(), batch_rows=2)
    assert cs.inserted == [subject_key(n) for n in range(3)]
    assert db.fetch(Subject)[2]["birth_date"] == dt.date(2023, 2, 3)
    # the same rows as objects are the same rows
    assert write(db, Subject, [subject_row(0, birth_date=dt.date(2023, 2, 1))]).counts() == {
        "inserted": 0,
        "updated": 0,
        "unchanged": 1,
    }


def test_duplicates_in_one_call_last_wins(pipeline: Database) -> None:
    db = pipeline
    write(db, Subject, [subject_row(1)])
    for batch_rows in (1000, 1):  # duplicates within one batch, and across batches
        cs = write(
            db,
            Subject,
            [
                subject_row(1, nickname="first"),
                subject_row(2, nickname="new-a"),
                subject_row(1, nickname=f"last-{batch_rows}"),
                subject_row(2, nickname=f"new-{batch_rows}"),
            ],
            batch_rows=batch_rows,
        )
        if batch_rows == 1000:
            assert (cs.inserted, cs.updated) == ([subject_key(2)], [subject_key(1)])
        else:
            assert (cs.updated, cs.unchanged) == ([subject_key(1), subject_key(2)], [])
        nicknames = {(r["subject_uuid"],): r["nickname"] for r in db.fetch(Subject)}
        assert nicknames == {
            subject_key(1): f"last-{batch_rows}",
            subject_key(2): f"new-{batch_rows}",
        }
    # written then restored within one call: relative to before the call, nothing changed
    cs = write(
        db,
        Subject,
        [subject_row(1, nickname="tmp"), subject_row(1, nickname="last-1")],
        batch_rows=1,
    )
    assert cs.counts() == {"inserted": 0, "updated": 0, "unchanged": 1}


def test_keys_are_compared_as_stored(pipeline: Database) -> None:
    """Two datetimes that truncate to the same datetime(3) key are one row."""
    db = pipeline
    schema = Schema("keys")

    class Tick(Manual):
        __schema__ = schema
        at: Annotated[dt.datetime, Key, SqlType("datetime(3)")]
        value: int

    db.declare(Tick)
    cs = write(
        db,
        Tick,
        [
            {"at": dt.datetime(2024, 1, 1, 0, 0, 0, 123100), "value": 1},
            {"at": dt.datetime(2024, 1, 1, 0, 0, 0, 123900), "value": 2},
        ],
    )
    assert len(cs.inserted) == 1
    assert db.fetch(Tick) == [{"at": dt.datetime(2024, 1, 1, 0, 0, 0, 123000), "value": 2}]


# --- only changed rows are written ----------------------------------------------------------------


def _install_write_log(db: Database) -> tuple[str, list[str]]:
    """A table logging every row INSERT (I) and UPDATE (U) on subject, and its DDL."""
    subject = db.qualified(Subject.spec)
    if db.dialect == "sqlite":
        log = db.quote(f"{db.physical_schema('subject')}.write_log")
        ddl = [f"CREATE TABLE {log} (op TEXT)"] + [
            f"CREATE TRIGGER {db.quote(f'log_{op}')} AFTER {event} ON {subject} "
            f"BEGIN INSERT INTO {log} VALUES ('{op}'); END"
            for op, event in (("I", "INSERT"), ("U", "UPDATE"))
        ]
    elif db.dialect == "mysql":
        schema = db.quote(db.physical_schema("subject"))
        log = f"{schema}.write_log"
        ddl = [f"CREATE TABLE {log} (op CHAR(1))"] + [
            f"CREATE TRIGGER {schema}.log_{op} AFTER {event} ON {subject} "
            f"FOR EACH ROW INSERT INTO {log} VALUES ('{op}')"
            for op, event in (("I", "INSERT"), ("U", "UPDATE"))
        ]
    else:
        schema = db.quote(db.physical_schema("subject"))
        log = f"{schema}.write_log"
        ddl = [
            f"CREATE TABLE {log} (op TEXT)",
            f"CREATE FUNCTION {schema}.log_write() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN INSERT INTO {log} VALUES (left(TG_OP, 1)); RETURN NULL; END $$",
            f"CREATE TRIGGER log_write AFTER INSERT OR UPDATE ON {subject} "
            f"FOR EACH ROW EXECUTE FUNCTION {schema}.log_write()",
        ]
    return log, ddl


def test_unchanged_rows_are_not_rewritten(pipeline: Database) -> None:
    db = pipeline
    log, ddl = _install_write_log(db)
    with db.transaction() as conn:
        for statement in ddl:
            conn.exec_driver_sql(statement)

    def logged() -> list[str]:
        with db.engine.connect() as conn:
            ops = [r[0] for r in conn.exec_driver_sql(f"SELECT op FROM {log}")]
        with db.transaction() as conn:
            conn.exec_driver_sql(f"DELETE FROM {log}")
        return sorted(ops)

    rows = [subject_row(n) for n in range(6)]
    write(db, Subject, rows)
    assert logged() == ["I"] * 6
    write(db, Subject, rows)
    assert logged() == []  # nothing written at all
    # Someone edits two rows behind our back: the sync notices and restores exactly those.
    with db.transaction() as conn:
        conn.exec_driver_sql(
            f"UPDATE {db.qualified(Subject.spec)} SET nickname = 'edited' "
            f"WHERE nickname IN ('SW002', 'SW004')"
        )
    assert logged() == ["U", "U"]
    cs = write(db, Subject, rows)
    assert cs.updated == [subject_key(2), subject_key(4)]
    assert logged() == ["U", "U"]
    assert [r["nickname"] for r in db.fetch(Subject)] == [f"SW{n:03d}" for n in range(6)]


def test_case_and_trailing_spaces_are_changes(pipeline: Database) -> None:
    """MySQL's collations call 'sw' and 'SW ' equal: the comparison must not."""
    db = pipeline
    write(db, Subject, [subject_row(n) for n in range(3)])
    cs = write(
        db,
        Subject,
        [subject_row(0, nickname="sw000"), subject_row(1, nickname="SW001 "), subject_row(2)],
    )
    assert (cs.updated, cs.unchanged) == ([subject_key(0), subject_key(1)], [subject_key(2)])
    assert [r["nickname"] for r in db.fetch(Subject)] == ["sw000", "SW001 ", "SW002"]


def test_values_stored_in_another_spelling_are_not_rewritten(pipeline: Database) -> None:
    """JSON written by another tool (spaces, other key order) is the same value: unchanged."""
    db = pipeline
    if db.dialect == "postgresql":
        pytest.skip("jsonb keeps no spelling")
    log, ddl = _install_write_log(db)
    rows = [subject_row(0, json_extra={"cage": "C1", "b": [1, 2]})]
    write(db, Subject, rows)
    with db.transaction() as conn:
        conn.exec_driver_sql(
            f"UPDATE {db.qualified(Subject.spec)} SET json_extra = "
            """'{"b": [1, 2],  "cage": "C1"}'"""
        )
        for statement in ddl:
            conn.exec_driver_sql(statement)
    assert write(db, Subject, rows).counts() == {"inserted": 0, "updated": 0, "unchanged": 1}
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql(f"SELECT COUNT(*) FROM {log}").scalar_one() == 0


# --- batching -------------------------------------------------------------------------------------


def test_batches_are_bounded_by_rows_and_by_bytes(pipeline: Database) -> None:
    db = pipeline
    write(db, Subject, [subject_row(0)])
    rng = np.random.default_rng(7)
    traces = [rng.random(20_000) for _ in range(4)]  # about 160 kB each, incompressible
    rows = [session_row(0, n, trace=traces[n]) for n in range(4)]

    def inserts(sent: list[str]) -> int:
        return sum(s.lstrip().upper().startswith("INSERT") for s in sent)

    with statements(db) as sent:
        cs = write(db, Session, rows, batch_rows=3)
    assert inserts(sent) == 2 and len(cs.inserted) == 4
    # Stored rows from here on: no plain INSERT tried first, so every INSERT is a write.
    rows = [session_row(0, n, trace=traces[n] + 1) for n in range(4)]
    with statements(db) as sent:
        # One row (hex: 320 kB) per statement.
        cs = write(db, Session, rows, batch_bytes=400_000, optimistic=False)
    assert inserts(sent) == 4 and len(cs.updated) == 4
    rows = [session_row(0, n, trace=traces[n] + 2) for n in range(4)]
    with statements(db) as sent:
        # A row larger than the limit still goes.
        cs = write(db, Session, rows, batch_bytes=1_000, optimistic=False)
    assert inserts(sent) == 4 and len(cs.updated) == 4
    with statements(db) as sent:
        cs = write(db, Session, rows, optimistic=False)
    assert inserts(sent) == 0 and len(cs.unchanged) == 4  # nothing changed: no INSERT at all
    for fetched, trace in zip(db.fetch(Session), traces, strict=True):
        np.testing.assert_array_equal(fetched["trace"], trace + 2)


def test_a_first_load_is_plain_inserts_and_stored_rows_take_the_diff(pipeline: Database) -> None:
    db = pipeline
    write(db, Subject, [subject_row(0)])
    rows = [session_row(0, n) for n in range(40)]

    def kinds(sent: list[str]) -> list[str]:
        out = []
        for s in sent:
            text = s.lstrip().upper()
            if "ON CONFLICT" in text or "ON DUPLICATE KEY" in text:
                out.append("upsert")
            elif text.startswith("INSERT"):
                out.append("insert")
            elif text.startswith(("WITH", "SET STATEMENT", "SELECT")) and "LEFT JOIN" in text:
                out.append("diff")
        return out

    with statements(db) as sent:
        cs = write(db, Session, rows, batch_rows=4)
    assert kinds(sent) == ["insert"] * 10 and len(cs.inserted) == 40
    # All stored: the first batch's INSERT is refused, and the next tries are spaced out
    # (batches 1, 3 and 7 of ten), each refused batch taking the diff as the others do.
    changed = [session_row(0, n, n_trials=7) for n in range(40)]
    with statements(db) as sent:
        cs = write(db, Session, changed, batch_rows=4)
    assert kinds(sent).count("insert") == 3
    assert kinds(sent).count("diff") == 10 and kinds(sent).count("upsert") == 10
    assert len(cs.updated) == 40 and db.count(Session) == 40
    # New and stored rows in one batch: the INSERT is refused, nothing of it stays.
    mixed = [session_row(0, n) for n in range(38, 42)]
    cs = write(db, Session, mixed, batch_rows=4)
    assert (len(cs.inserted), len(cs.updated)) == (2, 2) and db.count(Session) == 42


def test_a_large_blob_round_trips(pipeline: Database) -> None:
    db = pipeline
    write(db, Subject, [subject_row(0)])
    big = np.random.default_rng(1).random((250, 1000))  # 2 MB
    write(db, Session, [session_row(0, 0, trace=big)])
    np.testing.assert_array_equal(db.fetch(Session)[0]["trace"], big)
    assert write(db, Session, [session_row(0, 0, trace=big)]).counts()["unchanged"] == 1


def test_reflected_float32_and_datetime3_columns(db: Database) -> None:
    """Writing through a reflected spec: values are stored at the column's precision, and a
    second write of the same values changes nothing (MariaDB prints FLOAT with 6 digits)."""
    schema = Schema("sensors")

    class Reading(Manual):
        __schema__ = schema
        sensor: Annotated[str, Key, Field(max_length=8)]
        at: Annotated[dt.datetime, Key, SqlType("datetime(3)")]
        value: Annotated[float, SqlType("float32")]
        note: str | None = None

    db.declare(Reading)
    other = Database(db.url, schema_prefix=db.schema_prefix)
    try:
        reading = other.reflect("sensors", "reading")
        assert not reading.declared
        assert reading.column("value").type.kind == "float32"
        if db.dialect != "sqlite":  # SQLite keeps no precision (and then truncates nothing)
            assert reading.column("at").type.dj_type == "datetime(3)"
        at = dt.datetime(2024, 1, 1, 1, 2, 3, 456789)
        rows = [
            {"sensor": "t1", "at": at, "value": 123.456789},
            {"sensor": "t2", "at": at, "value": 1.2345678e-7, "note": "tiny"},
        ]
        assert len(write(other, reading, rows).inserted) == 2
        assert write(other, reading, rows).counts()["unchanged"] == 2
        stored = other.fetch(reading)
        assert [r["value"] for r in stored] == [float(np.float32(r["value"])) for r in rows]
        stored_at = at.replace(microsecond=456000) if db.dialect != "sqlite" else at
        assert [r["at"] for r in stored] == [stored_at, stored_at]
        # the declared spec reads the same rows
        assert [r["value"] for r in db.fetch(Reading)] == [r["value"] for r in stored]
    finally:
        other.dispose()


# --- bad input ------------------------------------------------------------------------------------


def _bad_batch(db: Database, table: Any, rows: list[dict[str, Any]], **options: Any) -> RowError:
    """Upsert rows with one bad row, one row per batch; return the error, check nothing stayed."""
    before = db.count(table)
    with pytest.raises(RowError) as info, db.transaction() as conn:
        upsert(db, conn, table, rows, batch_rows=1, **options)
    assert db.count(table) == before  # the good rows before the bad one were rolled back
    return info.value


@pytest.mark.parametrize(
    ("change", "column", "problem"),
    [
        ({"sex": "X"}, "sex", "Input should be 'M', 'F' or 'U'"),
        ({"nickname": "x" * 65}, "nickname", "at most 64 characters"),
        ({"weight": "heavy"}, "weight", "valid decimal"),
        ({"birth_date": "yesterday"}, "birth_date", "valid date"),
        ({"colour": "brown"}, "colour", "is not a column of this table"),
        ({"nickname": None, "alive": "perhaps"}, "nickname", "(and 1 more problem in this row)"),
    ],
)
def test_a_row_failing_its_model(
    pipeline: Database, change: dict[str, Any], column: str, problem: str
) -> None:
    rows = [subject_row(1), subject_row(2, **change), subject_row(3)]
    err = _bad_batch(pipeline, Subject, rows)
    assert (err.table, err.key, err.column) == (
        "subject.subject",
        {"subject_uuid": uuid.UUID(int=3)},
        column,
    )
    assert problem in err.problem
    assert str(err).startswith("table subject.subject key subject_uuid=UUID(")
    assert f"column {column}: " in str(err)


def test_a_missing_required_column(pipeline: Database) -> None:
    row = subject_row(1)
    del row["nickname"]
    err = _bad_batch(pipeline, Subject, [row])
    assert (err.column, err.problem) == ("nickname", "is required")


def test_a_foreign_key_violation(pipeline: Database) -> None:
    db = pipeline
    write(db, Subject, [subject_row(0)])
    err = _bad_batch(db, Session, [session_row(0, 0), session_row(5, 0), session_row(0, 1)])
    assert isinstance(err, MissingParentError)
    assert err.table == "acquisition.session" and err.column == "subject_uuid"
    assert err.key == {
        "subject_uuid": uuid.UUID(int=6),
        "session_start": session_row(5, 0)["session_start"],
    }
    assert f"references subject.subject (subject_uuid={uuid.UUID(int=6)!r})" in err.problem
    # a nullable reference to a lab that does not exist
    err = _bad_batch(db, Session, [session_row(0, 3, lab_name="nolab")])
    assert isinstance(err, MissingParentError) and err.column == "lab_name"
    assert "references subject.#lab (lab_name='nolab'), which does not exist" in str(err)


def test_errors_the_database_finds(pipeline: Database) -> None:
    """With validation off, the database's refusal is still one RowError naming the table."""
    db = pipeline
    good = Subject.Row.model_validate(subject_row(1)).model_dump()
    bad = {**Subject.Row.model_validate(subject_row(2)).model_dump(), "nickname": None}
    err = _bad_batch(db, Subject, [good, bad], validate=False)
    assert err.table == "subject.subject" and err.column == "nickname"
    assert err.key == {"subject_uuid": uuid.UUID(int=3)}
    if db.dialect != "sqlite":  # SQLite does not enforce varchar lengths
        long = {**good, "nickname": "x" * 65}
        err = _bad_batch(db, Subject, [long], validate=False)
        assert err.table == "subject.subject"
        assert "long" in err.problem.lower()
    # the database's own foreign key, when limsync does not check parents
    orphan = Session.Row.model_validate(session_row(9, 0)).model_dump()
    err = _bad_batch(db, Session, [orphan], check_parents=False)
    assert err.table == "acquisition.session" and not isinstance(err, MissingParentError)
    assert "foreign key" in err.problem.lower()


def test_validate_rows_and_missing_parents(pipeline: Database) -> None:
    db = pipeline
    good, bad = validate_rows(Subject.spec, [subject_row(0), subject_row(1, sex="?"), {"x": 1}])
    assert len(good) == 1 and [i for i, _ in bad] == [1, 2]
    assert bad[1][1].key == {} and bad[1][1].column in ("subject_uuid", "x", "nickname")
    write(db, Subject, good)
    sessions, _ = validate_rows(Session.spec, [session_row(0, 0), session_row(3, 0)])
    with db.engine.connect() as conn:
        problems = missing_parents(db, conn, Session, sessions)
    assert [i for i, _ in problems] == [1]
    assert problems[0][1].key["subject_uuid"] == uuid.UUID(int=4)


# --- keys spilled to a file -----------------------------------------------------------------------


@pytest.fixture
def spill_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Spill files go to a directory of the test's own, where the test can count them."""
    spills = tmp_path / "spills"
    spills.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spills))
    return spills


def test_spilled_keys_keep_their_exact_status_across_batches(
    pipeline: Database, spill_dir: Path
) -> None:
    db = pipeline
    write(db, Subject, [subject_row(n) for n in range(2)])
    stored = [session_row(s, n) for s in range(2) for n in range(3)]  # a composite key
    write(db, Session, stored)

    def rows() -> list[dict[str, Any]]:
        # One row a batch, two keys in memory: every key comes back after it was spilled.
        restored = [session_row(1, n) for n in range(3)]
        return [
            session_row(0, 0, n_trials=1),  # changed ...
            session_row(0, 1),  # unchanged ...
            session_row(0, 5),  # new ...
            session_row(1, 0, n_trials=2),  # changed, then restored
            *[session_row(0, n) for n in range(7, 10)],
            session_row(0, 0, n_trials=3),  # ... changed again: updated
            session_row(0, 1, n_trials=4),  # ... then changed: updated
            session_row(0, 5, n_trials=5),  # ... then changed: still inserted
            *restored,  # session (1, 0) restored: unchanged; (1, 1), (1, 2) unchanged
            {**session_row(0, 7), "subject_uuid": str(uuid.UUID(int=1))},  # the same key as str
        ]

    def key(s: int, n: int) -> tuple[Any, ...]:
        row = session_row(s, n)
        return (row["subject_uuid"], row["session_start"])

    with write(db, Session, rows(), batch_rows=1, memory_keys=2) as cs:
        assert len(list(spill_dir.iterdir())) == 1
        assert cs.inserted == [key(0, 5), key(0, 7), key(0, 8), key(0, 9)]
        assert cs.updated == [key(0, 0), key(0, 1)]
        assert cs.unchanged == [key(1, 0), key(1, 1), key(1, 2)]
    assert list(spill_dir.iterdir()) == []
    # The same rows again, spilled and not: the same ChangeSet.
    assert write(db, Session, rows(), batch_rows=1, memory_keys=2) == write(
        db, Session, rows(), batch_rows=1, memory_keys=None
    )
    gc.collect()
    assert list(spill_dir.iterdir()) == []


def test_a_failed_upsert_leaves_no_spill_file(pipeline: Database, spill_dir: Path) -> None:
    rows = [subject_row(n) for n in range(5)] + [subject_row(5, lab_name="nowhere")]
    with pytest.raises(MissingParentError):
        write(pipeline, Subject, rows, batch_rows=1, memory_keys=2)
    assert list(spill_dir.iterdir()) == []


# --- property: upserts behave like a dict ---------------------------------------------------------

prop = Schema("prop")


class Item(Manual):
    """A small table for the property test."""

    __schema__ = prop
    item: Annotated[int, Key, SqlType("int16")]
    tag: Annotated[str, Key, Field(max_length=4)]
    label: Annotated[str, Field(max_length=12)]
    amount: float | None = None
    payload: dict[str, Any] | None = None


item_rows = st.fixed_dictionaries(
    {
        "item": st.integers(0, 5),
        "tag": st.sampled_from(["a", "b"]),
        # "x", "X" and "x " are three labels: no collation may call them equal
        "label": st.text("xXé ", max_size=3),
        "amount": st.sampled_from([None, 0.5, 1.0, -2.25, 1e10, 0.0, -0.0]),
        "payload": st.sampled_from([None, {}, {"k": 1}, {"k": [1, 2]}, {"a": {"b": None}}]),
    }
)
calls = st.lists(
    st.tuples(st.lists(item_rows, max_size=10), st.sampled_from([1, 3, 1000])),
    min_size=1,
    max_size=4,
)


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(calls=calls)
@pytest.mark.parametrize("memory_keys", [None, 3], ids=["in-memory", "spilled"])
def test_upserts_behave_like_a_dict(
    db: Database, memory_keys: int | None, calls: list[tuple[list[dict[str, Any]], int]]
) -> None:
    db.declare(Item)  # once per backend; later examples find it in place
    with db.transaction() as conn:
        conn.exec_driver_sql(f"DELETE FROM {db.qualified(Item.spec)}")
    model: dict[tuple[int, str], dict[str, Any]] = {}
    for rows, batch_rows in calls:
        final: dict[tuple[int, str], dict[str, Any]] = {}
        for row in rows:
            final[(row["item"], row["tag"])] = row
        expected = ChangeSet(
            "prop.item",
            inserted=[k for k in final if k not in model],
            updated=[k for k in final if k in model and final[k] != model[k]],
            unchanged=[k for k in final if k in model and final[k] == model[k]],
        )
        assert write(db, Item, rows, batch_rows=batch_rows, memory_keys=memory_keys) == expected
        model.update(final)
        assert db.fetch(Item) == [model[k] for k in sorted(model)]
