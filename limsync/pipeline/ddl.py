"""CREATE TABLE per dialect, DataJoint-compatible on MySQL/MariaDB and PostgreSQL.

The DDL follows ``contracts/datajoint.md``: one database (MySQL) or schema (PostgreSQL) per
pipeline schema, DataJoint's tier prefixes in table names, ``:type:`` column comments, foreign
keys on the parent's full primary key with ``ON UPDATE CASCADE ON DELETE RESTRICT``, InnoDB,
indexes on foreign-key columns on PostgreSQL, ``uuid`` as ``binary(16)`` on MySQL and ``char(36)``
on PostgreSQL (DataJoint 2.3.5 cannot read PostgreSQL's native uuid). On SQLite, where there are
no schemas, a pipeline schema becomes a name prefix: table ``subject`` of schema ``lab`` is the
SQLite table ``"lab.subject"``.

This module only builds SQLAlchemy :class:`~sqlalchemy.Table` objects; SQLAlchemy emits the SQL.
"""

from __future__ import annotations

import decimal
import enum
import hashlib
import math
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql

from limsync.errors import DeclarationError
from limsync.pipeline.columns import ColumnType
from limsync.pipeline.tables import ColumnSpec, TableSpec

# Case-sensitive comparison: LIMS keys such as nicknames and eartags differ by case.
MYSQL_TABLE_OPTIONS = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}
# DataJoint's foreign keys: cascading is the application's job, the database only refuses.
FK_ON_UPDATE = "CASCADE"
FK_ON_DELETE = "RESTRICT"


def column_comment(col: ColumnSpec, dialect: str) -> str:
    """The ``:type:comment`` DataJoint reads types from."""
    dj_type = col.type.dj_type
    if col.type.kind == "uuid" and dialect == "postgresql":
        # DataJoint 2.3.5 fails on uuid-marked columns on PostgreSQL (contract 3.3).
        dj_type = "char(36)"
    return f":{dj_type}:{col.comment}"


def sql_type(
    ctype: ColumnType, dialect: str, enum_name: str | None = None, schema: str | None = None
) -> sa.types.TypeEngine[Any]:
    """The SQLAlchemy type of a column on ``dialect``."""
    kind = ctype.kind
    if kind == "varchar":
        return sa.String(ctype.length)
    if kind == "char":
        return sa.CHAR(ctype.length)
    if kind == "text":
        return sa.Text()
    if kind == "uuid":
        return mysql.BINARY(16) if dialect == "mysql" else sa.CHAR(36)
    if kind == "enum":
        if dialect == "mysql":
            return mysql.ENUM(*ctype.values)
        if dialect == "postgresql":
            return postgresql.ENUM(*ctype.values, name=enum_name, schema=schema, create_type=True)
        return sa.String(max((len(v) for v in ctype.values), default=1))
    if kind == "json":
        if dialect == "postgresql":
            return postgresql.JSONB()
        return sa.JSON()
    if kind in ("blob", "bytes"):
        if dialect == "mysql":
            return mysql.LONGBLOB()
        return sa.LargeBinary()
    if kind == "datetime":
        if dialect == "mysql":
            return mysql.DATETIME(fsp=ctype.precision or 0)
        if dialect == "postgresql":
            return postgresql.TIMESTAMP(precision=ctype.precision or 0)
        return sa.DateTime()
    if kind == "date":
        return sa.Date()
    if kind == "decimal":
        if dialect == "sqlite":
            return sa.Text()  # see codecs: SQLite would store a lossy float
        return sa.Numeric(ctype.precision, ctype.scale)
    if kind == "bool":
        if dialect == "mysql":
            return mysql.TINYINT()
        return sa.Boolean()
    ints: dict[str, Callable[[], sa.types.TypeEngine[Any]]] = {
        "int8": mysql.TINYINT if dialect == "mysql" else sa.SmallInteger,
        "int16": sa.SmallInteger,
        "int32": sa.Integer,
        "int64": sa.BigInteger,
    }
    if kind in ints:
        return ints[kind]()
    if kind == "float32":
        return mysql.FLOAT() if dialect == "mysql" else sa.REAL()
    if kind == "float64":
        return mysql.DOUBLE() if dialect == "mysql" else sa.Double()
    raise AssertionError(f"unhandled column kind {kind}")


