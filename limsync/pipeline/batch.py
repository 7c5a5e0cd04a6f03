"""A table's rows on their way to the database, as the upsert and the plain insert send them.

Per table and database, a :class:`Plan` holds what every batch uses: the codecs, the row
encoder, the key getters and, on MySQL, the function that writes a row as literals. Rows are
encoded once, deduplicated by the key they will be stored under (:func:`encode_unique`), cut
into parts whose SQL stays under a byte limit (:func:`split_by_bytes`), and a statement the
database refuses becomes a :class:`RowError` naming table, key and column where the driver
says (:func:`row_error_from_db`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from limsync.errors import RowError
from limsync.pipeline.changes import Key
from limsync.pipeline.codecs import Codec
from limsync.pipeline.columns import ColumnType
from limsync.pipeline.literals import LiteralError, row_literals
from limsync.pipeline.tables import Table, TableSpec
from limsync.pipeline.upsert_sql import insert_sql, params

if TYPE_CHECKING:
    from limsync.pipeline.database import Database


def table_spec(table: type[Table] | TableSpec) -> TableSpec:
    """The spec of a table class, or the spec itself."""
    return table if isinstance(table, TableSpec) else table.spec


@dataclass(frozen=True)
class Plan:
    """Per table and database: the functions every batch uses."""

    codecs: list[Codec]
    encode: Callable[[Mapping[str, Any]], tuple[Any, ...]]
    ekey: Callable[[tuple[Any, ...]], Key]  # encoded row -> encoded key
    others: Callable[[tuple[Any, ...]], tuple[Any, ...]]  # encoded row -> non-key values
    other_codecs: list[Codec]
    key_codecs: list[Codec]
    literals: Callable[[tuple[Any, ...]], str] | None  # MySQL only
    fixed_bytes: int  # the most the bounded columns of a row can take in a statement
    variable: list[int]  # columns without a bound (text, JSON, blobs): measured per row

    def encode_key(self, key: Key) -> Key:
        return tuple(c.encode(v) for c, v in zip(self.key_codecs, key, strict=True))


def _getter(idx: list[int]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    if not idx:
        return lambda row: ()
    if len(idx) == 1:
        (i,) = idx
        return lambda row: (row[i],)
    return itemgetter(*idx)


def plan_for(db: Database, spec: TableSpec) -> Plan:
    """The table's :class:`Plan` on this database, built once and kept with the database."""
    cache: dict[str, Plan] = db.extensions.setdefault("upsert.plans", {})
    plan = cache.get(spec.qualname)
    if plan is None or plan.encode is not db.row_encoder(spec):
        codecs = db.codecs(spec)
        key_idx = [spec.column_names.index(k) for k in spec.primary_key]
        other_idx = [i for i in range(len(codecs)) if i not in key_idx]
        plan = cache[spec.qualname] = Plan(
            codecs=codecs,
            encode=db.row_encoder(spec),
            ekey=_getter(key_idx),
            others=_getter(other_idx),
            other_codecs=[codecs[i] for i in other_idx],
            key_codecs=[codecs[i] for i in key_idx],
            literals=row_literals([c.type for c in spec.columns])
            if db.dialect == "mysql"
            else None,
            fixed_bytes=sum(_bound(c.type) or 0 for c in spec.columns),
            variable=[i for i, c in enumerate(spec.columns) if _bound(c.type) is None],
        )
    return plan


def _bound(t: ColumnType) -> int | None:
    """The most one value of a type can take in a statement (hex on MySQL), None if unbounded."""
    if t.kind in ("varchar", "char"):
        return 2 * (t.length or 255) + 16
    if t.kind in ("text", "json", "blob", "bytes"):
        return None
    return 48  # numbers, uuids (32 hex digits), TIMESTAMP'...' literals


# One row on its way to the database: (primary key as given, encoded key, encoded row).
Encoded = tuple[Key, Key, tuple[Any, ...]]


