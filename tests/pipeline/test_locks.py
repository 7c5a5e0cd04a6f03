"""Writer locks: one holder at a time, across connections, and the refused one learns who."""

from __future__ import annotations

import os

import pytest

from limsync.errors import LockHeldError
from limsync.pipeline import locks
from limsync.pipeline.database import Database


def test_a_held_lock_refuses_others_and_names_its_holder(db: Database) -> None:
    other = Database(db.url, schema_prefix=db.schema_prefix, state_schema="limsync")
    try:
        with locks.writer_lock(db, "sync:alyx"):
            assert locks.holder(db, "sync:alyx") is not None
            with pytest.raises(LockHeldError) as refused:
                locks.Lock(other, "sync:alyx").acquire()
            assert f"pid {os.getpid()}" in (refused.value.holder or "")
            with locks.writer_lock(other, "sync:pyrat"):  # other names are free
                pass
        assert locks.holder(db, "sync:alyx") is None
        with locks.writer_lock(other, "sync:alyx"):  # released: the other may take it
            pass
    finally:
        other.dispose()
