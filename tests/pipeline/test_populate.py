"""Tests for limsync.pipeline.populate: make, populate, errors, outbox-driven recompute."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import pytest
import sqlalchemy as sa
from populate_tables import (
    KeptStat,
    Session,
    SessionStat,
    StatSum,
    Subject,
    SubjectWeight,
    SubjectWeightLogged,
    Weighing,
    derived,
    upstream,
)

from limsync.errors import DeclarationError, PopulateError
from limsync.pipeline import (
    Computed,
    Database,
    Key,
    Manual,
    Part,
    Ref,
    Schema,
    ledger,
    state,
    upsert,
)
from limsync.pipeline.populate import after_sync, backlog, errors, populate, process_outbox
from limsync.pipeline.populate import jobs as jobs_mod
from limsync.pipeline.tables import MakeResult


@pytest.fixture
def make_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The file each make call appends to."""
    path = tmp_path / "makes.log"
    monkeypatch.setenv("LIMSYNC_TEST_MAKE_LOG", str(path))
    return path


def made(path: Path) -> Counter[str]:
    """How often each (table, key) was made so far; the log is emptied."""
    if not path.exists():
        return Counter()
    lines = path.read_text().splitlines()
    path.unlink()
    return Counter(lines)


@pytest.fixture
def pipeline(db: Database) -> Database:
    """Upstream tables with 3 subjects x 2 sessions and 2 weighings per subject."""
    db.declare(upstream, derived)
    with db.transaction() as conn:
        upsert(db, conn, Subject, [{"subject_id": s, "name": f"s{s}"} for s in range(3)])
        upsert(db, conn, Session, [
            {"subject_id": s, "session_no": n, "value": float(10 * s + n)}
            for s in range(3) for n in range(2)
        ])  # fmt: skip
        upsert(db, conn, Weighing, [
            {"weighing_id": 10 * s + i, "subject_id": s, "weight": 20.0 + i}
            for s in range(3) for i in range(2)
        ])  # fmt: skip
    return db


def sync_change(db: Database, table: Any, rows: list[dict[str, Any]], change: str) -> None:
    """What the sync engine does: write rows and their outbox entries in one transaction."""
    st = state.ensure(db)
    with db.transaction() as conn:
        if change == "delete":
            keys = [table.spec.key_of(r) for r in rows]
            from limsync.pipeline import cascade

            cascade.delete(db, conn, table, keys)
        else:
            upsert(db, conn, table, rows)
            keys = [table.spec.key_of(r) for r in rows]
        ledger.emit(conn, st, table.spec.qualname, keys, change, 1)


def stat(db: Database, subject: int, session: int) -> float:
    rows = [
        r for r in db.fetch(SessionStat) if (r["subject_id"], r["session_no"]) == (subject, session)
    ]
    return float(rows[0]["doubled"])


# --- populate


def test_populate_makes_every_missing_key_once_with_its_parts(
    pipeline: Database, make_log: Path
) -> None:
    db = pipeline
    report = populate(db, [SessionStat])
    assert report.ok and report.tables[0].made == 6 and report.tables[0].queued == 6
    assert db.count(SessionStat) == 6 and db.count(SessionStat.Channel) == 12
    assert stat(db, 2, 1) == 42.0
    assert sum(made(make_log).values()) == 6
    again = populate(db, [SessionStat])
    assert again.tables[0].made == 0 and made(make_log) == Counter()
    runs = state.runs(db, connector="populate")
    assert [r["kind"] for r in runs[:2]] == ["populate", "populate"]
    assert runs[0]["counts"]["made"] == 0 and runs[1]["counts"]["made"] == 6


def test_restriction_limits_the_keys(pipeline: Database, make_log: Path) -> None:
    db = pipeline
    report = populate(db, [SessionStat], restriction={"subject_id": [0, 2]})
    assert report.tables[0].made == 4
    assert {r["subject_id"] for r in db.fetch(SessionStat)} == {0, 2}
    with pytest.raises(PopulateError, match="no key-source table has a column 'nope'"):
        populate(db, [SessionStat], restriction={"nope": 1})


