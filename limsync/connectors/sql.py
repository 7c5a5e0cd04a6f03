"""The ``sql`` connector: a legacy LIMS database, read through any SQLAlchemy URL.

Each configured stream reads one table or one query, in pages ordered by its key with keyset
pagination (``WHERE (k1, k2) > (:a, :b) ORDER BY k1, k2 LIMIT n``), so memory stays bounded
and a page costs an index range scan however deep into the table it is::

    [connectors.oldlims]
    type = "sql"
    url = "postgresql+psycopg://reader@db.example.org/oldlims"
    [connectors.oldlims.streams.animals]
    table = "animals"
    key = ["animal_id"]

Records are rows as dicts of database values plus ``_source`` (``table animals``); see
:mod:`limsync.connectors.tabular`. The URL (it may hold a password) and ``password`` are
secrets: messages show the URL with the password masked.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Literal, Self

import sqlalchemy as sa
from pydantic import Field, SecretStr, field_validator, model_validator

from limsync.connectors import (
    CheckResult,
    Connector,
    ConnectorSettings,
    Page,
    ReadContext,
    Stream,
)
from limsync.connectors.tabular import (
    INVALID_FIELD,
    SOURCE_FIELD,
    RecordStreamSettings,
    record_model,
)
from limsync.errors import (
    AuthenticationError,
    ConfigError,
    LimsyncError,
    SourceError,
    SourceUnreachableError,
)

__all__ = ["SqlConnector", "SqlSettings", "SqlStreamSettings"]

log = logging.getLogger(__name__)

_NAME_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_$ -]*$")
_AUTH_FAILURES = (
    "access denied",  # MySQL / MariaDB 1045
    "password authentication failed",  # PostgreSQL
    "authentication failed",
    "no password supplied",
)


class SqlStreamSettings(RecordStreamSettings):
    """One ``[connectors.<name>.streams.<stream>]`` of an SQL connector."""

    table: str | None = None
    """A table (``animals`` or ``schema.animals``), reflected when read."""
    query: str | None = None
    """A SELECT; read as ``SELECT * FROM (query) ...`` with the keyset condition around it."""

    @field_validator("table")
    @classmethod
    def _table_name(cls, table: str | None) -> str | None:
        if table is not None:
            parts = table.split(".")
            if len(parts) > 2 or not all(_NAME_PART.match(p) for p in parts):
                raise ValueError("must be a table name or schema.table (letters, digits, _)")
        return table

    @model_validator(mode="after")
    def _table_or_query(self) -> Self:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of table or query")
        if self.query is not None:
            self.query = self.query.strip().rstrip(";").strip()
            if not self.query:
                raise ValueError("query is empty")
        return self


class SqlSettings(ConnectorSettings):
    """Settings of an SQL connector instance (``type = "sql"``)."""

    type: Literal["sql"] = "sql"
    url: SecretStr
    """A SQLAlchemy URL; better set by LIMSYNC_CONNECTORS__<NAME>__URL when it holds a password."""
    password: SecretStr | None = None
    """The password, when not in the URL."""
    page_size: int = Field(5000, ge=1)
    streams: dict[str, SqlStreamSettings] = {}  # type: ignore[assignment]

    @field_validator("url")
    @classmethod
    def _parsable(cls, url: SecretStr) -> SecretStr:
        try:
            sa.engine.make_url(url.get_secret_value())
        except sa.exc.ArgumentError:
            raise ValueError("not a SQLAlchemy URL (dialect+driver://user@host/database)") from None
        return url

    def sa_url(self) -> sa.URL:
        """The URL with the separate password, if any, filled in."""
        url = sa.engine.make_url(self.url.get_secret_value())
        if self.password is not None:
            url = url.set(password=self.password.get_secret_value())
        return url


class DatabaseAuthenticationError(AuthenticationError):
    """The legacy database refused the credentials (an AuthenticationError without HTTP)."""

    def __init__(self, url: str, detail: str) -> None:
        self.method, self.url, self.status, self.detail = "CONNECT", url, 0, detail
        LimsyncError.__init__(self, f"database {url} refused the credentials: {detail}")


class SqlConnector(Connector):
    """Reads configured tables and queries of a database, one stream each."""

    type_name = "sql"
    settings_model: ClassVar[type[ConnectorSettings]] = SqlSettings
    instance_streams = True

    settings: SqlSettings

    @classmethod
    def define_streams(cls, settings: ConnectorSettings) -> Sequence[Stream]:
        """One stream per configured ``streams`` entry; ``_source`` is volatile."""
        assert isinstance(settings, SqlSettings)
        return [
            Stream(
                name,
                conf.table or "(query)",
                record_model(name, conf.key),
                key=tuple(conf.key),
                volatile={SOURCE_FIELD},
                description=f"table {conf.table}" if conf.table else f"query: {conf.query}",
            )
            for name, conf in settings.streams.items()
        ]

    def __init__(self, name: str, settings: ConnectorSettings, *, session: Any = None) -> None:
        super().__init__(name, settings, session=session)
        self._engine: sa.Engine | None = None
        self._tables: dict[str, sa.Table] = {}

    # --- connection -----------------------------------------------------------------------------

    @property
    def safe_url(self) -> str:
        """The URL with the password masked, for messages."""
        return self.settings.sa_url().render_as_string(hide_password=True)

    def open(self) -> None:
        """Connect once, so that a wrong URL or password fails here with a clear message."""
        if self._engine is None:
            try:
                engine = sa.create_engine(self.settings.sa_url(), pool_pre_ping=True)
            except (sa.exc.ArgumentError, ImportError) as exc:
                raise ConfigError(
                    f"connector {self.name!r}: cannot use {self.safe_url}: {exc}"
                ) from None
            try:
                with engine.connect():
                    pass
            except sa.exc.DBAPIError as exc:
                engine.dispose()
                raise self._connect_error(exc) from None
            self._engine = engine
        self._opened = True

    def _connect_error(self, exc: sa.exc.DBAPIError) -> LimsyncError:
        text = str(exc.orig or exc).strip().splitlines()[0]
        for secret in self.secrets():
            text = text.replace(secret, "***")
        if any(marker in text.lower() for marker in _AUTH_FAILURES):
            return DatabaseAuthenticationError(self.safe_url, text)
        return SourceUnreachableError(f"cannot connect to database {self.safe_url}: {text}")

    @property
    def engine(self) -> sa.Engine:
        """The SQLAlchemy engine (connecting on first use)."""
        if self._engine is None:
            self.open()
        assert self._engine is not None
        return self._engine

    def close(self) -> None:
        """Dispose of the connection pool."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        self._tables.clear()
        super().close()

    # --- what a stream selects ------------------------------------------------------------------

    def sql_settings(self, stream: str) -> SqlStreamSettings:
        """The settings of a configured stream."""
        self.stream(stream)
        return self.settings.streams[stream]

    def source_label(self, stream: str) -> str:
        """``_source`` of the stream's records: ``table animals`` or ``query animals``."""
        conf = self.sql_settings(stream)
        return f"table {conf.table}" if conf.table else f"query {stream}"

    def selectable(self, conn: sa.Connection, stream: str) -> tuple[sa.FromClause, bool]:
        """The table (reflected) or the query as a subquery, and whether the key is unique.

        SourceError when the table does not exist, the query fails or a key column is missing.
        """
        conf = self.sql_settings(stream)
        place = f"connectors.{self.name}.streams.{stream}"
        if conf.table is not None:
            schema, _, name = conf.table.rpartition(".")
            if stream not in self._tables:
                try:
                    self._tables[stream] = sa.Table(
                        name, sa.MetaData(), autoload_with=conn, schema=schema or None
                    )
                except sa.exc.NoSuchTableError:
                    raise SourceError(
                        f"{place}.table: no table {conf.table!r} in {self.safe_url}"
                    ) from None
            source: sa.FromClause = self._tables[stream]
            unique = _key_is_unique(self._tables[stream], conf.key)
        else:
            columns = _query_columns(conn, conf.query or "", place)
            textual = sa.text(conf.query or "").columns(*(sa.column(c) for c in columns))
            source = textual.subquery("limsync_q")
            unique = False
        missing = [k for k in conf.key if k not in source.c]
        if missing:
            raise SourceError(
                f"{place}.key: no column {', '.join(map(repr, missing))} in "
                f"{self.source_label(stream)} (columns: {', '.join(source.c.keys())})"
            )
        return source, unique

    # --- reading --------------------------------------------------------------------------------

    def read(self, stream: str, ctx: ReadContext) -> Iterator[Page]:
        """Pages in key order (always a full scan: the engine finds changes by content hash).

        Rows whose key has a NULL come last (they cannot be paged by key, and are quarantined
        for it). When the key is not known to be unique, the rows sharing the last key of a
        page are completed before moving on, so keyset paging skips none of them.
        """
        yield from self._pages(stream, self.page_size(stream))

    def _pages(self, stream: str, size: int, limit: int | None = None) -> Iterator[Page]:
        conf = self.sql_settings(stream)
        label = self.source_label(stream)
        place = f"connectors.{self.name}.streams.{stream}"
        produced = 0
        previous: dict[str, Any] | None = None
        try:
            with self.engine.connect() as conn:
                source, unique = self.selectable(conn, stream)
                keys = [source.c[k] for k in conf.key]
                not_null = sa.and_(*(k.is_not(None) for k in keys))
                last: tuple[Any, ...] | None = None
                while limit is None or produced < limit:
                    q = sa.select(source).where(not_null).order_by(*keys).limit(size)
                    if last is not None:
                        q = q.where(_after(keys, last))
                    rows = [dict(r) for r in conn.execute(q).mappings()]
                    if not rows:
                        break
                    last = tuple(rows[-1][k] for k in conf.key)
                    if not unique and len(rows) == size:
                        rows = [r for r in rows if tuple(r[k] for k in conf.key) != last]
                        same = sa.and_(*(k == v for k, v in zip(keys, last, strict=True)))
                        rows.extend(
                            dict(r) for r in conn.execute(sa.select(source).where(same)).mappings()
                        )
                    page = []
                    for row in rows:
                        row[SOURCE_FIELD] = label
                        _mark_duplicate(previous, row, conf.key)
                        previous = row
                        page.append(row)
                    produced += len(page)
                    yield page
                    if len(rows) < size:
                        break
                if limit is None:
                    null_keys = sa.select(source).where(sa.not_(not_null))
                    result = conn.execute(null_keys.execution_options(yield_per=size))
                    for part in result.mappings().partitions(size):
                        yield [{**r, SOURCE_FIELD: label} for r in part]
        except sa.exc.DBAPIError as exc:
            if exc.connection_invalidated or isinstance(exc, sa.exc.InterfaceError):
                raise self._connect_error(exc) from None
            text = str(exc.orig or exc).strip().splitlines()[0]
            raise SourceError(f"{place}: {label} in {self.safe_url} failed: {text}") from None

    def sample(self, stream: str, limit: int = 1) -> Page:
        """The first ``limit`` rows of a stream in key order."""
        for page in self._pages(stream, limit, limit=limit):
            return page[:limit]
        return []

    def check(self) -> list[CheckResult]:
        """Connection, then per stream: the table exists or the query runs, a row validates."""
        results = [CheckResult("settings", True, f"{len(self.streams)} streams defined")]
        try:
            self.open()
        except LimsyncError as exc:
            results.append(CheckResult("connect", False, str(exc)))
            return results
        results.append(CheckResult("connect", True, self.safe_url))
        for name, decl in self.streams.items():
            label = f"stream {name}"
            if not self.stream_settings(name).enabled:
                results.append(CheckResult(label, True, "disabled"))
                continue
            try:
                rows = self.sample(name)
                for row in rows:
                    decl.model.model_validate(row)
            except LimsyncError as exc:
                results.append(CheckResult(label, False, str(exc)))
            except Exception as exc:  # a stream failure is reported, whatever it is
                results.append(CheckResult(label, False, f"{type(exc).__name__}: {exc}"))
            else:
                what = "table exists" if self.sql_settings(name).table else "query runs"
                results.append(CheckResult(label, True, f"{what}, {len(rows)} row(s) read"))
        return results


