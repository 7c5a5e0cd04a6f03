"""Keys of populated tables: canonical text, typed values, key sources and restricted reads.

A key travels as canonical JSON text (the outbox's format: ``["6a1f…", "2024-03-01 09:30:00"]``)
and is hashed for the job table's primary key. Reads are plain SQL over quoted identifiers,
with values validated to their column's Python type and encoded by the column's codec, in
chunks of bound parameters: never one round trip per key.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pydantic
import sqlalchemy as sa

from limsync.errors import PopulateError, RestrictionError
from limsync.pipeline.database import Database
from limsync.pipeline.tables import Table, TableSpec
from limsync.pipeline.upsert import MAX_PARAMS, placeholder

Key = tuple[Any, ...]


def spec_of(table: type[Table] | TableSpec) -> TableSpec:
    """The spec of a table class (or the spec itself)."""
    return table if isinstance(table, TableSpec) else table.spec


def key_text(values: Sequence[Any]) -> str:
    """Canonical JSON of a key tuple, as the change outbox stores keys."""
    return json.dumps(list(values), separators=(",", ":"), default=str)


def key_hash(text: str) -> str:
    """32 hex characters identifying a key text (the job table's key column)."""
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


@functools.cache
def _adapter(annotation: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(annotation)


def typed(spec: TableSpec, column: str, value: Any) -> Any:
    """``value`` validated to the Python type of ``spec``'s column (e.g. a str to a UUID)."""
    assert spec.row_model is not None
    field = spec.row_model.model_fields.get(column)
    if field is None:
        raise PopulateError(f"table {spec.qualname} has no column {column!r}")
    if value is None:
        return None
    try:
        return _adapter(field.annotation).validate_python(value)  # type: ignore[arg-type]
    except pydantic.ValidationError as exc:
        problem = exc.errors()[0]["msg"]
        raise PopulateError(
            f"table {spec.qualname} column {column}: {value!r}: {problem}"
        ) from None


def typed_key(spec: TableSpec, columns: Sequence[str], values: Sequence[Any]) -> Key:
    """A key from JSON values, each validated to its column's type."""
    return tuple(typed(spec, c, v) for c, v in zip(columns, values, strict=True))


def _encoder(db: Database, spec: TableSpec, column: str) -> Any:
    return db.codecs(spec)[spec.column_names.index(column)]


def in_clause(db: Database, columns: Sequence[str], n: int, alias: str = "") -> str:
    """``a IN (?, ?)`` or ``(a, b) IN ((?, ?), (?, ?))`` with ``n`` values."""
    p = placeholder(db)
    pre = f"{alias}." if alias else ""
    if len(columns) == 1:
        return f"{pre}{db.quote(columns[0])} IN ({', '.join([p] * n)})"
    tup = "(" + ", ".join([p] * len(columns)) + ")"
    cols = ", ".join(pre + db.quote(c) for c in columns)
    return f"({cols}) IN ({', '.join([tup] * n)})"


def chunks(values: Sequence[Any], width: int, dialect: str) -> Iterable[Sequence[Any]]:
    """Slices of ``values`` whose bound parameters stay under the dialect's limit."""
    step = max(1, min(1000, MAX_PARAMS[dialect] // max(1, width)))
    for start in range(0, len(values), step):
        yield values[start : start + step]


def select_where(
    db: Database,
    conn: sa.Connection,
    table: type[Table] | TableSpec,
    select: Sequence[str],
    match: Sequence[str],
    values: Sequence[Key],
) -> list[Key]:
    """``select`` columns (decoded) of rows whose ``match`` columns equal one of ``values``.

    ``values`` are typed Python tuples; they are encoded per column. Duplicates are removed.
    """
    spec = spec_of(table)
    db.register(spec)
    enc = [_encoder(db, spec, c) for c in match]
    dec = [_encoder(db, spec, c) for c in select]
    cols = ", ".join(db.select_column(spec, c) for c in select)
    uniq = list(
        dict.fromkeys(tuple(c.encode(v) for c, v in zip(enc, k, strict=True)) for k in values)
    )
    out: dict[Key, None] = {}
    for part in chunks(uniq, len(match), db.dialect):
        sql = f"SELECT {cols} FROM {db.qualified(spec)} WHERE {in_clause(db, match, len(part))}"  # noqa: S608
        for r in conn.exec_driver_sql(sql, tuple(v for k in part for v in k)):
            out[tuple(d.decode(v) for d, v in zip(dec, r, strict=True))] = None
    return list(out)


def fetch_where(
    db: Database,
    conn: sa.Connection,
    table: type[Table] | TableSpec,
    where: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """Whole rows (decoded) whose columns equal ``where`` (a list value: any of them)."""
    spec = spec_of(table)
    db.register(spec)
    conds, params = _conditions(db, spec, where, "")
    cols = ", ".join(db.select_column(spec, c) for c in spec.column_names)
    sql = f"SELECT {cols} FROM {db.qualified(spec)}"  # noqa: S608 (quoted identifiers)
    if conds:
        sql += " WHERE " + " AND ".join(conds)
    sql += " ORDER BY " + ", ".join(db.quote(c) for c in spec.primary_key)
    codecs = db.codecs(spec)
    return [
        {n: c.decode(v) for n, c, v in zip(spec.column_names, codecs, r, strict=True)}
        for r in conn.exec_driver_sql(sql, tuple(params))
    ]


def _conditions(
    db: Database, spec: TableSpec, where: Mapping[str, Any], alias: str
) -> tuple[list[str], list[Any]]:
    p = placeholder(db)
    pre = f"{alias}." if alias else ""
    conds: list[str] = []
    params: list[Any] = []
    for col, value in where.items():
        if not spec.has_column(col):
            raise RestrictionError(f"table {spec.qualname} has no column {col!r} to restrict by")
        codec = _encoder(db, spec, col)
        values = list(value) if isinstance(value, list | tuple | set | frozenset) else [value]
        if not values:
            conds.append("1 = 0")
            continue
        conds.append(f"{pre}{db.quote(col)} IN ({', '.join([p] * len(values))})")
        params.extend(codec.encode(typed(spec, col, v)) for v in values)
    return conds, params


class KeySource:
    """The keys a populated table should hold: the join of its key-source tables' keys.

    By default the key source is the table's primary references (DataJoint's rule); a class
    may name other tables in ``__key_source__``. Tables are joined on the columns they share
    that belong to the populated table's primary key; the result is projected to that key.
    """

    def __init__(self, db: Database, cls: type[Table]) -> None:
        self.db = db
        self.spec = cls.spec
        if cls.__key_source__:
            self.sources = [t.spec for t in cls.__key_source__]
        else:
            self.sources = [db.spec(fk.parent) for fk in self.spec.foreign_keys if fk.primary]
        for s in self.sources:
            db.register(s)
        self.owner: dict[str, tuple[str, TableSpec]] = {}  # column -> (alias, table)
        for i, s in enumerate(self.sources):
            for c in s.column_names:
                self.owner.setdefault(c, (f"s{i}", s))
        pk = self.spec.primary_key
        parts = [f"{db.qualified(self.sources[0])} s0"]
        for i, s in enumerate(self.sources[1:], start=1):
            on = [
                f"s{i}.{db.quote(c)} = {self.owner[c][0]}.{db.quote(c)}"
                for c in s.column_names
                if self.owner[c][0] != f"s{i}" and (c in pk or c in s.primary_key)
            ]
            parts.append(f"JOIN {db.qualified(s)} s{i} ON " + (" AND ".join(on) or "1 = 1"))
        self.from_sql = " ".join(parts)
        self.select_sql = ", ".join(f"{self.owner[c][0]}.{db.quote(c)}" for c in pk)
        same = " AND ".join(f"t.{db.quote(c)} = {self.owner[c][0]}.{db.quote(c)}" for c in pk)
        self.missing_sql = f"NOT EXISTS (SELECT 1 FROM {db.qualified(self.spec)} t WHERE {same})"  # noqa: S608

    def keys(
        self,
        conn: sa.Connection,
        *,
        where: Mapping[str, Any] | None = None,
        match: tuple[Sequence[str], Sequence[Key]] | None = None,
        missing_only: bool = False,
    ) -> list[Key]:
        """Keys of the source (typed tuples in primary-key order), optionally restricted.

        ``where`` restricts by column values (any column of a source table); ``match`` by
        ``(columns, value tuples)``; ``missing_only`` leaves out keys the table already holds.
        """
        db = self.db
        conds: list[str] = []
        params: list[Any] = []
        for col, value in (where or {}).items():
            if col not in self.owner:
                known = ", ".join(sorted(self.owner))
                raise RestrictionError(
                    f"table {self.spec.qualname}: no key-source table has a column {col!r} "
                    f"(restrict by one of: {known})"
                )
            alias, spec = self.owner[col]
            more_conds, more_params = _conditions(db, spec, {col: value}, alias)
            conds += more_conds
            params += more_params
        if missing_only:
            conds.append(self.missing_sql)
        base = f"SELECT DISTINCT {self.select_sql} FROM {self.from_sql}"  # noqa: S608
        pk = self.spec.primary_key
        dec = [_encoder(db, self.spec, c) for c in pk]
        out: dict[Key, None] = {}

        def run(extra: str, extra_params: Sequence[Any]) -> None:
            all_conds = [*conds, extra] if extra else conds
            sql = base + (" WHERE " + " AND ".join(all_conds) if all_conds else "")
            for r in conn.exec_driver_sql(sql, (*params, *extra_params)):
                out[tuple(d.decode(v) for d, v in zip(dec, r, strict=True))] = None

        if match is None:
            run("", ())
            return list(out)
        cols, values = match
        if not values:
            return []
        owners = [self.owner.get(c) for c in cols]
        if any(o is None for o in owners):
            raise PopulateError(f"table {self.spec.qualname}: cannot restrict its keys by {cols}")
        enc = [_encoder(db, o[1], c) for o, c in zip(owners, cols, strict=True) if o]
        encoded = list(
            dict.fromkeys(tuple(e.encode(v) for e, v in zip(enc, k, strict=True)) for k in values)
        )
        p = placeholder(db)
        for part in chunks(encoded, len(cols) + len(params), db.dialect):
            refs = [f"{o[0]}.{db.quote(c)}" for o, c in zip(owners, cols, strict=True) if o]
            if len(cols) == 1:
                clause = f"{refs[0]} IN ({', '.join([p] * len(part))})"
            else:
                tup = "(" + ", ".join([p] * len(cols)) + ")"
                clause = f"({', '.join(refs)}) IN ({', '.join([tup] * len(part))})"
            run(clause, tuple(v for k in part for v in k))
        return list(out)
