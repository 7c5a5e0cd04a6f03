"""One writer per source: a database lock that holds across processes and hosts.

- MySQL/MariaDB: ``GET_LOCK`` on a connection kept open for the lock's lifetime; the server
  frees it when that connection dies, so a killed process never leaves it behind.
- PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``), freed the same way.
- SQLite: a row in ``~limsync_lock`` with holder, host, pid and an expiry. A lock whose holder
  process is gone (same host, pid not alive) or whose expiry passed is taken over; holders
  refresh the expiry as they work.

On MySQL and PostgreSQL the holder also writes that row, for information only, so a process
refused the lock can say who holds it (``LockHeldError.holder``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import socket
import time
from collections.abc import Iterator

import sqlalchemy as sa

from limsync.errors import LockHeldError
from limsync.pipeline.database import Database
from limsync.pipeline.state import ensure, utcnow

DEFAULT_TTL = dt.timedelta(minutes=10)


class Lock:
    """A held writer lock; release it with :meth:`release` (or use :func:`writer_lock`)."""

    def __init__(self, db: Database, name: str, ttl: dt.timedelta = DEFAULT_TTL) -> None:
        self.db = db
        self.name = name
        self.ttl = ttl
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self._conn: sa.Connection | None = None
        self._server_name = _server_lock_name(db, name)

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock now or raise :class:`LockHeldError`."""
        if self.db.dialect == "sqlite":
            self._acquire_row()
            return
        conn = self.db.engine.connect()
        try:
            if self.db.dialect == "mysql":
                got = conn.exec_driver_sql("SELECT GET_LOCK(%s, 0)", (self._server_name,)).scalar()
            else:
                got = conn.exec_driver_sql(
                    "SELECT pg_try_advisory_lock(%s)", (_advisory_key(self._server_name),)
                ).scalar()
            conn.commit()
        except BaseException:
            conn.close()
            raise
        if not got:
            conn.close()
            raise LockHeldError(self.name, self._holder_info())
        self._conn = conn
        self._write_info()

    def _write_info(self) -> None:
        """Record who holds a server lock (replacing what a killed holder left behind)."""
        st = ensure(self.db)
        now = utcnow()
        with self.db.transaction() as conn:
            conn.execute(st.lock.delete().where(st.lock.c.name == self.name))
            conn.execute(
                st.lock.insert().values(
                    name=self.name, holder=self.holder, host=socket.gethostname(),
                    pid=os.getpid(), acquired_at=now, expires_at=now + self.ttl,
                )
            )  # fmt: skip

    def _holder_info(self) -> str | None:
        # The holder writes its row just after taking the lock: look again briefly.
        for attempt in range(3):
            found = holder(self.db, self.name)
            if found is not None or attempt == 2:
                return found
            time.sleep(0.05)
        return None

    def refresh(self) -> None:
        """Push the expiry forward (SQLite); server locks need nothing."""
        if self.db.dialect != "sqlite":
            return
        st = ensure(self.db)
        with self.db.transaction() as conn:
            conn.execute(
                st.lock.update()
                .where(st.lock.c.name == self.name, st.lock.c.holder == self.holder)
                .values(expires_at=utcnow() + self.ttl)
            )

    def release(self) -> None:
        """Give the lock back."""
        if self.db.dialect == "sqlite":
            st = ensure(self.db)
            with self.db.transaction() as conn:
                conn.execute(
                    st.lock.delete().where(
                        st.lock.c.name == self.name, st.lock.c.holder == self.holder
                    )
                )
            return
        if self._conn is None:
            return
        try:
            st = ensure(self.db)
            with self.db.transaction() as conn:
                conn.execute(
                    st.lock.delete().where(
                        st.lock.c.name == self.name, st.lock.c.holder == self.holder
                    )
                )
        finally:
            self._release_server_lock()

    def _release_server_lock(self) -> None:
        assert self._conn is not None
        try:
            if self.db.dialect == "mysql":
                self._conn.exec_driver_sql("SELECT RELEASE_LOCK(%s)", (self._server_name,))
            else:
                self._conn.exec_driver_sql(
                    "SELECT pg_advisory_unlock(%s)", (_advisory_key(self._server_name),)
                )
            self._conn.commit()
        finally:
            self._conn.close()
            self._conn = None

    def _acquire_row(self) -> None:
        st = ensure(self.db)
        t = st.lock
        host = socket.gethostname()
        with self.db.transaction() as conn:  # BEGIN IMMEDIATE: one writer decides at a time
            row = conn.execute(sa.select(t).where(t.c.name == self.name)).mappings().first()
            if row is not None:
                stale = row["expires_at"] < utcnow() or (
                    row["host"] == host and not _pid_alive(int(row["pid"]))
                )
                if not stale:
                    raise LockHeldError(self.name, _describe(row))
                conn.execute(t.delete().where(t.c.name == self.name))
            now = utcnow()
            conn.execute(
                t.insert().values(
                    name=self.name, holder=self.holder, host=host, pid=os.getpid(),
                    acquired_at=now, expires_at=now + self.ttl,
                )
            )  # fmt: skip


def holder(db: Database, name: str) -> str | None:
    """Who holds the lock ``name`` ("host h, pid p, since t"), if it is held and recorded."""
    t = ensure(db).lock
    with db.engine.connect() as conn:
        row = conn.execute(sa.select(t).where(t.c.name == name)).mappings().first()
    return None if row is None else _describe(row)


def _describe(row: sa.RowMapping) -> str:
    since = row["acquired_at"].strftime("%Y-%m-%d %H:%M:%SZ")
    return f"host {row['host']}, pid {row['pid']}, since {since}"


@contextlib.contextmanager
def writer_lock(db: Database, name: str, ttl: dt.timedelta = DEFAULT_TTL) -> Iterator[Lock]:
    """Hold the writer lock ``name`` for the block; raises LockHeldError if another holds it."""
    lock = Lock(db, name, ttl)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


def _server_lock_name(db: Database, name: str) -> str:
    # Scope by the bookkeeping schema, so two pipelines on one server do not block each other;
    # MySQL lock names are limited to 64 characters.
    full = f"limsync:{db.physical_schema(db.state_schema)}:{name}"
    if len(full) <= 64:
        return full
    return "limsync:" + hashlib.sha256(full.encode()).hexdigest()[:48]


def _advisory_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
