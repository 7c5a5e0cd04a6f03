"""``populate``: queue the missing keys, then let one or many workers make them.

* :func:`populate` (``limsync populate``) refreshes the job table from each table's key source
  (only keys without rows; errors stay errors unless ``retry_errors``), then runs the workers.
* :func:`after_sync` (after each sync) consumes the change outbox and makes only the queued
  keys: no key-source scan at all.
* :func:`backlog` is what status pages show: pending outbox rows, pending and failed keys.

With ``workers=N`` the calling process is the first worker; the others are started only when
the work left is worth their start-up (:func:`run_processes`). They are clean processes (a fork
server's or ``spawn``'s): each opens its own Database from the URL and re-imports its table
class by path, so they share nothing but the database, exactly like workers on other hosts
running the same command.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing as mp
import os
import queue as queue_mod
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import sqlalchemy as sa

from limsync.errors import ConfigError, PopulateError
from limsync.pipeline import state
from limsync.pipeline.database import Database
from limsync.pipeline.graph import build_graph, load_order
from limsync.pipeline.populate import jobs
from limsync.pipeline.populate.keys import Key, KeySource, key_hash, key_text
from limsync.pipeline.populate.outbox import (
    OutboxReport,
    merge_reports,
    process_outbox,
    register_lineage,
)
from limsync.pipeline.populate.worker import Worker, WorkerResult
from limsync.pipeline.tables import AutoPopulated

log = logging.getLogger(__name__)

# (table, keys made, keys failed, keys pending when the workers started)
Progress = Callable[[str, int, int, int], None]


@dataclass
class TableReport:
    """What a populate run did for one table."""

    table: str
    queued: int = 0  # keys newly queued by the refresh
    made: int = 0
    failed: int = 0
    discarded: int = 0
    errors: int = 0  # keys in error after the run (including older ones)
    seconds: float = 0.0
    make_seconds: float = 0.0
    processes: int = 0  # worker processes that ran (the calling one included)
    made_keys: list[Key] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "table": self.table, "queued": self.queued, "made": self.made,
            "failed": self.failed, "discarded": self.discarded, "errors": self.errors,
            "seconds": round(self.seconds, 3), "make_seconds": round(self.make_seconds, 3),
            "processes": self.processes,
        }  # fmt: skip


@dataclass
class PopulateReport:
    """Everything one populate run did."""

    mode: str  # full | outbox
    run_id: int = 0
    tables: list[TableReport] = field(default_factory=list)
    outbox: OutboxReport | None = None

    @property
    def ok(self) -> bool:
        """True when no key failed in this run, the lab's DataJoint tables' included."""
        return all(t.failed == 0 for t in self.tables) and not self.datajoint_errors()

    def datajoint_errors(self) -> list[tuple[str, dict[str, Any], str]]:
        """(table, key, message) of every DataJoint failure of the after-sync refresh."""
        reports = self.outbox.datajoint if self.outbox else []
        return [e for r in reports for e in getattr(r, "errors", [])]

    def error(self) -> str | None:
        """One line for the run log when something failed: how many, and the first message."""
        failed = sum(t.failed for t in self.tables)
        dj = self.datajoint_errors()
        if not failed and not dj:
            return None
        parts = []
        if failed:
            parts.append(f"{failed} key(s) failed (limsync populate --errors lists them)")
        if dj:
            table, key, message = dj[0]
            parts.append(f"{len(dj)} DataJoint error(s), first {table} {key}: {message}")
        return "; ".join(parts)

    def counts(self) -> dict[str, Any]:
        """Totals, as stored in the run log."""
        return {
            "made": sum(t.made for t in self.tables),
            "failed": sum(t.failed for t in self.tables),
            "tables": {t.table: t.to_dict() for t in self.tables},
            **({"outbox": self.outbox.to_dict()} if self.outbox else {}),
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``--json`` output)."""
        return {"mode": self.mode, "run_id": self.run_id, "ok": self.ok, **self.counts()}


