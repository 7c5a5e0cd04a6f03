"""The schedule as data: ``[[schedule]]`` entries as jobs, their triggers and next runs, and
the state readings the daemon and ``limsync status`` report (populate backlog, quarantine).

Kept apart from the daemon (:mod:`limsync.sync.scheduler`) so that ``limsync status`` can say
when each entry runs next without starting anything.
"""

from __future__ import annotations

import datetime as dt
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from limsync.config.duration import parse_duration
from limsync.config.settings import ScheduleEntry, Settings
from limsync.errors import ConfigError
from limsync.pipeline import state
from limsync.pipeline.database import Database
from limsync.sync.runner import parse_selection

POPULATE = "populate"
POPULATE_MODULE = "limsync.pipeline.populate"


@dataclass
class JobSpec:
    """One ``[[schedule]]`` entry, checked and ready to schedule."""

    id: str
    entry: ScheduleEntry
    kind: str  # "sync" or "populate"
    connector: str  # the connector name, or "populate"
    streams: list[str] | None

    @property
    def label(self) -> str:
        """``alyx.sessions (incremental, every 15m)``."""
        when = f"every {self.entry.interval}" if self.entry.interval else f"cron {self.entry.cron}"
        mode = f"{self.entry.mode}, " if self.kind == "sync" else ""
        return f"{self.entry.select} ({mode}{when})"


def job_specs(settings: Settings) -> list[JobSpec]:
    """The schedule's entries as jobs; ConfigError names the entry that is wrong."""
    specs = []
    for i, entry in enumerate(settings.schedule):
        where = f"schedule[{i}] (select = {entry.select!r})"
        if entry.select == POPULATE:
            specs.append(JobSpec(f"{i}:populate", entry, "populate", POPULATE, None))
            continue
        try:
            selection = parse_selection(settings, [entry.select])
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        ((name, streams),) = selection.items()
        specs.append(JobSpec(f"{i}:{entry.select}:{entry.mode}", entry, "sync", name, streams))
    return specs


def build_trigger(
    entry: ScheduleEntry, *, last_start: dt.datetime | None = None, now: dt.datetime | None = None
) -> BaseTrigger:
    """The APScheduler trigger of an entry, in UTC.

    An interval counts from the entry's last run in the run log (``last_start``, aware UTC), so
    a restart neither runs early nor waits a whole interval: overdue entries fire at once.
    """
    now = now or dt.datetime.now(dt.UTC)
    if entry.cron is not None:
        trigger = CronTrigger.from_crontab(entry.cron, timezone=dt.UTC)
        trigger.jitter = entry.jitter
        return trigger
    assert entry.interval is not None
    seconds = parse_duration(entry.interval)
    start = now
    if last_start is not None and last_start + dt.timedelta(seconds=seconds) > now:
        start = last_start + dt.timedelta(seconds=seconds)
    return IntervalTrigger(seconds=seconds, start_date=start, timezone=dt.UTC, jitter=entry.jitter)


def last_starts(db: Database) -> dict[tuple[str, str], dt.datetime]:
    """(connector, kind) -> start time (aware UTC) of its newest run in the run log."""
    st = state.ensure(db)
    q = sa.select(st.run.c.connector, st.run.c.kind, sa.func.max(st.run.c.started_at)).group_by(
        st.run.c.connector, st.run.c.kind
    )
    with db.engine.connect() as conn:
        return {(c, k): aware(t) for c, k, t in conn.execute(q) if t is not None}


def next_runs(
    settings: Settings, db: Database | None = None, now: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """When each schedule entry runs next, computed from its trigger (no daemon needed)."""
    now = now or dt.datetime.now(dt.UTC)
    starts = last_starts(db) if db is not None else {}
    out = []
    for spec in job_specs(settings):
        trigger = build_trigger(spec.entry, last_start=starts.get((spec.connector, spec.kind)))
        nxt = trigger.get_next_fire_time(None, now)
        when = nxt.astimezone(dt.UTC).replace(tzinfo=None) if nxt else None
        out.append({"select": spec.entry.select, "connector": spec.connector, "kind": spec.kind,
                    "mode": spec.entry.mode, "schedule": spec.label, "next_run": when})  # fmt: skip
    return out


def aware(value: dt.datetime) -> dt.datetime:
    """A stored naive-UTC timestamp as an aware one."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


def populate_function() -> Callable[..., Any]:
    """The populate library call behind ``select = "populate"``, imported when first needed.

    ``populate(db, load_tables(settings.populate.tables), workers=..., ...)`` of
    :mod:`limsync.pipeline.populate`: every missing key of the configured tables.
    """
    try:
        module = importlib.import_module(POPULATE_MODULE)
    except ImportError as exc:
        raise ConfigError(
            f'schedule select "populate" needs {POPULATE_MODULE}, which cannot be imported: {exc}'
        ) from None
    populate, load_tables = module.populate, module.load_tables

    def run(db: Database, settings: Settings) -> Any:
        options: Any = getattr(settings, "populate", None)
        if options is None or not options.tables:
            raise ConfigError('schedule select "populate": [populate] tables is empty')
        return populate(db, load_tables(options.tables), workers=options.workers,
                        reservation_timeout=options.reservation_timeout)  # fmt: skip

    return run


def populate_backlog(db: Database) -> tuple[dict[str, int], dict[str, int]]:
    """Pending populate work and errors per table; ``"outbox"`` is the unprocessed outbox.

    Adds ``limsync.pipeline.populate.backlog(db)``'s per-table pending (and reserved) keys and
    errors to the outbox count.
    """
    st = state.ensure(db)
    with db.engine.connect() as conn:
        pending = conn.execute(
            sa.select(sa.func.count())
            .select_from(st.outbox)
            .where(st.outbox.c.processed_at.is_(None))
        ).scalar_one()
    backlog: dict[str, int] = {"outbox": int(pending)}
    errors: dict[str, int] = {}
    try:
        module = importlib.import_module(POPULATE_MODULE)
    except ImportError:
        return backlog, errors
    fn = getattr(module, "backlog", None)
    if callable(fn):
        info = fn(db)
        tables = info.get("tables") if isinstance(info, Mapping) else None
        for table, c in (tables or {}).items():
            if isinstance(c, Mapping):
                backlog[str(table)] = int(c.get("pending", 0)) + int(c.get("reserved", 0))
                errors[str(table)] = int(c.get("errors", 0))
    return backlog, errors


def quarantine_sizes(db: Database, connectors: list[str]) -> dict[str, int]:
    """Open quarantine items per connector."""
    st = state.ensure(db)
    q = sa.select(st.quarantine.c.connector, sa.func.count()).group_by(st.quarantine.c.connector)
    with db.engine.connect() as conn:
        found = {c: int(n) for c, n in conn.execute(q)}
    return {name: found.get(name, 0) for name in connectors}
