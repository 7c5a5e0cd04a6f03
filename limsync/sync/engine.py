"""The sync engine: read -> validate -> hash -> map -> upsert -> ledger -> cursor -> outbox.

One run syncs the streams of one connector instance, parents before children (the order comes
from the foreign-key graph of the tables the streams write). Per batch of records, in one
transaction: the rows, their ledger entries, quarantine entries, the change outbox and (with
the stream's last batch) its cursor. A crash at any point therefore loses nothing: the next run
re-reads from the last committed cursor, and unchanged records are recognised by their content
hash and not written again.

Records that fail validation, mapping, row validation or the parents check go to the quarantine
with the raw record, and the rest of the batch goes on. A database error that cannot be pinned
on one record by those checks is isolated by bisecting the batch, each half in a savepoint.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import networkx as nx
import sqlalchemy as sa

from limsync.connectors.base import Connector, Key, ReadContext, Stream
from limsync.errors import DeleteRefusedError, LimsyncError, LockHeldError
from limsync.pipeline import ledger, state, versions
from limsync.pipeline.database import Database
from limsync.pipeline.graph import build_graph, load_order
from limsync.pipeline.locks import Lock
from limsync.sync import logcontext
from limsync.sync.identity import Identity, seen_id
from limsync.sync.mapping import Mapper, Wanted, resolve_lookups, wanted_lookups
from limsync.sync.overlap import Ahead, WriteBehind
from limsync.sync.records import Identified, duplicates, identify, validate_rows
from limsync.sync.report import StreamReport, SyncReport
from limsync.sync.writer import BatchWriter, Item, NewBatch

log = logging.getLogger(__name__)

DEFAULT_BATCH = 1000
Progress = Callable[[str, int], None]


class _StopRequestedError(Exception):
    """The engine's stop flag was set: leave the run between two batches."""


@dataclass
class _Prepared:
    """A batch validated, hashed and mapped: what its transaction writes."""

    name: str
    ready: list[Item]
    quarantined: list[tuple[str, str, str, Any]]
    sr: StreamReport
    run_id: int
    new_cursor: str | None
    dry_conn: sa.Connection | None
    found_first: int  # keys first seen by this scan that the ledger held already
    new: NewBatch | None = None  # the optimistic write of an all-new batch, built ahead

    @property
    def writes(self) -> bool:
        """False when the batch has nothing to write (unchanged records only)."""
        return bool(self.ready or self.quarantined or self.new_cursor is not None)


