"""Tests for the Alyx connector against responses captured from a real Alyx (fixtures/alyx)."""

from __future__ import annotations

import copy
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pydantic
import pytest
import requests
import responses

from limsync.connectors.alyx import AlyxConnector, AlyxSettings, filters
from limsync.connectors.alyx.filters import FilterGuard, pk_batches, split_django
from limsync.connectors.alyx.models import uuid_from_url, water_restriction_id
from limsync.connectors.base import Key, ReadContext, StreamSettings, nothing_known
from limsync.errors import AuthenticationError, ConfigError, HTTPStatusError

FIXTURES = Path(__file__).parent / "fixtures" / "alyx"
BASE = "https://alyx.test/api"
PASSWORD = "alyx-Pa55word-do-not-leak"
TOKEN = "e76e0ffb6d20b57f7a531ab77dbb9c5bb99651a0"
Reply = tuple[int, dict[str, str], str]


def body(name: str) -> Any:
    return copy.deepcopy(json.loads((FIXTURES / f"{name}.json").read_text())["body"])


def connector(**overrides: Any) -> AlyxConnector:
    values: dict[str, Any] = {
        "base_url": BASE + "/",
        "username": "sync-bot",
        "password": PASSWORD,
        "backoff_factor": 0.0,
        "rate_limit_per_minute": None,
        "max_retries": 2,
        "per_lab_scans": False,  # tests of lab-by-lab reads turn it on
    }
    values.update(overrides)
    return AlyxConnector("alyx", AlyxSettings(**values))


def query(request: requests.PreparedRequest) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(request.url or "").query).items()}


def url_of(call: Any) -> str:
    return str(call.request.url)


def calls_to(path: str) -> list[Any]:
    return [c for c in responses.calls if urlsplit(url_of(c)).path == f"/api/{path}"]


def login(token: str = TOKEN) -> None:
    responses.add(responses.POST, f"{BASE}/auth-token", json={"token": token})


SCHEMA = (FIXTURES / "openapi_schema.json").read_text()  # the live schema, stored unwrapped


def schema(available: bool = True) -> None:
    if available:
        responses.add(
            responses.GET, f"{BASE}/api/schema", body=SCHEMA, content_type="application/json"
        )
    else:
        responses.add(responses.GET, f"{BASE}/api/schema", status=500, json={"detail": "x"})


def listing(
    path: str,
    records: list[dict[str, Any]] | Callable[[dict[str, str]], list[dict[str, Any]]],
    *,
    select: Callable[[dict[str, str], dict[str, Any]], bool] | None = None,
) -> None:
    """A paginated Alyx list endpoint serving ``records`` (optionally filtered).

    ``records`` may be a function of the query, for a listing that differs between queries.
    """

    def callback(request: requests.PreparedRequest) -> Reply:
        q = query(request)
        rows = records(q) if callable(records) else records
        rows = [r for r in rows if select is None or select(q, r)]
        limit, offset = int(q.get("limit", 250)), int(q.get("offset", 0))
        page = rows[offset : offset + limit]
        envelope = {"count": len(rows), "next": None, "previous": None, "results": page}
        return 200, {"Content-Type": "application/json"}, json.dumps(envelope)

    responses.add_callback(responses.GET, f"{BASE}/{path}", callback=callback)


def pk_in(q: dict[str, str], record: dict[str, Any]) -> bool:
    """The server side of ?django=pk__in,[...] (ids from ``id`` or the ``url``)."""
    value = q.get("django")
    if value is None:
        return True
    lookup, literal = split_django(value)
    assert lookup == "pk__in"
    wanted = re.findall(r"'([0-9a-f-]{36})'", literal)
    return (record.get("id") or uuid_from_url(record.get("url"))) in wanted


def ctx(
    full: bool = True,
    cursor: str | None = None,
    known: Iterable[Key] = (),
    seen: list[Key] | None = None,
) -> ReadContext:
    known_set = set(known)
    return ReadContext(
        full=full,
        cursor=cursor,
        known=lambda keys: {k for k in keys if k in known_set},
        seen=seen.extend if seen is not None else None,
    )


