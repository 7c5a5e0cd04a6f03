"""The change-outbox consumer: from changed upstream keys to exactly the derived keys they affect.

The sync engine writes one ``~limsync_outbox`` row per inserted, updated or deleted key, in the
same transaction as the change. This consumer reads pending rows in batches and, for each
populated table, finds the affected keys only (no table scan):

* an upstream table that is an ancestor of the table's key source is followed down the
  foreign-key graph (a restricted select per edge) to the key-source tables, and the key
  source is restricted to the rows reached;
* a table named in ``__depends_on__`` (one ``make`` reads without a foreign key, e.g.
  weighings for a per-subject summary) is mapped through the columns it shares with the key.

Affected keys without rows are queued. Existing derived rows are stale when the upstream row
was updated, or when a row was added to a set the derived row summarises (the upstream key is
not part of the derived key); the table's ``__on_change__`` policy decides: ``recompute``
deletes them leaves-first (Part rows and every dependant, DataJoint's included, through the
database's foreign keys) and queues them, ``keep`` leaves them. Deleted upstream rows took
their dependants with them (the engine deletes with the cascade). A deleted ``__depends_on__``
row no longer says which derived keys it fed, unless its key shares those columns or a Part
of the table records its inputs by key (e.g. ``WeightSummary.Input`` with ``weighing_uuid``);
otherwise it is counted as ``unmapped`` and logged, never guessed.

The invalidation, the queueing and the marking of the outbox rows as processed commit in one
transaction per batch: a crash redelivers the batch (at-least-once), never loses it.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import sqlalchemy as sa

from limsync.errors import DeclarationError, LimsyncError, LockHeldError
from limsync.pipeline import cascade
from limsync.pipeline.database import Database
from limsync.pipeline.graph import build_graph, load_order
from limsync.pipeline.locks import Lock
from limsync.pipeline.populate import jobs
from limsync.pipeline.populate.keys import Key, KeySource, key_text, select_where, typed_key
from limsync.pipeline.populate.worker import ledger_values, parts_of
from limsync.pipeline.state import StateTables, ensure, utcnow
from limsync.pipeline.tables import AutoPopulated, Ref, Table, TableSpec

log = logging.getLogger(__name__)

DEFAULT_BATCH = 1000
DJ_MODULE = "limsync.pipeline.dj"


@dataclass
class OutboxReport:
    """What one pass over the outbox did."""

    processed: int = 0  # outbox rows consumed
    queued: dict[str, int] = field(default_factory=dict)  # table -> keys queued (new + stale)
    recomputed: dict[str, list[Key]] = field(default_factory=dict)  # stale keys deleted+queued
    kept: dict[str, int] = field(default_factory=dict)  # stale keys left alone (policy keep)
    unmapped: dict[str, int] = field(default_factory=dict)  # upstream table -> deletes unmapped
    datajoint: list[Any] = field(default_factory=list)  # what refresh_datajoint returned
    skipped: str | None = None  # why nothing was done (another consumer held the lock)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (keys as lists, at most 100 per table)."""
        return {
            "processed": self.processed,
            "queued": self.queued,
            "recomputed": {t: [list(k) for k in ks[:100]] for t, ks in self.recomputed.items()},
            "recomputed_counts": {t: len(ks) for t, ks in self.recomputed.items()},
            "kept": self.kept,
            "unmapped_deletes": self.unmapped,
            "datajoint": [r.to_dict() if hasattr(r, "to_dict") else r for r in self.datajoint],
            "skipped": self.skipped,
        }


def register_lineage(db: Database, cls: type[Table]) -> None:
    """Make every table ``cls`` depends on known to ``db`` (references, key source, depends-on)."""
    seen: set[int] = set()

    def visit(t: type[Table] | TableSpec) -> None:
        if id(t) in seen:
            return
        seen.add(id(t))
        if isinstance(t, TableSpec):
            db.register(t)
            return
        db.register(t.spec)
        refs: list[Any] = [*t.__references__, *(t.__key_source__ or ()), *t.__depends_on__]
        if t.__master__ is not None:
            refs.append(t.__master__)
        for r in refs:
            visit(r.table if isinstance(r, Ref) else r)

    visit(cls)


class _Target:
    """One populated table and how upstream changes reach its keys."""

    def __init__(self, db: Database, cls: type[AutoPopulated], graph: nx.DiGraph) -> None:
        self.cls = cls
        self.spec = cls.spec
        self.keys = KeySource(db, cls)
        self.sources = [s.qualname for s in self.keys.sources]
        self.graph = graph
        self.deps = {t.spec.qualname: t.spec for t in cls.__depends_on__}
        # For each depends-on table, a Part of ours whose columns include its primary key.
        self.input_parts: dict[str, TableSpec] = {}
        for dep in self.deps.values():
            for part in parts_of(cls):
                if set(dep.primary_key) <= set(part.spec.column_names):
                    self.input_parts.setdefault(dep.qualname, part.spec)
        self.recompute = cls.__on_change__ == "recompute"

    def reached_from(self, upstream: str) -> list[str]:
        """Key-source tables that ``upstream`` is (or is an ancestor of)."""
        if upstream not in self.graph:
            return []
        return [s for s in self.sources if s == upstream or nx.has_path(self.graph, upstream, s)]