def encode_unique(plan: Plan, spec: TableSpec, rows: Sequence[Mapping[str, Any]]) -> list[Encoded]:
    """Encode rows; of rows with the same *stored* key only the last is kept."""
    encode, ekey_of, key_of = plan.encode, plan.ekey, spec.key_of
    by_key: dict[Key, Encoded] = {}
    for row in rows:
        enc = encode(row)
        ekey = ekey_of(enc)
        # Keys are compared encoded: two datetimes that truncate to the same datetime(3) key,
        # or a uuid given as str and as UUID, are one row in the database. The last row wins;
        # the key keeps its first position (the order of the ChangeSet).
        by_key[ekey] = (key_of(row), ekey, enc)
    return list(by_key.values())


def split_by_bytes(plan: Plan, rows: list[Encoded], limit: int) -> Iterator[list[Encoded]]:
    """Cut encoded rows into parts whose SQL stays under ``limit`` bytes."""
    if not plan.variable and plan.fixed_bytes * len(rows) <= limit:
        yield rows  # bounded columns only, and even the widest rows fit: nothing to measure
        return
    start = 0
    size = 0
    for i, (_, _, enc) in enumerate(rows):
        # Bytes and text are hex-encoded on MySQL (two characters a byte).
        n = plan.fixed_bytes
        for j in plan.variable:
            v = enc[j]
            n += 16 if v is None else 2 * len(v) + 16
        if i > start and size + n > limit:
            yield rows[start:i]
            start, size = i, 0
        size += n
    if start < len(rows):
        yield rows[start:]


def no_params(sql: str) -> str:
    """SQL text to send without parameters (MySQL literals), ``%`` doubled: PyMySQL still
    runs it through its ``%`` formatting."""
    return sql.replace("%", "%%")


def literal_rows(spec: TableSpec, plan: Plan, part: list[Encoded]) -> list[str]:
    """MySQL: each encoded row as the text of its ``VALUES`` tuple; a value no literal can
    carry raises :class:`RowError` naming its row."""
    assert plan.literals is not None
    out = []
    for key, _, enc in part:
        try:
            out.append(plan.literals(enc))
        except LiteralError as exc:
            raise RowError(spec.qualname, spec.key_dict(key), None, str(exc)) from None
    return out


def _db_problem(exc: sa.exc.DBAPIError) -> str:
    return str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)


# Where drivers name the offending column (and MySQL the row of the statement, from 1).
_MYSQL_COLUMN_ROW = re.compile(r"column '(?P<column>[^']+)'(?: at row (?P<row>\d+))?", re.I)
_SQLITE_COLUMN = re.compile(r"constraint failed: [^ ]*\.(?P<column>[A-Za-z0-9_]+)")


def row_error_from_db(
    db: Database, spec: TableSpec, exc: sa.exc.DBAPIError, keys: Sequence[Key]
) -> RowError:
    """A RowError for a statement the database refused, naming column and key when it can."""
    problem = _db_problem(exc)
    column: str | None = None
    row: int | None = None
    if db.dialect == "mysql" and (m := _MYSQL_COLUMN_ROW.search(problem)):
        column = m.group("column")
        row = int(m.group("row")) - 1 if m.group("row") else None
    elif db.dialect == "sqlite" and (m := _SQLITE_COLUMN.search(problem)):
        column = m.group("column")
    elif db.dialect == "postgresql":
        column = getattr(getattr(exc.orig, "diag", None), "column_name", None)
    if row is None and len(keys) == 1:
        row = 0
    key = spec.key_dict(keys[row]) if row is not None and 0 <= row < len(keys) else None
    if column is not None and not spec.has_column(column):
        column = None
    return RowError(spec.qualname, key, column, problem)


def send_insert(
    db: Database, conn: sa.Connection, spec: TableSpec, part: list[Encoded], texts: list[str] | None
) -> None:
    """One plain multi-row ``INSERT`` of ``part`` (``texts``: its MySQL literals), no conflict
    clause: a stored key or a missing parent is the driver's error, for the caller to read."""
    if texts is not None:
        values = ", ".join(f"({text})" for text in texts)
        conn.exec_driver_sql(no_params(insert_sql(db, spec, 0) + values))
    else:
        encoded = [enc for _, _, enc in part]
        conn.exec_driver_sql(insert_sql(db, spec, len(part)), params(db, encoded))
