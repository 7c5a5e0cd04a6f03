"""Tests for limsync.sync.writer: the optimistic write of all-new batches and its fallback.

Each outcome is compared with the same batch written the careful way (``optimistic=False``)
into a twin pipeline: the optimistic write must only ever change how fast a batch lands.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel, Field

from limsync.pipeline import Database, Key, Lookup, Manual, Ref, Schema, ledger, state, upsert
from limsync.pipeline.upsert import validate_row
from limsync.sync.report import StreamReport
from limsync.sync.writer import BatchWriter, Item
from limsync.testing.sql import statements

wref = Schema("wref")
wsubj = Schema("wsubj")


class Lab(Lookup):
    """A lab."""

    __schema__ = wref
    lab_name: Annotated[str, Key, Field(max_length=32)]


class Mouse(Manual):
    """A mouse."""

    __schema__ = wsubj
    __references__ = (Lab,)
    mouse_uuid: Annotated[uuid.UUID, Key]
    nickname: Annotated[str, Field(max_length=16)]


class Tag(Manual):
    """Tags of a mouse."""

    __schema__ = wsubj
    __references__ = (Ref(Mouse, key=True),)
    tag: Annotated[str, Key, Field(max_length=16)]


class MouseRec(BaseModel):
    id: int


def uid(n: int) -> uuid.UUID:
    return uuid.UUID(int=n)


def item(n: int, nickname: str | None = None, lab: str = "cortex", **over: Any) -> Item:
    """Record n, producing a Mouse row (mouse ``over.get("mouse", n)``) and one Tag row.

    ``nickname=None`` leaves the row unvalidated with a NULL nickname: a bad value that only
    the database refuses.
    """
    mouse = uid(over.get("mouse", n))
    row: dict[str, Any] = {"mouse_uuid": mouse, "lab_name": lab, "nickname": nickname}
    rows = [(Mouse.spec, row if nickname is None else validate_row(Mouse.spec, row))]
    rows.append((Tag.spec, validate_row(Tag.spec, {"mouse_uuid": mouse, "tag": f"t{n}"})))
    key = (n,)
    raw = {"id": n, "nickname": nickname}
    return Item(key, ledger.key_text(key), raw, MouseRec(id=n), f"hash{n}", rows=rows)


@dataclass
class Outcome:
    landed: list[Item]
    quarantined: list[tuple[str, str, str, Any]]
    report: StreamReport
    sent: list[str]


def prepare(db: Database) -> None:
    db.declare(wref, wsubj)
    state.ensure(db)
    with db.transaction() as conn:
        upsert(db, conn, Lab, [{"lab_name": "cortex"}])


@pytest.fixture
def twin(db: Database, tmp_path: Path) -> Iterator[Database]:
    """A second pipeline on the same server (its schemas dropped with ``db``'s)."""
    # SQLite's index names are global to a file: a file of its own.
    url = f"sqlite:///{tmp_path / 'twin.db'}" if db.dialect == "sqlite" else db.url
    other = Database(url, schema_prefix=db.schema_prefix + "b_", state_schema="limsync")
    prepare(db)
    prepare(other)
    yield other
    other.dispose()


def write(
    db: Database, items: list[Item], writer: BatchWriter | None = None, **options: Any
) -> Outcome:
    writer = writer or BatchWriter(db, state.ensure(db), "mem", **options)
    quarantined: list[tuple[str, str, str, Any]] = []
    sr = StreamReport("mice")
    with statements(db) as sent, db.transaction() as conn:
        landed = writer.write(conn, items, quarantined, sr, 1, "mice")
    return Outcome(landed, quarantined, sr, sent)


def both(db: Database, twin: Database, make: Any) -> tuple[Outcome, Outcome]:
    """The batch ``make()`` written optimistically into ``db`` and carefully into ``twin``."""
    fast = write(db, make())
    careful = write(twin, make(), optimistic=False)
    assert snapshot(db) == snapshot(twin)
    assert [i.ktext for i in fast.landed] == [i.ktext for i in careful.landed]
    # The database's messages name physical tables: the twin's have its schema prefix.
    mine = [
        (k, s, e.replace(twin.schema_prefix, db.schema_prefix), r)
        for k, s, e, r in careful.quarantined
    ]
    assert fast.quarantined == mine
    assert fast.report.to_dict() == careful.report.to_dict()
    return fast, careful


def snapshot(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Rows, ledger entries and outbox rows, comparable across the two pipelines."""
    st = state.ensure(db)
    with db.engine.connect() as conn:
        led = st.ledger.c
        out = st.outbox.c
        return {
            "mouse": sorted((r["mouse_uuid"], r["nickname"]) for r in db.fetch(Mouse)),
            "tag": sorted((r["mouse_uuid"], r["tag"]) for r in db.fetch(Tag)),
            "ledger": sorted(
                tuple(r)
                for r in conn.execute(
                    sa.select(led.source_key, led.content_hash, led.targets, led.state)
                )
            ),
            "outbox": [
                tuple(r)
                for r in conn.execute(
                    sa.select(out.table_name, out.change, out.row_key).order_by(out.id)
                )
            ],
        }


def optimistic(sent: list[str]) -> bool:
    """Whether the statements are those of the optimistic write: plain INSERTs, no diff."""
    inserts = [s for s in sent if s.startswith("INSERT INTO") and "mouse" in s]
    diff_or_upsert = ("JOIN", "ON CONFLICT", "ON DUPLICATE KEY")
    return bool(inserts) and not any(w in s for s in sent for w in diff_or_upsert)


def test_an_all_new_batch_is_written_with_plain_inserts(db: Database, twin: Database) -> None:
    fast, careful = both(db, twin, lambda: [item(n, f"m{n}") for n in range(1, 5)])
    assert optimistic(fast.sent) and not optimistic(careful.sent)
    assert len(fast.landed) == 4 and not fast.quarantined
    assert fast.report.new == 4
    assert fast.report.tables["wsubj.mouse"] == {"inserted": 4, "updated": 0, "unchanged": 0}
    outbox = snapshot(db)["outbox"]
    assert ("wsubj.mouse", "insert", f'["{uid(1)}"]') in outbox and len(outbox) == 8
    with db.engine.connect() as conn:
        entry = ledger.lookup(conn, state.ensure(db), "mem", "mice", ["[1]"])["[1]"]
    assert entry.targets == [("wsubj.mouse", [str(uid(1))]), ("wsubj.tag", [str(uid(1)), "t1"])]


def test_rows_stored_by_another_writer_fall_back(db: Database, twin: Database) -> None:
    for pipeline in (db, twin):  # written by DataJoint, say: the ledger knows nothing of them
        with pipeline.transaction() as conn:
            upsert(pipeline, conn, Mouse, [
                {"mouse_uuid": uid(1), "lab_name": "cortex", "nickname": "m1"},
                {"mouse_uuid": uid(2), "lab_name": "cortex", "nickname": "old"},
            ])  # fmt: skip
    fast, _ = both(db, twin, lambda: [item(n, f"m{n}") for n in range(1, 4)])
    assert not optimistic(fast.sent)  # tried, rolled back, then written the careful way
    assert fast.report.tables["wsubj.mouse"] == {"inserted": 1, "updated": 1, "unchanged": 1}
    assert db.count(Mouse) == 3 and db.count(Tag) == 3
    changes = {(t, c, k) for t, c, k in snapshot(db)["outbox"] if t == "wsubj.mouse"}
    assert changes == {
        ("wsubj.mouse", "update", f'["{uid(2)}"]'),
        ("wsubj.mouse", "insert", f'["{uid(3)}"]'),
    }


def test_a_missing_parent_is_set_aside_as_before(db: Database, twin: Database) -> None:
    fast, _ = both(db, twin, lambda: [item(1, "m1"), item(2, "m2", lab="nolab"), item(3, "m3")])
    assert fast.quarantined == [(
        "[2]",
        "reference",
        f"table wsubj.mouse key mouse_uuid={uid(2)!r} column lab_name: "
        "references wref.#lab (lab_name='nolab'), which does not exist",
        {"id": 2, "nickname": "m2"},
    )]  # fmt: skip
    assert [i.ktext for i in fast.landed] == ["[1]", "[3]"]
    assert db.count(Mouse) == 2 and db.count(Tag) == 2


def test_a_bad_value_is_isolated_as_before(db: Database, twin: Database) -> None:
    fast, _ = both(db, twin, lambda: [item(1, "m1"), item(2, None), item(3, "m3")])
    assert [(k, stage) for k, stage, _, _ in fast.quarantined] == [("[2]", "write")]
    assert "nickname" in fast.quarantined[0][2]
    assert [i.ktext for i in fast.landed] == ["[1]", "[3]"]


def test_records_producing_the_same_row(db: Database, twin: Database) -> None:
    """Two records of one batch map to one Mouse row: one row, the last one winning."""
    fast, _ = both(db, twin, lambda: [item(1, "first"), item(2, "last", mouse=1)])
    assert optimistic(fast.sent)
    assert snapshot(db)["mouse"] == [(uid(1), "last")]
    assert fast.report.tables["wsubj.mouse"] == {"inserted": 1, "updated": 0, "unchanged": 0}
    assert fast.report.new == 2


def test_a_failed_attempt_is_not_repeated_for_the_next_batch(db: Database) -> None:
    prepare(db)
    with db.transaction() as conn:
        upsert(db, conn, Mouse, [{"mouse_uuid": uid(1), "lab_name": "cortex", "nickname": "x"}])
    writer = BatchWriter(db, state.ensure(db), "mem")
    assert not optimistic(write(db, [item(1, "m1")], writer).sent)  # tried, fell back
    assert not optimistic(write(db, [item(2, "m2")], writer).sent)  # skipped once
    assert optimistic(write(db, [item(3, "m3")], writer).sent)  # tried again
    assert db.count(Mouse) == 3


def test_no_optimistic_write_where_foreign_keys_are_not_checked(db: Database) -> None:
    prepare(db)
    writer = BatchWriter(db, state.ensure(db), "mem")
    with statements(db) as sent, db.engine.connect() as conn:
        if db.dialect == "sqlite":  # no effect inside a transaction: before SQLAlchemy's BEGIN
            conn.connection.dbapi_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
        elif db.dialect == "mysql":
            conn.exec_driver_sql("SET SESSION foreign_key_checks = 0")
        else:
            conn.exec_driver_sql("SET session_replication_role = replica")
        conn.commit()  # the settings stay for the session
        with conn.begin():
            quarantined: list[tuple[str, str, str, Any]] = []
            sr = StreamReport("mice")
            writer.write(
                conn, [item(1, "m1"), item(2, "m2", lab="nolab")], quarantined, sr, 1, "mice"
            )
        conn.invalidate()  # not back into the pool with checks off
    assert not optimistic(sent)
    # limsync's own check still sets the orphan aside.
    assert [(k, stage) for k, stage, _, _ in quarantined] == [("[2]", "reference")]


def test_a_batch_prepared_ahead_is_written_as_built(db: Database, twin: Database) -> None:
    """The engine builds an all-new batch's INSERTs and bookkeeping before the write (in its
    own thread): the writer sends those, and the result is the careful path's."""
    writer = BatchWriter(db, state.ensure(db), "mem")
    items = [item(n, f"m{n}") for n in range(1, 4)]
    new = writer.prepare_new(items, "mice")
    assert new is not None and [p.spec.qualname for p in new.inserts] == [
        "wsubj.mouse",
        "wsubj.tag",
    ]

    def not_again(*_: Any) -> None:
        raise AssertionError("built twice")

    writer.prepare_new = not_again  # type: ignore[method-assign,assignment]
    quarantined: list[tuple[str, str, str, Any]] = []
    sr = StreamReport("mice")
    with statements(db) as sent, db.transaction() as conn:
        landed = writer.write(conn, items, quarantined, sr, 1, "mice", new)
    assert optimistic(sent) and landed == items and not quarantined
    careful = write(twin, [item(n, f"m{n}") for n in range(1, 4)], optimistic=False)
    assert snapshot(db) == snapshot(twin)
    assert sr.to_dict() == careful.report.to_dict()


def test_nothing_is_prepared_for_a_batch_that_is_not_written_optimistically(db: Database) -> None:
    prepare(db)
    writer = BatchWriter(db, state.ensure(db), "mem")
    changed = item(1, "m1")
    changed.old = ledger.LedgerEntry("h", "present", None)
    assert writer.prepare_new([changed, item(2, "m2")], "mice") is None
    assert writer.prepare_new([], "mice") is None
    assert (
        BatchWriter(db, state.ensure(db), "mem", optimistic=False).prepare_new(
            [item(2, "m2")], "mice"
        )
        is None
    )
    # After a refused attempt the next chance is skipped: nothing is built for it.
    with db.transaction() as conn:
        upsert(db, conn, Mouse, [{"mouse_uuid": uid(3), "lab_name": "cortex", "nickname": "x"}])
    assert not optimistic(write(db, [item(3, "m3")], writer).sent)
    assert writer.prepare_new([item(4, "m4")], "mice") is None
    assert not optimistic(write(db, [item(4, "m4")], writer).sent)  # the skipped chance
    assert writer.prepare_new([item(5, "m5")], "mice") is not None