def read_all(c: AlyxConnector, stream: str, context: ReadContext | None = None) -> list[Any]:
    return [r for page in c.read(stream, context or ctx()) for r in page]


# --- settings -------------------------------------------------------------------------------------


def test_settings_defaults_and_normalisation() -> None:
    s = AlyxSettings(base_url="https://alyx.example.org/api/", username="u", password=PASSWORD)
    assert s.base_url == "https://alyx.example.org/api"
    assert s.rate_limit_per_minute == 500 and s.page_size == 250 and s.session_details
    assert PASSWORD not in repr(s) and PASSWORD not in str(s.model_dump())
    with pytest.raises(pydantic.ValidationError):
        AlyxSettings(base_url="https://a.org", username="u", password="p", page_size=5000)
    with pytest.raises(pydantic.ValidationError, match="password or token"):
        AlyxSettings(base_url="https://a.org", username="u")
    with pytest.raises(pydantic.ValidationError, match="credentials"):
        AlyxSettings(base_url="https://u:pw@a.org", username="u", password="p")
    with pytest.raises(pydantic.ValidationError, match="http"):
        AlyxSettings(base_url="alyx.example.org", username="u", password="p")


def test_page_size_override_above_1000_is_refused() -> None:
    with pytest.raises(ConfigError, match="stream 'subjects': page size 5000"):
        connector(streams={"subjects": StreamSettings(page_size=5000)})


# --- auth -----------------------------------------------------------------------------------------


@responses.activate
def test_login_then_token_on_every_request() -> None:
    login()
    listing("labs", body("labs_list")["results"])
    c = connector()
    read_all(c, "labs")
    read_all(c, "labs")
    posts = [call for call in responses.calls if call.request.method == "POST"]
    assert len(posts) == 1  # logged in once, token reused
    form = parse_qs(str(posts[0].request.body))
    assert form == {"username": ["sync-bot"], "password": [PASSWORD]}
    for call in calls_to("labs"):
        assert call.request.headers["Authorization"] == f"Token {TOKEN}"


@responses.activate
def test_a_configured_token_is_used_without_logging_in() -> None:
    listing("labs", body("labs_list")["results"])
    c = connector(token="configured-token-123")
    assert len(read_all(c, "labs")) == 3
    assert all(call.request.method == "GET" for call in responses.calls)
    assert responses.calls[0].request.headers["Authorization"] == "Token configured-token-123"


@responses.activate
def test_invalid_token_logs_in_again_once_then_succeeds() -> None:
    invalid = {"detail": "Invalid token.", "status_code": 403}
    responses.add(responses.GET, f"{BASE}/labs", status=403, json=invalid)
    listing("labs", body("labs_list")["results"])
    login("fresh-token")
    c = connector(token="stale-token")
    assert len(read_all(c, "labs")) == 3
    gets = calls_to("labs")
    assert [g.request.headers["Authorization"] for g in gets] == [
        "Token stale-token",
        "Token fresh-token",
    ]
    assert len([x for x in responses.calls if x.request.method == "POST"]) == 1


@responses.activate
def test_invalid_token_twice_raises_after_a_single_login() -> None:
    invalid = {"detail": "Invalid token.", "status_code": 403}
    responses.add(responses.GET, f"{BASE}/labs", status=403, json=invalid)
    login()
    c = connector(token="stale-token")
    with pytest.raises(AuthenticationError, match="Invalid token"):
        read_all(c, "labs")
    assert len([x for x in responses.calls if x.request.method == "POST"]) == 1
    assert len(calls_to("labs")) == 2


@responses.activate
def test_refused_credentials_name_the_user_not_the_password() -> None:
    refused = {"non_field_errors": ["Unable to log in with provided credentials."]}
    responses.add(responses.POST, f"{BASE}/auth-token", status=400, json=refused)
    with pytest.raises(AuthenticationError) as info:
        connector().open()
    message = str(info.value)
    assert "username/password" in message and "'sync-bot'" in message
    assert PASSWORD not in message and info.value.status == 400


