"""The changed-sessions query that leaves out held ``auto_datetime`` values, against the fake.

The connector reads a :class:`FakeAlyx` on 127.0.0.1, which evaluates ``?django=`` lookups as
Django would and answers an overlong request line with gunicorn's 400.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import requests

from limsync.connectors import Key, ReadContext
from limsync.connectors.alyx import AlyxConnector, AlyxSettings
from limsync.connectors.alyx.filters import MAX_REQUEST_LINE, FilterGuard, excluding_slices
from limsync.errors import SourceError
from limsync.testing import Colony, FakeAlyx
from limsync.testing.alyx.filters import build_query

DETAIL = "GET /sessions/{key}"


@pytest.fixture(scope="module")
def colony() -> Colony:
    """300 sessions: more held stamps than one request line can exclude."""
    return Colony.generate(seed=3, n_subjects=150, sessions_per_subject=2)


@pytest.fixture
def alyx(colony: Colony) -> Iterator[FakeAlyx]:
    with FakeAlyx(colony) as server:
        yield server


def stamps(colony: Colony) -> dict[str, str]:
    """session id -> auto_datetime, as the connector's cursor_value normalises it."""
    return {
        s: datetime.fromisoformat(colony.record("session", s).auto_datetime).isoformat()
        for s in colony.ids("session")
    }


def connector(alyx: FakeAlyx) -> AlyxConnector:
    settings = AlyxSettings(
        base_url=alyx.url,
        username=FakeAlyx.DEFAULT_USERNAME,
        password=FakeAlyx.DEFAULT_PASSWORD,
        rate_limit_per_minute=None,
        page_size=100,
    )
    return AlyxConnector("alyx", settings)


def context(cursor: str, held: set[str], asked: list[str] | None = None) -> ReadContext:
    """An incremental read whose engine holds the versions ``held``."""

    def versions(lower: str) -> set[str]:
        if asked is not None:
            asked.append(lower)
        return {v for v in held if v >= lower}

    def nothing(keys: Any) -> set[Key]:
        return set()

    return ReadContext(full=False, cursor=cursor, known=nothing, versions=versions)


def read_ids(c: AlyxConnector, ctx: ReadContext) -> list[str]:
    return sorted(str(r["id"]) for page in c.read("sessions", ctx) for r in page)


def test_only_sessions_whose_stamp_is_not_held_are_fetched(colony: Colony, alyx: FakeAlyx) -> None:
    by_id = stamps(colony)
    cursor = max(by_id.values())
    since = datetime.fromisoformat(cursor) - timedelta(days=1)
    window = {s for s, v in by_id.items() if datetime.fromisoformat(v) >= since}
    unheld = set(random.Random(1).sample(sorted(window), 3))
    held = {v for s, v in by_id.items() if s not in unheld}
    asked: list[str] = []

    ids = read_ids(connector(alyx), context(cursor, held, asked))

    assert ids == sorted(unheld)
    assert alyx.requests_by_route[DETAIL] == 3
    assert asked and all(lower <= since.isoformat() for lower in asked)
    lines = [f"GET {r.path}?{r.query} HTTP/1.1" for r in alyx.request_log]
    assert all(r.status == 200 for r in alyx.request_log)
    assert max(len(line) for line in lines) <= MAX_REQUEST_LINE


