"""Operations on a running installation: status, quarantine, stream state.

Each function is what one CLI command shows or does (``limsync status``, ``limsync quarantine
list|show|replay``, ``limsync state show|reset``), as plain data for scripts and the CLI alike.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from limsync.config.settings import Settings
from limsync.errors import ConfigError
from limsync.pipeline import state
from limsync.pipeline.database import Database
from limsync.sync.report import StreamReport, SyncReport
from limsync.sync.runner import has_default_mapping, mapping_module, prepare


def discover(settings: Settings) -> list[dict[str, Any]]:
    """Each configured connector's streams (class-declared or defined by its settings), with
    the tables they write: the default mapping's, or the configuration's ``[[mappings]]``."""
    from limsync.connectors import registry

    rows: list[dict[str, Any]] = []
    for name in settings.connectors:
        csettings = settings.connector_settings(name)
        cls = registry.get(csettings.type)
        streams = (
            cls.instance_streams_of(csettings, name=name) if cls.instance_streams else cls.streams
        )
        maps = mapping_module(cls).STREAM_MAPS if has_default_mapping(cls) else {}
        declared = settings.mappings.get(name, {})
        for stream in streams.values():
            smap = maps.get(stream.name)
            if stream.name in declared:  # the configuration's mappings replace the default
                tables = [t.table for t in declared[stream.name]]
            else:
                tables = [s.qualname for s in smap.specs] if smap else []
            rows.append({
                "connector": name, "stream": stream.name, "path": stream.path,
                "key": list(stream.key), "cursor": stream.cursor.field if stream.cursor else None,
                "tables": tables,
            })  # fmt: skip
    return rows


def status(db: Database, settings: Settings) -> list[dict[str, Any]]:
    """Per configured connector, and for populate when it is configured or scheduled: last run,
    last success, staleness (seconds since the last success), next scheduled run (from
    ``[[schedule]]``, no daemon needed), open quarantine, outbox backlog and populate backlog
    per table."""
    from limsync.sync.schedule import POPULATE, next_runs, populate_backlog

    st = state.ensure(db)
    now = state.utcnow()
    upcoming: dict[str, Any] = {}
    for entry in next_runs(settings, db):
        when = entry["next_run"]
        if when is not None and (upcoming.get(entry["connector"]) or when) >= when:
            upcoming[entry["connector"]] = when
    pending, _errors = populate_backlog(db)
    out = []
    with db.engine.connect() as conn:
        backlog = conn.execute(
            sa.select(sa.func.count())
            .select_from(st.outbox)
            .where(st.outbox.c.processed_at.is_(None))
        ).scalar_one()
        # Populate has a row of its own when it is configured or scheduled: its runs are
        # logged under the name "populate", like a connector's.
        populating = bool(settings.populate.tables) or POPULATE in upcoming
        for name in [*settings.connectors, *([POPULATE] if populating else [])]:
            last = state.runs(db, connector=name, limit=1)
            ok = state.runs(db, connector=name, status="success", limit=1)
            quarantined = conn.execute(
                sa.select(sa.func.count())
                .select_from(st.quarantine)
                .where(st.quarantine.c.connector == name)
            ).scalar_one()
            records = conn.execute(
                sa.select(st.ledger.c.state, sa.func.count())
                .where(st.ledger.c.connector == name)
                .group_by(st.ledger.c.state)
            ).all()
            out.append(
                {
                    "connector": name,
                    "last_run": last[0] if last else None,
                    "last_success": ok[0]["finished_at"] if ok else None,
                    "stale_seconds": (
                        round((now - ok[0]["finished_at"]).total_seconds())
                        if ok and ok[0]["finished_at"]
                        else None
                    ),
                    "next_run": upcoming.get(name),
                    "quarantined": int(quarantined),
                    "records": {s: int(n) for s, n in records},
                    "outbox_backlog": int(backlog),
                    "populate_backlog": pending,
                }
            )
    return out


def runs(
    db: Database,
    *,
    connector: str | None = None,
    status: str | None = None,
    kind: str | None = None,
    since: dt.datetime | None = None,
    limit: int = 20,
) -> list[dict[str, Any]]:
    """The run log, newest first, filtered by connector, status, kind and start time (UTC)."""
    st = state.ensure(db)
    t = st.run
    q = sa.select(t).order_by(t.c.run_id.desc()).limit(limit)
    for column, value in ((t.c.connector, connector), (t.c.status, status), (t.c.kind, kind)):
        if value:
            q = q.where(column == value)
    if since is not None:
        q = q.where(t.c.started_at >= since)
    with db.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(q).mappings()]
    for r in rows:
        r["counts"] = json.loads(r["counts"]) if r["counts"] else {}
    return rows


def quarantine_list(
    db: Database,
    connector: str | None = None,
    stream: str | None = None,
    *,
    with_raw: bool = False,
) -> list[dict[str, Any]]:
    """Quarantined records, newest first; their raw payloads (decoded) with ``with_raw``."""
    st = state.ensure(db)
    t = st.quarantine
    cols = [t.c.connector, t.c.stream, t.c.source_key, t.c.stage, t.c.error, t.c.run_id,
            t.c.created_at]  # fmt: skip
    if with_raw:
        cols.append(t.c.raw)
    q = sa.select(*cols).order_by(t.c.created_at.desc())
    if connector:
        q = q.where(t.c.connector == connector)
    if stream:
        q = q.where(t.c.stream == stream)
    with db.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(q).mappings()]
    for r in rows:
        if with_raw:
            r["raw"] = json.loads(r["raw"])
    return rows


def quarantine_show(db: Database, connector: str, stream: str, key: str) -> dict[str, Any]:
    """One quarantined record with its raw payload."""
    st = state.ensure(db)
    t = st.quarantine
    with db.engine.connect() as conn:
        row = (
            conn.execute(
                sa.select(t).where(
                    t.c.connector == connector, t.c.stream == stream, t.c.source_key == key
                )
            )
            .mappings()
            .first()
        )
    if row is None:
        raise ConfigError(f"no quarantined record {connector}.{stream} {key}")
    out = dict(row)
    out["raw"] = json.loads(out["raw"])
    return out


def quarantine_replay(
    db: Database,
    settings: Settings,
    connector: str,
    stream: str | None = None,
    keys: Sequence[str] = (),
) -> SyncReport:
    """Run quarantined records through validation, mapping and writing again (after a fix).

    Records that now land leave the quarantine; the others stay with their new error.
    """
    items = quarantine_list(db, connector, stream, with_raw=True)
    if keys:
        items = [i for i in items if i["source_key"] in set(keys)]
    prepared = prepare(settings, db, connector)
    engine = prepared.engine
    report = SyncReport(connector, mode="replay")
    run_id = state.start_run(db, connector, "replay", "replay")
    report.run_id = run_id
    by_stream: dict[str, list[dict[str, Any]]] = {}
    for item in items:  # raw payloads came with the list: no query per record
        by_stream.setdefault(item["stream"], []).append(item["raw"])
    for name in engine.stream_order(list(by_stream)):
        sr = StreamReport(name)
        report.streams.append(sr)
        sr.read = len(by_stream[name])
        engine.replay(name, by_stream[name], sr, run_id)
    state.finish_run(
        db, run_id, "success" if report.ok else "failed", report.counts(), report.first_error()
    )
    return report


def state_show(db: Database, connector: str | None = None) -> list[dict[str, Any]]:
    """Per connector and stream: cursor and ledger counts."""
    st = state.ensure(db)
    with db.engine.connect() as conn:
        q = sa.select(
            st.ledger.c.connector, st.ledger.c.stream, st.ledger.c.state, sa.func.count()
        ).group_by(st.ledger.c.connector, st.ledger.c.stream, st.ledger.c.state)
        if connector:
            q = q.where(st.ledger.c.connector == connector)
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for c, s, state_, n in conn.execute(q):
            rows.setdefault(
                (c, s), {"connector": c, "stream": s, "cursor": None, "present": 0, "gone": 0}
            )[state_] = int(n)
        for c, s, value in conn.execute(
            sa.select(st.cursor.c.connector, st.cursor.c.stream, st.cursor.c.value)
        ):
            if connector and c != connector:
                continue
            rows.setdefault(
                (c, s), {"connector": c, "stream": s, "cursor": None, "present": 0, "gone": 0}
            )["cursor"] = value
    return sorted(rows.values(), key=lambda r: (r["connector"], r["stream"]))


def state_reset(
    db: Database, connector: str, stream: str | None = None, *, ledger: bool = False
) -> dict[str, int]:
    """Forget cursors (and with ``ledger`` the content hashes) so the next run re-reads all.

    The pipeline's rows are kept; resetting the ledger makes the next run compare every record
    with the database again (writing only what really differs).
    """
    st = state.ensure(db)
    with db.transaction() as conn:
        conds = [st.cursor.c.connector == connector]
        if stream:
            conds.append(st.cursor.c.stream == stream)
        cursors = conn.execute(st.cursor.delete().where(*conds)).rowcount
        entries = 0
        if ledger:
            lconds = [st.ledger.c.connector == connector]
            if stream:
                lconds.append(st.ledger.c.stream == stream)
            entries = conn.execute(st.ledger.delete().where(*lconds)).rowcount
            # Source versions describe stored copies the ledger no longer vouches for.
            vconds = [st.source_version.c.connector == connector]
            if stream:
                vconds.append(st.source_version.c.stream == stream)
            conn.execute(st.source_version.delete().where(*vconds))
    return {"cursors": int(cursors), "ledger_entries": int(entries)}