@responses.activate
def test_an_invalid_token_without_password_cannot_log_in_again() -> None:
    responses.add(responses.GET, f"{BASE}/labs", status=403, json={"detail": "Invalid token."})
    c = connector(token="stale-token", password=None)
    with pytest.raises(AuthenticationError, match="no password"):
        read_all(c, "labs")


@responses.activate
def test_other_403_do_not_trigger_a_login() -> None:
    login()
    denied = {"detail": "Authentication credentials were not provided.", "status_code": 403}
    responses.add(responses.GET, f"{BASE}/labs", status=403, json=denied)
    with pytest.raises(AuthenticationError, match="not provided"):
        read_all(connector(), "labs")
    assert len([x for x in responses.calls if x.request.method == "POST"]) == 1


@responses.activate
def test_the_password_never_leaks_into_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    responses.add(
        responses.POST, f"{BASE}/auth-token", status=500, json={"detail": f"echo {PASSWORD}"}
    )
    with pytest.raises(HTTPStatusError) as info:
        connector().open()
    assert PASSWORD not in str(info.value)
    assert PASSWORD not in caplog.text
    assert PASSWORD not in repr(connector()) and PASSWORD not in repr(connector().settings)


# --- retries through the connector ----------------------------------------------------------------


@responses.activate
def test_throttled_requests_are_retried_and_long_waits_refused() -> None:
    login()
    throttled = {"detail": "Request was throttled. Expected available in 1 seconds."}
    responses.add(
        responses.GET, f"{BASE}/labs", status=429, headers={"Retry-After": "1"}, json=throttled
    )
    listing("labs", body("labs_list")["results"])
    assert len(read_all(connector(), "labs")) == 3

    responses.reset()
    login()
    responses.add(
        responses.GET, f"{BASE}/labs", status=429, headers={"Retry-After": "43000"}, json=throttled
    )
    with pytest.raises(HTTPStatusError, match="retry_after_max"):
        read_all(connector(), "labs")


# --- streams parse the captured bodies ------------------------------------------------------------

STREAM_FIXTURES = {
    "labs": ("labs", "labs_list"),
    "users": ("users", "users_list"),
    "projects": ("projects", "projects_list"),
    "procedures": ("procedures", "procedures_list"),
    "water_types": ("water-type", "watertype_list"),
    "subjects": ("subjects", "subjects_list_limit5"),
    "weighings": ("weighings", "weighings_list"),
    "water_administrations": ("water-administrations", "wateradmins_list"),
    "water_restrictions": ("water-restriction", "water_restriction_list"),
    "surgeries": ("surgeries", "surgeries_list"),
}


@responses.activate
@pytest.mark.parametrize("stream", sorted(STREAM_FIXTURES))
def test_every_stream_parses_the_captured_bodies(stream: str) -> None:
    path, fixture = STREAM_FIXTURES[stream]
    records = body(fixture)["results"]
    login()
    listing(path, records)
    c = connector()
    decl = c.streams[stream]
    read = read_all(c, stream)
    assert len(read) == len(records)
    keys = set()
    for raw in read:
        model = decl.model.model_validate(raw)
        keys.add(decl.key_of(model))
        extra = model.model_extra or {}
        assert set(raw) <= set(type(model).model_fields) | set(extra)  # nothing dropped
    assert len(keys) == len(read)  # the key identifies each record


@responses.activate
def test_subject_fields_keep_their_types_and_naive_datetimes() -> None:
    login()
    listing("subjects", body("subjects_list_limit5")["results"])
    c = connector()
    first = c.streams["subjects"].model.model_validate(read_all(c, "subjects")[0])
    assert first.id == uuid.UUID("8ad2ce5a-e7fe-48ef-a5d0-bca19d3f1d67")  # type: ignore[attr-defined]
    assert first.last_water_restriction == datetime(2026, 10, 27, 9)  # type: ignore[attr-defined]
    assert first.last_water_restriction.tzinfo is None  # type: ignore[attr-defined]
    assert first.model_extra == {"json": None}
    assert {"age_weeks", "alive", "remaining_water", "url"} <= c.streams["subjects"].volatile