def test_a_failing_make_is_recorded_and_retried_on_request(
    pipeline: Database, make_log: Path
) -> None:
    db = pipeline
    with db.transaction() as conn:
        upsert(db, conn, Session, [{"subject_id": 1, "session_no": 0, "value": -1.0}])
    report = populate(db, [SessionStat])
    assert not report.ok
    assert report.tables[0].made == 5 and report.tables[0].failed == 1
    assert report.tables[0].errors == 1
    (err,) = errors(db)
    assert err["table_name"] == SessionStat.spec.qualname and err["row_key"] == "[1,0]"
    assert "ValueError: negative value -1.0" in err["error_message"]
    assert "Traceback" in err["error_stack"] and "populate_tables.py" in err["error_stack"]
    # Nothing of the failed key was written, its part rows neither.
    assert (1, 0) not in {(r["subject_id"], r["session_no"]) for r in db.fetch(SessionStat.Channel)}
    assert backlog(db)["tables"][SessionStat.spec.qualname]["errors"] == 1
    made(make_log)
    # Not retried unless asked.
    assert populate(db, [SessionStat]).tables[0].made == 0 and made(make_log) == Counter()
    with db.transaction() as conn:
        upsert(db, conn, Session, [{"subject_id": 1, "session_no": 0, "value": 3.0}])
    retried = populate(db, [SessionStat], retry_errors=True)
    assert retried.ok and retried.tables[0].made == 1 and stat(db, 1, 0) == 6.0
    assert errors(db) == [] and made(make_log) == Counter({"SessionStat 1,0": 1})


def test_make_returning_a_row_of_another_key_is_an_error(db: Database) -> None:
    s = Schema("popbad")

    class Up(Manual):
        __schema__ = s
        up_id: Annotated[int, Key]

    class Wrong(Computed):
        __schema__ = s
        __references__ = (Ref(Up, key=True),)
        x: int

        def make(self, key: dict[str, Any]) -> MakeResult:
            return [{"up_id": key["up_id"] + 1, "x": 1}]

    db.declare(s)
    with db.transaction() as conn:
        upsert(db, conn, Up, [{"up_id": 1}])
    report = populate(db, [Wrong])
    assert report.tables[0].failed == 1
    assert "returned a popbad.__wrong row for up_id=2" in errors(db)[0]["error_message"]


def test_make_may_insert_its_rows_instead_of_returning_them(db: Database) -> None:
    s = Schema("popins")

    class Up(Manual):
        __schema__ = s
        up_id: Annotated[int, Key]

    class Inserted(Computed):
        __schema__ = s
        __references__ = (Ref(Up, key=True),)
        x: int

        class Item(Part):
            item: Annotated[int, Key]

        def make(self, key: dict[str, Any]) -> MakeResult:
            self.insert1({"x": key["up_id"] * 10})  # DataJoint's habit
            self.insert([(Inserted.Item, {"item": i}) for i in range(key["up_id"])])
            if key["up_id"] == 3:
                raise ValueError("after inserting")  # nothing of this key may land
            return None

    db.declare(s)
    with db.transaction() as conn:
        upsert(db, conn, Up, [{"up_id": i} for i in (1, 2, 3)])
    report = populate(db, [Inserted])
    assert (report.tables[0].made, report.tables[0].failed) == (2, 1)
    assert db.fetch(Inserted) == [{"up_id": 1, "x": 10}, {"up_id": 2, "x": 20}]
    assert sorted((r["up_id"], r["item"]) for r in db.fetch(Inserted.Item)) == [
        (1, 0), (2, 0), (2, 1)
    ]  # fmt: skip
    with pytest.raises(PopulateError, match="insert1 works only inside make"):
        Inserted().insert1({"up_id": 9, "x": 1})


