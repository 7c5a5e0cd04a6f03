"""Reading table definitions back from the database.

Used two ways: to compare an existing table with its declaration (declaring is idempotent, and
a mismatch is an error listing every difference), and to write into tables that a lab's own
DataJoint pipeline declared, decoding their DataJoint types from the ``:type:`` comments.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
import typing
import uuid
from typing import Any

import numpy as np
import pydantic
import sqlalchemy as sa

from limsync.errors import DeclarationError
from limsync.pipeline.columns import ColumnType
from limsync.pipeline.tables import NO_DEFAULT, ColumnSpec, ForeignKeySpec, TableSpec, Tier

COMMENT_RE = re.compile(r":(?P<type>[^:]+):(?P<comment>.*)", re.DOTALL)


def tier_of(name: str) -> Tier:
    """DataJoint's tier from a SQL table name."""
    core = name.lstrip("#_")
    if "__" in core:
        return Tier.PART  # "session__probe", "__stats__unit", "#lab__member"
    if name.startswith("#"):
        return Tier.LOOKUP
    if name.startswith("__"):
        return Tier.COMPUTED
    if name.startswith("_"):
        return Tier.IMPORTED
    return Tier.MANUAL


def type_from_sql(sqltype: Any, comment: str | None) -> tuple[ColumnType, str]:
    """A reflected column's type (from DataJoint's comment marker first) and its plain comment."""
    plain = comment or ""
    if comment and (m := COMMENT_RE.fullmatch(comment)):
        plain = m.group("comment")
        try:
            return ColumnType.parse(m.group("type")), plain
        except DeclarationError:
            pass  # a codec DataJoint knows and we do not (<attach>, ...): fall back to SQL
    name = type(sqltype).__name__.upper()
    length = getattr(sqltype, "length", None)
    if name in ("VARCHAR", "NVARCHAR", "STRING"):
        return ColumnType("varchar", length=length or 255), plain
    if name in ("CHAR", "NCHAR"):
        return ColumnType("char", length=length or 1), plain
    if name in ("TEXT", "LONGTEXT", "MEDIUMTEXT", "TINYTEXT", "CLOB"):
        return ColumnType("text"), plain
    if name == "ENUM":
        return ColumnType("enum", values=tuple(sqltype.enums)), plain
    if name in ("TINYINT",):
        return ColumnType("int8"), plain
    if name in ("SMALLINT",):
        return ColumnType("int16"), plain
    if name in ("INTEGER", "INT", "MEDIUMINT"):
        return ColumnType("int32"), plain
    if name in ("BIGINT",):
        return ColumnType("int64"), plain
    if name in ("FLOAT", "REAL"):
        return ColumnType("float32"), plain
    if name in ("DOUBLE", "DOUBLE_PRECISION"):
        return ColumnType("float64"), plain
    if name in ("NUMERIC", "DECIMAL"):
        return ColumnType("decimal", precision=sqltype.precision, scale=sqltype.scale), plain
    if name in ("BOOLEAN",):
        return ColumnType("bool"), plain
    if name == "DATE":
        return ColumnType("date"), plain
    if name in ("DATETIME", "TIMESTAMP"):
        fsp = getattr(sqltype, "fsp", None) or getattr(sqltype, "precision", None) or 0
        return ColumnType("datetime", precision=fsp), plain
    if name in ("JSON", "JSONB"):
        return ColumnType("json"), plain
    if name in ("BLOB", "LONGBLOB", "MEDIUMBLOB", "BYTEA", "BINARY", "VARBINARY", "LARGEBINARY"):
        return ColumnType("bytes"), plain
    if name == "UUID":
        return ColumnType("uuid"), plain
    raise DeclarationError(f"column type {sqltype!r} is not supported")


_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")
_QUOTED = re.compile(r"'((?:[^']|'')*)'")


