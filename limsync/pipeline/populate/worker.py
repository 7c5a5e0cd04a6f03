"""One worker: claim a chunk of keys, ``make`` each, write the chunk's results in one transaction.

Bookkeeping is batched per chunk, not per key: one transaction claims many keys, ``make`` runs
outside any write transaction (so workers on SQLite do not queue behind each other while they
compute), and one transaction writes every made key's rows (table and Part rows as multi-row
upserts), drops their job rows and records the failures. Atomicity per key holds because the
chunk commits as a whole: a key's rows are all there or none are. If the batched write is
refused (a foreign key, a value the database rejects), the chunk is written again key by key,
each in a savepoint, so only the faulty key is recorded as an error.

The chunk size adapts so a chunk takes about a second of ``make`` time (less when several
workers share a table, so none waits long for another's last chunk): many keys per round trip
when ``make`` is cheap, few when it is slow (and a reservation is extended while a long chunk
runs).
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from limsync.errors import PopulateError, RowError
from limsync.pipeline import cascade, ledger
from limsync.pipeline.database import Database
from limsync.pipeline.graph import load_order
from limsync.pipeline.populate import jobs
from limsync.pipeline.populate.keys import Key, key_text, typed_key
from limsync.pipeline.state import StateTables, ensure
from limsync.pipeline.tables import AutoPopulated, MakeRow, Table, TableSpec
from limsync.pipeline.upsert import upsert, validate_row

log = logging.getLogger(__name__)

TARGET_CHUNK_SECONDS = 1.0
FIRST_CHUNK = 8
MAX_CHUNK = 500

Progress = Callable[[int, int], None]  # (keys made, keys failed) since the last call


@dataclass
class WorkerResult:
    """What one worker did for one table."""

    made: int = 0
    failed: int = 0
    discarded: int = 0  # made, but re-queued or taken over meanwhile: not written
    make_seconds: float = 0.0
    made_keys: list[Key] = field(default_factory=list)

    def add(self, other: WorkerResult) -> None:
        """Sum another worker's result into this one."""
        self.made += other.made
        self.failed += other.failed
        self.discarded += other.discarded
        self.make_seconds += other.make_seconds
        self.made_keys.extend(other.made_keys)


def parts_of(cls: type[Table]) -> list[type[Table]]:
    """The Part tables declared inside ``cls``."""
    return [
        v
        for v in vars(cls).values()
        if isinstance(v, type) and issubclass(v, Table) and v.__master__ is cls
    ]


@dataclass
class _Made:
    hash: str
    key: Key
    rows: dict[str, list[dict[str, Any]]]  # table qualname -> validated rows