def load_tables(paths: Sequence[str]) -> list[type[AutoPopulated]]:
    """Table classes from import paths (``package.module.Class`` or ``package.module:Class``)."""
    out: list[type[AutoPopulated]] = []
    for path in paths:
        module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
        if not module_name or not attr:
            raise ConfigError(f"populate table {path!r}: use 'package.module.Class'")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"populate table {path!r} cannot be imported: {exc}") from None
        if not (isinstance(obj, type) and issubclass(obj, AutoPopulated) and hasattr(obj, "spec")):
            raise ConfigError(f"populate table {path!r} is not a Computed or Imported table class")
        out.append(obj)
    return out


def class_path(cls: type[Any]) -> str:
    """The import path :func:`load_tables` reads back."""
    return f"{cls.__module__}:{cls.__qualname__}"


def _prepare(db: Database, tables: Sequence[type[AutoPopulated]]) -> list[type[AutoPopulated]]:
    for cls in tables:
        if cls.make is AutoPopulated.make:
            raise PopulateError(f"table class {cls.__qualname__} defines no make(key)")
        register_lineage(db, cls)
    db.declare(*(s for cls in tables for s in [cls.spec, *_part_specs(cls)]))
    by_name = {c.spec.qualname: c for c in tables}
    return [by_name[s.qualname] for s in load_order([c.spec for c in tables])]


def _part_specs(cls: type[AutoPopulated]) -> list[Any]:
    from limsync.pipeline.populate.worker import parts_of

    return [p.spec for p in parts_of(cls)]


def _feeds_others(db: Database, cls: type[AutoPopulated], tables: Sequence[type[Any]]) -> bool:
    """True when another populated table lies downstream (its keys follow ours via the outbox)."""
    g = build_graph(db.specs)
    below = nx.descendants(g, cls.spec.qualname) if cls.spec.qualname in g else set()
    return any(t.spec.qualname in below for t in tables if t is not cls)


def refresh(
    db: Database, cls: type[AutoPopulated], restriction: Mapping[str, Any] | None = None
) -> int:
    """Queue the key-source keys without rows (and without a job row); returns how many."""
    st = state.ensure(db)
    source = KeySource(db, cls)
    with db.engine.connect() as conn:
        missing = source.keys(conn, where=restriction, missing_only=True)
        known = jobs.known_hashes(conn, st, cls.spec.qualname)
    texts = [t for t in (key_text(k) for k in missing) if key_hash(t) not in known]
    with db.transaction() as conn:
        jobs.queue(db, conn, st, cls.spec.qualname, texts, reset=False)
    return len(texts)


def populate(
    db: Database,
    tables: Sequence[type[AutoPopulated]],
    *,
    restriction: Mapping[str, Any] | None = None,
    workers: int = 1,
    retry_errors: bool = False,
    reservation_timeout: float = 600.0,
    progress: Progress | None = None,
    keep_keys: bool = False,
) -> PopulateReport:
    """Make every missing key of ``tables`` (parents first); errors are recorded per key.

    ``restriction`` (column -> value or list of values) limits which missing keys are queued;
    workers then take every pending key of the table. ``retry_errors`` queues failed keys again.
    """
    report = PopulateReport("full")
    ordered = _prepare(db, tables)
    report.run_id = state.start_run(db, "populate", "populate", "full")
    try:
        for cls in ordered:
            tr = TableReport(cls.spec.qualname)
            started = time.monotonic()
            if retry_errors:
                jobs.retry_errors(db, state.ensure(db), cls.spec.qualname)
            tr.queued = refresh(db, cls, restriction)
            # Tables go parents first, each refreshed after the one above it is done: no
            # need to pass made keys down through the outbox here.
            _work(db, cls, tr, workers, reservation_timeout, False, progress, keep_keys)
            tr.seconds = time.monotonic() - started
            report.tables.append(tr)
    except BaseException as exc:
        state.finish_run(db, report.run_id, "failed", report.counts(), repr(exc))
        raise
    state.finish_run(
        db, report.run_id, "success" if report.ok else "failed", report.counts(), report.error()
    )
    return report


