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

from limsync.pipeline.database import Database
from limsync.pipeline.locks import _pid_alive
from limsync.pipeline.populate.keys import key_hash
from limsync.pipeline.state import StateTables, utcnow
from limsync.pipeline.upsert import MAX_PARAMS

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


class _Sql:
    """Plain SQL text for the job table's hot statements, built once per Database.

    The claim, the ownership check and the completion run once per chunk of up to
    ``MAX_CHUNK`` keys; compiling their ``IN`` lists through SQLAlchemy's expression layer
    each time cost more than the round trips. PostgreSQL takes one array parameter instead
    of an ``IN`` list, so its statements do not depend on the number of keys at all.
    """

    def __init__(self, db: Database, st: StateTables) -> None:
        self.db = db
        self.p = "?" if db.dialect == "sqlite" else "%s"
        self.job = db.engine.dialect.identifier_preparer.format_table(st.job)
        ts = st.job.c.expires_at.type
        # SQLite stores timestamps as text in SQLAlchemy's format: bind them the same way.
        self.ts = ts.dialect_impl(db.engine.dialect).bind_processor(db.engine.dialect)
        self.cache: dict[tuple[str, int], str] = {}

    def stamp(self, value: dt.datetime) -> Any:
        """A timestamp as the driver must receive it."""
        return self.ts(value) if self.ts else value

    def step(self, width: int) -> int:
        """Keys per statement: at most 1,000, and within the driver's parameter limit."""
        return max(1, min(1000, (MAX_PARAMS[self.db.dialect] - 10) // width))

    def hashes(self, n: int) -> str:
        """``key_hash IN (…)`` for ``n`` hashes (one array parameter on PostgreSQL)."""
        if self.db.dialect == "postgresql":
            return "key_hash = ANY(%s)"
        return f"key_hash IN ({', '.join([self.p] * n)})"

    def hash_params(self, hashes: Sequence[str]) -> tuple[Any, ...]:
        """The parameters of :meth:`hashes`."""
        return (list(hashes),) if self.db.dialect == "postgresql" else tuple(hashes)

    def get(self, kind: str, n: int, build: Callable[[int], str]) -> str:
        """The statement ``build(n)`` of ``kind`` for ``n`` keys, built on first use."""
        size = 0 if self.db.dialect == "postgresql" else n
        sql = self.cache.get((kind, size))
        if sql is None:
            sql = self.cache[(kind, size)] = build(n)
        return sql


def _sql(db: Database, st: StateTables) -> _Sql:
    sql = db.extensions.get("populate.jobs.sql")
    if sql is None:
        sql = db.extensions["populate.jobs.sql"] = _Sql(db, st)
    assert isinstance(sql, _Sql)
    return sql


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
    texts = list(dict.fromkeys(key_texts))
    if not texts:
        return 0
    q = _sql(db, st)
    p = q.p
    columns = ("token", "host", "pid", "reserved_at", "expires_at", "error_message", "error_stack")
    cleared = ", ".join(f"{c} = NULL" for c in columns)
    if db.dialect == "mysql":
        on_conflict = (
            f"ON DUPLICATE KEY UPDATE status = 'pending', attempts = 0, {cleared}"
            if reset
            else "ON DUPLICATE KEY UPDATE table_name = table_name"
        )
    elif reset:
        on_conflict = (
            "ON CONFLICT (table_name, key_hash) DO UPDATE SET status = 'pending', attempts = 0, "
            + cleared
        )
    else:
        on_conflict = "ON CONFLICT (table_name, key_hash) DO NOTHING"
    head = f"INSERT INTO {q.job} (table_name, key_hash, row_key, status, attempts, created_at)"
    now = q.stamp(utcnow())
    kind = "queue-reset" if reset else "queue"
    if db.dialect == "postgresql":
        # Two array parameters for any number of keys: one short statement to parse.
        sql = q.get(kind, 0, lambda _: (
            f"{head} SELECT %s, h, k, 'pending', 0, %s "  # noqa: S608 (quoted, fixed text)
            f"FROM unnest(%s::text[], %s::text[]) AS u(h, k) {on_conflict}"
        ))  # fmt: skip
        for start in range(0, len(texts), 10_000):
            part = texts[start : start + 10_000]
            conn.exec_driver_sql(sql, (table, now, [key_hash(t) for t in part], part))
        return len(texts)
    step = q.step(4)
    for start in range(0, len(texts), step):
        part = texts[start : start + step]
        sql = q.get(kind, len(part), lambda n: (
            f"{head} VALUES "
            + ", ".join([f"({p}, {p}, {p}, 'pending', 0, {p})"] * n)
            + f" {on_conflict}"
        ))  # fmt: skip
        params = tuple(v for t in part for v in (table, key_hash(t), t, now))
        conn.exec_driver_sql(sql, params)
    return len(texts)


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
    """Reserve up to ``n`` pending (or expired) keys of ``table`` for ``token``, in one go.

    PostgreSQL: one statement (an ``UPDATE`` of the rows a ``FOR UPDATE SKIP LOCKED`` CTE
    picked, ``RETURNING`` them). MySQL/MariaDB: ``SELECT … FOR UPDATE SKIP LOCKED`` and one
    ``UPDATE`` by primary key. SQLite: the same two inside ``BEGIN IMMEDIATE``.
    """
    q = _sql(db, st)
    p = q.p
    host = token.rsplit(":", 2)[0]
    free = (
        f"table_name = {p} AND (status = 'pending' OR (status = 'reserved' AND expires_at < {p}))"
    )
    sets = (
        f"status = 'reserved', token = {p}, host = {p}, pid = {p}, reserved_at = {p}, "
        f"expires_at = {p}, attempts = attempts + 1"
    )

    def attempt() -> list[Claimed]:
        now = utcnow()
        stamps = (q.stamp(now), q.stamp(now + dt.timedelta(seconds=timeout)))
        owner = (token, host, os.getpid(), *stamps)
        with transaction(db) as conn:
            if db.dialect == "postgresql":
                sql = q.get("claim", 0, lambda _: (
                    f"WITH c AS (SELECT key_hash FROM {q.job} WHERE {free} LIMIT %s "  # noqa: S608
                    f"FOR UPDATE SKIP LOCKED) UPDATE {q.job} j SET {sets} FROM c "
                    "WHERE j.table_name = %s AND j.key_hash = c.key_hash "
                    "RETURNING j.key_hash, j.row_key"
                ))  # fmt: skip
                rows = conn.exec_driver_sql(sql, (table, stamps[0], n, *owner, table)).all()
                return [Claimed(str(h), str(t)) for h, t in rows]
            lock = "" if db.dialect == "sqlite" else " FOR UPDATE SKIP LOCKED"
            pick = q.get("pick", 0, lambda _: (
                f"SELECT key_hash, row_key FROM {q.job} WHERE {free} LIMIT {p}{lock}"  # noqa: S608
            ))  # fmt: skip
            got = [
                Claimed(str(h), str(t))
                for h, t in conn.exec_driver_sql(pick, (table, stamps[0], n))
            ]
            if got:
                update = q.get("reserve", len(got), lambda n: (
                    f"UPDATE {q.job} SET {sets} WHERE table_name = {p} AND {q.hashes(n)}"  # noqa: S608
                ))  # fmt: skip
                hashes = q.hash_params([c.hash for c in got])
                conn.exec_driver_sql(update, (*owner, table, *hashes))
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
    q = _sql(db, st)
    p = q.p
    lock = "" if db.dialect == "sqlite" else " FOR UPDATE"
    out: set[str] = set()
    step = q.step(1)
    for start in range(0, len(hashes), step):
        part = hashes[start : start + step]
        sql = q.get("mine", len(part), lambda n: (
            f"SELECT key_hash FROM {q.job} WHERE table_name = {p} AND token = {p} "  # noqa: S608
            f"AND status = 'reserved' AND {q.hashes(n)}{lock}"
        ))  # fmt: skip
        out.update(
            str(h) for (h,) in conn.exec_driver_sql(sql, (table, token, *q.hash_params(part)))
        )
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
    q = _sql(st.db, st)
    p = q.p
    step = q.step(1)
    for start in range(0, len(done), step):
        part = done[start : start + step]
        sql = q.get("finish", len(part), lambda n: (
            f"DELETE FROM {q.job} WHERE table_name = {p} AND token = {p} AND {q.hashes(n)}"  # noqa: S608
        ))  # fmt: skip
        conn.exec_driver_sql(sql, (table, token, *q.hash_params(part)))
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
