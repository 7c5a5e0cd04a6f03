"""The database: a SQLAlchemy engine from a URL, plus declare, reflect and transactions.

One :class:`Database` serves one pipeline on one server. It maps logical pipeline schemas to
physical ones (``schema_prefix``), builds SQLAlchemy tables for specs, creates what is missing,
checks what exists, and hands out transactions. Everything dialect-specific about *names* lives
here; DDL lives in :mod:`ddl`, upsert SQL in :mod:`upsert`, locks in :mod:`locks`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url

from limsync.errors import (
    ConfigError,
    DatabaseError,
    DatabaseUnreachableError,
    DeclarationError,
    SchemaMismatchError,
)
from limsync.pipeline import ddl, reflect
from limsync.pipeline.codecs import Codec, codec_for, row_encoder
from limsync.pipeline.tables import ColumnSpec, Schema, Table, TableSpec, tables_in

Dialect = str  # "sqlite" | "mysql" | "postgresql"
PREFIX_RE = re.compile(r"[a-z0-9_]*")
SUPPORTED = {"sqlite": "sqlite", "mysql": "mysql", "mariadb": "mysql", "postgresql": "postgresql"}


def safe_url(url: str | sa.URL) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"


class Database:
    """A pipeline's database: engine, schema mapping, table registry and transactions."""

    def __init__(
        self,
        url: str | sa.URL,
        *,
        schema_prefix: str = "",
        state_schema: str = "limsync",
        engine_options: dict[str, Any] | None = None,
    ) -> None:
        try:
            parsed = make_url(url)
        except Exception as exc:
            raise ConfigError(f"database_url is not a valid SQLAlchemy URL: {exc}") from None
        backend = parsed.get_backend_name()
        if backend not in SUPPORTED:
            raise ConfigError(
                f"database_url {safe_url(parsed)}: unsupported backend {backend!r} "
                "(use sqlite, mysql+pymysql, mariadb+pymysql or postgresql+psycopg)"
            )
        if not PREFIX_RE.fullmatch(schema_prefix):
            raise ConfigError(f"schema_prefix {schema_prefix!r} must be lower snake case")
        self.url = parsed
        self.dialect: Dialect = SUPPORTED[backend]
        self.schema_prefix = schema_prefix
        self.state_schema = state_schema
        self.engine = _create_engine(parsed, self.dialect, engine_options or {})
        self.metadata = sa.MetaData()
        self._specs: dict[str, TableSpec] = {}
        self._tables: dict[str, sa.Table] = {}
        self._codecs: dict[str, list[Codec]] = {}
        self._row_encoders: dict[str, Callable[[Mapping[str, Any]], tuple[Any, ...]]] = {}
        # SQL text built by upsert/cascade, per (purpose, table, batch size): see upsert.py.
        self.sql_cache: dict[tuple[Any, ...], str] = {}
        # Per-database objects of other modules (bookkeeping tables, ...), built on first use.
        self.extensions: dict[str, Any] = {}
        self._preparer = self.engine.dialect.identifier_preparer

    def __repr__(self) -> str:
        return f"Database({safe_url(self.url)!r})"

    @property
    def is_mariadb(self) -> bool:
        """True on MariaDB (known once a connection was made), where some SQL differs from
        MySQL 8's: a VALUES table's rows are ``(...)``, not ``ROW(...)``."""
        return bool(getattr(self.engine.dialect, "is_mariadb", False))

    # -- names ------------------------------------------------------------------------------------

    def physical_schema(self, logical: str) -> str:
        """The database (MySQL) or schema (PostgreSQL) name of a pipeline schema."""
        return self.schema_prefix + logical

    def physical(self, spec: TableSpec) -> tuple[str | None, str]:
        """(database schema or None, table name) of a spec on this dialect."""
        schema = spec.database_schema or self.physical_schema(spec.schema)
        if self.dialect == "sqlite":
            return None, f"{schema}.{spec.name}"
        return schema, spec.name

    def quote(self, name: str) -> str:
        """Quote one identifier, always (names are validated before, quoted regardless)."""
        return str(self._preparer.quote_identifier(name))

    def qualified(self, spec: TableSpec) -> str:
        """The quoted, qualified SQL name of a table."""
        schema, name = self.physical(spec)
        return f"{self.quote(schema)}.{self.quote(name)}" if schema else self.quote(name)

    def select_column(self, spec: TableSpec, name: str) -> str:
        """A column as an item of a SELECT list.

        MySQL and MariaDB print FLOAT values with six significant digits (1.2345678 comes back
        as 1.23457), so float32 columns are read as DOUBLE there, which is exact.
        """
        quoted = self.quote(name)
        if self.dialect == "mysql" and spec.column(name).type.kind == "float32":
            return f"({quoted} + 0E0)"
        return quoted

    # -- registry ---------------------------------------------------------------------------------

    def spec(self, qualname: str) -> TableSpec:
        """A known table by logical qualified name (``schema.table``)."""
        try:
            return self._specs[qualname]
        except KeyError:
            raise DeclarationError(f"unknown table {qualname!r}") from None

    @property
    def specs(self) -> list[TableSpec]:
        """Every table this database knows (declared or reflected)."""
        return list(self._specs.values())

    def register(self, spec: TableSpec) -> None:
        """Make a spec known (and its SQLAlchemy table), without touching the database."""
        old = self._specs.get(spec.qualname)
        if old is spec:
            return
        self._specs[spec.qualname] = spec
        self._tables.pop(spec.qualname, None)
        self._codecs.pop(spec.qualname, None)
        self._row_encoders.pop(spec.qualname, None)
        self.sql_cache.clear()

    def table(self, spec: TableSpec) -> sa.Table:
        """The SQLAlchemy table of a spec."""
        t = self._tables.get(spec.qualname)
        if t is None:
            self.register(spec)
            # SQLAlchemy resolves a foreign key through the metadata: build parents first, even
            # when they already exist in the database and were never created by this instance.
            for fk in spec.foreign_keys:
                if fk.parent not in self._specs:
                    raise DeclarationError(
                        f"table {spec.qualname} references {fk.parent}, which this database does "
                        "not know: declare (or reflect) the parent too"
                    )
                if fk.parent != spec.qualname:
                    self.table(self._specs[fk.parent])
            schema, name = self.physical(spec)
            key = f"{schema}.{name}" if schema else name
            if key in self.metadata.tables:
                self.metadata.remove(self.metadata.tables[key])
            t = ddl.build_table(spec, self.metadata, self.dialect, self.physical, self.spec)
            self._tables[spec.qualname] = t
        return t

    def row_encoder(self, spec: TableSpec) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
        """A function encoding a row dict into driver parameters in column order (cached)."""
        f = self._row_encoders.get(spec.qualname)
        if f is None:
            f = self._row_encoders[spec.qualname] = row_encoder(
                self.codecs(spec), spec.column_names
            )
        return f

    def codecs(self, spec: TableSpec) -> list[Codec]:
        """One codec per column of ``spec``, in column order."""
        c = self._codecs.get(spec.qualname)
        if c is None:
            c = [codec_for(col.type, self.dialect) for col in spec.columns]
            self._codecs[spec.qualname] = c
        return c

    # -- declare and reflect ----------------------------------------------------------------------

    def declare(self, *items: Schema | type[Table] | TableSpec, migrate: bool = False) -> list[str]:
        """Create missing schemas and tables; check existing ones against their declaration.

        Idempotent. An existing table that differs raises :class:`SchemaMismatchError` listing
        every difference, unless the only differences are new nullable columns and ``migrate``
        is true, in which case they are added (``ALTER TABLE ... ADD``). Returns the qualified
        names of the tables created or migrated.
        """
        specs = tables_in(items)
        for spec in specs:
            self.register(spec)
        from limsync.pipeline.graph import load_order  # local: graph imports nothing of ours

        ordered = [s for s in load_order(self.specs) if s in specs]
        changed: list[str] = []
        with self.transaction() as conn:
            schemas = {name for s in ordered if (name := self.physical(s)[0]) is not None}
            for schema in sorted(schemas):
                self._create_schema(conn, schema)
        for spec in ordered:
            with self.transaction() as conn:
                if self._exists(conn, spec):
                    if self._check(conn, spec, migrate):
                        changed.append(spec.qualname)
                else:
                    self.table(spec).create(conn)
                    changed.append(spec.qualname)
        return changed

    def _create_schema(self, conn: sa.Connection, schema: str) -> None:
        if self.dialect == "mysql":
            conn.exec_driver_sql(
                f"CREATE DATABASE IF NOT EXISTS {self.quote(schema)} "
                "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            )
        elif self.dialect == "postgresql":
            conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {self.quote(schema)}")

    def _exists(self, conn: sa.Connection, spec: TableSpec) -> bool:
        schema, name = self.physical(spec)
        return bool(sa.inspect(conn).has_table(name, schema=schema))

    def _check(self, conn: sa.Connection, spec: TableSpec, migrate: bool) -> bool:
        schema, name = self.physical(spec)
        existing = reflect.reflect_table(
            conn,
            schema,
            name,
            logical_schema=spec.schema,
            logical_parent=self._logical_name,
            name=spec.name,
        )
        diffs = reflect.differences(spec, existing, self.dialect)
        if not diffs:
            return False
        have = set(existing.column_names)
        addable = [c for c in spec.columns if c.name not in have and c.nullable and not c.in_key]
        # Each addable column accounts for exactly one difference ("column x is missing").
        if migrate and len(addable) == len(diffs):
            self._add_columns(conn, spec, addable)
            return True
        raise SchemaMismatchError(spec.qualname, diffs)

    def _add_columns(self, conn: sa.Connection, spec: TableSpec, columns: list[ColumnSpec]) -> None:
        """``ALTER TABLE ... ADD COLUMN`` for new nullable columns, with comment and default."""
        table = self.table(spec)
        dialect = self.engine.dialect
        for col in columns:
            coltype = table.c[col.name].type
            if isinstance(coltype, postgresql.ENUM):
                coltype.create(conn, checkfirst=True)  # a new enum needs its type first
            sql = (
                f"ALTER TABLE {self.qualified(spec)} "
                f"ADD COLUMN {self.quote(col.name)} {coltype.compile(dialect=dialect)}"
            )
            default = ddl.server_default(col, self.dialect)
            if isinstance(default, str):
                sql += f" DEFAULT {self._literal(default)}"
            elif default is not None:
                sql += f" DEFAULT {default.text}"
            sql += " NULL"
            comment = self._literal(ddl.column_comment(col, self.dialect))
            if self.dialect == "mysql":
                sql += f" COMMENT {comment}"
            self._execute_ddl(conn, sql)
            if self.dialect == "postgresql":
                self._execute_ddl(
                    conn,
                    f"COMMENT ON COLUMN {self.qualified(spec)}.{self.quote(col.name)} IS {comment}",
                )

    def _literal(self, value: str) -> str:
        """A SQL string literal, escaped the way this dialect reads it."""
        text = value.replace("'", "''")
        if self.dialect == "mysql":
            text = text.replace("\\", "\\\\")  # backslash escapes are on by default there
        return f"'{text}'"

    def _execute_ddl(self, conn: sa.Connection, sql: str) -> None:
        # The drivers of MySQL and PostgreSQL read "%" as a parameter marker.
        if self.dialect != "sqlite":
            sql = sql.replace("%", "%%")
        conn.exec_driver_sql(sql)

    def _logical_schema(self, physical: str) -> str:
        """The pipeline schema of a physical database/schema (the prefix removed)."""
        if self.schema_prefix and physical.startswith(self.schema_prefix):
            return physical[len(self.schema_prefix) :]
        return physical

    def _split_physical(self, schema: str | None, table: str) -> tuple[str, str]:
        """(physical schema, table name) of a table as SQLAlchemy's inspector names it."""
        if self.dialect == "sqlite":
            physical, _, name = table.rpartition(".")
            return physical, name
        return schema or "", table

    def _logical_name(self, schema: str | None, table: str) -> str:
        physical, name = self._split_physical(schema, table)
        return f"{self._logical_schema(physical)}.{name}"

    def reflect(self, schema: str, table: str, *, physical: bool = False) -> TableSpec:
        """Read an existing table (e.g. one a DataJoint pipeline declared) to write into it.

        ``schema`` is the logical pipeline schema (the prefix is added), or with
        ``physical=True`` the exact database/schema name. Parents are reflected too, so the
        table's foreign keys resolve, wherever they live.
        """
        db_schema = schema if physical else self.physical_schema(schema)
        parents: dict[str, str] = {}  # logical name of each parent -> its physical schema

        def logical_parent(sql_schema: str | None, sql_table: str) -> str:
            parent_schema, parent_name = self._split_physical(sql_schema, sql_table)
            qualname = f"{self._logical_schema(parent_schema)}.{parent_name}"
            parents[qualname] = parent_schema
            return qualname

        sql_schema, sql_name = (
            (None, f"{db_schema}.{table}") if self.dialect == "sqlite" else (db_schema, table)
        )
        logical_schema = self._logical_schema(db_schema)
        with self.engine.connect() as conn:
            spec = reflect.reflect_table(
                conn,
                sql_schema,
                sql_name,
                logical_schema=logical_schema,
                logical_parent=logical_parent,
                name=table,
            )
        if db_schema != self.physical_schema(logical_schema):
            spec.database_schema = db_schema  # outside the prefix: keep the exact name
        existing = self._specs.get(spec.qualname)
        if existing is not None and existing.declared:
            return existing
        self.register(spec)
        for fk in spec.foreign_keys:
            if fk.parent not in self._specs:
                self.reflect(parents[fk.parent], fk.parent.split(".", 1)[1], physical=True)
        return spec

    # -- transactions and reads -------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        """A connection in a transaction: committed on success, rolled back on error."""
        try:
            with (
                self.engine.connect().execution_options(limsync_write=True) as conn,
                conn.begin(),
            ):
                yield conn
        except sa.exc.OperationalError as exc:
            if _is_connect_error(exc):
                raise DatabaseUnreachableError(
                    f"cannot connect to database {safe_url(self.url)}: {_driver_message(exc)}"
                ) from None
            raise DatabaseError(f"database {safe_url(self.url)}: {_driver_message(exc)}") from exc

    def fetch(
        self,
        table: type[Table] | TableSpec,
        *,
        order_by_key: bool = True,
        conn: sa.Connection | None = None,
    ) -> list[dict[str, Any]]:
        """Every row of a table, decoded to Python values (for tests, the CLI and small tables)."""
        spec = table if isinstance(table, TableSpec) else table.spec
        cols = ", ".join(self.select_column(spec, c) for c in spec.column_names)
        order = ""
        if order_by_key:
            order = " ORDER BY " + ", ".join(self.quote(c) for c in spec.primary_key)
        sql = f"SELECT {cols} FROM {self.qualified(spec)}{order}"  # noqa: S608 (quoted identifiers)
        codecs = self.codecs(spec)
        with contextlib.ExitStack() as stack:
            c = conn or stack.enter_context(self.engine.connect())
            rows = c.exec_driver_sql(sql).fetchall()
        return [
            {
                name: codec.decode(v)
                for name, codec, v in zip(spec.column_names, codecs, r, strict=True)
            }
            for r in rows
        ]

    def count(self, table: type[Table] | TableSpec, conn: sa.Connection | None = None) -> int:
        """Number of rows in a table."""
        spec = table if isinstance(table, TableSpec) else table.spec
        sql = f"SELECT COUNT(*) FROM {self.qualified(spec)}"  # noqa: S608
        with contextlib.ExitStack() as stack:
            c = conn or stack.enter_context(self.engine.connect())
            return int(c.exec_driver_sql(sql).scalar_one())

    def drop_schemas(self, schemas: Iterable[str]) -> None:
        """Drop whole pipeline schemas (physical names). For tests and ``limsync demo``.

        Schemas may reference each other; the order they are given in does not matter.
        """
        schemas = list(schemas)
        with self.engine.begin() as conn:
            if self.dialect == "mysql":
                conn.exec_driver_sql("SET SESSION foreign_key_checks = 0")
                try:
                    for schema in schemas:
                        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {self.quote(schema)}")
                finally:
                    conn.exec_driver_sql("SET SESSION foreign_key_checks = 1")
            elif self.dialect == "postgresql":
                for schema in schemas:
                    conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {self.quote(schema)} CASCADE")
            else:
                # PRAGMA foreign_keys cannot change inside a transaction: drop every table of
                # the schemas children first instead.
                prefixes = tuple(f"{schema}." for schema in schemas)
                ordered = sa.inspect(conn).get_sorted_table_and_fkc_names()
                for name, _ in reversed(ordered):
                    if name is not None and name.startswith(prefixes):
                        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {self.quote(name)}")

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def _create_engine(url: sa.URL, dialect: Dialect, options: dict[str, Any]) -> sa.Engine:
    if dialect == "sqlite":
        engine = sa.create_engine(url, **options)

        @sa.event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
            # Take transactions into our own hands (pysqlite's implicit BEGIN is deferred, which
            # lets two writers deadlock on the lock upgrade); WAL lets readers run beside the
            # writer; foreign keys are off by default in SQLite.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            # 64 MiB of page cache instead of 2: the ledger's and outbox's indexes outgrow 2 MiB
            # after ~100,000 records, and every batch then rereads B-tree pages.
            cur.execute("PRAGMA cache_size=-65536")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _sqlite_begin(conn: sa.Connection) -> None:
            # Writers take the write lock up front (no deadlock on lock upgrade); readers start
            # a deferred transaction, so they never wait for a writer under WAL.
            write = conn.get_execution_options().get("limsync_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    if dialect == "mysql":
        connect_args = {
            "charset": "utf8mb4",
            # Strict mode: a bad value is an error, never a silent truncation; UTC sessions.
            "init_command": "SET SESSION sql_mode='STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION',"
            " time_zone='+00:00'",
            "connect_timeout": 10,
        }
        connect_args.update(options.pop("connect_args", {}))
        return sa.create_engine(
            url, pool_pre_ping=True, pool_recycle=3600, connect_args=connect_args, **options
        )
    # No server-side prepared statements: after five runs psycopg would prepare a statement, and
    # PostgreSQL may then switch it to a generic plan, where ``key = ANY($1)`` compares every row
    # with every array element (50 ms instead of 1 ms for 1,000 keys) instead of hashing them.
    connect_args = {
        "connect_timeout": 10,
        "prepare_threshold": None,
        **options.pop("connect_args", {}),
    }
    return sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args, **options)


def _is_connect_error(exc: sa.exc.OperationalError) -> bool:
    text = str(exc.orig).lower()
    return any(
        s in text
        for s in (
            "can't connect",
            "connection refused",
            "access denied",
            "password authentication failed",
            "could not connect",
            "unable to open database",
            "unknown database",
            "does not exist",
            "timed out",  # MySQL connect timeout (not "Lock wait timeout exceeded")
            "timeout expired",  # PostgreSQL connect timeout (not a statement timeout)
        )
    )


def _driver_message(exc: sa.exc.DBAPIError) -> str:
    return str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)


def quoted_list(db: Database, names: Sequence[str]) -> str:
    """``"a", "b"`` quoted for ``db``."""
    return ", ".join(db.quote(n) for n in names)