# --- change-driven recompute


def test_an_updated_upstream_row_recomputes_its_derived_rows_and_only_them(
    pipeline: Database, make_log: Path
) -> None:
    db = pipeline
    populate(db, [SessionStat, StatSum])
    before = {(r["subject_id"], r["session_no"]): r for r in db.fetch(StatSum)}
    made(make_log)
    sync_change(db, Session, [{"subject_id": 1, "session_no": 1, "value": 100.0}], "update")
    assert backlog(db)["outbox_pending"] == 1
    report = after_sync(db, [SessionStat, StatSum])
    assert report.outbox is not None
    assert report.outbox.recomputed == {SessionStat.spec.qualname: [(1, 1)]}
    assert made(make_log) == Counter({"SessionStat 1,1": 1, "StatSum 1,1": 1})
    assert stat(db, 1, 1) == 200.0
    after = {(r["subject_id"], r["session_no"]): r for r in db.fetch(StatSum)}
    assert after[(1, 1)]["plus_one"] == 201.0
    assert {k: v for k, v in after.items() if k != (1, 1)} == {
        k: v for k, v in before.items() if k != (1, 1)
    }
    assert db.count(SessionStat.Channel) == 12
    assert backlog(db)["outbox_pending"] == 0
    # Delivered once: a second pass has nothing to do.
    assert after_sync(db, [SessionStat, StatSum]).outbox.processed == 0  # type: ignore[union-attr]
    assert made(make_log) == Counter()