@responses.activate
def test_weighings_and_water_administrations_get_their_uuid_from_the_url() -> None:
    login()
    listing("weighings", body("weighings_list")["results"])
    listing("water-administrations", body("wateradmins_list")["results"])
    c = connector()
    weighing = read_all(c, "weighings")[0]
    assert weighing["id"] == "40fa1e7f-9395-4c78-8cac-533a26968fe5"
    admin = read_all(c, "water_administrations")[0]
    assert admin["id"] == "0a9139ea-06a4-4909-93a4-a84109b60108"
    assert "id" not in body("weighings_list")["results"][0]  # the server sends none


def test_uuid_from_url_reads_only_the_path() -> None:
    u = "40fa1e7f-9395-4c78-8cac-533a26968fe5"
    assert uuid_from_url(f"http://127.0.0.1:8765/weighings/{u}") == u
    assert uuid_from_url(f"https://proxy.example/api/weighings/{u}/?x=1") == u
    assert uuid_from_url("http://x/weighings/not-a-uuid") is None
    assert uuid_from_url(None) is None


@responses.activate
def test_a_record_without_a_parsable_url_goes_on_without_id() -> None:
    login()
    listing("weighings", [{"subject": "S", "date_time": "2026-11-01T09:00:00", "url": "x"}])
    c = connector()
    [raw] = read_all(c, "weighings")
    assert "id" not in raw
    with pytest.raises(pydantic.ValidationError):
        c.streams["weighings"].model.model_validate(raw)  # the engine quarantines it


def test_water_restriction_key_is_stable_and_distinct() -> None:
    record = body("water_restriction_list")["results"][0]
    rid = water_restriction_id(record)
    assert rid is not None and uuid.UUID(rid).version == 5
    assert water_restriction_id({**record, "end_time": "2026-11-01T00:00:00"}) == rid
    assert water_restriction_id({**record, "start_time": "2026-10-27T09:00:00.000000"}) == rid
    assert water_restriction_id({**record, "start_time": "2026-10-27T09:00:01"}) != rid
    assert water_restriction_id({**record, "subject": "SUBJ002"}) != rid
    assert water_restriction_id({**record, "start_time": None}) is None


# --- sessions -------------------------------------------------------------------------------------

SUMMARIES = body("sessions_filter_auto_datetime")["results"]
IDS = [s["id"] for s in SUMMARIES]
OLD, NEW = "2026-11-01T08:00:00", "2026-11-24T08:32:01.072887"
CURSOR = "2026-11-20T00:00:00"


def sessions_server(
    changed: Iterable[str] = (),
    *,
    summaries: list[dict[str, Any]] | None = None,
    honour_filter: bool = True,
    deleted: Iterable[str] = (),
) -> None:
    """Sessions list (with auto_datetime filter) and details; ``changed`` ids are recent."""
    auto = {sid: (NEW if sid in set(changed) else OLD) for sid in IDS}

    def select(q: dict[str, str], record: dict[str, Any]) -> bool:
        django = q.get("django")
        if django is None or not honour_filter:
            return True
        lookup, value = split_django(django)
        assert lookup == "auto_datetime__gte"
        return auto[record["id"]] >= value

    def detail(request: requests.PreparedRequest) -> Reply:
        sid = unquote(urlsplit(request.url or "").path.rsplit("/", 1)[1])
        if sid in set(deleted):
            return 404, {}, json.dumps({"detail": "No Session matches the given query."})
        record = body("session_detail")
        summary = next(s for s in SUMMARIES if s["id"] == sid)
        record.update(id=sid, subject=summary["subject"], start_time=summary["start_time"])
        record.update(auto_datetime=auto[sid], url=summary["url"])
        return 200, {}, json.dumps(record)

    def records(q: dict[str, str]) -> list[dict[str, Any]]:
        # ``summaries`` replaces the unfiltered listing only; the filtered query sees them all.
        return SUMMARIES if summaries is None or "django" in q else summaries

    listing("sessions", records, select=select)
    responses.add_callback(
        responses.GET, re.compile(re.escape(BASE) + r"/sessions/[0-9a-f-]+$"), callback=detail
    )


