"""The job table (``~limsync_job``): which keys of which populated table are waiting, taken, failed.

A row per key that needs work: ``pending`` (queued by ``populate``'s refresh or by the outbox
consumer), ``reserved`` (a worker claimed it until ``expires_at``) or ``error`` (``make``
raised: message and traceback kept until the key is retried). A key that was made has no row:
its rows in the populated table are the record of that, as in DataJoint.

Claiming is one short transaction for many keys: ``SELECT … FOR UPDATE SKIP LOCKED`` on
MySQL/MariaDB 10.6+ and PostgreSQL, so concurrent workers on any number of hosts never take the
same key; on SQLite the transaction itself is the lock (``BEGIN IMMEDIATE``). A reservation that
expires (its worker died) is claimed again by the next worker; on the worker's own host a dead
pid frees it at once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from limsync.pipeline.database import Database
from limsync.pipeline.locks import _pid_alive
from limsync.pipeline.populate.keys import key_hash
from limsync.pipeline.state import StateTables, utcnow

MAX_MESSAGE = 4000
ATTEMPTS = 6
T = TypeVar("T")


@contextlib.contextmanager
def transaction(db: Database) -> Iterator[sa.Connection]:
    """A write transaction for job bookkeeping.

    READ COMMITTED on MySQL/MariaDB: its default, REPEATABLE READ, takes gap locks on the
    claim index, and concurrent claims and completions then deadlock each other.
    """
    options: dict[str, Any] = {"limsync_write": True}
    if db.dialect == "mysql":
        options["isolation_level"] = "READ COMMITTED"
    with db.engine.connect().execution_options(**options) as conn, conn.begin():
        yield conn


def _conflict(exc: BaseException) -> bool:
    """A deadlock or lock timeout: the transaction can simply run again."""
    orig = getattr(exc, "orig", None)
    if orig is None:
        return False
    if getattr(orig, "sqlstate", None) in ("40P01", "40001", "55P03"):
        return True
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    return bool(args) and args[0] in (1213, 1205)


def retrying(fn: Callable[[], T]) -> T:
    """Run ``fn`` (one transaction) again after a deadlock, with a short random backoff."""
    for attempt in range(ATTEMPTS):
        try:
            return fn()
        except sa.exc.DBAPIError as exc:
            if attempt == ATTEMPTS - 1 or not _conflict(exc):
                raise
            time.sleep(random.uniform(0, 0.02 * 2**attempt))
    raise AssertionError("unreachable")


def new_token() -> str:
    """A worker's identity in the job table: host, pid and a random part."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _insert(db: Database, table: sa.Table) -> Any:
    if db.dialect == "mysql":
        return mysql.insert(table)
    if db.dialect == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def queue(
    db: Database,
    conn: sa.Connection,
    st: StateTables,
    table: str,
    key_texts: Iterable[str],
    *,
    reset: bool,
) -> int:
    """Make keys pending; returns how many were given.

    ``reset`` (upstream data changed) turns an existing row back to pending, whatever its
    status, so an error is retried and a worker that holds the key discards its now stale
    result (its token no longer matches). Without ``reset`` existing rows are left alone.
    """
    now = utcnow()
    rows = [
        {"table_name": table, "key_hash": key_hash(t), "row_key": t, "status": "pending",
         "attempts": 0, "created_at": now}
        for t in dict.fromkeys(key_texts)
    ]  # fmt: skip
    if not rows:
        return 0
    j = st.job
    ins = _insert(db, j)
    # Literal SQL, not bound parameters: the drivers' executemany cannot mix the two.
    back_to_pending: dict[str, Any] = {
        "status": sa.literal_column("'pending'"), "attempts": sa.literal_column("0"),
        **{c: sa.null() for c in ("token", "host", "pid", "reserved_at", "expires_at",
                                  "error_message", "error_stack")},
    }  # fmt: skip
    if db.dialect == "mysql":
        if reset:
            stmt = ins.on_duplicate_key_update(**back_to_pending)
        else:
            stmt = ins.on_duplicate_key_update(table_name=ins.inserted.table_name)
    elif reset:
        stmt = ins.on_conflict_do_update(
            index_elements=["table_name", "key_hash"], set_=back_to_pending
        )
    else:
        stmt = ins.on_conflict_do_nothing(index_elements=["table_name", "key_hash"])
    for start in range(0, len(rows), 1000):
        conn.execute(stmt, rows[start : start + 1000])
    return len(rows)


def known_hashes(conn: sa.Connection, st: StateTables, table: str) -> set[str]:
    """Hashes of every key of ``table`` in the job table, whatever its status."""
    j = st.job
    return {str(h) for (h,) in conn.execute(sa.select(j.c.key_hash).where(j.c.table_name == table))}


@dataclass(frozen=True)
class Claimed:
    """A reserved key: its hash and canonical text."""

    hash: str
    text: str


def claim(
    db: Database, st: StateTables, table: str, token: str, n: int, timeout: float
) -> list[Claimed]:
    """Reserve up to ``n`` pending (or expired) keys of ``table`` for ``token``, in one go."""
    j = st.job

    def attempt() -> list[Claimed]:
        now = utcnow()
        with transaction(db) as conn:
            q = (
                sa.select(j.c.key_hash, j.c.row_key)
                .where(
                    j.c.table_name == table,
                    sa.or_(
                        j.c.status == "pending",
                        sa.and_(j.c.status == "reserved", j.c.expires_at < now),
                    ),
                )
                .limit(n)
            )
            if db.dialect != "sqlite":
                q = q.with_for_update(skip_locked=True)
            got = [Claimed(str(h), str(t)) for h, t in conn.execute(q)]
            if got:
                host = token.rsplit(":", 2)[0]
                conn.execute(
                    j.update()
                    .where(j.c.table_name == table, j.c.key_hash.in_([c.hash for c in got]))
                    .values(
                        status="reserved", token=token, host=host, pid=os.getpid(),
                        reserved_at=now, expires_at=now + dt.timedelta(seconds=timeout),
                        attempts=j.c.attempts + 1,
                    )
                )  # fmt: skip
        return got

    return retrying(attempt)


