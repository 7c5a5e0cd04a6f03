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

import hashlib
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql

from limsync.pipeline.columns import ColumnType
from limsync.pipeline.tables import ColumnSpec, TableSpec

# Case-sensitive comparison: LIMS keys such as nicknames and eartags differ by case.
MYSQL_TABLE_OPTIONS = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}
FK_OPTIONS = {"onupdate": "CASCADE", "ondelete": "RESTRICT"}


def column_comment(col: ColumnSpec, dialect: str) -> str:
    """The ``:type:comment`` DataJoint reads types from."""
    dj_type = col.type.dj_type
    if col.type.kind == "uuid" and dialect == "postgresql":
        # DataJoint 2.3.5 fails on uuid-marked columns on PostgreSQL (contract 3.3).
        dj_type = "char(36)"
    return f":{dj_type}:{col.comment}"


def sql_type(  # type: ignore[type-arg]
    ctype: ColumnType, dialect: str, enum_name: str | None = None, schema: str | None = None
) -> sa.types.TypeEngine:
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
    ints: dict[str, Callable[[], sa.types.TypeEngine]] = {  # type: ignore[type-arg]
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


def server_default(col: ColumnSpec, dialect: str) -> sa.TextClause | None:
    """A literal DEFAULT for simple scalar defaults, so DataJoint inserts may omit the column."""
    value = col.default
    if not col.has_default or value is None:
        return None
    if isinstance(value, bool):
        if dialect == "postgresql":
            return sa.text("true" if value else "false")
        return sa.text("1" if value else "0")
    if isinstance(value, int | float) and col.type.kind not in ("json", "blob"):
        return sa.text(repr(value))
    if isinstance(value, str) and col.type.kind in ("varchar", "char", "text", "enum"):
        return sa.text("'" + value.replace("'", "''") + "'")
    return None


def enum_type_name(ctype: ColumnType) -> str:
    """DataJoint's PostgreSQL enum naming: ``enum_<hash of the members>``."""
    digest = hashlib.md5(",".join(ctype.values).encode(), usedforsecurity=False).hexdigest()
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
    columns: list[sa.Column] = []  # type: ignore[type-arg]
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
    constraints: list[sa.SchemaItem] = []
    for i, fk in enumerate(spec.foreign_keys):
        parent = resolve(fk.parent)
        pschema, pname = physical(parent)
        prefix = f"{pschema}.{pname}" if pschema else pname
        constraints.append(
            sa.ForeignKeyConstraint(
                list(fk.columns),
                [f"{prefix}.{c}" for c in fk.parent_columns],
                name=_constraint_name(name, i, dialect),
                **FK_OPTIONS,
            )
        )
        if dialect == "postgresql" and fk.columns != spec.primary_key[: len(fk.columns)]:
            # MySQL indexes FK columns by itself; DataJoint adds the index on PostgreSQL.
            constraints.append(sa.Index(_index_name(name, fk.columns), *fk.columns))
    kwargs = MYSQL_TABLE_OPTIONS if dialect == "mysql" else {}
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
    return base if len(base) <= 63 else "fk_" + hashlib.md5(base.encode(), usedforsecurity=False).hexdigest()[:16]


def _index_name(table: str, columns: tuple[str, ...]) -> str:
    base = f"idx_{table}_{'_'.join(columns)}"
    return base if len(base) <= 63 else "idx_" + hashlib.md5(base.encode(), usedforsecurity=False).hexdigest()[:16]