def test_recompute_reads_only_the_affected_keys_never_a_whole_table(
    pipeline: Database, make_log: Path
) -> None:
    """Every statement that reads, deletes or updates a pipeline table during after_sync is
    restricted by bound key values: no key-source scan, no NOT EXISTS over a whole table."""
    db = pipeline
    tables = [SessionStat, StatSum, SubjectWeightLogged]
    populate(db, tables)
    made(make_log)
    sync_change(db, Session, [{"subject_id": 1, "session_no": 1, "value": 100.0}], "update")
    sync_change(db, Session, [{"subject_id": 2, "session_no": 7, "value": 1.0}], "insert")
    sync_change(db, Weighing, [{"weighing_id": 0, "subject_id": 0, "weight": 26.0}], "update")
    sync_change(db, Weighing, [{"weighing_id": 21, "subject_id": 2, "weight": 21.0}], "delete")
    statements: list[str] = []

    def capture(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(" ".join(statement.split()))

    sa.event.listen(db.engine, "before_cursor_execute", capture)
    try:
        report = after_sync(db, tables)
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", capture)
    assert report.ok
    assert made(make_log) == Counter({"SessionStat 1,1": 1, "StatSum 1,1": 1,
                                      "SessionStat 2,7": 1, "StatSum 2,7": 1,
                                      "SubjectWeightLogged 0": 1,
                                      "SubjectWeightLogged 2": 1})  # fmt: skip
    specs = [t.spec for t in (Subject, Session, Weighing, *tables, SessionStat.Channel,
                              SubjectWeightLogged.Input)]  # fmt: skip
    names = {db.qualified(s) for s in specs}
    verbs = ("SELECT", "DELETE", "UPDATE", "WITH")
    reads = [s for s in statements if s.upper().startswith(verbs) and any(n in s for n in names)]
    # The check is not vacuous: the key source, the derived tables and the deletes are there.
    for spec in (Session.spec, SessionStat.spec, StatSum.spec, SubjectWeightLogged.Input.spec):
        assert any(db.qualified(spec) in s for s in reads), spec.qualname
    assert any(s.upper().startswith("DELETE") for s in reads)
    for s in reads:
        assert "NOT EXISTS" not in s.upper(), s
        assert " WHERE " in s.upper() or " JOIN " in s.upper(), s
        assert re.search(r"\?|%[sb(]", s), s  # bound values (qmark, format, binary, named)


def test_new_upstream_keys_are_populated_and_parent_updates_reach_children(
    pipeline: Database, make_log: Path
) -> None:
    db = pipeline
    populate(db, [SessionStat])
    made(make_log)
    sync_change(db, Subject, [{"subject_id": 7, "name": "new"}], "insert")
    sync_change(db, Session, [{"subject_id": 7, "session_no": 0, "value": 1.0}], "insert")
    sync_change(db, Subject, [{"subject_id": 2, "name": "renamed"}], "update")
    report = after_sync(db, [SessionStat])
    assert report.tables[0].made == 3
    assert made(make_log) == Counter({"SessionStat 7,0": 1, "SessionStat 2,0": 1,
                                      "SessionStat 2,1": 1})  # fmt: skip


def test_keep_policy_leaves_derived_rows_but_makes_new_keys(
    pipeline: Database, make_log: Path
) -> None:
    db = pipeline
    populate(db, [KeptStat])
    made(make_log)
    sync_change(db, Session, [{"subject_id": 0, "session_no": 0, "value": 50.0}], "update")
    sync_change(db, Session, [{"subject_id": 0, "session_no": 5, "value": 5.0}], "insert")
    report = after_sync(db, [KeptStat])
    assert report.outbox is not None and report.outbox.kept == {KeptStat.spec.qualname: 1}
    assert made(make_log) == Counter({"KeptStat 0,5": 1})
    rows = {(r["subject_id"], r["session_no"]): r["doubled"] for r in db.fetch(KeptStat)}
    assert rows[(0, 0)] == 0.0 and rows[(0, 5)] == 10.0


def test_depends_on_maps_changed_rows_to_the_keys_that_read_them(
    pipeline: Database, make_log: Path
) -> None:
    db = pipeline
    populate(db, [SubjectWeight])
    made(make_log)
    sync_change(db, Weighing, [{"weighing_id": 99, "subject_id": 2, "weight": 30.0}], "insert")
    sync_change(db, Weighing, [{"weighing_id": 0, "subject_id": 0, "weight": 26.0}], "update")
    report = after_sync(db, [SubjectWeight])
    assert report.outbox is not None
    assert sorted(report.outbox.recomputed[SubjectWeight.spec.qualname]) == [(0,), (2,)]
    assert made(make_log) == Counter({"SubjectWeight 0": 1, "SubjectWeight 2": 1})
    rows = {r["subject_id"]: r for r in db.fetch(SubjectWeight)}
    assert rows[2]["n_weighings"] == 3 and rows[0]["mean_weight"] == 23.5
    # A deleted weighing no longer names its subject: reported, not guessed.
    sync_change(db, Weighing, [{"weighing_id": 99, "subject_id": 2, "weight": 30.0}], "delete")
    gone = after_sync(db, [SubjectWeight])
    assert gone.outbox is not None and gone.outbox.unmapped == {Weighing.spec.qualname: 1}


def test_deleted_inputs_map_through_a_part_that_records_them(
    pipeline: Database, make_log: Path
) -> None:
    db = pipeline
    populate(db, [SubjectWeightLogged])
    made(make_log)
    sync_change(db, Weighing, [{"weighing_id": 21, "subject_id": 2, "weight": 21.0}], "delete")
    report = after_sync(db, [SubjectWeightLogged])
    assert report.outbox is not None and report.outbox.unmapped == {}
    assert made(make_log) == Counter({"SubjectWeightLogged 2": 1})
    rows = {r["subject_id"]: r["n_weighings"] for r in db.fetch(SubjectWeightLogged)}
    assert rows == {0: 2, 1: 2, 2: 1}
    assert db.count(SubjectWeightLogged.Input) == 5


def test_the_outbox_is_redelivered_after_a_failure(
    pipeline: Database, make_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = pipeline
    populate(db, [SessionStat])
    made(make_log)
    sync_change(db, Session, [{"subject_id": 0, "session_no": 1, "value": 7.0}], "update")

    def crash(*_: Any, **__: Any) -> int:
        raise RuntimeError("killed")

    with monkeypatch.context() as m, pytest.raises(RuntimeError):
        m.setattr(jobs_mod, "queue", crash)
        process_outbox(db, [SessionStat])
    # The invalidation rolled back with the failure: the row is still there, the change pending.
    assert stat(db, 0, 1) == 2.0 and backlog(db)["outbox_pending"] == 1
    after_sync(db, [SessionStat])
    assert stat(db, 0, 1) == 14.0 and made(make_log) == Counter({"SessionStat 0,1": 1})


# --- declarations and the job table's migration


def test_declaration_errors_are_raised_when_the_class_is_defined() -> None:
    s = Schema("popdecl")

    class Up(Manual):
        __schema__ = s
        up_id: Annotated[int, Key]

    class Other(Manual):
        __schema__ = s
        other_id: Annotated[int, Key]

    with pytest.raises(DeclarationError, match="__on_change__ must be 'recompute' or 'keep'"):

        class BadPolicy(Computed):
            __schema__ = s
            __references__ = (Ref(Up, key=True),)
            __on_change__ = "sometimes"

    with pytest.raises(DeclarationError, match="shares no column with the primary key"):

        class BadDepends(Computed):
            __schema__ = s
            __references__ = (Ref(Up, key=True),)
            __depends_on__ = (Other,)

    with pytest.raises(DeclarationError, match="only apply to Computed and Imported"):

        class ManualWithPolicy(Manual):
            __schema__ = s
            __on_change__ = "keep"
            x_id: Annotated[int, Key]

    with pytest.raises(DeclarationError, match="do not provide the key column"):

        class BadSource(Computed):
            __schema__ = s
            __references__ = (Ref(Up, key=True),)
            __key_source__ = (Other,)


def test_populate_without_make_says_so(db: Database) -> None:
    s = Schema("popnomake")

    class Up(Manual):
        __schema__ = s
        up_id: Annotated[int, Key]

    class NoMake(Computed):
        __schema__ = s
        __references__ = (Ref(Up, key=True),)

    with pytest.raises(PopulateError, match="NoMake defines no make"):
        populate(db, [NoMake])


def test_upgrade_from_version_1_adds_the_job_table(db: Database) -> None:
    st = state.state_tables(db)
    latest = state.SCHEMA_VERSION  # 2 when the job table came; later versions add more
    assert state.upgrade(db) == (0, latest)
    with db.transaction() as conn:
        st.job.drop(conn)
        conn.execute(st.version.update().values(version=1))
    assert state.current_version(db) == 1
    assert state.upgrade(db) == (1, latest)
    with db.engine.connect() as conn:
        assert sa.inspect(conn).has_table(st.job.name, schema=st.schema)
    assert state.upgrade(db) == (latest, latest)


def test_key_source_override_and_typed_keys(db: Database, make_log: Path) -> None:
    db.declare(upstream, derived)
    with db.transaction() as conn:
        upsert(db, conn, Subject, [{"subject_id": s} for s in range(4)])
        upsert(db, conn, Weighing, [{"weighing_id": 1, "subject_id": 3, "weight": 1.0}])
    s = Schema("popks")

    class Weighed(Computed):
        """Only subjects with a weighing."""

        __schema__ = s
        __references__ = (Ref(Subject, key=True),)
        __key_source__ = (Weighing,)
        n: int

        def make(self, key: dict[str, Any]) -> MakeResult:
            return [{"n": len(self.fetch(Weighing, **key))}]

    assert populate(db, [Weighed]).tables[0].made == 1
    assert db.fetch(Weighed) == [{"subject_id": 3, "n": 1}]


def _keys(rows: list[dict[str, Any]]) -> set[Key]:
    return {(r["subject_id"], r["session_no"]) for r in rows}