def server_default(col: ColumnSpec, dialect: str) -> str | sa.TextClause | None:
    """A literal DEFAULT for simple scalar defaults, so DataJoint inserts may omit the column.

    Strings are returned as they are: SQLAlchemy quotes and escapes them for the dialect.
    """
    value = col.default
    if not col.has_default or value is None:
        return None
    kind = col.type.kind
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        if dialect == "postgresql":
            return sa.text("true" if value else "false")
        return sa.text("1" if value else "0")
    if isinstance(value, int) and kind not in ("json", "blob", "bytes"):
        return sa.text(str(value))
    if isinstance(value, float) and math.isfinite(value) and kind not in ("json", "blob", "bytes"):
        return sa.text(repr(value))
    if isinstance(value, decimal.Decimal) and value.is_finite() and kind == "decimal":
        return sa.text(str(value))
    if isinstance(value, str) and kind in ("varchar", "char", "text", "enum"):
        return value
    return None


def enum_type_name(ctype: ColumnType) -> str:
    """DataJoint's PostgreSQL enum naming: ``enum_<md5 of the sorted members>[:8]``.

    The same rule as DataJoint 2.3.5 (``adapters/postgres.py``), so that a DataJoint table in the
    same schema with the same enum reuses the type instead of creating a twin.
    """
    members = "_".join(sorted(ctype.values))
    digest = hashlib.md5(members.encode(), usedforsecurity=False).hexdigest()
    return f"enum_{digest[:8]}"


def build_table(
    spec: TableSpec,
    metadata: sa.MetaData,
    dialect: str,
    physical: Callable[[TableSpec], tuple[str | None, str]],
    resolve: Callable[[str], TableSpec],
) -> sa.Table:
    """The SQLAlchemy table for ``spec`` on ``dialect``.

    ``physical`` maps a spec to its (database schema, table name); ``resolve`` finds a parent
    spec from its qualified logical name (for foreign keys).
    """
    schema, name = physical(spec)
    columns: list[sa.Column[Any]] = []
    for col in spec.columns:
        columns.append(
            sa.Column(
                col.name,
                sql_type(col.type, dialect, enum_type_name(col.type), schema),
                primary_key=col.in_key,
                nullable=col.nullable,
                autoincrement=False,
                comment=column_comment(col, dialect) if dialect != "sqlite" else None,
                server_default=server_default(col, dialect),
            )
        )
    constraints: list[sa.schema.SchemaItem] = []
    for i, fk in enumerate(spec.foreign_keys):
        parent = resolve(fk.parent)
        pschema, pname = physical(parent)
        # The parent's Table object, not a "schema.table.column" string: SQLite table names
        # hold a dot ("lab.subject") that such a string could not express.
        parent_table = metadata.tables.get(f"{pschema}.{pname}" if pschema else pname)
        if parent_table is None:
            raise DeclarationError(
                f"table {spec.qualname}: build its parent {fk.parent} into the metadata first"
            )
        constraints.append(
            sa.ForeignKeyConstraint(
                list(fk.columns),
                [parent_table.c[c] for c in fk.parent_columns],
                name=_constraint_name(name, i, dialect),
                onupdate=FK_ON_UPDATE,
                ondelete=FK_ON_DELETE,
            )
        )
        if dialect == "postgresql" and fk.columns != spec.primary_key[: len(fk.columns)]:
            # MySQL indexes FK columns by itself; DataJoint adds the index on PostgreSQL.
            constraints.append(sa.Index(_index_name(name, fk.columns), *fk.columns))
    kwargs: dict[str, Any] = dict(MYSQL_TABLE_OPTIONS) if dialect == "mysql" else {}
    return sa.Table(
        name,
        metadata,
        *columns,
        *constraints,
        schema=schema,
        comment=spec.comment or None,
        **kwargs,
    )


def _constraint_name(table: str, i: int, dialect: str) -> str | None:
    if dialect == "sqlite":
        return None
    # MySQL's own naming, which DataJoint's DDL shows: <table>_ibfk_<n>.
    base = f"{table}_ibfk_{i + 1}"
    return (
        base
        if len(base) <= 63
        else "fk_" + hashlib.md5(base.encode(), usedforsecurity=False).hexdigest()[:16]
    )


def _index_name(table: str, columns: tuple[str, ...]) -> str:
    base = f"idx_{table}_{'_'.join(columns)}"
    return (
        base
        if len(base) <= 63
        else "idx_" + hashlib.md5(base.encode(), usedforsecurity=False).hexdigest()[:16]
    )
