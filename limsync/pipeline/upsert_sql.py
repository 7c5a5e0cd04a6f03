"""The upsert's SQL, per dialect, built once per (table, batch size) and cached.

A batch goes to the server as a table: typed ``unnest`` arrays on PostgreSQL (one binary
parameter per column, however many rows), a ``VALUES`` list of ``?`` on SQLite, a ``VALUES``
list of literals on MySQL/MariaDB (see :mod:`literals`). Against it run

* the *diff*: the batch joined with the stored rows by key, returning only the rows that are
  new or differ (index, a "new" flag, one missing-parent flag per foreign key), compared
  null-safely and byte for byte in the database, so an unchanged batch returns nothing;
* the *write*: ``INSERT ... ON CONFLICT DO UPDATE`` / ``ON DUPLICATE KEY UPDATE`` of the rows
  to write;
* the plain *insert* of :func:`upsert.insert_new`: the same ``INSERT`` without a conflict
  clause, for rows the caller holds to be new.

Plain SQL text with positional parameters: compiling a 1,000-row ``VALUES`` clause through
SQLAlchemy's expression layer for every batch would cost more than the round trip it saves.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from limsync.pipeline.tables import TableSpec

if TYPE_CHECKING:
    from limsync.pipeline.database import Database


def values_row(dialect: sa.engine.Dialect) -> str:
    """How a row of a ``VALUES`` table opens on a MySQL-family server: ``(`` on MariaDB,
    ``ROW(`` on MySQL 8 (which reads a bare ``(...)`` there as an error)."""
    return "(" if getattr(dialect, "is_mariadb", False) else "ROW("


MAX_PARAMS = {
    "sqlite": 32_000 if sqlite3.sqlite_version_info >= (3, 32) else 999,
    "postgresql": 65_000,
    "mysql": 60_000,
}
# Compared as bytes on MySQL: its PAD SPACE and case-insensitive collations call 'a' and 'A '
# equal, and a row that differs must never be taken for unchanged.
_MYSQL_TEXT = ("varchar", "char", "text", "enum", "json")
INDEX = "~i"  # the batch's row-number column (column names are lower snake case: no clash)
CONCAT_MAX = 1 << 30  # group_concat_max_len for the MySQL diff's one-row answer


def placeholder(db: Database) -> str:
    """The driver's positional parameter marker."""
    return "?" if db.dialect == "sqlite" else "%s"


def params(db: Database, rows: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
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


def in_sql(
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


def _build_insert_sql(db: Database, spec: TableSpec, n: int) -> str:
    """A plain ``INSERT`` of ``n`` rows; on MySQL the text before the literal rows."""
    p = placeholder(db)
    cols = [db.quote(c) for c in spec.column_names]
    if db.dialect == "postgresql":
        values_sql = f"SELECT * FROM unnest({_arrays(db, spec, spec.column_names)})"  # noqa: S608
    elif db.dialect == "sqlite":
        row = "(" + ", ".join([p] * len(cols)) + ")"
        values_sql = "VALUES " + ", ".join([row] * n)
    else:
        values_sql = "VALUES "  # literal rows follow (then write_tail, for the upsert)
    return f"INSERT INTO {db.qualified(spec)} ({', '.join(cols)}) {values_sql}"


def _build_upsert_sql(db: Database, spec: TableSpec, n: int) -> str:
    head = _build_insert_sql(db, spec, n)
    values = [db.quote(c.name) for c in spec.columns if not c.in_key]
    if db.dialect == "mysql":
        return head
    conflict = ", ".join(db.quote(k) for k in spec.primary_key)
    if not values:
        return f"{head} ON CONFLICT ({conflict}) DO NOTHING"
    sets = ", ".join(f"{c} = excluded.{c}" for c in values)
    return f"{head} ON CONFLICT ({conflict}) DO UPDATE SET {sets}"


# --- the diff and the write -----------------------------------------------------------------------


def _cached(db: Database, key: tuple[Any, ...], build: Any) -> str:
    sql = db.sql_cache.get(key)
    if sql is None:
        sql = db.sql_cache[key] = build()
    return sql


def diff_sql(db: Database, spec: TableSpec, n: int, check_parents: bool) -> str:
    """The diff of ``n`` rows (PostgreSQL, SQLite); on MySQL, the text before the rows."""
    size = n if db.dialect == "sqlite" else 0
    key = ("diff", spec.qualname, check_parents, size)
    return _cached(db, key, lambda: _build_diff(db, spec, size, check_parents))


def diff_tail(db: Database, spec: TableSpec, check_parents: bool) -> str:
    """MySQL: the diff's text after the rows (``diff_sql`` + rows + this)."""
    key = ("diff-tail", spec.qualname, check_parents)
    return _cached(db, key, lambda: _diff_query(db, spec, check_parents))


def _build_diff(db: Database, spec: TableSpec, n: int, check_parents: bool) -> str:
    q = db.quote
    names = ", ".join(q(c) for c in spec.column_names)
    if db.dialect == "postgresql":
        source = (
            f"unnest({_arrays(db, spec, spec.column_names)}) WITH ORDINALITY "
            f"AS v({names}, {q(INDEX)})"
        )
        return _diff_query(db, spec, check_parents, source)
    if db.dialect == "sqlite":
        row = ", ".join(["?"] * len(spec.column_names))
        values = ", ".join(f"({i}, {row})" for i in range(n))
        cte = f"WITH v({q(INDEX)}, {names}) AS (VALUES {values}) "
        return cte + _diff_query(db, spec, check_parents)
    limit = f"SET STATEMENT group_concat_max_len = {CONCAT_MAX} FOR " if db.is_mariadb else ""
    return f"{limit}WITH v({q(INDEX)}, {names}) AS (VALUES "


def _diff_query(db: Database, spec: TableSpec, check_parents: bool, source: str = "v") -> str:
    q = db.quote
    keys = spec.primary_key
    others = [c for c in spec.column_names if c not in keys]
    on = " AND ".join(f"t.{q(k)} = v.{q(k)}" for k in keys)
    select = [f"v.{q(INDEX)}", f"t.{q(keys[0])} IS NULL"]
    if check_parents:
        select += [_missing_parent(db, fk) for fk in spec.foreign_keys]
    items = ", ".join(select)
    if db.dialect == "mysql":
        # One row, "i,new,missing... i,new,..." instead of a row per new or changed row:
        # PyMySQL decodes rows in Python, ~5 us each, which a first load pays for every row.
        # COUNT(*) lets the caller check that the list was not cut at group_concat_max_len.
        hint = "" if db.is_mariadb else f"/*+ SET_VAR(group_concat_max_len = {CONCAT_MAX}) */ "
        items = f"{hint}COUNT(*), GROUP_CONCAT(CONCAT_WS(',', {items}) SEPARATOR ' ')"
    where = f"t.{q(keys[0])} IS NULL"
    if others:
        where += " OR " + " OR ".join(_differs(db, spec, c) for c in others)
    return (
        f"{') ' if db.dialect == 'mysql' else ''}SELECT {items} FROM {source} "  # noqa: S608
        f"LEFT JOIN {db.qualified(spec)} AS t ON {on} WHERE {where}"
    )


def _differs(db: Database, spec: TableSpec, column: str) -> str:
    """Null-safe "the stored value is not the one the row would store"."""
    t, v = f"t.{db.quote(column)}", f"v.{db.quote(column)}"
    kind = spec.column(column).type.kind
    if db.dialect == "postgresql":
        if kind == "json":  # jsonb's = calls 1.0 and 1 equal; its text tells them apart
            return f"{t}::text IS DISTINCT FROM {v}::text"
        return f"{t} IS DISTINCT FROM {v}"
    if db.dialect == "sqlite":
        return f"{t} IS NOT {v}"
    if kind in _MYSQL_TEXT:
        return f"NOT (CAST({t} AS BINARY) <=> CAST({v} AS BINARY))"
    return f"NOT ({t} <=> {v})"


def _missing_parent(db: Database, fk: Any) -> str:
    q = db.quote
    parent = db.spec(fk.parent)
    present = " AND ".join(f"v.{q(c)} IS NOT NULL" for c in fk.columns)
    match = " AND ".join(
        f"p.{q(pc)} = v.{q(c)}" for c, pc in zip(fk.columns, fk.parent_columns, strict=True)
    )
    exists = f"SELECT 1 FROM {db.qualified(parent)} AS p WHERE {match}"  # noqa: S608 (quoted)
    return f"({present} AND NOT EXISTS ({exists}))"


def write_sql(db: Database, spec: TableSpec, n: int) -> str:
    """The write of ``n`` rows; on MySQL, the text before the rows (see ``write_tail``)."""
    size = n if db.dialect == "sqlite" else 0
    return _cached(db, ("upsert", spec.qualname, size), lambda: _build_upsert_sql(db, spec, size))


def insert_sql(db: Database, spec: TableSpec, n: int) -> str:
    """A plain ``INSERT`` of ``n`` rows, no conflict clause; on MySQL the text before the rows
    (which end the statement: a duplicate key or a missing parent is an error, as wanted)."""
    size = n if db.dialect == "sqlite" else 0
    return _cached(db, ("insert", spec.qualname, size), lambda: _build_insert_sql(db, spec, size))


def write_tail(db: Database, spec: TableSpec) -> str:
    """MySQL: the write's text after the rows."""
    return _cached(db, ("upsert-tail", spec.qualname), lambda: _on_duplicate(db, spec))


def _on_duplicate(db: Database, spec: TableSpec) -> str:
    values = [db.quote(c.name) for c in spec.columns if not c.in_key]
    if not values:  # key-only table: a no-op update keeps real errors (unlike IGNORE)
        k = db.quote(spec.primary_key[0])
        return f" ON DUPLICATE KEY UPDATE {k} = {k}"
    return " ON DUPLICATE KEY UPDATE " + ", ".join(f"{c} = VALUES({c})" for c in values)