def parse_default(text: str | None, ctype: ColumnType) -> Any:
    """A column's server default as a Python value, or ``NO_DEFAULT``.

    ``text`` is the default as SQLAlchemy reflects it: ``'U''x'`` or ``5`` (MySQL, SQLite),
    ``'UTC'::character varying`` (PostgreSQL). Rows that leave the column out get this value,
    because the upsert always writes every column. Expressions (``CURRENT_TIMESTAMP``, ...)
    cannot be computed here: the column then has no default and rows must give a value.
    """
    if text is None:
        return NO_DEFAULT
    t = re.sub(r"::[^']+$", "", text.strip())  # PostgreSQL's casts
    while t.startswith("(") and t.endswith(")"):
        t = t[1:-1].strip()
    if t.upper() == "NULL":
        return None
    if m := _QUOTED.fullmatch(t):
        t = m.group(1).replace("''", "'")
    elif not _NUMBER.fullmatch(t) and t.lower() not in ("true", "false"):
        return NO_DEFAULT
    try:
        return _default_value(t, ctype)
    except (ValueError, ArithmeticError):
        return NO_DEFAULT


def _default_value(t: str, ctype: ColumnType) -> Any:
    kind = ctype.kind
    if kind in ("varchar", "char", "text", "enum"):
        return t
    if kind in ("int8", "int16", "int32", "int64"):
        return int(t)
    if kind in ("float32", "float64"):
        return float(t)
    if kind == "decimal":
        return decimal.Decimal(t)
    if kind == "bool":
        return t.lower() in ("1", "true", "t")
    if kind == "date":
        return dt.date.fromisoformat(t)
    if kind == "datetime":
        return dt.datetime.fromisoformat(t)
    return NO_DEFAULT  # uuid, json, blobs: no literal defaults limsync would write


_PYTHON: dict[str, Any] = {
    "int8": int, "int16": int, "int32": int, "int64": int, "float32": float,
    "float64": float, "bool": bool, "date": dt.date, "datetime": dt.datetime, "uuid": uuid.UUID,
    "json": Any, "blob": np.ndarray, "bytes": bytes, "text": str, "decimal": decimal.Decimal,
}  # fmt: skip


def python_annotation(col: ColumnSpec) -> Any:
    """The row-model annotation of a reflected column."""
    t = col.type
    ann: Any
    if t.kind in ("varchar", "char"):
        ann = typing.Annotated[str, pydantic.Field(max_length=t.length)]
    elif t.kind == "enum":
        ann = typing.Literal[t.values]
    elif t.kind == "decimal":
        ann = typing.Annotated[
            decimal.Decimal, pydantic.Field(max_digits=t.precision, decimal_places=t.scale)
        ]
    else:
        ann = _PYTHON[t.kind]
    return ann | None if col.nullable else ann


def row_model_for(name: str, columns: tuple[ColumnSpec, ...]) -> type[pydantic.BaseModel]:
    """A pydantic row model for reflected columns."""
    fields: dict[str, Any] = {}
    for col in columns:
        if col.nullable or col.has_default:
            default = None if col.default is NO_DEFAULT else col.default
        else:
            default = ...
        fields[col.name] = (python_annotation(col), default)
    return pydantic.create_model(
        name,
        __config__=pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True),
        **fields,
    )


