"""Tests for populate's worker processes: shared work, no key twice, dead workers taken over."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import populate_tables
import pytest
import sqlalchemy as sa
from populate_tables import Item, ItemDone, derived, upstream

from limsync.pipeline import Database, state, upsert
from limsync.pipeline.populate import backlog, populate
from limsync.pipeline.populate import run as run_mod

HERE = Path(__file__).parent


N = 300  # keys: enough for several chunks per worker
MANY = 2_000  # keys of the four-worker test (the figure)


@pytest.fixture
def items(db: Database) -> Database:
    """``N`` upstream keys."""
    db.declare(upstream, derived)
    with db.transaction() as conn:
        upsert(db, conn, Item, [{"item_id": i} for i in range(N)])
    return db


def test_four_workers_make_every_key_exactly_once(
    items: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The make is trivial: without this, the calling process would do it all alone.
    monkeypatch.setattr(run_mod, "SPAWN_AFTER_SECONDS", 0.0)
    log = tmp_path / "makes.log"
    # Set after an earlier test may have started the fork server: workers must still see it.
    monkeypatch.setenv("LIMSYNC_TEST_MAKE_LOG", str(log))
    with items.transaction() as conn:
        upsert(items, conn, Item, [{"item_id": i} for i in range(N, MANY)])
    seen: list[int] = []
    report = populate(items, [ItemDone], workers=4, progress=lambda _t, m, _f, _n: seen.append(m))
    assert report.ok and report.tables[0].made == MANY and report.tables[0].processes == 4
    calls = Counter(log.read_text().splitlines())
    assert set(calls) == {f"ItemDone {i}" for i in range(MANY)} and set(calls.values()) == {1}
    assert items.count(ItemDone) == MANY and items.count(ItemDone.Copy) == MANY
    assert sum(seen) == MANY
    assert backlog(items)["tables"] == {}


def test_an_interrupted_caller_stops_its_workers_and_the_next_run_finishes(
    items: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run_mod, "SPAWN_AFTER_SECONDS", 0.0)
    monkeypatch.setattr(populate_tables, "_interrupt_countdown", [20])  # in its second chunk
    monkeypatch.setenv("LIMSYNC_TEST_INTERRUPT_PID", str(os.getpid()))
    stopped: list[int] = []
    stop = run_mod._Helpers.stop

    def counting_stop(self: Any) -> None:
        stopped.append(len(self.procs))
        stop(self)

    monkeypatch.setattr(run_mod._Helpers, "stop", counting_stop)
    with pytest.raises(KeyboardInterrupt):
        populate(items, [ItemDone], workers=4)
    assert stopped == [3]  # the three others had started, and were ended, not waited for
    assert multiprocessing.active_children() == []
    report = populate(items, [ItemDone])
    assert report.ok and items.count(ItemDone) == N and items.count(ItemDone.Copy) == N
    assert backlog(items)["tables"] == {}


def test_extra_workers_start_only_when_the_work_left_is_worth_it(items: Database) -> None:
    report = populate(items, [ItemDone], workers=4)
    assert report.ok and report.tables[0].made == N
    assert report.tables[0].processes == 1


def _run_worker(db: Database, tmp_path: Path, hang: int) -> tuple[subprocess.Popen[bytes], Path]:
    started = tmp_path / "started"
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from populate_tables import ItemDone\n"
        "from limsync.pipeline import Database\n"
        "from limsync.pipeline.populate import populate\n"
        "db = Database(sys.argv[2], schema_prefix=sys.argv[3])\n"
        "populate(db, [ItemDone])\n"
    )
    env = {**os.environ, "LIMSYNC_TEST_HANG": str(hang), "LIMSYNC_TEST_HANG_STARTED": str(started)}
    url = db.url.render_as_string(hide_password=False)
    proc = subprocess.Popen([sys.executable, "-c", code, str(HERE), url, db.schema_prefix], env=env)
    deadline = time.monotonic() + 60
    while not started.exists():
        assert proc.poll() is None, "the worker ended before reaching the hanging key"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return proc, started


def _kill(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_a_killed_worker_leaves_no_partial_rows_and_its_key_is_taken_over(
    items: Database, tmp_path: Path
) -> None:
    db = items
    proc, _ = _run_worker(db, tmp_path, hang=N - 50)
    _kill(proc)
    # The hanging key and the rest of its chunk were never written, parts neither.
    done = {r["item_id"] for r in db.fetch(ItemDone)}
    parts = {r["item_id"] for r in db.fetch(ItemDone.Copy)}
    assert N - 50 not in done and done == parts
    st = state.ensure(db)
    with db.engine.connect() as conn:
        reserved = conn.execute(
            sa.select(sa.func.count()).where(st.job.c.status == "reserved")
        ).scalar_one()
    assert reserved > 0  # the dead worker's reservation is still there
    # Another worker on this host sees the pid is dead and takes the keys over at once.
    report = populate(db, [ItemDone])
    assert report.ok and db.count(ItemDone) == N and db.count(ItemDone.Copy) == N


def test_an_expired_reservation_of_another_host_is_taken_over(
    items: Database, tmp_path: Path
) -> None:
    db = items
    proc, _ = _run_worker(db, tmp_path, hang=7)
    _kill(proc)
    st = state.ensure(db)
    j = st.job
    with db.transaction() as conn:
        # As if the worker ran elsewhere: its pid means nothing here, only the expiry counts.
        held = conn.execute(
            j.update().where(j.c.status == "reserved").values(host="elsewhere")
        ).rowcount
    assert held > 0
    populate(db, [ItemDone])
    assert db.count(ItemDone) == N - held  # still reserved, not expired: left alone
    assert 7 not in {r["item_id"] for r in db.fetch(ItemDone)}
    with db.transaction() as conn:
        conn.execute(
            j.update()
            .where(j.c.status == "reserved")
            .values(expires_at=state.utcnow() - dt.timedelta(seconds=1))
        )
    report = populate(db, [ItemDone])
    assert report.ok and report.tables[0].made == held and db.count(ItemDone) == N
