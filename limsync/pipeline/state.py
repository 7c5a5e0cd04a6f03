"""limsync's own bookkeeping tables, all named ``~limsync_*`` so DataJoint never lists them.

They live in their own schema (``<prefix>limsync`` on MySQL/PostgreSQL; a name prefix on SQLite):

============================  =================================================================
``~limsync_version``          schema version of these tables (migrations below)
``~limsync_ledger``           one row per source record: content hash, state, rows it mapped to
``~limsync_cursor``           per-stream high-water marks for incremental reads
``~limsync_run``              the run log: who ran what, when, how it ended, counts
``~limsync_quarantine``       records that failed validation, mapping or writing, with the raw one
``~limsync_outbox``           changed keys per table, for downstream recompute (at-least-once)
``~limsync_lock``             writer locks on SQLite (MySQL/PostgreSQL use server locks)
``~limsync_job``              populate's job table: pending, reserved and failed keys (v2)
``~limsync_source_version``   per record: the source's version (cursor value) of what is stored (v3)
============================  =================================================================

Created or migrated by :func:`upgrade` (``limsync db upgrade``), and automatically on first use.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from limsync.errors import DatabaseError
from limsync.pipeline.database import Database

SCHEMA_VERSION = 3
PREFIX = "~limsync_"


def utcnow() -> dt.datetime:
    """Naive UTC now, the convention of every timestamp limsync stores."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class StateTables:
    """The SQLAlchemy tables of limsync's bookkeeping for one database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.metadata = sa.MetaData()
        schema = None if db.dialect == "sqlite" else db.physical_schema(db.state_schema)
        self.schema = schema
        m = self.metadata

        def name(n: str) -> str:
            base = PREFIX + n
            return f"{db.physical_schema(db.state_schema)}.{base}" if schema is None else base

        key = sa.String(255)
        ident = sa.String(64)
        ts = sa.DateTime().with_variant(sa.dialects.mysql.DATETIME(fsp=6), "mysql", "mariadb")
        text = sa.Text().with_variant(sa.dialects.mysql.LONGTEXT(), "mysql", "mariadb")
        self.version = sa.Table(
            name("version"), m, sa.Column("component", ident, primary_key=True),
            sa.Column("version", sa.Integer, nullable=False),
            sa.Column("upgraded_at", ts, nullable=False), schema=schema,
        )  # fmt: skip
        self.ledger = sa.Table(
            name("ledger"), m,
            sa.Column("connector", ident, primary_key=True),
            sa.Column("stream", ident, primary_key=True),
            sa.Column("source_key", key, primary_key=True),
            sa.Column("content_hash", sa.CHAR(32), nullable=False),
            sa.Column("state", sa.String(8), nullable=False),  # present | gone
            sa.Column("targets", text, nullable=False),  # JSON [[table, [key...]], ...]
            sa.Column("first_seen", ts, nullable=False),
            sa.Column("last_changed", ts, nullable=False),
            sa.Column("run_id", sa.BigInteger, nullable=False),
            schema=schema,
        )  # fmt: skip
        self.cursor = sa.Table(
            name("cursor"), m,
            sa.Column("connector", ident, primary_key=True),
            sa.Column("stream", ident, primary_key=True),
            sa.Column("value", sa.String(255), nullable=False),
            sa.Column("updated_at", ts, nullable=False),
            schema=schema,
        )  # fmt: skip
        self.run = sa.Table(
            name("run"), m,
            sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"),
                      primary_key=True, autoincrement=True),
            sa.Column("connector", ident, nullable=False),
            sa.Column("kind", sa.String(16), nullable=False),  # sync | populate | migrate
            sa.Column("mode", sa.String(16), nullable=False),  # full | incremental | dry-run
            sa.Column("status", sa.String(16), nullable=False),  # running | success | failed
            sa.Column("started_at", ts, nullable=False),
            sa.Column("finished_at", ts),
            sa.Column("host", sa.String(255), nullable=False),
            sa.Column("pid", sa.Integer, nullable=False),
            sa.Column("counts", text),
            sa.Column("error", text),
            sa.Index(f"{PREFIX}run_connector", "connector", "started_at"),
            schema=schema,
        )  # fmt: skip
        self.quarantine = sa.Table(
            name("quarantine"), m,
            sa.Column("connector", ident, primary_key=True),
            sa.Column("stream", ident, primary_key=True),
            sa.Column("source_key", key, primary_key=True),
            sa.Column("stage", sa.String(16), nullable=False),  # validate|map|row|reference|write
            sa.Column("error", text, nullable=False),
            sa.Column("raw", text, nullable=False),
            sa.Column("run_id", sa.BigInteger, nullable=False),
            sa.Column("created_at", ts, nullable=False),
            schema=schema,
        )  # fmt: skip
        self.outbox = sa.Table(
            name("outbox"), m,
            sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"),
                      primary_key=True, autoincrement=True),
            sa.Column("table_name", sa.String(255), nullable=False),
            sa.Column("row_key", text, nullable=False),  # JSON list, canonical
            sa.Column("change", sa.String(8), nullable=False),  # insert | update | delete
            sa.Column("run_id", sa.BigInteger, nullable=False),
            sa.Column("created_at", ts, nullable=False),
            sa.Column("processed_at", ts),
            sa.Index(f"{PREFIX}outbox_pending", "processed_at", "id"),
            schema=schema,
        )  # fmt: skip
        self.job = sa.Table(
            name("job"), m,
            sa.Column("table_name", sa.String(255), primary_key=True),  # populated table
            sa.Column("key_hash", sa.CHAR(32), primary_key=True),  # of row_key
            sa.Column("row_key", text, nullable=False),  # JSON list, canonical
            sa.Column("status", sa.String(8), nullable=False),  # pending | reserved | error
            sa.Column("attempts", sa.Integer, nullable=False),
            sa.Column("token", sa.String(64)),  # the reserving worker
            sa.Column("host", sa.String(255)),
            sa.Column("pid", sa.Integer),
            sa.Column("created_at", ts, nullable=False),
            sa.Column("reserved_at", ts),
            sa.Column("expires_at", ts),
            sa.Column("error_message", text),
            sa.Column("error_stack", text),
            sa.Index(f"{PREFIX}job_claim", "table_name", "status", "expires_at"),
            schema=schema,
        )  # fmt: skip
        self.lock = sa.Table(
            name("lock"), m,
            sa.Column("name", key, primary_key=True),
            sa.Column("holder", sa.String(255), nullable=False),
            sa.Column("host", sa.String(255), nullable=False),
            sa.Column("pid", sa.Integer, nullable=False),
            sa.Column("acquired_at", ts, nullable=False),
            sa.Column("expires_at", ts, nullable=False),
            schema=schema,
        )  # fmt: skip
        # The cursor value (e.g. Alyx's auto_datetime) of the record version a ledger entry
        # stores, for connectors that can skip records whose version they already hold.
        self.source_version = sa.Table(
            name("source_version"), m,
            sa.Column("connector", ident, primary_key=True),
            sa.Column("stream", ident, primary_key=True),
            sa.Column("source_key", key, primary_key=True),
            sa.Column("version", sa.String(64), nullable=False),
            sa.Index(f"{PREFIX}source_version_value", "connector", "stream", "version"),
            schema=schema,
        )  # fmt: skip


def state_tables(db: Database) -> StateTables:
    """The bookkeeping tables of ``db`` (built once per Database)."""
    st = db.extensions.get("state")
    if st is None:
        st = db.extensions["state"] = StateTables(db)
    assert isinstance(st, StateTables)
    return st


# Each migration takes a connection and the tables and brings the schema from version i to i+1.
MIGRATIONS: list[Callable[[sa.Connection, StateTables], None]] = [
    # 1: every table (on a new database this creates the later versions' tables too)
    lambda conn, st: st.metadata.create_all(conn, checkfirst=True),
    # 2: populate's job table
    lambda conn, st: st.job.create(conn, checkfirst=True),
    # 3: per-record source versions
    lambda conn, st: st.source_version.create(conn, checkfirst=True),
]
assert len(MIGRATIONS) == SCHEMA_VERSION


def current_version(db: Database) -> int:
    """The bookkeeping schema version in the database (0 when absent)."""
    st = state_tables(db)
    with db.engine.connect() as conn:
        insp = sa.inspect(conn)
        if not insp.has_table(st.version.name, schema=st.schema):
            return 0
        v = conn.execute(
            sa.select(st.version.c.version).where(st.version.c.component == "state")
        ).scalar()
        return int(v or 0)


def upgrade(db: Database) -> tuple[int, int]:
    """Create or migrate the bookkeeping tables; returns (version before, version after).

    Safe when several processes start on a fresh database at once (two daemons, a daemon and
    a manual run): the loser of a race on a table or the version row sees the winner's work
    on its next attempt and finds nothing left to do.
    """
    for attempt in range(5):
        try:
            return _upgrade_once(db)
        except (sa.exc.DBAPIError, DatabaseError) as exc:
            if attempt == 4 or not _lost_a_race(exc):
                raise
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


def _lost_a_race(exc: Exception) -> bool:
    text = str(exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc).lower()
    return any(s in text for s in ("already exists", "duplicate", "unique constraint", "deadlock"))


def _upgrade_once(db: Database) -> tuple[int, int]:
    st = state_tables(db)
    before = current_version(db)
    if before >= SCHEMA_VERSION:
        return before, before
    with db.transaction() as conn:
        if st.schema is not None:
            if db.dialect == "mysql":
                conn.exec_driver_sql(
                    f"CREATE DATABASE IF NOT EXISTS {db.quote(st.schema)} "
                    "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
                )
            else:
                conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {db.quote(st.schema)}")
    with db.transaction() as conn:
        for i in range(before, SCHEMA_VERSION):
            MIGRATIONS[i](conn, st)
        conn.execute(st.version.delete().where(st.version.c.component == "state"))
        conn.execute(
            st.version.insert().values(
                component="state", version=SCHEMA_VERSION, upgraded_at=utcnow()
            )
        )
    return before, SCHEMA_VERSION


def ensure(db: Database) -> StateTables:
    """The bookkeeping tables, created or migrated first if needed (checked once per Database)."""
    if not db.extensions.get("state_ready"):
        upgrade(db)
        db.extensions["state_ready"] = True
    return state_tables(db)


# --- the run log


def start_run(db: Database, connector: str, kind: str, mode: str) -> int:
    """Record a run as running; returns its id."""
    st = ensure(db)
    with db.transaction() as conn:
        result = conn.execute(
            st.run.insert().values(
                connector=connector, kind=kind, mode=mode, status="running",
                started_at=utcnow(), host=socket.gethostname(), pid=os.getpid(),
            )
        )  # fmt: skip
        key = result.inserted_primary_key
        assert key is not None
        return int(key[0])


def finish_run(
    db: Database, run_id: int, status: str, counts: dict[str, Any], error: str | None = None
) -> None:
    """Record how a run ended."""
    st = ensure(db)
    with db.transaction() as conn:
        conn.execute(
            st.run.update()
            .where(st.run.c.run_id == run_id)
            .values(
                status=status,
                finished_at=utcnow(),
                counts=json.dumps(counts, sort_keys=True, default=str),
                error=error,
            )
        )


def runs(
    db: Database, *, connector: str | None = None, status: str | None = None, limit: int = 20
) -> list[dict[str, Any]]:
    """The newest runs first, optionally filtered."""
    st = ensure(db)
    q = sa.select(st.run).order_by(st.run.c.run_id.desc()).limit(limit)
    if connector:
        q = q.where(st.run.c.connector == connector)
    if status:
        q = q.where(st.run.c.status == status)
    with db.engine.connect() as conn:
        out = []
        for r in conn.execute(q).mappings():
            d = dict(r)
            d["counts"] = json.loads(d["counts"]) if d["counts"] else {}
            out.append(d)
        return out