def after_sync(
    db: Database,
    tables: Sequence[type[AutoPopulated]],
    *,
    workers: int = 1,
    reservation_timeout: float = 600.0,
    datajoint: Any = None,
    progress: Progress | None = None,
    keep_keys: bool = False,
) -> PopulateReport:
    """Consume the outbox and make exactly the keys it queued (repeated for chained tables)."""
    report = PopulateReport("outbox")
    ordered = _prepare(db, tables)
    report.run_id = state.start_run(db, "populate", "populate", "outbox")
    totals: dict[str, TableReport] = {
        c.spec.qualname: TableReport(c.spec.qualname) for c in ordered
    }
    try:
        for _ in range(len(ordered) + 1):  # each round lets made keys reach the next table down
            ob = process_outbox(db, ordered, datajoint=datajoint)
            report.outbox = _merge(report.outbox, ob)
            if ob.skipped or not ob.processed:
                break
            for cls in ordered:
                tr = totals[cls.spec.qualname]
                tr.queued += ob.queued.get(cls.spec.qualname, 0)
                started = time.monotonic()
                _work(db, cls, tr, workers, reservation_timeout, _feeds_others(db, cls, ordered),
                      progress, keep_keys)  # fmt: skip
                tr.seconds += time.monotonic() - started
    except BaseException as exc:
        report.tables = list(totals.values())
        state.finish_run(db, report.run_id, "failed", report.counts(), repr(exc))
        raise
    report.tables = list(totals.values())
    state.finish_run(
        db, report.run_id, "success" if report.ok else "failed", report.counts(), report.error()
    )
    return report


def _merge(a: OutboxReport | None, b: OutboxReport) -> OutboxReport:
    return b if a is None else merge_reports(a, b)


def _pending_count(db: Database, table: str) -> int:
    st = state.ensure(db)
    j = st.job
    with db.engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).where(j.c.table_name == table, j.c.status != "error")
            ).scalar_one()
        )


def _work(
    db: Database,
    cls: type[AutoPopulated],
    tr: TableReport,
    workers: int,
    timeout: float,
    emit: bool,
    progress: Progress | None,
    keep_keys: bool,
) -> None:
    table = cls.spec.qualname
    total = _pending_count(db, table)
    if total == 0:
        tr.errors = _error_count(db, table)
        return

    def report(made: int, failed: int) -> None:
        if progress:
            progress(table, made, failed, total)

    if workers <= 1:
        result = Worker(db, cls, timeout=timeout, emit=emit, keep_keys=keep_keys,
                        progress=report).run()  # fmt: skip
        tr.processes = max(tr.processes, 1)
    else:
        result, used = run_processes(db, cls, workers, timeout, emit, report, pending=total,
                                     keep_keys=keep_keys)  # fmt: skip
        tr.processes = max(tr.processes, used)
    tr.made += result.made
    tr.failed += result.failed
    tr.discarded += result.discarded
    tr.make_seconds += result.make_seconds
    tr.made_keys.extend(result.made_keys)
    tr.errors = _error_count(db, table)


def _error_count(db: Database, table: str) -> int:
    st = state.ensure(db)
    with db.engine.connect() as conn:
        return jobs.counts(conn, st).get(table, {}).get("error", 0)


# A spawned worker process needs about a second of CPU (imports, connection, checks) before it
# makes its first key: extra processes start only when the keys left would keep one worker busy
# for longer than this. Below it, they would only take CPU from the worker already running.
SPAWN_AFTER_SECONDS = 2.0
SHARED_CHUNK_SECONDS = 0.5  # make time per chunk when several workers share a table


