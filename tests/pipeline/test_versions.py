"""Per-record source versions, as the engine holds them, on SQLite, MariaDB and PostgreSQL.

A stream with a cursor holds, per record, the cursor value of the copy stored; the connector
sees them through ``ReadContext.versions`` and can take them back with ``ReadContext.unhold``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

import sqlalchemy as sa
from pydantic import BaseModel, Field

from limsync.connectors.base import Cursor, ReadContext, Stream, Streams, StreamSettings
from limsync.connectors.pagination import Page
from limsync.pipeline import Database, Key, Manual, Schema, state, versions
from limsync.sync.engine import SyncEngine
from limsync.sync.mapping import Mapper, StreamMap
from limsync.testing.memory import MemoryConnector, MemorySettings

vs = Schema("vs")


class Item(Manual):
    """A record with a version."""

    __schema__ = vs
    item_id: Annotated[int, Key]
    label: Annotated[str, Field(max_length=32)]


class ItemRec(BaseModel):
    id: int
    label: str
    changed: str


class Source(MemoryConnector):
    """Items with a ``changed`` cursor; remembers what the engine offered and unholds on demand."""

    type_name = "versiontest"
    streams = Streams(
        Stream("items", "items", ItemRec, key=("id",), cursor=Cursor("changed", versions=True))
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.offered: list[set[str]] = []
        self.unhold_ids: list[int] = []

    def read(self, stream: str, ctx: ReadContext) -> Iterator[Page]:
        assert ctx.versions is not None and ctx.unhold is not None
        self.offered.append(ctx.versions(""))
        yield from super().read(stream, ctx)
        ctx.unhold([(i,) for i in self.unhold_ids])


def run(db: Database, data: dict[str, list[dict[str, Any]]], unhold: list[int] = []) -> Source:  # noqa: B006
    source = Source(
        "mem", MemorySettings(page_size=2, streams={"items": StreamSettings()}), data=data
    )
    source.unhold_ids = unhold
    db.declare(vs)
    mapper = Mapper(
        db, StreamMap("items", (Item,), lambda r: [(Item, {"item_id": r.id, "label": r.label})])
    )
    report = SyncEngine(db, source, {"items": mapper}, batch_size=2).run()
    assert report.ok, report.first_error()
    return source


def held(db: Database) -> dict[str, str]:
    st = state.ensure(db)
    t = st.source_version
    with db.engine.connect() as conn:
        rows = conn.execute(t.select().where(t.c.connector == "mem")).mappings()
        return {r["source_key"]: r["version"] for r in rows}


def items(n: int, changed: str = "2026-01-01T00:00:00") -> list[dict[str, Any]]:
    return [{"id": i, "label": f"item {i}", "changed": changed} for i in range(n)]


def test_stored_and_unchanged_records_hold_their_cursor_value(db: Database) -> None:
    data = {"items": items(5)}
    first = run(db, data)
    assert first.offered == [set()]
    assert held(db) == {f"[{i}]": "2026-01-01T00:00:00" for i in range(5)}
    # The same content with a new version (a no-op edit at the source): the version follows.
    data["items"][2]["changed"] = "2026-01-02T00:00:00"
    second = run(db, data)
    assert second.offered == [{"2026-01-01T00:00:00"}]
    assert held(db)["[2]"] == "2026-01-02T00:00:00"
    with db.engine.connect() as conn:
        recent = versions.held_since(conn, state.ensure(db), "mem", "items", "2026-01-02")
    assert recent == {"2026-01-02T00:00:00"}


def test_unheld_records_hold_nothing_and_forgotten_records_drop_theirs(db: Database) -> None:
    data = {"items": items(4)}
    run(db, data, unhold=[1, 3])
    assert set(held(db)) == {"[0]", "[2]"}
    run(db, data)
    assert set(held(db)) == {"[0]", "[1]", "[2]", "[3]"}
    # A record gone at the source and deleted from the pipeline holds no version.
    data["items"] = data["items"][:3]
    source = Source(
        "mem", MemorySettings(streams={"items": StreamSettings(delete_policy="delete")}), data=data
    )
    db.declare(vs)
    mapper = Mapper(
        db, StreamMap("items", (Item,), lambda r: [(Item, {"item_id": r.id, "label": r.label})])
    )
    report = SyncEngine(db, source, {"items": mapper}, batch_size=2).run(force_delete=True)
    assert report.ok, report.first_error()
    assert set(held(db)) == {"[0]", "[1]", "[2]"}


def test_a_dry_run_holds_nothing(db: Database) -> None:
    source = Source("mem", MemorySettings(), data={"items": items(3)})
    db.declare(vs)
    mapper = Mapper(
        db, StreamMap("items", (Item,), lambda r: [(Item, {"item_id": r.id, "label": r.label})])
    )
    report = SyncEngine(db, source, {"items": mapper}).run(dry_run=True)
    assert report.ok
    assert held(db) == {}


def test_upgrade_from_version_2_adds_the_source_version_table(db: Database) -> None:
    st = state.state_tables(db)
    state.upgrade(db)
    with db.transaction() as conn:
        st.source_version.drop(conn)
        conn.execute(st.version.update().values(version=2))
    assert state.upgrade(db) == (2, 3)
    with db.engine.connect() as conn:
        assert sa.inspect(conn).has_table(st.source_version.name, schema=st.schema)
