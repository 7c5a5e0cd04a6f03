"""limsync's bookkeeping tables: created once, however many processes start at the same time."""

from __future__ import annotations

import threading

from limsync.pipeline import state
from limsync.pipeline.database import Database


def test_concurrent_upgrades_of_a_fresh_database_all_succeed(db: Database) -> None:
    """Two daemons started together on an empty database: neither fails on the other's DDL."""
    others = [Database(db.url, schema_prefix=db.schema_prefix, state_schema="limsync")
              for _ in range(4)]  # fmt: skip
    errors: list[BaseException] = []
    start = threading.Barrier(len(others))

    def upgrade(database: Database) -> None:
        try:
            start.wait()
            state.upgrade(database)
        except BaseException as exc:  # collected and reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=upgrade, args=(d,)) for d in others]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for d in others:
            d.dispose()
    assert not errors, errors
    assert state.current_version(db) == state.SCHEMA_VERSION
    assert state.upgrade(db) == (state.SCHEMA_VERSION, state.SCHEMA_VERSION)
