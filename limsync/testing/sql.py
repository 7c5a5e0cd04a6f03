"""What a test can ask of the SQL limsync sends: the statements themselves.

Batching is a promise of limsync's (one multi-row statement per batch, never a round trip per
row), and a connector author's mapping should keep it; :func:`statements` lets a test count.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from limsync.pipeline.database import Database


@contextmanager
def statements(db: Database) -> Iterator[list[str]]:
    """Collect the SQL statements ``db`` sends while the block runs, in order."""
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        sent.append(statement)

    sa.event.listen(db.engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", record)