def _walk(
    db: Database, conn: sa.Connection, g: nx.DiGraph, upstream: str, keys: list[Key], to: str
) -> list[Key]:
    """Keys of ``to`` whose rows descend from ``upstream``'s ``keys``, edge by edge."""
    if to == upstream:
        return keys
    nodes = (nx.descendants(g, upstream) & (nx.ancestors(g, to) | {to})) | {upstream}
    reached: dict[str, set[Key]] = {upstream: set(keys)}
    for node in nx.topological_sort(g.subgraph(nodes)):
        if node == upstream:
            continue
        spec: TableSpec = g.nodes[node]["spec"]
        found: set[Key] = set()
        for parent in g.predecessors(node):
            if not reached.get(parent):
                continue
            fk = g.edges[parent, node]["fk"]
            ppk = db.spec(parent).primary_key
            pos = [ppk.index(c) for c in fk.parent_columns]
            values = list({tuple(k[i] for i in pos) for k in reached[parent]})
            found.update(select_where(db, conn, spec, spec.primary_key, fk.columns, values))
        reached[node] = found
    return list(reached.get(to, ()))


def _spec_or_none(db: Database, qualname: str) -> TableSpec | None:
    try:
        return db.spec(qualname)
    except DeclarationError:
        pass
    schema, _, name = qualname.partition(".")
    try:
        return db.reflect(schema, name)
    except (LimsyncError, sa.exc.SQLAlchemyError, KeyError):
        return None


def process_outbox(
    db: Database,
    tables: Sequence[type[AutoPopulated]],
    *,
    datajoint: Any = None,
    batch: int = DEFAULT_BATCH,
) -> OutboxReport:
    """Consume every pending outbox row: invalidate and queue the affected keys of ``tables``.

    ``datajoint`` is the ``[populate.datajoint]`` settings; when it names tables, each batch's
    changes are handed to ``limsync.pipeline.dj.refresh_datajoint`` before the batch commits.
    One consumer runs at a time (a database lock); another one finds it held and skips.
    """
    st = ensure(db)
    report = OutboxReport()
    for cls in tables:
        register_lineage(db, cls)
    graph = build_graph(db.specs)
    ordered = [s.qualname for s in load_order([c.spec for c in tables])]
    by_name = {c.spec.qualname: c for c in tables}
    targets = [_Target(db, by_name[q], graph) for q in ordered]
    refresh_dj = _datajoint_hook(datajoint)
    try:
        lock = Lock(db, "populate:outbox")
        lock.acquire()
    except LockHeldError as exc:
        report.skipped = str(exc)
        return report
    try:
        while True:
            rows = _pending(db, st, batch)
            if not rows:
                break
            changes = _decode(db, rows)
            if refresh_dj is not None:
                changed = {
                    t: [(dict(zip(spec.primary_key, k, strict=True)), c) for k, c in items]
                    for t, (spec, items) in changes.items()
                }
                report.datajoint.append(refresh_dj(db, datajoint, changed))
            ids = [r[0] for r in rows]
            batch_report = jobs.retrying(functools.partial(_consume, db, st, targets, changes, ids))
            merge_reports(report, batch_report)
            report.processed += len(rows)
            lock.refresh()
    finally:
        lock.release()
    return report


def _consume(
    db: Database,
    st: StateTables,
    targets: list[_Target],
    changes: Mapping[str, tuple[TableSpec, list[tuple[Key, str]]]],
    ids: list[int],
) -> OutboxReport:
    """One batch in one transaction: invalidate, queue, mark the outbox rows processed."""
    report = OutboxReport()
    with jobs.transaction(db) as conn:
        for target in targets:
            _apply(db, conn, st, target, changes, report)
        for start in range(0, len(ids), 1000):
            conn.execute(
                st.outbox.update()
                .where(st.outbox.c.id.in_(ids[start : start + 1000]))
                .values(processed_at=utcnow())
            )
    return report


def merge_reports(into: OutboxReport, other: OutboxReport) -> OutboxReport:
    """Add ``other``'s counts and keys to ``into``; returns ``into``."""
    into.processed += other.processed
    for t, n in other.queued.items():
        into.queued[t] = into.queued.get(t, 0) + n
    for t, keys in other.recomputed.items():
        into.recomputed.setdefault(t, []).extend(keys)
    for t, n in other.kept.items():
        into.kept[t] = into.kept.get(t, 0) + n
    for t, n in other.unmapped.items():
        into.unmapped[t] = into.unmapped.get(t, 0) + n
    into.datajoint.extend(other.datajoint)
    return into


