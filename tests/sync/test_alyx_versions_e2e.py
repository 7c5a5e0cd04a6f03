"""Alyx sessions of the lookback window: skipped when unchanged, fetched when not, end to end.

A fake Alyx on 127.0.0.1 serves a colony whose every session lies in the changed-since window
(a ten-year lookback), synced into SQLite, MariaDB and PostgreSQL. The server's request
counters say what the connector asked for: an unchanged re-sync must fetch no session detail
and list no session summary (the server's count of sessions agrees with the ledger's), and
every kind of change inside the window, a deletion and an import with an old stamp must still
be found and land.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import pytest

from limsync.config.settings import Settings
from limsync.connectors.alyx.filters import excluding_slices
from limsync.pipeline.database import Database
from limsync.sync.maps import alyx as ibl
from limsync.sync.report import SyncReport
from limsync.sync.runner import sync
from limsync.testing import Colony, FakeAlyx

PAGE = 50
LOOKBACK_DAYS = 3650  # every generated session lies in the window
DETAIL = "GET /sessions/{key}"


def settings(db_url: str, prefix: str, url: str) -> Settings:
    """One Alyx instance named ``alyx`` with a lookback that covers every session."""
    section: dict[str, Any] = {
        "type": "alyx",
        "base_url": url,
        "username": FakeAlyx.DEFAULT_USERNAME,
        "password": FakeAlyx.DEFAULT_PASSWORD,
        "rate_limit_per_minute": None,
        "page_size": PAGE,
        "streams": {"sessions": {"lookback": f"P{LOOKBACK_DAYS}D"}},
    }
    return Settings(database_url=db_url, schema_prefix=prefix, connectors={"alyx": section})


def run(cfg: Settings, db: Database) -> SyncReport:
    [report] = sync(cfg, db=db)
    assert report.ok, report.first_error()
    return report


def sessions_report(report: SyncReport) -> Any:
    return next(s for s in report.streams if s.stream == "sessions")


def list_pages(colony: Colony, page: int) -> int:
    """List pages the colony's streams need at ``page`` a page, computed from the colony:
    nickname-keyed streams are read lab by lab, after one page of labs each."""
    labs = list(colony.table("lab").values())
    subject_lab = {s.id: s.lab for s in colony.table("subject").values()}
    pages = 0
    for kind in ("lab", "user", "project", "procedure", "watertype", "subject", "session"):
        pages += max(1, math.ceil(colony.count(kind) / page))
    for kind in ("weighing", "wateradmin", "waterrestriction", "surgery"):
        per_lab = Counter(subject_lab.get(r.subject) for r in colony.table(kind).values())
        pages += 1 + sum(max(1, math.ceil(per_lab.get(lab.id, 0) / page)) for lab in labs)
    return pages


def window_slices(colony: Colony, url: str) -> int:
    """Requests of the changed-since query when every session's auto_datetime is held: the
    window from the newest stamp minus the lookback, cut so each request line fits."""
    stamps = [datetime.fromisoformat(s.auto_datetime) for s in colony.table("session").values()]
    since = max(stamps) - timedelta(days=LOOKBACK_DAYS)
    held = [s.isoformat() for s in stamps]
    return len(excluding_slices("auto_datetime", since, held, f"{url}/sessions"))


def narrative(db: Database, session_id: str) -> str:
    rows = [r for r in db.fetch(ibl.Session) if str(r["session_uuid"]) == session_id]
    assert len(rows) == 1
    return str(rows[0]["session_narrative"])


@pytest.fixture
def colony() -> Colony:
    """160 sessions: their held stamps need two request lines, so the query is sliced."""
    return Colony.generate(
        seed=5, n_subjects=80, sessions_per_subject=2, weighings_per_subject=1,
        water_admins_per_subject=1,
    )  # fmt: skip


@pytest.fixture
def alyx(colony: Colony) -> Iterator[FakeAlyx]:
    with FakeAlyx(colony) as server:
        yield server


def test_an_unchanged_resync_fetches_no_detail_and_lists_no_session_summary(
    db: Database, db_url: str, schema_prefix: str, colony: Colony, alyx: FakeAlyx
) -> None:
    cfg = settings(db_url, schema_prefix, alyx.url)
    first = run(cfg, db)
    assert sessions_report(first).new == colony.count("session")
    # Each detail is read, then read once more after the last to check it did not change
    # while the others were read (every session lies in the window).
    assert alyx.requests_by_route[DETAIL] == 2 * colony.count("session")
    slices = window_slices(colony, alyx.url)
    assert slices == 2

    alyx.reset_counters()
    second = run(cfg, db)

    routes = alyx.requests_by_route
    assert routes[DETAIL] == 0
    sess = sessions_report(second)
    assert (sess.read, sess.new, sess.changed, sess.gone) == (0, 0, 0, 0)
    assert db.count(ibl.Session) == colony.count("session")
    assert (routes["POST /auth-token"], routes["GET /api/schema"]) == (1, 1)
    # The server's count matched the ledger's: no session summary was listed, one request
    # asked for the count, and the rest are the other streams' list pages.
    session_pages = math.ceil(colony.count("session") / PAGE)
    assert session_pages > 1
    assert alyx.requests == list_pages(colony, PAGE) - session_pages + slices + 1 + 2
    queries = session_lists(alyx)
    assert [q["limit"] for q in queries if "django" not in q] == [["1"]]
    assert session_summaries_listed(alyx) == 0
    # The slices leave out held stamps and return nothing: one request each.
    changed = [r for r in alyx.request_log if "auto_datetime__gte" in r.query]
    assert len(changed) == slices
    assert all("~auto_datetime__in" in r.query and r.status == 200 for r in changed)


def session_lists(alyx: FakeAlyx) -> list[dict[str, list[str]]]:
    """The query of every request of the session list since the counters were reset."""
    return [parse_qs(r.query) for r in alyx.request_log if r.path == "/sessions"]


def session_summaries_listed(alyx: FakeAlyx) -> int:
    """Pages of the whole session list (not the changed-since query, not the count)."""
    return sum(1 for q in session_lists(alyx) if "django" not in q and q.get("limit") != ["1"])


def test_a_deleted_session_makes_the_counts_differ_and_the_whole_list_is_read(
    db: Database, db_url: str, schema_prefix: str, colony: Colony, alyx: FakeAlyx
) -> None:
    cfg = settings(db_url, schema_prefix, alyx.url)
    run(cfg, db)
    gone = colony.ids("session")[7]
    colony.delete_session(gone)

    alyx.reset_counters()
    report = run(cfg, db)

    assert sessions_report(report).gone == 1
    assert session_summaries_listed(alyx) == math.ceil(colony.count("session") / PAGE)
    alyx.reset_counters()
    # Flagged gone, it is no longer among the ledger's present sessions: the counts agree again.
    assert sessions_report(run(cfg, db)).gone == 0
    assert session_summaries_listed(alyx) == 0


def test_a_session_imported_with_an_old_stamp_is_found_by_the_whole_list(
    db: Database, db_url: str, schema_prefix: str, colony: Colony, alyx: FakeAlyx
) -> None:
    cfg = settings(db_url, schema_prefix, alyx.url)
    run(cfg, db)
    # Stamped long before the changed-since window, as a raw import (loaddata) would keep it.
    oldest = min(datetime.fromisoformat(s.auto_datetime) for s in colony.table("session").values())
    colony.now = oldest - timedelta(days=2 * LOOKBACK_DAYS)
    subject = colony.record("session", colony.ids("session")[0]).subject
    imported = colony.add_session(subject, narrative="imported")["id"]

    alyx.reset_counters()
    report = run(cfg, db)

    assert sessions_report(report).new == 1
    assert narrative(db, imported) == "imported"
    assert session_summaries_listed(alyx) == math.ceil(colony.count("session") / PAGE)


def test_full_session_list_reads_the_whole_list_every_time(
    db: Database, db_url: str, schema_prefix: str, colony: Colony, alyx: FakeAlyx
) -> None:
    cfg = settings(db_url, schema_prefix, alyx.url)
    cfg.connectors["alyx"]["full_session_list"] = True
    run(cfg, db)
    alyx.reset_counters()
    report = run(cfg, db)
    assert (sessions_report(report).read, alyx.requests_by_route[DETAIL]) == (0, 0)
    assert session_summaries_listed(alyx) == math.ceil(colony.count("session") / PAGE)


def test_every_change_in_the_window_is_fetched_and_lands(
    db: Database, db_url: str, schema_prefix: str, colony: Colony, alyx: FakeAlyx
) -> None:
    cfg = settings(db_url, schema_prefix, alyx.url)
    run(cfg, db)
    ids = colony.ids("session")
    cursor = max(datetime.fromisoformat(colony.record("session", s).auto_datetime) for s in ids)
    colony.now = cursor + timedelta(hours=1)

    colony.modify_session(ids[0], narrative="edited in the window")
    # A late commit: stamped an hour before the cursor, visible only now.
    colony.now = cursor - timedelta(hours=1)
    colony.modify_session(ids[1], narrative="committed late")
    colony.now = cursor + timedelta(hours=2)
    colony.modify_session(ids[2], narrative="first edit")
    colony.modify_session(ids[2], narrative="second edit")
    subject = colony.record("session", ids[3]).subject
    added = colony.add_session(subject, narrative="brand new")["id"]

    alyx.reset_counters()
    report = run(cfg, db)

    sess = sessions_report(report)
    assert (sess.new, sess.changed, sess.quarantined) == (1, 3, 0)
    fetched = Counter(r.path.rsplit("/", 1)[1] for r in alyx.request_log
                      if r.path.count("/") == 2 and r.path.startswith("/sessions/"))  # fmt: skip
    assert fetched == {s: 2 for s in (ids[0], ids[1], ids[2], added)}  # read, then checked
    assert narrative(db, ids[0]) == "edited in the window"
    assert narrative(db, ids[1]) == "committed late"
    assert narrative(db, ids[2]) == "second edit"
    assert narrative(db, added) == "brand new"

    # Modified again after it was stored, with a stamp older than the one held (a late
    # commit once more): a different auto_datetime, so it is fetched again.
    colony.now = cursor - timedelta(hours=2)
    colony.modify_session(ids[2], narrative="third edit, committed late")
    alyx.reset_counters()
    report = run(cfg, db)
    assert (sessions_report(report).changed, alyx.requests_by_route[DETAIL]) == (1, 2)
    assert narrative(db, ids[2]) == "third edit, committed late"

    alyx.reset_counters()
    run(cfg, db)
    assert alyx.requests_by_route[DETAIL] == 0