def extend(db: Database, st: StateTables, table: str, token: str, timeout: float) -> None:
    """Push the expiry of this worker's reservations forward (a heartbeat for long chunks)."""
    j = st.job
    with transaction(db) as conn:
        conn.execute(
            j.update()
            .where(j.c.table_name == table, j.c.token == token, j.c.status == "reserved")
            .values(expires_at=utcnow() + dt.timedelta(seconds=timeout))
        )


def still_mine(
    db: Database,
    conn: sa.Connection,
    st: StateTables,
    table: str,
    token: str,
    hashes: Sequence[str],
) -> set[str]:
    """Which of ``hashes`` this worker still holds, locked until the caller's transaction ends.

    A key that was re-queued (its upstream changed) or taken over after expiry is no longer
    ours: its result is discarded rather than written.
    """
    j = st.job
    out: set[str] = set()
    for start in range(0, len(hashes), 1000):
        q = sa.select(j.c.key_hash).where(
            j.c.table_name == table,
            j.c.token == token,
            j.c.status == "reserved",
            j.c.key_hash.in_(hashes[start : start + 1000]),
        )
        if db.dialect != "sqlite":
            q = q.with_for_update()
        out.update(str(h) for (h,) in conn.execute(q))
    return out


def finish(
    conn: sa.Connection,
    st: StateTables,
    table: str,
    token: str,
    done: Sequence[str],
    errors: Sequence[tuple[str, str, str]],
) -> None:
    """Drop the rows of keys made; record (hash, message, traceback) of keys that failed."""
    j = st.job
    for start in range(0, len(done), 1000):
        conn.execute(
            j.delete().where(
                j.c.table_name == table,
                j.c.token == token,
                j.c.key_hash.in_(done[start : start + 1000]),
            )
        )
    if errors:
        conn.execute(
            j.update()
            .where(
                j.c.table_name == table,
                j.c.token == token,
                j.c.key_hash == sa.bindparam("b_hash"),
            )
            .values(
                status="error",
                error_message=sa.bindparam("b_message"),
                error_stack=sa.bindparam("b_stack"),
                expires_at=None,
            ),
            [{"b_hash": h, "b_message": m[:MAX_MESSAGE], "b_stack": s} for h, m, s in errors],
        )


def release(db: Database, st: StateTables, table: str, token: str) -> None:
    """Give back whatever this worker still holds (on interruption)."""
    j = st.job
    with transaction(db) as conn:
        conn.execute(
            j.update()
            .where(j.c.table_name == table, j.c.token == token, j.c.status == "reserved")
            .values(status="pending", token=None, expires_at=None)
        )


def reap(db: Database, st: StateTables, table: str) -> int:
    """Free reservations of dead worker processes on this host; returns how many."""
    j = st.job
    host = socket.gethostname()[:40]
    with db.engine.connect() as conn:
        held = conn.execute(
            sa.select(j.c.pid)
            .distinct()
            .where(j.c.table_name == table, j.c.status == "reserved", j.c.host == host)
        ).all()
    dead = [int(pid) for (pid,) in held if pid is not None and not _pid_alive(int(pid))]
    if not dead:
        return 0
    with transaction(db) as conn:
        return int(
            conn.execute(
                j.update()
                .where(
                    j.c.table_name == table,
                    j.c.status == "reserved",
                    j.c.host == host,
                    j.c.pid.in_(dead),
                )
                .values(status="pending", token=None, expires_at=None)
            ).rowcount
        )


def retry_errors(db: Database, st: StateTables, table: str) -> int:
    """Turn ``error`` rows of ``table`` back to pending; returns how many."""
    j = st.job
    with transaction(db) as conn:
        return int(
            conn.execute(
                j.update()
                .where(j.c.table_name == table, j.c.status == "error")
                .values(status="pending", token=None, expires_at=None)
            ).rowcount
        )


def counts(conn: sa.Connection, st: StateTables) -> dict[str, dict[str, int]]:
    """``{table: {status: n}}`` over the whole job table."""
    j = st.job
    out: dict[str, dict[str, int]] = {}
    q = sa.select(j.c.table_name, j.c.status, sa.func.count()).group_by(j.c.table_name, j.c.status)
    for t, s, n in conn.execute(q):
        out.setdefault(str(t), {})[str(s)] = int(n)
    return out


def errors(conn: sa.Connection, st: StateTables, table: str | None = None) -> list[dict[str, Any]]:
    """The failed keys (of one table, or all) with message, traceback and attempts."""
    j = st.job
    q = sa.select(
        j.c.table_name, j.c.row_key, j.c.attempts, j.c.host, j.c.reserved_at,
        j.c.error_message, j.c.error_stack,
    ).where(j.c.status == "error").order_by(j.c.table_name, j.c.row_key)  # fmt: skip
    if table:
        q = q.where(j.c.table_name == table)
    return [dict(r) for r in conn.execute(q).mappings()]