def detail_ids() -> list[str]:
    return sorted(
        urlsplit(url_of(c)).path.rsplit("/", 1)[1]
        for c in responses.calls
        if re.search(r"/sessions/[0-9a-f-]{36}$", urlsplit(url_of(c)).path)
    )


def list_queries() -> list[dict[str, str]]:
    return [query(c.request) for c in calls_to("sessions")]


def key(sid: str) -> Key:
    return (uuid.UUID(sid),)


@responses.activate
def test_full_scan_fetches_details_only_for_new_and_changed_sessions() -> None:
    login()
    schema()
    sessions_server(changed=[IDS[1]])
    seen: list[Key] = []
    known = [key(s) for s in IDS[:4]]
    records = read_all(connector(), "sessions", ctx(True, CURSOR, known, seen))
    # unknown: IDS[4], IDS[5]; changed since the cursor: IDS[1]
    assert detail_ids() == sorted([IDS[1], IDS[4], IDS[5]])
    assert sorted(r["id"] for r in records) == sorted([IDS[1], IDS[4], IDS[5]])
    assert all("auto_datetime" in r for r in records)  # details, not summaries
    assert sorted(seen) == sorted([key(IDS[0]), key(IDS[2]), key(IDS[3])])
    # The changed query subtracts the 1-day lookback from the cursor.
    assert {"django": "auto_datetime__gte,2026-11-19T00:00:00"}.items() <= list_queries()[0].items()


@responses.activate
def test_full_scan_without_seen_or_without_cursor_fetches_every_detail() -> None:
    login()
    schema()
    sessions_server(changed=[IDS[1]])
    known = [key(s) for s in IDS]
    read_all(connector(), "sessions", ctx(True, CURSOR, known, seen=None))
    assert detail_ids() == sorted(IDS)
    assert all("django" not in q for q in list_queries())
    responses.calls.reset()
    read_all(connector(), "sessions", ctx(True, None, known, seen=[]))
    assert detail_ids() == sorted(IDS)


@responses.activate
def test_incremental_reads_only_changed_sessions() -> None:
    login()
    schema()
    sessions_server(changed=[IDS[0], IDS[3]])
    c = connector()
    records = read_all(c, "sessions", ctx(False, CURSOR, known=[key(s) for s in IDS]))
    assert detail_ids() == sorted([IDS[0], IDS[3]])
    assert all("django" in q for q in list_queries())  # no unfiltered listing
    assert c.cursor_value("sessions", records[0]) == "2026-11-24T08:32:01.072887"


@responses.activate
def test_session_details_off_yields_summaries() -> None:
    login()
    sessions_server()
    records = read_all(connector(session_details=False), "sessions", ctx(True, None))
    assert detail_ids() == []
    assert [r["id"] for r in records] == IDS
    assert connector().cursor_value("sessions", records[0]) is None


@responses.activate
def test_sessions_deleted_between_list_and_detail_are_skipped() -> None:
    login()
    sessions_server(deleted=[IDS[2]])
    records = read_all(connector(), "sessions", ctx(True, None))
    assert sorted(r["id"] for r in records) == sorted(IDS[:2] + IDS[3:])


@responses.activate
def test_changed_sessions_missed_by_shifting_pages_are_still_read() -> None:
    login()
    schema()
    # The unfiltered list lost IDS[1] (rows shifted while paging) and repeats IDS[0].
    shifted = [SUMMARIES[0], SUMMARIES[0], *SUMMARIES[2:]]
    sessions_server(changed=[IDS[1]], summaries=shifted)
    sessions_detail = read_all(connector(page_size=2), "sessions", ctx(True, CURSOR, [], []))
    assert sorted(r["id"] for r in sessions_detail) == sorted(IDS)
    assert detail_ids() == sorted(IDS)  # each fetched once, duplicates included