def _after(keys: Sequence[sa.ColumnElement[Any]], last: tuple[Any, ...]) -> sa.ColumnElement[bool]:
    """``(k1, k2) > (a, b)`` (row values: SQLite >= 3.15, MySQL, MariaDB, PostgreSQL)."""
    after: sa.ColumnElement[bool]
    if len(keys) == 1:
        after = keys[0] > last[0]
        return after
    after = sa.tuple_(*keys) > sa.tuple_(*(sa.literal(v) for v in last))
    return after


def _key_is_unique(table: sa.Table, key: Sequence[str]) -> bool:
    wanted = set(key)
    if {c.name for c in table.primary_key.columns} == wanted:
        return True
    for constraint in table.constraints:
        if isinstance(constraint, sa.UniqueConstraint) and {c.name for c in constraint.columns} == (
            wanted
        ):
            return True
    return any(ix.unique and {c.name for c in ix.columns} == wanted for ix in table.indexes)


def _query_columns(conn: sa.Connection, query: str, place: str) -> list[str]:
    try:
        # The query is the user's own configured SQL, run as the read-only source user.
        probe = f"SELECT * FROM ({query}) AS limsync_q WHERE 1 = 0"  # noqa: S608
        result = conn.execute(sa.text(probe))
        columns = list(result.keys())
        result.close()
    except sa.exc.DBAPIError as exc:
        conn.rollback()
        text = str(exc.orig or exc).strip().splitlines()[0]
        raise SourceError(f"{place}.query: does not run: {text}") from None
    return columns


def _mark_duplicate(
    previous: dict[str, Any] | None, row: dict[str, Any], key: Sequence[str]
) -> None:
    """Rows come in key order, so a repeated key follows its first row directly."""
    if previous is None or any(previous[k] != row[k] for k in key):
        return
    first = {k: v for k, v in previous.items() if k != INVALID_FIELD}
    if first != {k: v for k, v in row.items() if k != INVALID_FIELD}:
        row[INVALID_FIELD] = "duplicate key with different content (another row has this key)"