def test_excluding_slices_select_exactly_the_window_less_the_held_stamps(
    colony: Colony, alyx: FakeAlyx
) -> None:
    by_id = stamps(colony)
    ordered = sorted(by_id.values())
    since = datetime.fromisoformat(ordered[len(ordered) // 3])
    rng = random.Random(7)
    window = [v for v in ordered if datetime.fromisoformat(v) >= since]
    held = [v for v in window if rng.random() < 0.9]
    url = f"{alyx.url}/sessions"
    slices = excluding_slices("auto_datetime", since, held, url)
    assert len(slices) > 1  # the held stamps do not fit one request line
    for value in slices:
        params = {"django": value, "limit": 1000, "offset": 9_999_000}
        prepared = requests.Request("GET", url, params=params).prepare()
        target = (prepared.url or "").removeprefix(alyx.url)
        assert len(f"GET {target} HTTP/1.1") <= MAX_REQUEST_LINE
    found: list[str] = []
    for value in slices:
        query = build_query(colony, "session", {"django": [value]})
        found.extend(
            r.id for r in colony.table("session").values() if all(t(r) for t in query.tests)
        )
    expected = [s for s, v in by_id.items() if v in set(window) - set(held)]
    assert sorted(found) == sorted(expected)  # each once: the slices do not overlap


def test_a_refused_filter_falls_back_to_fetching_the_whole_window(
    colony: Colony, caplog: pytest.LogCaptureFixture
) -> None:
    by_id = stamps(colony)
    cursor = max(by_id.values())
    since = datetime.fromisoformat(cursor) - timedelta(days=1)
    window = {s for s, v in by_id.items() if datetime.fromisoformat(v) >= since}
    # A proxy in front with a shorter request line limit refuses the excluding query.
    with FakeAlyx(colony, max_request_line=250) as alyx, caplog.at_level(logging.WARNING):
        ids = read_ids(connector(alyx), context(cursor, set(by_id.values())))
        refused = [r for r in alyx.request_log if r.status == 400]
    assert ids == sorted(window)
    assert refused and all("~auto_datetime__in" in r.query for r in refused)
    assert "listing every session of the window" in caplog.text


def test_without_a_schema_the_whole_window_is_fetched(colony: Colony, alyx: FakeAlyx) -> None:
    by_id = stamps(colony)
    cursor = max(by_id.values())
    since = datetime.fromisoformat(cursor) - timedelta(days=1)
    window = {s for s, v in by_id.items() if datetime.fromisoformat(v) >= since}
    c = connector(alyx)

    def no_schema() -> Any:
        raise SourceError("GET api/schema: 404")

    c.filters = FilterGuard(no_schema)
    ids = read_ids(c, context(cursor, set(by_id.values())))
    assert ids == sorted(window)
    assert not any("~auto_datetime__in" in r.query for r in alyx.request_log)


def test_an_overlong_request_line_gets_gunicorns_400(alyx: FakeAlyx) -> None:
    token = requests.post(
        f"{alyx.url}/auth-token",
        data={"username": FakeAlyx.DEFAULT_USERNAME, "password": FakeAlyx.DEFAULT_PASSWORD},
        timeout=10,
    ).json()["token"]
    headers = {"Authorization": f"Token {token}"}
    target = "/sessions?django=pk__in,[" + ",".join(["'x'"] * 2000) + "]"
    reply = requests.get(alyx.url + target, headers=headers, timeout=10)
    assert reply.status_code == 400
    assert "Request Line is too large" in reply.text
    short = requests.get(f"{alyx.url}/sessions?limit=1", headers=headers, timeout=10)
    assert short.status_code == 200


# --- sessions that change while a read fetches details ------------------------------------------


def racing_read(
    colony: Colony, alyx: FakeAlyx, touch_unread: bool
) -> tuple[list[Key], dict[str, str]]:
    """Read the changed sessions while one transaction stamps two sessions alike mid-read.

    Two sessions of the window changed since they were stored (so both are listed). After the
    first of them is fetched, one update (one stamp, like ``QuerySet.update()``) changes it and
    the second, which is fetched after the commit; with ``touch_unread``, it changes an
    unchanged third session instead of the first. Returns what the connector unheld and the
    three sessions by role.
    """
    by_id = stamps(colony)
    cursor = max(by_id.values())
    since = datetime.fromisoformat(cursor) - timedelta(days=1)
    window = sorted(
        (s for s, v in by_id.items() if datetime.fromisoformat(v) >= since),
        key=lambda s: colony.record("session", s).start_time,
        reverse=True,  # the list's order: the first is fetched first
    )
    first, second, third = window[0], window[-1], window[len(window) // 2]
    colony.now = datetime.fromisoformat(cursor) + timedelta(minutes=1)
    colony.modify_session(first, narrative="changed before the read")
    colony.modify_session(second, narrative="changed before the read")
    held = set(stamps(colony).values()) - {stamps(colony)[first], stamps(colony)[second]}
    racing = {first: False}
    update = datetime.fromisoformat(cursor) + timedelta(minutes=5)

    def commit_after_first(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        if response.url.endswith(f"/sessions/{first}") and not racing[first]:
            racing[first] = True
            for sid in (third if touch_unread else first, second):
                colony.now = update  # one statement: one auto_now stamp for every row
                colony.modify_session(sid, narrative="bulk update")

    session = requests.Session()
    session.hooks["response"].append(commit_after_first)
    c = AlyxConnector(
        "alyx",
        AlyxSettings(
            base_url=alyx.url,
            username=FakeAlyx.DEFAULT_USERNAME,
            password=FakeAlyx.DEFAULT_PASSWORD,
            rate_limit_per_minute=None,
            detail_workers=1,
        ),
        session=session,
    )
    unheld: list[Key] = []
    ctx = context(cursor, held)
    ctx.unhold = unheld.extend
    read_ids(c, ctx)
    assert racing[first]
    return unheld, {"first": first, "second": second, "third": third}


def key_of(sid: str) -> Key:
    return (uuid.UUID(sid),)


def test_a_session_read_before_a_concurrent_update_unholds_the_read() -> None:
    colony = Colony.generate(seed=3, n_subjects=150, sessions_per_subject=2)
    with FakeAlyx(colony) as alyx:
        unheld, role = racing_read(colony, alyx, touch_unread=False)
    # The first was read before the update and the second after it: both are read again.
    assert {key_of(role["first"]), key_of(role["second"])} <= set(unheld)


def test_an_unread_session_of_a_concurrent_update_unholds_the_read() -> None:
    colony = Colony.generate(seed=3, n_subjects=150, sessions_per_subject=2)
    with FakeAlyx(colony) as alyx:
        unheld, role = racing_read(colony, alyx, touch_unread=True)
    # The third shares the second's new stamp without being read: the second is unheld, so
    # that stamp is not left out next time and the third is listed.
    assert key_of(role["second"]) in set(unheld)


def test_without_a_concurrent_update_the_versions_stay_held(colony: Colony, alyx: FakeAlyx) -> None:
    by_id = stamps(colony)
    cursor = max(by_id.values())
    recent = sorted(by_id, key=by_id.__getitem__)[-2:]
    held = {v for s, v in by_id.items() if s not in recent}
    unheld: list[Key] = []
    ctx = context(cursor, held)
    ctx.unhold = unheld.extend
    assert read_ids(connector(alyx), ctx) == sorted(recent)
    assert unheld == []
    # Each read once, checked once; then one listing of their stamps.
    assert alyx.requests_by_route[DETAIL] == 4
    checks = [r for r in alyx.request_log if "auto_datetime__in" in r.query and "~" not in r.query]
    assert len(checks) == 1
