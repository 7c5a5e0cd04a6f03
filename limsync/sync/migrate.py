"""The library function behind ``limsync migrate``: a one-off full run with a reject report.

A migration is a full sync of the selected connectors (recorded as kind ``migrate`` in the run
log) followed by a reject report: one CSV line per record in quarantine (connector, stream,
source key, source row, stage, error). It inherits the engine's guarantees: each batch commits
with its ledger entries, so a migration killed halfway is resumed by running it again. Records
already written are recognised by their content hash and skipped, nothing is written twice,
and the records still bad are quarantined again by the new run.

After a stream was read completely (not a dry run, no error, not interrupted), quarantine
entries of that stream left from earlier runs are dropped: a full scan re-reads every record,
so an entry the run did not renew belongs to a record that has since landed or left the
source. The reject report of a completed migration therefore lists exactly what it rejected.
"""

from __future__ import annotations

import csv
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from limsync.config.settings import Settings
from limsync.errors import ConfigError
from limsync.pipeline import state
from limsync.pipeline.database import Database
from limsync.sync.engine import Progress
from limsync.sync.report import SyncReport
from limsync.sync.runner import open_database, parse_selection, prepare

REPORT_COLUMNS = ("connector", "stream", "source_key", "source_row", "stage", "error")
SOURCE_FIELD = "_source"  # where file and SQL records come from ("subjects.csv:12")


@dataclass
class MigrationResult:
    """What a migration did: one report per connector, the rejects, and its speed."""

    reports: list[SyncReport]
    dry_run: bool = False
    rejected: int = 0
    """Records in the reject report (would be rejected, for a dry run)."""
    reject_report: Path | None = None
    seconds: float = 0.0
    rejects: list[dict[str, Any]] = field(default_factory=list, repr=False)
    """For a dry run: the records it would reject (a real run's are in the quarantine)."""

    @property
    def ok(self) -> bool:
        """True when every connector and stream ran through (records may have been rejected)."""
        return all(r.ok for r in self.reports)

    @property
    def read(self) -> int:
        """Records read from every source."""
        return sum(s.read for r in self.reports for s in r.streams)

    @property
    def rate(self) -> float:
        """Records read per second of the whole migration."""
        return self.read / self.seconds if self.seconds > 0 else 0.0

    def exit_code(self, allow_rejects: bool = False) -> int:
        """0 when all went through; 1 when a stream failed, or (unless allowed) records were
        rejected: a script running a migration must notice either."""
        if not self.ok or (self.rejected and not allow_rejects):
            return 1
        return 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``--json`` output)."""
        return {
            "ok": self.ok,
            "dry_run": self.dry_run,
            "read": self.read,
            "rejected": self.rejected,
            "reject_report": str(self.reject_report) if self.reject_report else None,
            "seconds": round(self.seconds, 3),
            "records_per_second": round(self.rate, 1),
            "connectors": [r.to_dict() for r in self.reports],
        }


def migrate(
    settings: Settings,
    select: Sequence[str] | None = None,
    *,
    dry_run: bool = False,
    reject_report: Path | None = None,
    progress: Progress | None = None,
    db: Database | None = None,
    stop: threading.Event | None = None,
) -> MigrationResult:
    """Migrate the selected connectors (all by default) and write the reject report.

    ``select`` items are connector names or ``name.stream``. With ``dry_run`` nothing is
    written (one transaction, rolled back) and the report lists what would be rejected.
    ``stop``, when set, ends the run between two batches (rerun to finish).
    """
    selection = parse_selection(settings, select)
    own_db = db is None
    database = db or open_database(settings)
    result = MigrationResult([], dry_run=dry_run, reject_report=reject_report)
    started = time.monotonic()
    try:
        for name, streams in selection.items():
            if stop is not None and stop.is_set():
                break
            prepared = prepare(settings, database, name, progress=progress)
            engine = prepared.engine
            engine.stop = stop
            if streams is not None:
                unknown = sorted(set(streams) - set(engine.mappers))
                if unknown:
                    raise ConfigError(
                        f"connector {name!r} has no mapped stream(s) {', '.join(unknown)} "
                        f"(streams: {', '.join(engine.mappers)})"
                    )
            if dry_run:
                engine.on_quarantine = _collector(name, result.rejects)
            with prepared.connector:
                prepared.connector.open()
                report = engine.run(streams=streams, full=True, dry_run=dry_run, kind="migrate")
            result.reports.append(report)
            if not dry_run and report.error is None:
                done = [s.stream for s in report.streams if s.error is None]
                _drop_stale(database, name, done, report.run_id)
        result.seconds = time.monotonic() - started
        connectors = [r.connector for r in result.reports]
        rows: Iterable[dict[str, Any]] = (
            result.rejects if dry_run else quarantined(database, connectors, selection)
        )
        result.rejected = write_reject_report(reject_report, rows)
    finally:
        if own_db:
            database.dispose()
    return result


def _collector(
    connector: str, into: list[dict[str, Any]]
) -> Callable[[str, list[tuple[str, str, str, Any]]], None]:
    """An ``on_quarantine`` callback of the engine that keeps what a dry run would reject."""

    def collect(stream: str, items: list[tuple[str, str, str, Any]]) -> None:
        for key, stage, error, raw in items:
            into.append(_reject(connector, stream, key, stage, error, raw))

    return collect


def _reject(
    connector: str, stream: str, key: str, stage: str, error: str, raw: Any
) -> dict[str, Any]:
    source = raw.get(SOURCE_FIELD) if isinstance(raw, dict) else None
    return {
        "connector": connector,
        "stream": stream,
        "source_key": key,
        "source_row": "" if source is None else str(source),
        "stage": stage,
        "error": error,
    }


def _drop_stale(db: Database, connector: str, streams: list[str], run_id: int) -> None:
    if not streams:
        return
    t = state.ensure(db).quarantine
    with db.transaction() as conn:
        conn.execute(
            t.delete().where(
                t.c.connector == connector, t.c.stream.in_(streams), t.c.run_id != run_id
            )
        )


def quarantined(
    db: Database,
    connectors: Sequence[str],
    selection: dict[str, list[str] | None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Reject-report rows of everything in quarantine for these connectors (streamed)."""
    t = state.ensure(db).quarantine
    q = (
        sa.select(t.c.connector, t.c.stream, t.c.source_key, t.c.stage, t.c.error, t.c.raw)
        .where(t.c.connector.in_(list(connectors)))
        .order_by(t.c.connector, t.c.stream, t.c.source_key)
    )
    with db.engine.connect() as conn:
        for connector, stream, key, stage, error, raw in conn.execution_options(
            yield_per=1000
        ).execute(q):
            streams = (selection or {}).get(connector)
            if streams is not None and stream not in streams:
                continue
            yield _reject(connector, stream, key, stage, error, json.loads(raw))


def write_reject_report(path: Path | None, rows: Iterable[dict[str, Any]]) -> int:
    """Write the reject report CSV (UTF-8, a header line) if a path is given; count the rows."""
    if path is None:
        return sum(1 for _ in rows)
    n = 0
    try:
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=REPORT_COLUMNS)
            writer.writeheader()
            for row in rows:
                writer.writerow(row)
                n += 1
    except OSError as exc:
        raise ConfigError(f"reject report {path}: cannot be written: {exc.strerror}") from None
    return n