def _context() -> Any:
    """``forkserver`` where there is one (Linux, macOS), else ``spawn``.

    Both start clean processes (never a fork of a process holding connections and threads),
    but a fork server imports limsync once and then forks each worker ready to run, where
    ``spawn`` pays the imports (about a second of CPU) in every worker, and again at exit.
    """
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    # Only read when the server starts (once per process): later calls change nothing.
    ctx.set_forkserver_preload([__name__])
    return ctx


class _Helpers:
    """The extra worker processes of one table, and the events they send back."""

    def __init__(
        self,
        db: Database,
        cls: type[AutoPopulated],
        timeout: float,
        emit: bool,
        keep_keys: bool,
        report: Callable[[int, int], None],
    ) -> None:
        url = db.url.render_as_string(hide_password=False)
        self.args = (url, db.schema_prefix, db.state_schema, class_path(cls), timeout, emit,
                     keep_keys)  # fmt: skip
        self.events: Any = None  # a queue, made with the processes
        self.lock = threading.Lock()  # start() runs in a thread of its own
        self.report = report
        self.procs: list[Any] = []
        self.result = WorkerResult()
        self.finished = 0
        self.failures: list[str] = []

    def start(self, n: int) -> None:
        """Start ``n`` worker processes (they share nothing with this one but the database).

        If they cannot be started (no resources left, say), this process works on alone.
        """
        ctx = _context()
        events = ctx.Queue()
        # The fork server keeps the environment it started with: pass the current one.
        args = (*self.args, events, dict(os.environ))
        procs = [ctx.Process(target=worker_main, args=args, daemon=True) for _ in range(n)]
        try:
            for p in procs:
                p.start()
        except Exception as exc:  # runs in a thread of its own: nothing above would see it
            log.warning("could not start %d more populate worker(s): %s", n, exc)
            procs = [p for p in procs if p.pid is not None]
        with self.lock:
            self.events = events
            self.procs = procs

    def drain(self, wait: float | None = None) -> int:
        """Handle the events waiting (or the first within ``wait`` seconds); keys they made."""
        keys = 0
        with self.lock:
            events = self.events
        while events is not None:
            try:
                kind, *data = events.get(timeout=wait) if wait else events.get_nowait()
            except queue_mod.Empty:
                return keys
            wait = None
            if kind == "progress":
                self.report(int(data[0]), int(data[1]))
                keys += int(data[0]) + int(data[1])
            elif kind == "done":
                self.finished += 1
                made, failed, discarded, seconds, made_keys = data
                self.result.add(WorkerResult(made, failed, discarded, seconds, made_keys))
            else:
                self.finished += 1
                self.failures.append(str(data[0]))
        return keys

    def stop(self) -> None:
        """End the processes at once (this process failed or was interrupted)."""
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.join()

    def join(self) -> None:
        """Wait until every process reported (or died without reporting)."""
        while self.finished < len(self.procs):
            self.drain(wait=0.2)
            if self.finished < len(self.procs) and all(not p.is_alive() for p in self.procs):
                self.drain()
                if self.finished < len(self.procs):
                    # A worker killed from outside sends nothing: its keys expire and are redone.
                    dead = len(self.procs) - self.finished
                    log.warning("%d worker process(es) ended without reporting", dead)
                break
        for p in self.procs:
            p.join()


