"""Batched, idempotent upsert that reports exactly what it changed.

For each batch of rows: one ``SELECT`` of the stored rows with those keys, a comparison in
parameter space (see :mod:`codecs`), then one multi-row ``INSERT ... ON DUPLICATE KEY UPDATE`` /
``ON CONFLICT DO UPDATE`` carrying only the new and changed rows. Unchanged rows are never
rewritten, and the :class:`ChangeSet` lists the exact keys inserted, updated and unchanged on
every dialect. Batches are bounded by rows, by bound parameters and by bytes, so no statement
exceeds MySQL's ``max_allowed_packet``; there is never one round trip per row.

The statements are plain SQL with positional parameters, built once per (table, batch size) and
cached: compiling a 1,000-row ``VALUES`` clause through SQLAlchemy's expression layer for every
batch would cost more than the database round trip it saves.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any

import pydantic
import sqlalchemy as sa

from limsync.errors import MissingParentError, RowError
from limsync.pipeline.codecs import Codec
from limsync.pipeline.tables import Table, TableSpec

if TYPE_CHECKING:
    from limsync.pipeline.database import Database

Key = tuple[Any, ...]

DEFAULT_BATCH_ROWS = 1000
MAX_PARAMS = {
    "sqlite": 32_000 if sqlite3.sqlite_version_info >= (3, 32) else 999,
    "postgresql": 65_000,
    "mysql": 60_000,
}
DEFAULT_BATCH_BYTES = 4 * 1024 * 1024  # far below MySQL's 16 MB default max_allowed_packet


@dataclass
class ChangeSet:
    """The keys an upsert inserted, updated and left unchanged (validated Python values)."""

    table: str
    inserted: list[Key] = field(default_factory=list)
    updated: list[Key] = field(default_factory=list)
    unchanged: list[Key] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """True when anything was written."""
        return bool(self.inserted or self.updated)

    def extend(self, other: ChangeSet) -> None:
        """Add another ChangeSet of the same table."""
        self.inserted.extend(other.inserted)
        self.updated.extend(other.updated)
        self.unchanged.extend(other.unchanged)

    def counts(self) -> dict[str, int]:
        """``{"inserted": n, "updated": n, "unchanged": n}``."""
        return {
            "inserted": len(self.inserted),
            "updated": len(self.updated),
            "unchanged": len(self.unchanged),
        }


def _spec(table: type[Table] | TableSpec) -> TableSpec:
    return table if isinstance(table, TableSpec) else table.spec


def validate_row(spec: TableSpec, row: Mapping[str, Any]) -> dict[str, Any]:
    """Validate one row against its table's model; RowError names table, key and column."""
    assert spec.row_model is not None
    try:
        return dict(spec.row_model.model_validate(row).__dict__)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        column = ".".join(str(p) for p in err["loc"]) or None
        key = {k: row[k] for k in spec.primary_key if k in row}
        problem = err["msg"]
        if err["type"] == "extra_forbidden":
            problem = "is not a column of this table"
        elif err["type"] == "missing":
            problem = "is required"
        n = exc.error_count()
        if n > 1:
            problem += f" (and {n - 1} more problem{'s' if n > 2 else ''} in this row)"
        raise RowError(spec.qualname, key, column, problem) from None


def validate_rows(
    spec: TableSpec, rows: Iterable[Mapping[str, Any]]
) -> tuple[list[dict[str, Any]], list[tuple[int, RowError]]]:
    """Validate many rows; returns the valid ones and (index, error) for the others."""
    good: list[dict[str, Any]] = []
    bad: list[tuple[int, RowError]] = []
    for i, row in enumerate(rows):
        try:
            good.append(validate_row(spec, row))
        except RowError as exc:
            bad.append((i, exc))
    return good, bad