@responses.activate
def test_an_ignored_changed_filter_is_detected_without_schema() -> None:
    login()
    schema(available=False)
    sessions_server(changed=[IDS[1]], honour_filter=False)
    with pytest.raises(ConfigError, match="ignored the filter django=auto_datetime__gte"):
        read_all(connector(), "sessions", ctx(False, CURSOR))


@responses.activate
def test_details_are_fetched_concurrently_by_a_bounded_pool() -> None:
    login()
    sessions_server()
    c = connector(detail_workers=2)
    records = read_all(c, "sessions", ctx(True, None))
    assert [r["id"] for r in records] == IDS  # order of the list kept


# --- filters and the schema -----------------------------------------------------------------------


@responses.activate
def test_filters_are_checked_against_the_schema_fetched_once() -> None:
    login()
    schema()
    guard = connector().filters
    assert guard.check("sessions", {"django": "auto_datetime__gte,2026-11-01T00:00:00"})
    assert guard.check("subjects", {"django": "pk__in,['a','b']", "lab": "x", "limit": 5})
    assert guard.check("weighings", {"django": "~subject__nickname,SUBJ001"})
    assert guard.check("subjects", {"django": "death_date__year__gte,2026"})
    schema_calls = [c for c in responses.calls if url_of(c).endswith("/api/schema")]
    assert len(schema_calls) == 1
    assert schema_calls[0].request.headers["Accept"] == "application/vnd.oai.openapi+json"


@responses.activate
@pytest.mark.parametrize(
    ("endpoint", "params", "message"),
    [
        ("subjects", {"bogus_field": "1"}, "'bogus_field' is not a query parameter of /subjects"),
        ("sessions", {"django": "auto_datetme__gte,2026"}, "'auto_datetme' is not a field"),
        ("sessions", {"django": "auto_datetime__gtee,2026"}, "'gtee' is not a lookup"),
        ("sessions", {"django": "pk__inn,[1]"}, "'inn' is not a lookup"),
        ("projects", {"django": "pk__in,['x']"}, "'django' is not a query parameter of /projects"),
        ("sessions", {"django": "auto_datetime__gte"}, "expected pairs"),
        ("nope", {"x": "1"}, "has no GET /nope"),
    ],
)
def test_unknown_filters_raise_config_error(
    endpoint: str, params: dict[str, str], message: str
) -> None:
    login()
    schema()
    with pytest.raises(ConfigError) as info:
        connector().filters.check(endpoint, params)
    assert message in str(info.value)


@responses.activate
def test_without_a_schema_filters_are_unverified_not_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    login()
    schema(available=False)
    guard = connector().filters
    assert guard.check("sessions", {"bogus": "1"}) is False
    assert guard.available is False
    assert "checked against the results" in caplog.text


def test_schema_served_under_a_path_prefix_matches() -> None:
    get = {"get": {"parameters": [{"in": "query", "name": "django", "schema": {}}]}}
    guard = FilterGuard(lambda: {"paths": {"/api/sessions": get}})
    assert guard.check("sessions", {"django": "pk__in,['a']"})


def test_pk_batches_keep_urls_short() -> None:
    ids = [str(uuid.UUID(int=i)) for i in range(400)]
    url = f"{BASE}/subjects"
    batches = pk_batches(ids, url)
    assert [i for b in batches for i in b] == ids and len(batches) > 2
    for batch in batches:
        prepared = requests.Request(
            "GET", url, params={"django": filters.pk_in(batch), "limit": 1000, "offset": 0}
        ).prepare()
        assert len(prepared.url or "") < 6000


# --- confirm_gone ---------------------------------------------------------------------------------


@responses.activate
def test_confirm_gone_looks_missing_subjects_up_by_pk() -> None:
    login()
    schema()
    subjects = body("subjects_list_limit5")["results"]
    listing("subjects", subjects, select=pk_in)
    missing = (uuid.UUID("00000000-0000-0000-0000-000000000001"),)
    keys = [(uuid.UUID(subjects[0]["id"]),), missing, (subjects[2]["id"],), ("not-a-uuid",)]
    gone = connector().confirm_gone("subjects", keys)
    assert gone == {missing, ("not-a-uuid",)}
    [lookup] = calls_to("subjects")
    assert query(lookup.request)["django"].startswith("pk__in,['")