def reflect_table(
    conn: sa.Connection,
    schema: str | None,
    table: str,
    *,
    logical_schema: str,
    logical_parent: typing.Callable[[str | None, str], str],
    name: str | None = None,
) -> TableSpec:
    """Read one table's definition.

    ``logical_parent`` names a referenced table logically; ``name`` is the table's own name
    without any SQLite schema prefix (default: ``table``), which also gives its tier.
    """
    name = name or table
    insp = sa.inspect(conn)
    if not insp.has_table(table, schema=schema):
        where = f"{schema}.{table}" if schema else table
        raise DeclarationError(f"table {where} does not exist")
    pk = tuple(insp.get_pk_constraint(table, schema=schema)["constrained_columns"])
    columns: list[ColumnSpec] = []
    for c in insp.get_columns(table, schema=schema):
        if c["name"].startswith("_"):
            continue  # hidden columns (DataJoint's _job_*, _prov): never ours to write
        ctype, comment = type_from_sql(c["type"], c.get("comment"))
        if ctype.kind == "datetime" and not ctype.precision and conn.dialect.name == "sqlite":
            # SQLite keeps datetimes as text of any precision: never truncate them.
            ctype = ColumnType("datetime", precision=6)
        default = parse_default(c.get("default"), ctype)
        if default is NO_DEFAULT and c["nullable"]:
            default = None
        columns.append(
            ColumnSpec(
                name=c["name"],
                type=ctype,
                nullable=bool(c["nullable"]),
                default=default,
                comment=comment,
                in_key=c["name"] in pk,
            )
        )
    fks = []
    for fk in insp.get_foreign_keys(table, schema=schema):
        fks.append(
            ForeignKeySpec(
                parent=logical_parent(fk.get("referred_schema") or schema, fk["referred_table"]),
                columns=tuple(fk["constrained_columns"]),
                parent_columns=tuple(fk["referred_columns"]),
                primary=all(c in pk for c in fk["constrained_columns"]),
            )
        )
    cols = tuple(columns)
    return TableSpec(
        schema=logical_schema,
        name=name,
        tier=tier_of(name),
        columns=cols,
        primary_key=pk,
        foreign_keys=tuple(fks),
        comment=_table_comment(insp, table, schema),
        row_model=row_model_for(f"{name.strip('#_')}_row", cols),
        declared=False,
    )


def _table_comment(insp: sa.Inspector, table: str, schema: str | None) -> str:
    try:
        return (insp.get_table_comment(table, schema=schema) or {}).get("text") or ""
    except NotImplementedError:  # SQLite has no table comments
        return ""


def differences(declared: TableSpec, existing: TableSpec, dialect: str) -> list[str]:
    """Every way an existing table differs from its declaration (empty when they agree)."""
    out: list[str] = []
    have = {c.name: c for c in existing.columns}
    for col in declared.columns:
        got = have.pop(col.name, None)
        if got is None:
            hint = " (nullable: can be added with migrate=True)" if col.nullable else ""
            out.append(f"column {col.name} is missing{hint}")
            continue
        if not _same_type(col.type, got.type, dialect):
            out.append(f"column {col.name} is {got.type.dj_type}, declared {col.type.dj_type}")
        if col.nullable != got.nullable:
            out.append(
                f"column {col.name} is {'nullable' if got.nullable else 'NOT NULL'}, declared "
                f"{'nullable' if col.nullable else 'NOT NULL'}"
            )
    for name in have:
        out.append(f"column {name} exists but is not declared")
    if tuple(declared.primary_key) != tuple(existing.primary_key):
        out.append(
            f"primary key is ({', '.join(existing.primary_key)}), declared "
            f"({', '.join(declared.primary_key)})"
        )
    return out


def _same_type(declared: ColumnType, existing: ColumnType, dialect: str) -> bool:
    if dialect == "sqlite":
        # SQLite keeps few type distinctions; compare only what survives a round trip.
        return _sqlite_family(declared) == _sqlite_family(existing)
    if declared.kind == "uuid" and dialect == "postgresql":
        return (existing.kind == "char" and existing.length == 36) or existing.kind == "uuid"
    if declared.kind in ("blob", "bytes") and existing.kind in ("blob", "bytes"):
        return declared.kind == existing.kind or dialect != "mysql"
    return declared.dj_type == existing.dj_type


def _sqlite_family(t: ColumnType) -> str:
    if t.kind in ("int8", "int16", "int32", "int64"):
        return "int"
    if t.kind in ("varchar", "char", "enum", "uuid", "text", "decimal"):
        return "text"
    if t.kind in ("blob", "bytes"):
        return "blob"
    if t.kind in ("float32", "float64"):
        return "float"
    return t.kind
