"""Writing one batch of records: rows in load order, stale rows, ledger entries, the outbox.

A batch is written inside a savepoint of the caller's transaction. Records whose parents are
missing are set aside (stage ``reference``) and the rest is written again; a database error
that no check pinned on one record is isolated by bisecting the batch, each half in its own
savepoint (stage ``write``). What a changed record no longer produces is deleted with its
dependants, and every inserted, updated or deleted key goes to the change outbox.

A batch of records all new to the ledger (a first load, a migration) is first written
optimistically, in a savepoint of its own: a plain ``INSERT`` per table (see
:func:`limsync.pipeline.insert.insert_new`), without the diff against stored rows and without
the parents check, the database's primary and foreign keys being the check. If anything fails
(a row some other writer stored, a missing parent, a bad value), the savepoint is rolled back
and the batch takes the careful path above, so results, quarantine stages and messages are
those of the careful path. Where that keeps happening (a stream whose rows are mostly stored
already), the optimistic attempt is skipped for a growing number of batches.

What that optimistic write sends can be built before a connection is at hand
(:meth:`BatchWriter.prepare_new`): the engine does it in its own thread while the batch before
is written in the background, so the writing thread does little more than wait on the server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pydantic
import sqlalchemy as sa

from limsync.connectors.base import Key
from limsync.errors import RowError
from limsync.pipeline import cascade, ledger
from limsync.pipeline.database import Database
from limsync.pipeline.graph import load_order
from limsync.pipeline.insert import PreparedInsert, enforces_foreign_keys, prepare_insert
from limsync.pipeline.state import StateTables
from limsync.pipeline.tables import TableSpec
from limsync.pipeline.tries import Tries
from limsync.pipeline.upsert import ChangeSet, missing_parents, upsert
from limsync.sync.mapping import key_from_json, key_json
from limsync.sync.report import StreamReport

# Batches an optimistic write of all-new records is skipped for, at most, after failing.
MAX_SKIP = 64


@dataclass(slots=True)
class Item:
    """One source record travelling through a batch."""

    key: Key
    ktext: str
    raw: dict[str, Any]
    record: pydantic.BaseModel
    hash: str
    old: ledger.LedgerEntry | None = None
    rows: list[tuple[TableSpec, dict[str, Any]]] = field(default_factory=list)


@dataclass(frozen=True)
class Books:
    """A batch's bookkeeping texts: per table (by ``id`` of its spec) the rows' keys and key
    texts in row order, and each record's ledger entry (key text, hash, targets text)."""

    tables: dict[int, tuple[str, list[Key], list[str]]]
    entries: list[tuple[str, str, str]]
    existing: set[str]  # key texts of records the ledger holds already (changed records)

    @classmethod
    def of(cls, items: list[Item]) -> Books:
        """Each row's key text built once (the targets and the outbox both need them)."""
        key_text = ledger.key_text
        tables: dict[int, tuple[str, list[Key], list[str]]] = {}
        entries: list[tuple[str, str, str]] = []
        for item in items:
            targets = []
            for spec, row in item.rows:
                table = tables.get(id(spec))
                if table is None:
                    table = tables[id(spec)] = (spec.qualname, [], [])
                key = spec.key_of(row)
                text = key_text(key)
                table[1].append(key)
                table[2].append(text)
                targets.append((table[0], text))
            entries.append((item.ktext, item.hash, ledger.targets_text_of(targets)))
        existing = {i.ktext for i in items if i.old is not None}
        return cls(tables, entries, existing)


@dataclass(frozen=True)
class NewBatch:
    """An all-new batch's optimistic write, built ahead: its items, a prepared plain INSERT per
    table in load order, and its bookkeeping."""

    items: list[Item]
    inserts: list[PreparedInsert]
    books: Books