class SyncEngine:
    """Syncs one connector instance into one database.

    ``stop``: when this event is set, the engine finishes the batch it is writing, records the
    run as ``interrupted`` and returns; nothing is left half-written, and the stream's cursor
    stays where it was, so the next run reads the rest. A ``KeyboardInterrupt`` (a hard stop)
    rolls the open batch back and is recorded as ``interrupted`` too.

    ``overlap``: on MariaDB and PostgreSQL, write each batch in a background thread while the
    next one is read and prepared (:mod:`limsync.sync.overlap`); batches still commit one at a
    time, in order. Off in dry runs and on SQLite.
    """

    def __init__(
        self,
        db: Database,
        connector: Connector,
        mappers: Mapping[str, Mapper],
        *,
        batch_size: int = DEFAULT_BATCH,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
        overlap: bool = True,
    ) -> None:
        self.db = db
        self.connector = connector
        self.name = connector.name
        self.mappers = dict(mappers)
        self.batch_size = batch_size
        self.progress = progress
        self.stop = stop
        # Write each batch while the next is prepared (see overlap.py): on database servers
        # only. SQLite runs in this process, under the same GIL, and writes one at a time.
        self.overlap = overlap and db.dialect != "sqlite"
        self.st = state.ensure(db)
        # Streams with quarantine entries: only those pay for releasing records that landed.
        self._open_quarantine: dict[str, bool] = {}
        self.writer = BatchWriter(db, self.st, connector.name)
        self._identities: dict[str, Identity] = {}
        # Per stream with a cursor being read: (key text, cursor value) of each record stored,
        # held as source versions once the whole stream is read (see _hold_versions).
        self._stored_versions: dict[str, list[tuple[str, str | None]]] = {}
        # Called with (stream, [(key, stage, error, raw), ...]) after each batch that set records
        # aside, dry runs included: how `limsync migrate` reports what a dry run would reject.
        self.on_quarantine: Callable[[str, list[tuple[str, str, str, Any]]], None] | None = None

    # -- ordering

    def stream_order(self, selected: Sequence[str] | None = None) -> list[str]:
        """Streams to sync, parents first by the foreign-key graph of the tables they write.

        Stream A goes before stream B when a table A writes is an ancestor of one B writes;
        otherwise the connector's declaration order decides.
        """
        names = [n for n in self.mappers if selected is None or n in selected]
        for n in self.mappers:
            for t in self.mappers[n].targets:
                self.db.register(t)
        tables = build_graph(self.db.specs)
        writes = {n: {t.qualname for t in self.mappers[n].targets} for n in names}
        order = nx.DiGraph()
        order.add_nodes_from(names)
        for a in names:
            below = set().union(*(nx.descendants(tables, t) for t in writes[a] if t in tables))
            for b in names:
                if a != b and below & writes[b]:
                    order.add_edge(a, b)
        declared = list(self.connector.streams)
        rank = {n: declared.index(n) if n in declared else len(declared) for n in names}
        return list(nx.lexicographical_topological_sort(order, key=lambda n: rank[n]))

    # -- a run

    def run(
        self,
        *,
        streams: Sequence[str] | None = None,
        full: bool = True,
        dry_run: bool = False,
        force_delete: bool = False,
        kind: str = "sync",
    ) -> SyncReport:
        """Sync the selected streams (all by default); never raises for one stream's failure.

        ``kind`` is what the run log calls the run (``sync``, ``migrate``).
        """
        mode = "full" if full else "incremental"
        report = SyncReport(self.name, mode=mode, dry_run=dry_run)
        lock = Lock(self.db, f"sync:{self.name}")
        try:
            lock.acquire()
        except LockHeldError as exc:
            report.error = str(exc)
            report.skipped = True
            return report
        run_id = 0 if dry_run else state.start_run(self.db, self.name, kind, mode)
        report.run_id = run_id
        interrupted = False
        try:
            outer: contextlib.AbstractContextManager[sa.Connection | None]
            outer = self.db.transaction() if dry_run else contextlib.nullcontext()
            with outer as dry_conn, logcontext.bound(connector=self.name, run_id=run_id):
                for name in self.stream_order(streams):
                    if self._stop_requested():
                        interrupted = True
                        break
                    sr = StreamReport(name)
                    report.streams.append(sr)
                    started = time.monotonic()
                    try:
                        with logcontext.bound(stream=name):
                            self._sync_stream(name, sr, run_id, full, dry_conn, force_delete, lock)
                    except _StopRequestedError:
                        interrupted = True
                        break
                    except LimsyncError as exc:
                        sr.error = f"{type(exc).__name__}: {exc}"
                        log.error("stream %s.%s failed: %s", self.name, name, exc)
                    finally:
                        sr.seconds = time.monotonic() - started
                if dry_conn is not None:
                    dry_conn.get_transaction().rollback()  # type: ignore[union-attr]
        except BaseException as exc:
            if not dry_run:
                # A KeyboardInterrupt is a hard stop: the open batch rolled back, nothing is lost.
                status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
                error = f"{type(exc).__name__}: {exc}"
                state.finish_run(self.db, run_id, status, report.counts(), error)
            raise
        else:
            if interrupted:
                report.error = "interrupted: a stop was requested; the next run reads the rest"
                log.warning("run %s of %s interrupted between batches", run_id, self.name)
            if not dry_run:
                # Recorded before the lock is released: run log spans of one connector never
                # overlap, so they show that two runs never wrote at once.
                status = "interrupted" if interrupted else "success" if report.ok else "failed"
                state.finish_run(self.db, run_id, status, report.counts(), report.first_error())
        finally:
            lock.release()
        return report

    @contextlib.contextmanager
    def _batch_tx(self, dry_conn: sa.Connection | None) -> Iterator[sa.Connection]:
        if dry_conn is not None:
            with dry_conn.begin_nested():
                yield dry_conn
        else:
            with self.db.transaction() as conn:
                yield conn

    # -- one stream

    def _sync_stream(
        self,
        name: str,
        sr: StreamReport,
        run_id: int,
        full: bool,
        dry_conn: sa.Connection | None,
        force_delete: bool,
        lock: Lock,
    ) -> None:
        stream = self.connector.stream(name)
        with contextlib.ExitStack() as stack:
            conn = dry_conn or stack.enter_context(self.db.engine.connect())
            cursor = ledger.get_cursor(conn, self.st, self.name, name)
            self._open_quarantine[name] = ledger.has_quarantine(conn, self.st, self.name, name)
            # A stream the ledger holds nothing of (a first load): the keys this scan reads for
            # the first time are new without asking. Entries it gains meanwhile are this scan's
            # own (the lock keeps other writers out), asked about as keys read again.
            fresh = ledger.count(conn, self.st, self.name, name) == 0
        self.writer.forget_parents()  # known parents are kept within one stream's read only
        # Keys this scan has seen, as 128-bit digests of their key text (see seen_id).
        seen: set[int] = set()
        # How many of them the ledger holds: when that is all its entries, nothing is gone.
        held = 0
        max_cursor = cursor
        # The lock's expiry moves forward every twentieth of its lifetime (30 s by default), not
        # after every batch: on SQLite each refresh is a write transaction of its own.
        refresh_every, refreshed = lock.ttl.total_seconds() / 20, time.monotonic()

        def known(keys: Sequence[Key]) -> set[Key]:
            texts = {ledger.key_text(k): k for k in keys}
            with contextlib.ExitStack() as stack:
                c = dry_conn or stack.enter_context(self.db.engine.connect())
                found = ledger.lookup(c, self.st, self.name, name, list(texts), targets=False)
            return {texts[t] for t, e in found.items() if e.state == "present"}

        def confirm_seen(keys: Sequence[Key]) -> None:
            seen.update(seen_id(ledger.key_text(k)) for k in keys)

        def held_versions(lower: str) -> set[str]:
            with contextlib.ExitStack() as stack:
                c = dry_conn or stack.enter_context(self.db.engine.connect())
                return versions.held_since(c, self.st, self.name, name, lower)

        def present() -> int:
            with contextlib.ExitStack() as stack:
                c = dry_conn or stack.enter_context(self.db.engine.connect())
                return ledger.count(c, self.st, self.name, name, "present")

        vouched: list[bool] = []  # set by seen_all: every present entry is still at the source

        unheld: list[Key] = []  # versions the connector no longer vouches for
        versioned = stream.cursor is not None and stream.cursor.versions
        if versioned:
            self._stored_versions[name] = []
        ctx = ReadContext(
            full=full,
            cursor=cursor,
            known=known,
            seen=confirm_seen,
            versions=held_versions if versioned else None,
            unhold=unheld.extend if versioned else None,
            present=present if full else None,
            seen_all=(lambda: vouched.append(True)) if full else None,
        )
        pending: list[dict[str, Any]] = []
        writes = WriteBehind(self.overlap and dry_conn is None)
        # A batch identified, its comparison with the ledger under way (in a thread on a
        # database server: it waits on the server while the next batch is identified).
        compares = Ahead(self.overlap and dry_conn is None, "limsync-compare")
        compared: list[tuple[Identified, str | None, Future[dict[str, Any]]]] = []
        # The compare thread's own connection, held for the scan: a checkout per batch would
        # cost it round trips (the pool's ping, the rollback on return), and a thread waits
        # for the interpreter lock after each one. In autocommit, so that each comparison sees
        # the batches committed before it (no snapshot is kept).
        held_conn: list[sa.Connection] = []

        def compare(ided: Identified) -> dict[str, Any]:
            conn = dry_conn
            if compares.threaded:
                if not held_conn:
                    fresh_conn = self.db.engine.connect()
                    held_conn.append(fresh_conn.execution_options(isolation_level="AUTOCOMMIT"))
                conn = held_conn[0]
            return self._compare(name, ided, conn, fresh)

        def finish() -> int:
            """Map the compared batch and hand its write over; the keys found held."""
            if not compared:
                return 0
            ided, new_cursor, odd = compared.pop()
            prep = self._finish(name, ided, odd.result(), sr, run_id, new_cursor, dry_conn,
                                writes.wait)  # fmt: skip
            # Built here, while the batch before is written: the writing thread then mostly
            # waits on the server (and holds the interpreter lock less).
            prep.new = self.writer.prepare_new(prep.ready, name)
            if prep.writes:
                writes.submit(functools.partial(self._commit, prep))
            return prep.found_first

        def handle(batch: list[dict[str, Any]], new_cursor: str | None) -> int:
            """Identify a batch, finish the one before, start this one's comparison."""
            ided = identify(self._identity(stream), batch, seen)
            found = finish()
            if ided.again:
                writes.wait()  # the first copies of these keys may be in the write in flight
            if fresh and not ided.again:  # nothing to ask the ledger: no hand-over
                task = functools.partial(self._compare, name, ided, None, fresh)
                future = compares.submit(task, inline=True)
            else:
                future = compares.submit(functools.partial(compare, ided))
            compared.append((ided, new_cursor, future))
            return found

        try:
            try:
                for page in self.connector.read(name, ctx):
                    if self._stop_requested():
                        raise _StopRequestedError  # the records read since the last batch: re-read
                    # Without a declared cursor the values would not be used (see new_cursor).
                    for raw in page if stream.cursor else ():
                        value = self.connector.cursor_value(name, raw)
                        if value is not None and (max_cursor is None or value > max_cursor):
                            max_cursor = value
                    pending.extend(page)
                    sr.read += len(page)
                    if self.progress:
                        self.progress(name, len(page))
                    while len(pending) >= self.batch_size:
                        batch, pending = pending[: self.batch_size], pending[self.batch_size :]
                        held += handle(batch, None)
                        if dry_conn is None and time.monotonic() - refreshed >= refresh_every:
                            lock.refresh()
                            refreshed = time.monotonic()
                        if self._stop_requested():
                            raise _StopRequestedError  # after the batch in flight (see finally)
                new_cursor = max_cursor if stream.cursor and max_cursor != cursor else None
                held += handle(pending, new_cursor)
            except Exception:
                # The batch compared last is whole: it lands before the stream stops or fails,
                # as it would have without the look-ahead.
                try:
                    held += finish()
                except Exception as exc:  # reported: the first error wins
                    log.error("stream %s: a batch could not be written: %s", name, exc)
                raise
            held += finish()
            writes.wait()
        finally:
            compares.close()  # its task's result is dropped only on a hard stop
            for conn in held_conn:
                conn.close()
            writes.close()  # a batch in flight commits (or fails) before the stream ends
            held += writes.total
        if versioned:
            self._hold_versions(name, unheld, dry_conn)
        if full and not vouched:
            self._detect_gone(name, sr, run_id, seen, held, dry_conn, force_delete)

    def _identity(self, stream: Stream) -> Identity:
        ident = self._identities.get(stream.name)
        if ident is None or ident.stream is not stream:
            ident = self._identities[stream.name] = Identity(stream)
        return ident

    def _stop_requested(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def replay(self, name: str, raws: list[dict[str, Any]], sr: StreamReport, run_id: int) -> None:
        """Process raw records again (quarantine replay), without reading the source: one batch
        through the stages a read's batches go through."""
        with Lock(self.db, f"sync:{self.name}") as _:
            ided = identify(self._identity(self.connector.stream(name)), raws, set())
            odd = self._compare(name, ided, None, fresh=False)
            prep = self._finish(name, ided, odd, sr, run_id, None, None, lambda: None)
            if prep.writes:
                self._commit(prep)

    def _compare(
        self, name: str, ided: Identified, conn: sa.Connection | None, fresh: bool
    ) -> dict[str, tuple[str, str] | None]:
        """The batch's keys the ledger does not hold as present with the hash asked about: their
        (hash, state) as it holds them, or None (see :func:`ledger.mismatches`). Asked on
        ``conn`` (a dry run's, or the compare thread's own), else on a connection checked out
        for it."""
        asked = ided.asked
        if fresh:
            read_again = {ided.texts[i] for i in ided.again}
            odd: dict[str, tuple[str, str] | None] = {t: None for t in asked if t not in read_again}
            if not read_again:
                return odd
            asked = {t: asked[t] for t in read_again}
        else:
            odd = {}
        with contextlib.ExitStack() as stack:
            conn = conn or stack.enter_context(self.db.engine.connect())
            odd.update(ledger.mismatches(conn, self.st, self.name, name, asked))
        return odd

    def _finish(
        self,
        name: str,
        ided: Identified,
        odd: Mapping[str, tuple[str, str] | None],
        sr: StreamReport,
        run_id: int,
        new_cursor: str | None,
        dry_conn: sa.Connection | None,
        settle: Callable[[], None],
    ) -> _Prepared:
        """Map and check the batch's new and changed records, given the ledger's answer
        (:meth:`_compare`): everything but the batch's transaction (:meth:`_commit`).

        ``settle`` waits for the previous batch's write, where this batch must see it: before
        lookups into a table this stream writes itself (a batch holding keys read before waits
        for it before its comparison, see :meth:`_sync_stream`).
        """
        quarantined = ided.quarantined
        valid, records, keys, texts, hashes = (
            ided.valid, ided.records, ided.keys, ided.texts, ided.hashes
        )  # fmt: skip
        found_first = 0
        todo: list[Item] = []
        kept: list[int] = []  # unchanged: their source versions are held all the same
        for i in ided.first:
            if texts[i] not in odd:
                found_first += 1
                kept.append(i)
                continue  # unchanged: nothing is written (most records of a re-sync)
            old = odd[texts[i]]
            item = Item(keys[i], texts[i], valid[i][0], records[i], hashes[i])
            if old is not None:
                found_first += 1
                item.old = ledger.LedgerEntry(old[0], old[1], None)
            todo.append(item)
        sr.unchanged += len(kept)
        again = ided.again
        if again:
            dupes = [Item(keys[i], texts[i], valid[i][0], records[i], hashes[i]) for i in again]
            batch = {texts[i]: hashes[i] for i in ided.first}
            # The ledger's (hash, state) of the duplicates' keys, as the ledger holds them.
            found: dict[str, tuple[str, str]] = {}
            for d in dupes:
                if d.ktext not in odd:
                    found[d.ktext] = (ided.asked[d.ktext], "present")
                elif (entry := odd[d.ktext]) is not None:
                    found[d.ktext] = entry
            duplicates(dupes, batch, found, sr, quarantined)
        # What changed records produced before (to delete rows they no longer produce): read
        # for those few only, not for every record of the batch.
        before = [i.ktext for i in todo if i.old is not None]
        if before:
            with contextlib.ExitStack() as stack:
                conn = dry_conn or stack.enter_context(self.db.engine.connect())
                full = ledger.lookup(conn, self.st, self.name, name, before)
            for item in todo:
                if item.old is not None:
                    item.old = full.get(item.ktext, item.old)
        mapper = self.mappers[name]
        mapped: list[Item] = []
        for item in todo:
            try:
                item.rows = mapper.rows(item.record)
            except Exception as exc:  # a mapping function's bug or a surprising record
                # limsync's own errors say what and where; anything else is named by its class.
                why = str(exc) if isinstance(exc, LimsyncError) else f"{type(exc).__name__}: {exc}"
                quarantined.append((item.ktext, "map", why, item.raw))
                continue
            mapped.append(item)
        flat = [(item, spec, row) for item in mapped for spec, row in item.rows]
        problems: dict[int, str] = {}
        pairs = [(spec, row) for _, spec, row in flat] if mapper.smap.lookups else []
        wanted = wanted_lookups(pairs) if pairs else {}
        # Nothing to look up (no rows, or a map without lookups): no checkout, which costs
        # round trips (the pool's ping and its rollback on return), ~0.2 ms each on MySQL.
        if wanted:
            if self._writes_itself(mapper, wanted):
                settle()  # e.g. a subject's mother, stored by the batch before
            with contextlib.ExitStack() as stack:
                conn = dry_conn or stack.enter_context(self.db.engine.connect())
                problems = resolve_lookups(self.db, conn, pairs, wanted)
        unresolved = {id(flat[i][0]): msg for i, msg in problems.items()}
        row_errors = validate_rows([item for item in mapped if id(item) not in unresolved])
        ready: list[Item] = []
        for item in mapped:
            if id(item) in unresolved:
                quarantined.append((item.ktext, "reference", unresolved[id(item)], item.raw))
            elif id(item) in row_errors:
                quarantined.append((item.ktext, "row", str(row_errors[id(item)]), item.raw))
            else:
                ready.append(item)
        stored_versions = self._stored_versions.get(name)
        if stored_versions is not None:
            value = self.connector.cursor_value
            stored_versions.extend((texts[i], value(name, valid[i][0])) for i in kept)
        return _Prepared(name, ready, quarantined, sr, run_id, new_cursor, dry_conn, found_first)

    def _commit(self, prep: _Prepared) -> int:
        """Write a prepared batch in one transaction; returns how many records new to the
        ledger landed (they got their entry in it)."""
        name, quarantined = prep.name, prep.quarantined
        with self._batch_tx(prep.dry_conn) as conn:
            landed = self.writer.write(
                conn, prep.ready, quarantined, prep.sr, prep.run_id, name, prep.new
            )
            ledger.quarantine(conn, self.st, self.name, name, quarantined, prep.run_id)
            # A key both landed and quarantined in one batch is a duplicate: keep its entry.
            held = {k for k, _, _, _ in quarantined}
            if quarantined:
                self._open_quarantine[name] = True
            if self._open_quarantine.get(name, True):
                released = [i.ktext for i in landed if i.ktext not in held]
                ledger.release_quarantine(conn, self.st, self.name, name, released)
            if prep.new_cursor is not None:
                ledger.set_cursor(conn, self.st, self.name, name, prep.new_cursor)
        stored_versions = self._stored_versions.get(name)
        if stored_versions is not None:
            stored_versions.extend(self._versions_of(name, landed))
        prep.sr.quarantined += len(quarantined)
        if quarantined and self.on_quarantine is not None:
            self.on_quarantine(name, quarantined)
        return sum(1 for i in landed if i.old is None)

    @staticmethod
    def _writes_itself(mapper: Mapper, wanted: Wanted) -> bool:
        """True when a lookup of the batch looks in a table its own stream writes."""
        own = {t.qualname for t in mapper.targets}
        return any(table in own for table, _, _ in wanted)

    def _versions_of(self, name: str, items: Sequence[Item]) -> list[tuple[str, str | None]]:
        return [(item.ktext, self.connector.cursor_value(name, item.raw)) for item in items]

    def _hold_versions(
        self, name: str, unheld: Sequence[Key], dry_conn: sa.Connection | None
    ) -> None:
        """Hold the cursor value of every record this read stored, once the whole stream is read.

        Only now: a connector may find, after its last record, that some it yielded changed
        while it read them (``ReadContext.unhold``). A read that stops earlier holds nothing
        new; the versions held before are then older than the stored copies, which only makes
        the next read fetch those records again.
        """
        stored = dict(self._stored_versions.pop(name, []))  # a key stored twice: the last wins
        dropped = {ledger.key_text(k) for k in unheld}
        if not stored and not dropped:
            return
        pairs = [(k, v) for k, v in stored.items() if v is not None and k not in dropped]
        with self._batch_tx(dry_conn) as conn:
            versions.drop(conn, self.st, self.name, name, list(stored.keys() | dropped))
            versions.hold(conn, self.st, self.name, name, pairs)

    # -- deletes

    def _detect_gone(
        self,
        name: str,
        sr: StreamReport,
        run_id: int,
        seen: set[int],
        held: int,
        dry_conn: sa.Connection | None,
        force: bool,
    ) -> None:
        """Find the ledger's keys this full scan did not see, and apply the delete policy.

        ``held``: how many of the scan's keys the ledger holds. When that is every entry it has,
        no key can be missing and the ledger is not read key by key (an unchanged re-sync's
        usual case). A key the ledger lost during the scan only lowers the count, so any doubt
        leads to the full comparison.
        """
        with contextlib.ExitStack() as stack:
            conn = dry_conn or stack.enter_context(self.db.engine.connect())
            if ledger.count(conn, self.st, self.name, name) == held:
                return
            # Streamed: only the keys missing from this scan are kept, not the whole ledger.
            total = 0
            missing: dict[str, str] = {}
            for ktext, state in ledger.known_keys(conn, self.st, self.name, name):
                total += 1
                if seen_id(ktext) not in seen:
                    missing[ktext] = state
        if not missing:
            return
        stream = self.connector.stream(name)
        keys = [
            stream.key_from_raw(dict(zip(stream.key, json.loads(k), strict=True))) for k in missing
        ]
        confirmed = self.connector.confirm_gone(name, keys)
        gone = [ledger.key_text(k) for k in confirmed]
        sr.gone = len(gone)
        if not gone:
            return
        policy = self.connector.stream_settings(name).delete_policy
        if policy == "ignore":
            return
        if policy == "flag":
            newly = [k for k in gone if missing.get(k) == "present"]
            if newly:
                with self._batch_tx(dry_conn) as conn:
                    ledger.mark(conn, self.st, self.name, name, newly, "gone", run_id)
            return
        threshold = self.connector.stream_settings(name).delete_threshold
        if not force and len(gone) > threshold * total:
            raise DeleteRefusedError(
                f"stream {self.name}.{name}: {len(gone)} of {total} records are gone at "
                f"the source, above the delete threshold of {threshold:.0%}; nothing was deleted "
                "(check the source, then rerun with --force to delete them)"
            )
        with self._batch_tx(dry_conn) as conn:
            entries = ledger.lookup(conn, self.st, self.name, name, gone)
            targets: dict[str, list[tuple[Any, ...]]] = {}
            for entry in entries.values():
                for table, key in entry.targets:
                    targets.setdefault(table, []).append(tuple(key))
            for spec in reversed(load_order(self.db.spec(t) for t in targets)):
                self.writer.delete_rows(conn, spec.qualname, targets[spec.qualname], sr, run_id)
            ledger.forget(conn, self.st, self.name, name, gone)
            versions.drop(conn, self.st, self.name, name, gone)
        sr.deleted = len(gone)