def _datajoint_hook(settings: Any) -> Any:
    if settings is None or not getattr(settings, "tables", None):
        return None
    if importlib.util.find_spec(DJ_MODULE) is None:
        log.warning("populate.datajoint.tables is set, but %s is not available", DJ_MODULE)
        return None
    return importlib.import_module(DJ_MODULE).refresh_datajoint


def _pending(db: Database, st: StateTables, n: int) -> list[tuple[int, str, str, str]]:
    o = st.outbox
    q = (
        sa.select(o.c.id, o.c.table_name, o.c.row_key, o.c.change)
        .where(o.c.processed_at.is_(None))
        .order_by(o.c.id)
        .limit(n)
    )
    with db.engine.connect() as conn:
        return [(int(i), str(t), str(k), str(c)) for i, t, k, c in conn.execute(q)]


def _decode(
    db: Database, rows: list[tuple[int, str, str, str]]
) -> dict[str, tuple[TableSpec, list[tuple[Key, str]]]]:
    """Outbox rows as typed keys per upstream table (tables limsync cannot read are skipped)."""
    out: dict[str, tuple[TableSpec, list[tuple[Key, str]]]] = {}
    specs: dict[str, TableSpec | None] = {}
    for _, table, text, change in rows:
        if table not in specs:
            specs[table] = _spec_or_none(db, table)
        spec = specs[table]
        if spec is None:
            continue
        key = typed_key(spec, spec.primary_key, ledger_values(text))
        out.setdefault(table, (spec, []))[1].append((key, change))
    return out


def _apply(
    db: Database,
    conn: sa.Connection,
    st: StateTables,
    target: _Target,
    changes: Mapping[str, tuple[TableSpec, list[tuple[Key, str]]]],
    report: OutboxReport,
) -> None:
    """Invalidate and queue what one batch of changes means for one populated table."""
    spec = target.spec
    pk = spec.primary_key
    candidates: set[Key] = set()
    stale_possible: set[Key] = set()
    for upstream, (uspec, items) in changes.items():
        by_change: dict[str, list[Key]] = {}
        for key, change in items:
            by_change.setdefault(change, []).append(key)
        for change, keys in by_change.items():
            found: set[Key] = set()
            stale = change == "update" or not set(uspec.primary_key) <= set(pk)
            if change != "delete":
                for source in target.reached_from(upstream):
                    reached = _walk(db, conn, target.graph, upstream, keys, source)
                    sspec = db.spec(source)
                    found.update(target.keys.keys(conn, match=(sspec.primary_key, reached)))
            if upstream in target.deps:
                shared = [c for c in pk if uspec.has_column(c)]
                if change != "delete":
                    partial = select_where(db, conn, uspec, shared, uspec.primary_key, keys)
                elif set(shared) <= set(uspec.primary_key):
                    pos = [uspec.primary_key.index(c) for c in shared]
                    partial = [tuple(k[i] for i in pos) for k in keys]
                elif target.input_parts.get(upstream):
                    # A Part table that records the inputs by their key names the rows fed.
                    part = target.input_parts[upstream]
                    partial = select_where(db, conn, part, pk, uspec.primary_key, keys)
                    shared = list(pk)
                else:
                    # The row is gone and its key does not say which derived keys it fed.
                    report.unmapped[upstream] = report.unmapped.get(upstream, 0) + len(keys)
                    log.warning(
                        "%d deleted %s rows cannot be mapped to %s keys",
                        len(keys), upstream, spec.qualname,
                    )  # fmt: skip
                    partial = []
                found.update(target.keys.keys(conn, match=(shared, partial)))
                stale = True
            candidates |= found
            if stale:
                stale_possible |= found
    if not candidates:
        return
    existing = set(select_where(db, conn, spec, pk, pk, sorted(candidates, key=repr)))
    stale_keys = sorted(existing & stale_possible, key=repr)
    new = [k for k in candidates if k not in existing]
    if stale_keys and not target.recompute:
        report.kept[spec.qualname] = report.kept.get(spec.qualname, 0) + len(stale_keys)
        stale_keys = []
    if stale_keys:
        cascade.delete(db, conn, spec, stale_keys)
        report.recomputed.setdefault(spec.qualname, []).extend(stale_keys)
    todo = [key_text(k) for k in [*new, *stale_keys]]
    if todo:
        jobs.queue(db, conn, st, spec.qualname, todo, reset=True)
        report.queued[spec.qualname] = report.queued.get(spec.qualname, 0) + len(todo)