class BatchWriter:
    """Writes batches of one connector's records (see the module docstring)."""

    def __init__(
        self, db: Database, st: StateTables, connector: str, *, optimistic: bool = True
    ) -> None:
        """``optimistic=False`` writes every batch the careful way (see the module docstring)."""
        self.db = db
        self.st = st
        self.connector = connector
        self.optimistic = optimistic
        # Parent keys found by committed batches (see missing_parents' cache).
        self._parents: dict[str, set[Key]] = {}
        # Per stream: when to try an optimistic write again after one failed.
        self._tries: dict[str, Tries] = {}

    def forget_parents(self) -> None:
        """Drop the cache of parent keys known to exist."""
        self._parents.clear()

    def write(
        self,
        conn: sa.Connection,
        items: list[Item],
        quarantined: list[tuple[str, str, str, Any]],
        sr: StreamReport,
        run_id: int,
        name: str,
        new: NewBatch | None = None,
    ) -> list[Item]:
        """Write items in a savepoint; records with missing parents or DB errors go aside.

        ``new``: :meth:`prepare_new` of these items, when it was built ahead."""
        if items and self._write_new(conn, items, sr, run_id, name, new):
            return items
        while items:
            try:
                with conn.begin_nested():
                    bad, changes = self._write_rows(conn, items, sr, run_id, name)
                    if bad:
                        raise _RetryError(bad)
                # Counted once the savepoint is released: a failure after the upserts (in the
                # ledger, say) bisects the batch, whose halves are counted again.
                _count(sr, items, changes)
                return items
            except _RetryError as retry:
                for item, err in retry.bad:
                    quarantined.append((item.ktext, "reference", str(err), item.raw))
                bad_ids = {id(i) for i, _ in retry.bad}
                items = [i for i in items if id(i) not in bad_ids]
            except (sa.exc.DBAPIError, RowError) as exc:
                if len(items) == 1:
                    quarantined.append((items[0].ktext, "write", _db_message(exc), items[0].raw))
                    return []
                mid = len(items) // 2
                return self.write(conn, items[:mid], quarantined, sr, run_id, name) + self.write(
                    conn, items[mid:], quarantined, sr, run_id, name
                )
        return []

    def prepare_new(self, items: list[Item], name: str) -> NewBatch | None:
        """What the optimistic write of ``items`` sends, built without a connection; None when
        the batch will not be written that way (not all new, the attempt being skipped after
        failures, a table referencing itself) or a value cannot be sent (the careful path
        then names the record)."""
        if not self.optimistic or not items or any(item.old is not None for item in items):
            return None  # changed records need the diff, and their stale rows deleted
        tries = self._tries.get(name)
        if tries is not None and tries.skipping:
            return None
        by_table, specs = _by_table(items)
        # A row referencing a row of its own table: the careful path checks parents before
        # writing, so it sets aside a child whose parent comes in the same batch; a plain
        # INSERT would take both (PostgreSQL and SQLite check at the end of the statement).
        if any(fk.parent == q for q, spec in specs.items() for fk in spec.foreign_keys):
            return None
        try:
            inserts = [
                prepare_insert(self.db, spec, by_table[spec.qualname], validate=False)
                for spec in load_order(specs.values())
            ]
        except RowError:
            return None
        return NewBatch(items, inserts, Books.of(items))

    def _write_new(
        self,
        conn: sa.Connection,
        items: list[Item],
        sr: StreamReport,
        run_id: int,
        name: str,
        new: NewBatch | None,
    ) -> bool:
        """Write a batch of records all new to the ledger with plain INSERTs, in a savepoint.

        False, with nothing written, when the batch is not all new, the optimistic write is
        being skipped, the database would not refuse an orphan, or any statement failed.
        """
        if not self.optimistic or any(item.old is not None for item in items):
            return False  # changed records need the diff, and their stale rows deleted
        tries = self._tries.setdefault(name, Tries(MAX_SKIP))
        if not tries.due():
            return False
        if new is None or new.items is not items:
            new = self.prepare_new(items, name)
            if new is None:
                return False
        if not enforces_foreign_keys(conn):
            return False  # an orphan would be stored, not refused
        try:
            with conn.begin_nested():
                changes = [insert.send(self.db, conn) for insert in new.inserts]
                self._bookkeep(conn, new.books, changes, run_id, name)
        except (sa.exc.DBAPIError, RowError) as exc:
            if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
                raise  # nothing to fall back on
            # 1, 3, 7, ... batches: a stream whose rows are mostly stored already (written by
            # another tool) stops paying for statements that fail, one bad record does not.
            tries.failed()
            return False
        tries.succeeded()
        _count(sr, items, changes)
        return True

    def _bookkeep(
        self,
        conn: sa.Connection,
        books: Books,
        changes: list[ChangeSet],
        run_id: int,
        name: str,
    ) -> None:
        """The batch's outbox rows and ledger entries."""
        key_text = ledger.key_text
        by_name = {qualname: (keys, texts) for qualname, keys, texts in books.tables.values()}
        for cs in changes:
            keys, texts = by_name.get(cs.table, ([], []))
            lookup: dict[Key, str] | None = None
            for change, changed in (("insert", cs.inserted), ("update", cs.updated)):
                if not changed:
                    continue
                # Keys go in as they are: their key text is that of their JSON values. A first
                # load inserts every row, in row order (a C-level list comparison tells).
                if changed == keys:
                    out = texts
                else:
                    lookup = lookup or dict(zip(keys, texts, strict=True))
                    out = [lookup.get(k) or key_text(k) for k in changed]
                ledger.emit_texts(conn, self.st, cs.table, out, change, run_id)
        ledger.record(
            conn, self.st, self.connector, name, books.entries, run_id, existing=books.existing
        )

    def _write_rows(
        self,
        conn: sa.Connection,
        items: list[Item],
        sr: StreamReport,
        run_id: int,
        name: str,
    ) -> tuple[list[tuple[Item, Exception]], list[ChangeSet]]:
        pairs_by_table: dict[str, list[tuple[Item, dict[str, Any]]]] = {}
        specs: dict[str, TableSpec] = {}
        for item in items:
            for spec, row in item.rows:
                pairs_by_table.setdefault(spec.qualname, []).append((item, row))
                specs[spec.qualname] = spec
        bad: dict[int, tuple[Item, Exception]] = {}
        changes: list[ChangeSet] = []
        writing = set(specs)
        if sum(len(v) for v in self._parents.values()) > 1_000_000:
            self._parents.clear()  # bounded memory on very large syncs
        for spec in load_order(specs.values()):
            pairs = [(i, r) for i, r in pairs_by_table[spec.qualname] if id(i) not in bad]
            rows = [r for _, r in pairs]
            # Parents this batch writes too are not cached: the batch may still roll back.
            cache = None if writing & self._parent_tables(spec) else self._parents
            for idx, err in missing_parents(self.db, conn, spec, rows, cache=cache):
                item = pairs[idx][0]
                bad.setdefault(id(item), (item, err))
            if bad:
                # Children of these tables cannot be checked before their parents are written:
                # roll back, set the bad records aside and write again.
                break
            rows = [r for _, r in pairs]
            # Not optimistic: this path runs because the ledger says some records are stored.
            changes.append(
                upsert(self.db, conn, spec, rows, validate=False, check_parents=False,
                       optimistic=False)
            )  # fmt: skip
        if bad:
            return list(bad.values()), []
        # Rows a changed record produced before but no longer does (e.g. a removed project).
        stale: dict[str, list[tuple[Any, ...]]] = {}
        for item in items:
            if item.old is None:
                continue
            now = {(s.qualname, ledger.key_text(s.key_of(r))) for s, r in item.rows}
            for table, key in item.old.targets:
                if (table, ledger.key_text(key)) not in now:
                    stale.setdefault(table, []).append(tuple(key))
        for table, keys in stale.items():
            self.delete_rows(conn, table, keys, sr, run_id)
        self._bookkeep(conn, Books.of(items), changes, run_id, name)
        return [], changes

    @staticmethod
    def _parent_tables(spec: TableSpec) -> set[str]:
        return {fk.parent for fk in spec.foreign_keys}

    def delete_rows(
        self,
        conn: sa.Connection,
        table: str,
        keys: list[tuple[Any, ...]],
        sr: StreamReport,
        run_id: int,
    ) -> None:
        self._parents.clear()  # a deleted row may be a cached parent
        spec = self.db.spec(table)
        typed = [key_from_json(spec, k) for k in keys]
        plan = cascade.delete(self.db, conn, spec, typed)
        for label, n in plan.rows.items():
            sr.deleted_rows[label] = sr.deleted_rows.get(label, 0) + n
        ledger.emit(conn, self.st, table, (key_json(k) for k in typed), "delete", run_id)