def upsert(
    db: Database,
    conn: sa.Connection,
    table: type[Table] | TableSpec,
    rows: Iterable[Mapping[str, Any]],
    *,
    validate: bool = True,
    check_parents: bool = True,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
) -> ChangeSet:
    """Insert new rows and update changed ones, inside the caller's transaction.

    ``rows`` may be any iterable (it is consumed in batches, so memory stays bounded). A row that
    fails validation, or references a missing parent, raises :class:`RowError` /
    :class:`MissingParentError` naming table, key and column; the caller's transaction then
    rolls back, so nothing of the batch is written. Later duplicates of a key win.

    The ChangeSet compares the table before and after the call: each key appears once, as
    inserted (absent before), updated (its final row differs from the row stored before the
    call) or unchanged, however the rows were split into batches.
    """
    spec = _spec(table)
    db.register(spec)
    tally = _Tally()
    per_batch = max(1, min(batch_rows, MAX_PARAMS[db.dialect] // max(1, len(spec.columns))))
    it = iter(rows)
    while chunk := list(islice(it, per_batch)):
        valid = [validate_row(spec, r) for r in chunk] if validate else [dict(r) for r in chunk]
        _upsert_batch(db, conn, spec, _encode_unique(db, spec, valid), check_parents, tally,
                      batch_bytes)  # fmt: skip
    return tally.changeset(spec.qualname)


# One row on its way to the database: (primary key as given, encoded key, encoded row).
_Encoded = tuple[Key, Key, tuple[Any, ...]]


class _Tally:
    """Per-key outcome of one upsert call, relative to the table before the call.

    A key can come back in a later batch of the same call (rows are streamed, so duplicates
    are only merged within a batch). To still report it exactly, the digest of the row stored
    before the call is kept for every key that existed; ``None`` marks a key that did not.
    """

    def __init__(self) -> None:
        # hash() of a normalised row: its values are plain scalars (see codecs), and the hash
        # is only ever compared with another version of the same key within one call.
        self.before: dict[Key, int | None] = {}
        self.status: dict[Key, tuple[Key, str]] = {}

    def record(
        self,
        key: Key,
        ekey: Key,
        enc: tuple[Any, ...],
        raw: tuple[Any, ...] | None,
        codecs: list[Codec],
    ) -> bool:
        """Record one row against ``raw``, the stored row. True when the row must be written."""
        norm = None if raw is None else _normalised(codecs, enc, raw)
        differs = norm is None or norm != enc
        if ekey not in self.before:
            self.before[ekey] = None if norm is None else hash(norm)
            status = "inserted" if norm is None else ("updated" if differs else "unchanged")
        else:
            original = self.before[ekey]
            if original is None:
                status = "inserted"
            else:
                status = "unchanged" if hash(enc) == original else "updated"
        self.status[ekey] = (key, status)
        return differs

    def changeset(self, table: str) -> ChangeSet:
        """The ChangeSet, keys in order of first appearance."""
        cs = ChangeSet(table)
        lists = {"inserted": cs.inserted, "updated": cs.updated, "unchanged": cs.unchanged}
        for key, status in self.status.values():
            lists[status].append(key)
        return cs


def _normalised(codecs: list[Codec], enc: tuple[Any, ...], raw: tuple[Any, ...]) -> tuple[Any, ...]:
    """A stored row in parameter space: equal to the encoded row ``enc`` when the values are."""
    # Most stored values come back exactly as they were written (text, ints, SQLite dates):
    # only the others pay for normalising (uuid bytes, JSON re-serialised, decimals, ...).
    return tuple(
        e if e == v else (None if v is None else c.stored(v))
        for c, e, v in zip(codecs, enc, raw, strict=True)
    )


def _encode_unique(db: Database, spec: TableSpec, rows: list[dict[str, Any]]) -> list[_Encoded]:
    """Encode rows; of rows with the same *stored* key only the last is kept."""
    encode = db.row_encoder(spec)
    key_idx = _key_indexes(spec)
    by_key: dict[Key, _Encoded] = {}
    for row in rows:
        enc = encode(row)
        ekey = tuple(enc[i] for i in key_idx)
        # Keys are compared encoded: two datetimes that truncate to the same datetime(3) key,
        # or a uuid given as str and as UUID, are one row in the database. The last row wins;
        # the key keeps its first position (the order of the ChangeSet).
        by_key[ekey] = (spec.key_of(row), ekey, enc)
    return list(by_key.values())


def _key_indexes(spec: TableSpec) -> list[int]:
    return [spec.column_names.index(k) for k in spec.primary_key]


def _split_by_bytes(
    rows: list[tuple[Any, ...]], keys: list[Key], limit: int
) -> Iterator[tuple[list[tuple[Any, ...]], list[Key]]]:
    """Cut encoded rows (and their keys) into batches whose SQL stays under ``limit`` bytes."""
    start = 0
    size = 0
    for i, row in enumerate(rows):
        # Bytes are hex-encoded by PyMySQL (two characters a byte); other values are small.
        n = sum(2 * len(v) + 8 if isinstance(v, bytes | str) else 24 for v in row)
        if i > start and size + n > limit:
            yield rows[start:i], keys[start:i]
            start, size = i, 0
        size += n
    if start < len(rows):
        yield rows[start:], keys[start:]


def _upsert_batch(
    db: Database,
    conn: sa.Connection,
    spec: TableSpec,
    batch: list[_Encoded],
    check_parents: bool,
    tally: _Tally,
    batch_bytes: int,
) -> None:
    """Compare a batch with the stored rows; write the new and changed ones (only those)."""
    codecs = db.codecs(spec)
    stored = _select_existing(db, conn, spec, [ekey for _, ekey, _ in batch])
    to_write: list[tuple[Any, ...]] = []
    written_keys: list[Key] = []
    for key, ekey, enc in batch:
        if tally.record(key, ekey, enc, stored.get(ekey), codecs):
            to_write.append(enc)
            written_keys.append(key)
    if not to_write:
        return
    if check_parents:
        # Only the referencing and key columns are looked at (the key names a bad row).
        wanted = {*spec.primary_key, *(c for fk in spec.foreign_keys for c in fk.columns)}
        at = [(c, spec.column_names.index(c)) for c in wanted]
        encoded_rows = [{c: e[i] for c, i in at} for e in to_write]
        missing = missing_parents(db, conn, spec, encoded_rows, encoded=True)
        if missing:
            raise missing[0][1]
    for rows, keys in _split_by_bytes(to_write, written_keys, batch_bytes):
        sql = _upsert_sql(db, spec, len(rows))
        try:
            conn.exec_driver_sql(sql, _params(db, rows))
        except (sa.exc.IntegrityError, sa.exc.DataError) as exc:
            # Only data problems become RowErrors; lost connections, deadlocks and the like
            # propagate as they are (the transaction turns them into DatabaseError).
            raise _row_error_from_db(db, spec, exc, keys) from None


def _select_existing(
    db: Database, conn: sa.Connection, spec: TableSpec, keys: Sequence[Key]
) -> dict[Key, tuple[Any, ...]]:
    """Stored rows for ``keys`` (raw driver values), keyed by their normalised (encoded) key."""
    if not keys:
        return {}
    sql = _select_sql(db, spec, len(keys))
    params = _params(db, keys)
    codecs = db.codecs(spec)
    key_idx = _key_indexes(spec)
    key_codecs = [codecs[i] for i in key_idx]
    out: dict[Key, tuple[Any, ...]] = {}
    for r in conn.exec_driver_sql(sql, params):
        out[tuple(c.stored(r[i]) for c, i in zip(key_codecs, key_idx, strict=True))] = tuple(r)
    return out


def missing_parents(
    db: Database,
    conn: sa.Connection,
    table: type[Table] | TableSpec,
    rows: Sequence[Mapping[str, Any]],
    *,
    encoded: bool = False,
    cache: dict[str, set[Key]] | None = None,
) -> list[tuple[int, MissingParentError]]:
    """Rows whose referenced parent rows do not exist: one query per foreign key and batch.

    ``rows`` are validated rows, or parameter-encoded ones with ``encoded=True``. ``cache``
    (parent table -> encoded keys known to exist) saves asking again for parents an earlier,
    committed batch found; the caller must only pass it for parent tables that nothing
    uncommitted writes, and drop it when it deletes rows.
    """
    spec = _spec(table)
    problems: dict[int, MissingParentError] = {}
    for fk in spec.foreign_keys:
        parent = db.spec(fk.parent)
        idx = [spec.column_names.index(c) for c in fk.columns]
        codecs = [db.codecs(spec)[i] for i in idx]
        wanted: dict[Key, list[int]] = {}
        for i, row in enumerate(rows):
            vals = tuple(row[c] for c in fk.columns)
            if any(v is None for v in vals):
                continue  # a nullable reference left empty
            if not encoded:
                vals = tuple(c.encode(v) for c, v in zip(codecs, vals, strict=True))
            wanted.setdefault(vals, []).append(i)
        if not wanted:
            continue
        known = cache.setdefault(fk.parent, set()) if cache is not None else set()
        ask = [k for k in wanted if k not in known]
        found = _existing_keys(db, conn, parent, fk.parent_columns, ask) if ask else set()
        if cache is not None:
            known.update(k for k in ask if k in found)
        for vals, indexes in wanted.items():
            if vals in found or vals in known:
                continue
            for i in indexes:
                key = _readable(db, spec, rows[i], spec.primary_key, encoded)
                ref = ", ".join(
                    f"{c}={v!r}"
                    for c, v in _readable(db, spec, rows[i], fk.columns, encoded).items()
                )
                problems.setdefault(
                    i,
                    MissingParentError(
                        spec.qualname,
                        key,
                        ", ".join(fk.columns),
                        f"references {fk.parent} ({ref}), which does not exist",
                    ),
                )
    return sorted(problems.items())


def _readable(
    db: Database, spec: TableSpec, row: Mapping[str, Any], columns: Sequence[str], encoded: bool
) -> dict[str, Any]:
    """Some columns of a row as Python values, for messages (uuid as UUID, not 16 bytes)."""
    if not encoded:
        return {c: row[c] for c in columns}
    codecs = db.codecs(spec)
    return {c: codecs[spec.column_names.index(c)].decode(row[c]) for c in columns}


def select_by_keys(
    db: Database,
    conn: sa.Connection,
    spec: TableSpec,
    select: Sequence[str],
    match: Sequence[str],
    keys: Sequence[Key],
) -> Iterator[Any]:
    """Rows (``select`` columns, as the driver returns them) whose ``match`` columns equal one
    of ``keys`` (encoded values): one statement per chunk, in the form each dialect answers
    from an index (an ``IN`` list, typed arrays on PostgreSQL, a joined VALUES list on SQLite).
    """
    step = max(1, MAX_PARAMS[db.dialect] // max(1, len(match)))
    for start in range(0, len(keys), step):
        part = keys[start : start + step]
        sql = _in_sql(db, spec, tuple(select), tuple(match), len(part))
        yield from conn.exec_driver_sql(sql, _params(db, part))


def _existing_keys(
    db: Database, conn: sa.Connection, spec: TableSpec, columns: Sequence[str], keys: list[Key]
) -> set[Key]:
    codecs = [db.codecs(spec)[spec.column_names.index(c)] for c in columns]
    return {
        tuple(c.stored(v) for c, v in zip(codecs, r, strict=True))
        for r in select_by_keys(db, conn, spec, columns, columns, keys)
    }


def _db_problem(exc: sa.exc.DBAPIError) -> str:
    return str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)


# Where drivers name the offending column (and MySQL the row of the statement, from 1).
_MYSQL_COLUMN_ROW = re.compile(r"column '(?P<column>[^']+)'(?: at row (?P<row>\d+))?", re.I)
_SQLITE_COLUMN = re.compile(r"constraint failed: [^ ]*\.(?P<column>[A-Za-z0-9_]+)")


def _row_error_from_db(
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


# --- SQL text, cached per table and batch size ----------------------------------------------------


def placeholder(db: Database) -> str:
    """The driver's positional parameter marker."""
    return "?" if db.dialect == "sqlite" else "%s"


def _params(db: Database, rows: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
    """Parameters for a statement over many rows: flat, or one array per column on PostgreSQL."""
    if db.dialect == "postgresql":
        return tuple(list(column) for column in zip(*rows, strict=True))
    return tuple(v for row in rows for v in row)


def _arrays(db: Database, spec: TableSpec, columns: Sequence[str]) -> str:
    """``unnest`` arguments: one typed array parameter per column (PostgreSQL)."""
    table = db.table(spec)
    dialect = db.engine.dialect
    types = []
    for c in columns:
        t = table.c[c].type
        # An explicit cast to varchar(n) or char(n) would silently truncate: cast to the type
        # without a length (the same operators, so key indexes still serve) and let the
        # assignment to the column refuse values that are too long, as VALUES does.
        if isinstance(t, sa.Enum) or not isinstance(t, sa.String):
            types.append(t.compile(dialect=dialect))
        elif isinstance(t, sa.CHAR):
            types.append("BPCHAR")
        else:
            types.append("TEXT" if isinstance(t, sa.Text) else "VARCHAR")
    # %b: binary parameters. Text-format arrays would have psycopg escape every element.
    return ", ".join(f"CAST(%b AS {t}[])" for t in types)


def _in_sql(
    db: Database, spec: TableSpec, select: tuple[str, ...], match: tuple[str, ...], n: int
) -> str:
    # PostgreSQL takes one array per column, so its statement does not depend on n: parsing
    # a statement with thousands of placeholders costs more than the query itself.
    cache_key = ("in", spec.qualname, select, match, 0 if db.dialect == "postgresql" else n)
    sql = db.sql_cache.get(cache_key)
    if sql is None:
        sql = db.sql_cache[cache_key] = _build_in_sql(db, spec, select, match, n)
    return sql


def _build_in_sql(
    db: Database, spec: TableSpec, select: tuple[str, ...], match: tuple[str, ...], n: int
) -> str:
    p = placeholder(db)
    cols = ", ".join(db.select_column(spec, c) for c in select)
    if db.dialect == "postgresql":
        if len(match) == 1:
            cond = f"{db.quote(match[0])} = ANY({_arrays(db, spec, match)})"
        else:
            keys = f"SELECT * FROM unnest({_arrays(db, spec, match)})"  # noqa: S608 (typed params)
            cond = f"({', '.join(db.quote(c) for c in match)}) IN ({keys})"
    elif db.dialect == "sqlite" and len(match) > 1:
        # SQLite scans the whole table for a row-value IN list; joining a VALUES list of the
        # keys searches the key index once per key instead.
        return _sqlite_keys_join(db, spec, select, match, n)
    elif len(match) == 1:
        cond = f"{db.quote(match[0])} IN ({', '.join([p] * n)})"
    else:
        tup = "(" + ", ".join([p] * len(match)) + ")"
        cond = f"({', '.join(db.quote(c) for c in match)}) IN ({', '.join([tup] * n)})"
    return f"SELECT {cols} FROM {db.qualified(spec)} WHERE {cond}"  # noqa: S608 (quoted)


def _sqlite_keys_join(
    db: Database, spec: TableSpec, select: tuple[str, ...], match: tuple[str, ...], n: int
) -> str:
    names = [f'"__k{i}"' for i in range(len(match))]
    row = "(" + ", ".join(["?"] * len(match)) + ")"
    on = " AND ".join(f"t.{db.quote(c)} = k.{k}" for c, k in zip(match, names, strict=True))
    cols = ", ".join(f"t.{db.quote(c)}" for c in select)
    return (
        f"WITH k({', '.join(names)}) AS (VALUES {', '.join([row] * n)}) "  # noqa: S608 (quoted)
        f"SELECT {cols} FROM k CROSS JOIN {db.qualified(spec)} AS t ON {on}"
    )


def _select_sql(db: Database, spec: TableSpec, n: int) -> str:
    return _in_sql(db, spec, spec.column_names, spec.primary_key, n)


def _build_upsert_sql(db: Database, spec: TableSpec, n: int) -> str:
    p = placeholder(db)
    cols = [db.quote(c) for c in spec.column_names]
    if db.dialect == "postgresql":
        values_sql = f"SELECT * FROM unnest({_arrays(db, spec, spec.column_names)})"  # noqa: S608
    else:
        row = "(" + ", ".join([p] * len(cols)) + ")"
        values_sql = "VALUES " + ", ".join([row] * n)
    head = f"INSERT INTO {db.qualified(spec)} ({', '.join(cols)}) {values_sql}"
    values = [db.quote(c.name) for c in spec.columns if not c.in_key]
    if db.dialect == "mysql":
        if not values:  # key-only table: a no-op update keeps real errors (unlike IGNORE)
            k = db.quote(spec.primary_key[0])
            return f"{head} ON DUPLICATE KEY UPDATE {k} = {k}"
        return f"{head} ON DUPLICATE KEY UPDATE " + ", ".join(f"{c} = VALUES({c})" for c in values)
    conflict = ", ".join(db.quote(k) for k in spec.primary_key)
    if not values:
        return f"{head} ON CONFLICT ({conflict}) DO NOTHING"
    sets = ", ".join(f"{c} = excluded.{c}" for c in values)
    return f"{head} ON CONFLICT ({conflict}) DO UPDATE SET {sets}"


def _upsert_sql(db: Database, spec: TableSpec, n: int) -> str:
    cache_key = ("upsert", spec.qualname, 0 if db.dialect == "postgresql" else n)
    sql = db.sql_cache.get(cache_key)
    if sql is None:
        sql = db.sql_cache[cache_key] = _build_upsert_sql(db, spec, n)
    return sql
