"""The one exception tree of limsync.

Every error a user can cause is a :class:`LimsyncError`. Its message says *what* went wrong and
*where* (file and key, table and column, URL and status), so that the CLI can print it as a single
line. ``exit_code`` is what the CLI exits with: 2 for usage or configuration errors, 1 for
failures while running.

Messages never contain secrets: URLs are shown without credentials and settings values marked
secret are never formatted into a message.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any


class LimsyncError(Exception):
    """Base of every error limsync raises on purpose."""

    exit_code: int = 1


# --- configuration and declarations -------------------------------------------------------------


class ConfigError(LimsyncError):
    """The configuration file or environment is invalid (exit code 2)."""

    exit_code = 2


class DeclarationError(LimsyncError):
    """A table, connector or stream declaration is invalid; raised when the class is defined."""

    exit_code = 2


# --- the database side ----------------------------------------------------------------------------


class DatabaseError(LimsyncError):
    """The database refused an operation or could not be reached."""


class DatabaseUnreachableError(DatabaseError):
    """The database server could not be reached or refused the credentials."""

    exit_code = 2


class SchemaMismatchError(DatabaseError):
    """An existing table does not match its declaration; ``differences`` lists each mismatch."""

    exit_code = 2

    def __init__(self, table: str, differences: list[str]) -> None:
        self.table = table
        self.differences = differences
        lines = "\n".join(f"  - {d}" for d in differences)
        super().__init__(f"table {table} exists but differs from its declaration:\n{lines}")


def _shown(value: Any) -> str:
    """A key value for a message: dates and times as their text (``'2020-03-01 09:30:00'``,
    not ``datetime.datetime(2020, 3, 1, 9, 30)``), anything else as its repr."""
    if isinstance(value, dt.date | dt.time):
        return repr(str(value))
    return repr(value)


class RowError(DatabaseError):
    """A row cannot be written: invalid value, over-long string, missing parent, ...

    ``table`` is the qualified table name, ``key`` the row's primary key (as a dict, as far as it
    is known) and ``column`` the offending column when there is one.
    """

    def __init__(
        self,
        table: str,
        key: Mapping[str, Any] | None,
        column: str | None,
        problem: str,
    ) -> None:
        self.table = table
        self.key = dict(key) if key else {}
        self.column = column
        self.problem = problem
        where = f"table {table}"
        if self.key:
            where += " key " + ", ".join(f"{k}={_shown(v)}" for k, v in self.key.items())
        if column:
            where += f" column {column}"
        super().__init__(f"{where}: {problem}")


class MissingParentError(RowError):
    """A row references a parent row that does not exist (a foreign-key violation)."""


class DeleteRefusedError(DatabaseError):
    """A delete was refused, e.g. because it exceeds the configured threshold."""


class LockHeldError(DatabaseError):
    """Another process holds the writer lock for this connector."""

    def __init__(self, name: str, holder: str | None = None) -> None:
        self.name = name
        self.holder = holder
        by = f" by {holder}" if holder else ""
        super().__init__(f"lock {name!r} is held{by}; another sync of it is running")


class BlobFormatError(DatabaseError):
    """A value cannot be packed into, or bytes cannot be unpacked from, DataJoint's blob format.

    Raised for values of unsupported types (object arrays, dicts, float16, ...) and for blob
    bytes that are corrupt, truncated, or hold a structure limsync does not read.
    """


# --- the source side ------------------------------------------------------------------------------


class SourceError(LimsyncError):
    """A LIMS source failed: HTTP errors, unreadable files, bad pages."""


class SourceUnreachableError(SourceError):
    """The source could not be reached at all (DNS, refused connection, timeouts after retries)."""


class HTTPStatusError(SourceError):
    """The server answered with an error status. ``url`` never carries credentials."""

    def __init__(self, method: str, url: str, status: int, detail: str) -> None:
        self.method = method
        self.url = url
        self.status = status
        self.detail = detail
        super().__init__(f"{method} {url} failed with HTTP {status}: {detail}")


class AuthenticationError(HTTPStatusError):
    """The source refused our credentials (exit code 2: fix the configuration)."""

    exit_code = 2


class PaginationError(SourceError):
    """Pagination did not terminate or returned an inconsistent page."""


class RecordError(SourceError):
    """A source record is malformed (invalid against its source model)."""


# --- the engine -----------------------------------------------------------------------------------


class SyncError(LimsyncError):
    """A sync run failed as a whole (one or more streams failed)."""


class PopulateError(LimsyncError):
    """A populate run could not proceed (as opposed to a ``make`` error, which is recorded)."""


class RestrictionError(PopulateError):
    """A populate restriction names a column that no key-source table has (a usage error)."""

    exit_code = 2