def _by_table(
    items: list[Item],
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, TableSpec]]:
    """The batch's rows per table, in record order, and the tables' specs."""
    # Keyed by id(spec) while looping: qualname is a property, built anew at every call.
    rows_of: dict[int, list[dict[str, Any]]] = {}
    spec_of: dict[int, TableSpec] = {}
    for item in items:
        for spec, row in item.rows:
            rows = rows_of.get(id(spec))
            if rows is None:
                rows = rows_of[id(spec)] = []
                spec_of[id(spec)] = spec
            rows.append(row)
    specs = {spec.qualname: spec for spec in spec_of.values()}
    if len(specs) < len(spec_of):  # two spec objects of one table (one mapper makes one)
        by_table: dict[str, list[dict[str, Any]]] = {}
        for item in items:
            for spec, row in item.rows:
                by_table.setdefault(spec.qualname, []).append(row)
        return by_table, specs
    return {spec.qualname: rows_of[i] for i, spec in spec_of.items()}, specs


def _count(sr: StreamReport, items: list[Item], changes: list[ChangeSet]) -> None:
    """Add a written batch to the stream's report."""
    for cs in changes:
        sr.add_table(cs)
    new = sum(1 for item in items if item.old is None)
    sr.new += new
    sr.changed += len(items) - new


class _RetryError(Exception):
    def __init__(self, bad: list[tuple[Item, Exception]]) -> None:
        self.bad = bad


def _db_message(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig or exc).strip().splitlines()[0]