def run_processes(
    db: Database,
    cls: type[AutoPopulated],
    n: int,
    timeout: float,
    emit: bool,
    report: Callable[[int, int], None],
    *,
    pending: int = 0,
    keep_keys: bool = False,
) -> tuple[WorkerResult, int]:
    """Up to ``n`` workers on one table; returns the summed result and the processes used.

    The calling process is a worker itself, from the first key on. It starts the ``n - 1``
    others once the keys left (of ``pending`` at the start, less those made meanwhile) would
    keep it busy for more than :data:`SPAWN_AFTER_SECONDS`, judged after each of its chunks
    by that chunk's pace; it relays their progress between its chunks and sums their results.
    """
    helpers = _Helpers(db, cls, timeout, emit, keep_keys, report)
    done = 0
    chunks = 0
    last = time.monotonic()
    starter: threading.Thread | None = None

    def after_chunk(made: int, failed: int) -> None:
        nonlocal done, last, chunks, starter
        report(made, failed)
        now = time.monotonic()
        keys = made + failed
        done += keys + helpers.drain()
        chunks += 1
        if starter is None and keys:
            # Judged by make's own time after the first chunk (its bookkeeping pays for cold
            # caches and would overstate the rest), by the whole chunk's pace after that.
            mine = worker.result
            per_key = mine.make_seconds / max(1, mine.made + mine.failed)
            if chunks > 1:
                per_key = max(per_key, (now - last) / keys)
            if max(0, pending - done) * per_key > SPAWN_AFTER_SECONDS:
                # Started from a thread: starting the fork server takes a while, and this
                # process goes on making keys meanwhile.
                starter = threading.Thread(target=helpers.start, args=(n - 1,), daemon=True)
                starter.start()
        last = now

    # Shorter chunks than a lone worker's: at the end, no worker sits idle for long while
    # another finishes a big chunk.
    worker = Worker(db, cls, timeout=timeout, emit=emit, keep_keys=keep_keys,
                    progress=after_chunk, chunk_seconds=SHARED_CHUNK_SECONDS)  # fmt: skip
    try:
        own = worker.run()
    except BaseException:
        # Do not wait for the others to finish the table: their reservations are freed by
        # the next run on this host (their pids are dead), or expire.
        if starter is not None:
            starter.join()
        helpers.stop()
        raise
    if starter is not None:
        starter.join()
    helpers.join()
    if helpers.failures:
        raise PopulateError(
            f"{len(helpers.failures)} worker(s) of {cls.spec.qualname} failed: "
            f"{helpers.failures[0]}"
        )
    own.add(helpers.result)
    return own, 1 + len(helpers.procs)


def worker_main(
    url: str,
    schema_prefix: str,
    state_schema: str,
    path: str,
    timeout: float,
    emit: bool,
    keep_keys: bool,
    events: Any,
    environ: dict[str, str],
) -> None:
    """A worker process: its own Database, its table class re-imported by path."""
    os.environ.clear()
    os.environ.update(environ)
    try:
        (cls,) = load_tables([path])
        db = Database(url, schema_prefix=schema_prefix, state_schema=state_schema)
        # The parent created or migrated the bookkeeping tables before starting workers.
        db.extensions["state_ready"] = True
        try:
            register_lineage(db, cls)
            worker = Worker(db, cls, timeout=timeout, emit=emit, keep_keys=keep_keys,
                            progress=lambda m, f: events.put(("progress", m, f)),
                            chunk_seconds=SHARED_CHUNK_SECONDS)  # fmt: skip
            r = worker.run()
        finally:
            db.dispose()
        events.put(("done", r.made, r.failed, r.discarded, r.make_seconds, r.made_keys))
    except BaseException as exc:
        events.put(("error", f"{type(exc).__name__}: {exc}"))
        raise


def backlog(db: Database) -> dict[str, Any]:
    """Pending outbox rows, and per populated table its pending, reserved and failed keys."""
    st = state.ensure(db)
    with db.engine.connect() as conn:
        outbox = conn.execute(
            sa.select(sa.func.count()).where(st.outbox.c.processed_at.is_(None))
        ).scalar_one()
        per_table = jobs.counts(conn, st)
    return {
        "outbox_pending": int(outbox),
        "tables": {
            t: {
                "pending": c.get("pending", 0),
                "reserved": c.get("reserved", 0),
                "errors": c.get("error", 0),
            }
            for t, c in sorted(per_table.items())
        },
    }


def errors(db: Database, table: str | None = None) -> list[dict[str, Any]]:
    """Failed keys with their message and traceback (of one table, or all)."""
    st = state.ensure(db)
    with db.engine.connect() as conn:
        return jobs.errors(conn, st, table)