@responses.activate
def test_confirm_gone_batches_large_key_sets() -> None:
    login()
    schema()
    listing("weighings", body("weighings_list")["results"], select=pk_in)
    keys = [(uuid.UUID(int=i),) for i in range(300)]
    keys.append((uuid.UUID("40fa1e7f-9395-4c78-8cac-533a26968fe5"),))
    gone = connector().confirm_gone("weighings", keys)
    assert gone == set(keys[:300])  # the weighing that exists is matched through its url
    assert len(calls_to("weighings")) >= 3
    assert all(len(c.request.url) < 6000 for c in calls_to("weighings"))


@responses.activate
def test_confirm_gone_refuses_a_server_that_ignores_pk_in() -> None:
    login()
    schema(available=False)
    listing("subjects", body("subjects_list_limit5")["results"])  # ignores ?django
    with pytest.raises(ConfigError, match="ignored the filter django=pk__in"):
        connector().confirm_gone("subjects", [(uuid.UUID(int=7),)])


@responses.activate
def test_confirm_gone_rescans_tables_without_a_pk_filter() -> None:
    login()
    listing("labs", body("labs_list")["results"])
    listing("water-restriction", body("water_restriction_list")["results"])
    c = connector()
    assert c.confirm_gone("labs", [("cortexlab",), ("closed-lab",)]) == {("closed-lab",)}
    present = water_restriction_id(body("water_restriction_list")["results"][0])
    old = (uuid.UUID(int=5),)
    assert c.confirm_gone("water_restrictions", [(present,), old]) == {old}
    assert c.confirm_gone("labs", []) == set()
    assert all(query(call.request)["limit"] == "1000" for call in calls_to("labs"))


# --- check ----------------------------------------------------------------------------------------


@responses.activate
def test_check_reads_one_record_per_stream_and_reports_failures() -> None:
    login()
    schema()
    for stream, (path, fixture) in STREAM_FIXTURES.items():
        if stream != "surgeries":
            listing(path, body(fixture)["results"])
    responses.add(responses.GET, f"{BASE}/surgeries", status=500, json={"detail": "boom"})
    listing("sessions", SUMMARIES)
    results = {r.name: r for r in connector(max_retries=0).check()}
    assert results["auth"].ok
    assert results["stream subjects"].ok and results["stream sessions"].ok
    assert not results["stream surgeries"].ok and "boom" in results["stream surgeries"].detail
    assert results["openapi schema"].ok
    lists = [
        c for c in responses.calls if c.request.method == "GET" and "api/schema" not in url_of(c)
    ]
    assert all(query(c.request)["limit"] == "1" for c in lists)


@responses.activate
def test_check_reports_bad_credentials_without_raising() -> None:
    responses.add(responses.POST, f"{BASE}/auth-token", status=400, json={})
    results = connector().check()
    auth = next(r for r in results if r.name == "auth")
    assert not auth.ok and "refused" in auth.detail
    assert all(not r.ok for r in results if r.name.startswith("stream "))


def test_nothing_known_knows_nothing() -> None:
    assert nothing_known([("a",)]) == set()


@responses.activate
def test_nickname_keyed_streams_are_read_lab_by_lab() -> None:
    """Weighings name subjects by nickname only; reading per lab makes (lab, nickname) unique."""
    login()
    schema()
    listing("labs", [{"name": "cortexlab"}, {"name": "wittenlab"}])
    weighings = body("weighings_list")["results"]

    def per_lab(q: dict[str, str]) -> list[dict[str, Any]]:
        lookup, lab = split_django(q["django"])
        assert lookup == "subject__lab__name"
        return weighings if lab == "cortexlab" else []

    listing("weighings", per_lab)
    c = connector(per_lab_scans=True)
    read = read_all(c, "weighings")
    assert len(read) == len(weighings)
    assert {r["subject_lab"] for r in read} == {"cortexlab"}
    assert len(calls_to("weighings")) == 2  # one listing per lab
