"""Writing one batch of records: rows in load order, stale rows, ledger entries, the outbox.

A batch is written inside a savepoint of the caller's transaction. Records whose parents are
missing are set aside (stage ``reference``) and the rest is written again; a database error
that no check pinned on one record is isolated by bisecting the batch, each half in its own
savepoint (stage ``write``). What a changed record no longer produces is deleted with its
dependants, and every inserted, updated or deleted key goes to the change outbox.
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
from limsync.pipeline.state import StateTables
from limsync.pipeline.tables import TableSpec
from limsync.pipeline.upsert import ChangeSet, missing_parents, upsert
from limsync.sync.mapping import key_from_json, key_json
from limsync.sync.report import StreamReport


@dataclass
class Item:
    """One source record travelling through a batch."""

    key: Key
    ktext: str
    raw: dict[str, Any]
    record: pydantic.BaseModel
    hash: str
    old: ledger.LedgerEntry | None = None
    rows: list[tuple[TableSpec, dict[str, Any]]] = field(default_factory=list)


class BatchWriter:
    """Writes batches of one connector's records (see the module docstring)."""

    def __init__(self, db: Database, st: StateTables, connector: str) -> None:
        self.db = db
        self.st = st
        self.connector = connector
        # Parent keys found by committed batches (see missing_parents' cache).
        self._parents: dict[str, set[Key]] = {}

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
    ) -> list[Item]:
        """Write items in a savepoint; records with missing parents or DB errors go aside."""
        while items:
            try:
                with conn.begin_nested():
                    bad = self._write_rows(conn, items, sr, run_id, name)
                    if bad:
                        raise _RetryError(bad)
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

    def _write_rows(
        self,
        conn: sa.Connection,
        items: list[Item],
        sr: StreamReport,
        run_id: int,
        name: str,
    ) -> list[tuple[Item, Exception]]:
        by_table: dict[str, list[tuple[Item, dict[str, Any]]]] = {}
        specs: dict[str, TableSpec] = {}
        for item in items:
            for spec, row in item.rows:
                by_table.setdefault(spec.qualname, []).append((item, row))
                specs[spec.qualname] = spec
        bad: dict[int, tuple[Item, Exception]] = {}
        changes: list[ChangeSet] = []
        writing = set(specs)
        if sum(len(v) for v in self._parents.values()) > 1_000_000:
            self._parents.clear()  # bounded memory on very large syncs
        for spec in load_order(specs.values()):
            pairs = [(i, r) for i, r in by_table[spec.qualname] if id(i) not in bad]
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
            changes.append(upsert(self.db, conn, spec, rows, validate=False, check_parents=False))
        if bad:
            return list(bad.values())
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
        for cs in changes:
            # Keys go in as they are: their key text is that of their JSON values.
            ledger.emit(conn, self.st, cs.table, cs.inserted, "insert", run_id)
            ledger.emit(conn, self.st, cs.table, cs.updated, "update", run_id)
            sr.add_table(cs)
        ledger.record(
            conn,
            self.st,
            self.connector,
            name,
            [(i.ktext, i.hash, [(s.qualname, s.key_of(r)) for s, r in i.rows]) for i in items],
            run_id,
            existing={i.ktext for i in items if i.old is not None},
        )
        for item in items:
            if item.old is None:
                sr.new += 1
            else:
                sr.changed += 1
        return []

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


class _RetryError(Exception):
    def __init__(self, bad: list[tuple[Item, Exception]]) -> None:
        self.bad = bad


def _db_message(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig or exc).strip().splitlines()[0]
