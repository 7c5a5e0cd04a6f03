"""Plain multi-row INSERTs of rows the caller holds to be new: the upsert's first-load shortcut.

:func:`insert_new` skips what :func:`upsert.upsert` spends on rows that may be stored already:
no diff against the stored rows and no parents check, one ``INSERT`` without a conflict clause
per batch (the upsert's plan, encoding, literals and byte limits). The database's own
primary-key and foreign-key constraints are the check: a row that is not new after all, or whose
parent is missing, fails the statement, and only then is the reason looked up, to name the row.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from limsync.errors import MissingParentError, RowError
from limsync.pipeline.batch import (
    Encoded,
    Plan,
    encode_unique,
    literal_rows,
    plan_for,
    row_error_from_db,
    send_insert,
    split_by_bytes,
    table_spec,
)
from limsync.pipeline.changes import ChangeSet, Key
from limsync.pipeline.tables import Table, TableSpec
from limsync.pipeline.upsert import (
    DEFAULT_BATCH_BYTES,
    DEFAULT_BATCH_ROWS,
    existing_keys,
    missing_parents,
)
from limsync.pipeline.upsert_sql import MAX_PARAMS
from limsync.pipeline.validation import validate_batch

if TYPE_CHECKING:
    from limsync.pipeline.database import Database

__all__ = ["PreparedInsert", "enforces_foreign_keys", "insert_new", "prepare_insert"]


def insert_new(
    db: Database,
    conn: sa.Connection,
    table: type[Table] | TableSpec,
    rows: Sequence[Mapping[str, Any]],
    *,
    validate: bool = True,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
) -> ChangeSet:
    """Insert rows that are all new, inside the caller's transaction: plain multi-row INSERTs.

    No stored row is read: the table's primary key and foreign keys are the check. A key that is
    already stored, a missing parent or a bad value raises :class:`RowError` (a missing parent
    :class:`MissingParentError`) naming table, key and column as far as they can be told; the
    caller's transaction then rolls back (on PostgreSQL it must), and nothing is written that
    the caller keeps. Rows with the same key are one row, the last one winning, as in
    :func:`upsert`. The ChangeSet lists every key as inserted.

    ``rows`` is held in memory (a batch): use :func:`upsert` to stream a large input, or when
    some rows may be stored already. Only use this where the database enforces foreign keys
    (limsync's SQLite connections switch them on; see ``Database``). :func:`prepare_insert`
    and :meth:`PreparedInsert.send` are its two halves, for a caller that encodes the rows in
    one thread and sends them in another.
    """
    prepared = prepare_insert(
        db, table, rows, validate=validate, batch_rows=batch_rows, batch_bytes=batch_bytes
    )
    return prepared.send(db, conn)


@dataclass(frozen=True)
class PreparedInsert:
    """:func:`insert_new`'s rows validated, encoded and cut into statements (with their MySQL
    literals), ready to send on any connection to the database."""

    spec: TableSpec
    plan: Plan
    parts: list[tuple[list[Encoded], list[str] | None]]
    inserted: list[Key]

    def send(self, db: Database, conn: sa.Connection) -> ChangeSet:
        """Send the statements in the caller's transaction (errors as :func:`insert_new`'s)."""
        for part, texts in self.parts:
            _insert(db, conn, self.spec, self.plan, part, texts)
        return ChangeSet(self.spec.qualname, inserted=list(self.inserted))


def prepare_insert(
    db: Database,
    table: type[Table] | TableSpec,
    rows: Sequence[Mapping[str, Any]],
    *,
    validate: bool = True,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
) -> PreparedInsert:
    """The first half of :func:`insert_new`, which needs no connection: a row that fails its
    model, or a value no literal can carry, raises :class:`RowError` now."""
    spec = table_spec(table)
    db.register(spec)
    plan = plan_for(db, spec)
    valid = validate_batch(spec, list(rows)) if validate else rows
    unique = encode_unique(plan, spec, valid)
    per_batch = max(1, min(batch_rows, MAX_PARAMS[db.dialect] // max(1, len(spec.columns))))
    parts: list[tuple[list[Encoded], list[str] | None]] = []
    for start in range(0, len(unique), per_batch):
        for part in split_by_bytes(plan, unique[start : start + per_batch], batch_bytes):
            texts = literal_rows(spec, plan, part) if plan.literals is not None else None
            parts.append((part, texts))
    return PreparedInsert(spec, plan, parts, [key for key, _, _ in unique])


def _insert(
    db: Database,
    conn: sa.Connection,
    spec: TableSpec,
    plan: Plan,
    part: list[Encoded],
    texts: list[str] | None,
) -> None:
    try:
        send_insert(db, conn, spec, part, texts)
    except sa.exc.IntegrityError as exc:
        raise _insert_error(db, conn, spec, plan, part, exc) from None
    except sa.exc.DataError as exc:
        raise row_error_from_db(db, spec, exc, [k for k, _, _ in part]) from None


def _insert_error(
    db: Database,
    conn: sa.Connection,
    spec: TableSpec,
    plan: Plan,
    part: list[Encoded],
    exc: sa.exc.IntegrityError,
) -> RowError:
    """The row an INSERT of new rows failed on, and why: already stored, or a missing parent.

    SQLite and MySQL undo just the failed statement, so the stored keys and parents are asked
    for; PostgreSQL has aborted the transaction, but its error detail names key and values.
    """
    keys = [k for k, _, _ in part]
    if db.dialect == "postgresql":
        return _pg_insert_error(db, spec, plan, part, exc) or row_error_from_db(db, spec, exc, keys)
    try:
        stored = existing_keys(db, conn, spec, spec.primary_key, [ekey for _, ekey, _ in part])
        for key, ekey, _ in part:
            if ekey in stored:
                return RowError(spec.qualname, spec.key_dict(key), None, _ALREADY_STORED)
        names = spec.column_names
        rows = [dict(zip(names, enc, strict=True)) for _, _, enc in part]
        for _, err in missing_parents(db, conn, spec, rows, encoded=True)[:1]:
            return err
    except sa.exc.DBAPIError:  # the connection is gone: the driver's own message must do
        pass
    return row_error_from_db(db, spec, exc, keys)


_ALREADY_STORED = "is already stored (insert_new writes new rows only)"
# PostgreSQL's DETAIL of a unique or foreign-key violation.
_PG_DETAIL = re.compile(
    r"Key \((?P<cols>[^)]*)\)=\((?P<vals>.*)\) "
    r'(?:already exists|is not present in table "(?P<parent>[^"]*)")'
)


def _pg_insert_error(
    db: Database, spec: TableSpec, plan: Plan, part: list[Encoded], exc: sa.exc.IntegrityError
) -> RowError | None:
    """PostgreSQL: the RowError its DETAIL describes (``Key (a, b)=(1, x) already exists.``)."""
    diag = getattr(exc.orig, "diag", None)
    m = _PG_DETAIL.search(str(getattr(diag, "message_detail", "") or ""))
    if m is None:
        return None
    columns = [c.strip().strip('"') for c in m.group("cols").split(",")]
    if not all(spec.has_column(c) for c in columns):
        return None
    idx = [spec.column_names.index(c) for c in columns]
    codecs = plan.codecs
    # The row whose values print as PostgreSQL printed them (str() of ints, text, uuids, dates).
    row = next(
        (
            r
            for r in part
            if ", ".join(str(codecs[i].decode(r[2][i])) for i in idx) == m.group("vals")
        ),
        None,
    )
    key = spec.key_dict(row[0]) if row is not None else None
    if m.group("parent") is None:
        return RowError(spec.qualname, key, None, _ALREADY_STORED)
    fk = next((fk for fk in spec.foreign_keys if list(fk.columns) == columns), None)
    parent = fk.parent if fk is not None else m.group("parent")
    ref = ", ".join(f"{c}={v}" for c, v in zip(columns, m.group("vals").split(", "), strict=False))
    if row is not None:
        ref = ", ".join(
            f"{c}={codecs[i].decode(row[2][i])!r}" for c, i in zip(columns, idx, strict=True)
        )
    return MissingParentError(
        spec.qualname, key, ", ".join(columns), f"references {parent} ({ref}), which does not exist"
    )


def enforces_foreign_keys(conn: sa.Connection) -> bool:
    """Whether the connection's database refuses a row whose parent is missing, right now.

    :func:`insert_new` relies on it. SQLite checks foreign keys only with ``PRAGMA foreign_keys``
    on (limsync's connections switch it on, but an engine built elsewhere may not); MySQL not
    with ``foreign_key_checks`` off; PostgreSQL not in ``session_replication_role = replica``
    (its foreign keys are triggers). Session settings can change at any time, so this asks.
    """
    dialect = conn.dialect.name
    if dialect == "sqlite":
        sql = "PRAGMA foreign_keys"
    elif dialect in ("mysql", "mariadb"):
        sql = "SELECT @@foreign_key_checks"
    elif dialect == "postgresql":
        sql = "SELECT current_setting('session_replication_role') <> 'replica'"
    else:  # pragma: no cover (Database refuses other backends)
        return False
    return bool(conn.exec_driver_sql(sql).scalar())