class Worker:
    """Works through the pending keys of one populated table until none are left."""

    def __init__(
        self,
        db: Database,
        cls: type[AutoPopulated],
        *,
        timeout: float = 600.0,
        emit: bool = False,
        keep_keys: bool = False,
        progress: Progress | None = None,
        chunk_seconds: float = TARGET_CHUNK_SECONDS,
    ) -> None:
        self.db = db
        self.cls = cls
        self.spec = cls.spec
        self.st: StateTables = ensure(db)
        self.timeout = timeout
        self.emit = emit  # queue made keys in the outbox, for populated tables further down
        self.keep_keys = keep_keys
        self.progress = progress
        self.token = jobs.new_token()
        self.parts = {p.spec.qualname: p.spec for p in parts_of(cls)}
        self.order = load_order([self.spec, *self.parts.values()])
        for s in self.order:
            db.register(s)
        self.result = WorkerResult()
        self._chunk = FIRST_CHUNK
        self.chunk_seconds = chunk_seconds

    def run(self) -> WorkerResult:
        """Claim and make chunks until no key is pending; returns the counts."""
        instance = self.cls()
        table = self.spec.qualname
        jobs.reap(self.db, self.st, table)
        with self.db.engine.connect() as read_conn:
            instance.db = self.db
            instance.conn = read_conn
            try:
                while True:
                    claimed = jobs.claim(
                        self.db, self.st, table, self.token, self._chunk, self.timeout
                    )
                    if not claimed and jobs.reap(self.db, self.st, table):
                        continue
                    if not claimed:
                        break
                    self._do_chunk(instance, read_conn, claimed)
            except BaseException:
                with contextlib.suppress(Exception):
                    jobs.release(self.db, self.st, table, self.token)
                raise
        return self.result

    def _do_chunk(
        self, instance: AutoPopulated, read_conn: sa.Connection, claimed: list[jobs.Claimed]
    ) -> None:
        made: list[_Made] = []
        errors: list[tuple[str, str, str]] = []
        pk = self.spec.primary_key
        started = last_beat = time.monotonic()
        for c in claimed:
            try:
                key = typed_key(self.spec, pk, ledger_values(c.text))
                rows = self._make(instance, dict(zip(pk, key, strict=True)))
                made.append(_Made(c.hash, key, rows))
            except Exception as exc:
                errors.append((c.hash, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
            finally:
                read_conn.rollback()  # a fresh snapshot for the next key; frees SQLite's reader
            now = time.monotonic()
            if now - last_beat > self.timeout / 3:
                jobs.extend(self.db, self.st, self.spec.qualname, self.token, self.timeout)
                last_beat = now
        elapsed = time.monotonic() - started
        self.result.make_seconds += elapsed
        per_key = elapsed / max(1, len(claimed))
        self._chunk = max(1, min(MAX_CHUNK, int(self.chunk_seconds / max(per_key, 1e-6))))
        written, discarded, write_errors = self._write(made, errors)
        self.result.made += written
        self.result.failed += len(errors) + write_errors
        self.result.discarded += discarded
        if self.progress:
            self.progress(written, len(errors) + write_errors)

    def _make(
        self, instance: AutoPopulated, key: dict[str, Any]
    ) -> dict[str, list[dict[str, Any]]]:
        """Run ``make`` for one key and validate what it returned, by table."""
        out: dict[str, list[dict[str, Any]]] = {s.qualname: [] for s in self.order}
        # Rows make inserts (insert1/insert) count as rows it returns.
        inserted: list[MakeRow] = []
        instance.__dict__["_made_rows"] = inserted
        try:
            result: list[MakeRow] = [*(instance.make(dict(key)) or ()), *inserted]
        finally:
            instance.__dict__["_made_rows"] = None
        for item in result:
            if isinstance(item, tuple):
                part, row = item
                spec = part.spec if isinstance(part, type) else None
                if spec is None or spec.qualname not in self.parts:
                    raise PopulateError(
                        f"make returned rows for {getattr(part, '__qualname__', part)!r}, "
                        f"which is not a Part of {self.spec.qualname}"
                    )
            else:
                spec, row = self.spec, item
            valid = validate_row(spec, {**key, **row})
            for k, v in key.items():
                if valid[k] != v:
                    raise PopulateError(
                        f"make({key}) returned a {spec.qualname} row for {k}={valid[k]!r}"
                    )
            out[spec.qualname].append(valid)
        if not out[self.spec.qualname]:
            raise PopulateError(f"make({key}) returned no row for {self.spec.qualname}")
        if len(out[self.spec.qualname]) > 1:
            raise PopulateError(f"make({key}) returned more than one {self.spec.qualname} row")
        return out

    def _write(self, made: list[_Made], errors: list[tuple[str, str, str]]) -> tuple[int, int, int]:
        """Write a chunk; returns (keys written, keys discarded, keys failed while writing)."""
        return jobs.retrying(lambda: self._write_once(made, errors))

    def _write_once(
        self, made: list[_Made], errors: list[tuple[str, str, str]]
    ) -> tuple[int, int, int]:
        table = self.spec.qualname
        with jobs.transaction(self.db) as conn:
            hashes = [m.hash for m in made] + [h for h, _, _ in errors]
            mine = jobs.still_mine(self.db, conn, self.st, table, self.token, hashes)
            ours = [m for m in made if m.hash in mine]
            errors = [e for e in errors if e[0] in mine]
            failed: list[tuple[str, str, str]] = []
            if ours:
                self._clear_stale(conn, [m.key for m in ours])
                try:
                    with conn.begin_nested():
                        self._insert(conn, ours)
                except (sa.exc.DBAPIError, RowError):
                    ours, failed = self._insert_one_by_one(conn, ours)
            if self.emit and ours:
                ledger.emit(conn, self.st, table, (m.key for m in ours), "insert", 0)
            jobs.finish(conn, self.st, table, self.token, [m.hash for m in ours], errors + failed)
        if self.keep_keys:
            self.result.made_keys.extend(m.key for m in ours)
        return len(ours), len(made) - len(ours) - len(failed), len(failed)

    def _clear_stale(self, conn: sa.Connection, keys: list[Key]) -> None:
        """Delete rows these keys already have (a re-queued key is recomputed from scratch)."""
        db = self.db
        pk = self.spec.primary_key
        from limsync.pipeline.populate.keys import select_where

        existing = select_where(db, conn, self.spec, pk, pk, keys)
        if existing:
            cascade.delete(db, conn, self.spec, existing)

    def _insert(self, conn: sa.Connection, made: list[_Made]) -> None:
        for spec in self.order:
            rows = [r for m in made for r in m.rows[spec.qualname]]
            if rows:
                upsert(self.db, conn, spec, rows, validate=False, check_parents=False)

    def _insert_one_by_one(
        self, conn: sa.Connection, made: list[_Made]
    ) -> tuple[list[_Made], list[tuple[str, str, str]]]:
        ok: list[_Made] = []
        failed: list[tuple[str, str, str]] = []
        for m in made:
            try:
                with conn.begin_nested():
                    self._insert(conn, [m])
                ok.append(m)
            except (sa.exc.DBAPIError, RowError) as exc:
                message = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
                failed.append((m.hash, f"writing the rows failed: {message}", ""))
        return ok, failed


def ledger_values(text: str) -> list[Any]:
    """The JSON values of a key text."""
    import json

    values = json.loads(text)
    if not isinstance(values, list):
        raise PopulateError(f"malformed key {text!r} in the job table")
    return values


def key_texts(keys: list[Key]) -> list[str]:
    """Canonical texts of typed keys."""
    return [key_text(k) for k in keys]


def specs_of(cls: type[Table]) -> list[TableSpec]:
    """The spec of a populated table and of its parts."""
    return [cls.spec, *(p.spec for p in parts_of(cls))]
