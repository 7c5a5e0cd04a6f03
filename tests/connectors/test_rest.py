"""The declarative REST connector: settings, auth styles, paging styles, parents and cursors.

Every HTTP test runs against a real server on 127.0.0.1 (the toolkit's RecordServer or the
fake LIMS), so the connector is exercised through the same session, retries and paginators
as in production.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pydantic
import pytest

from limsync.connectors import ReadContext, nothing_known
from limsync.connectors.rest import RestConnector, RestSettings
from limsync.errors import AuthenticationError, ConfigError, PaginationError, RecordError
from limsync.testing.fake_lims import FakeLims
from limsync.testing.fakeserver import Reply, Request
from limsync.testing.toolkit import (
    HeaderTotalPaging,
    NextLinkPaging,
    OffsetPaging,
    PageNumberPaging,
    Paging,
    RecordServer,
    make_records,
)

# Sample n was modified on 2026-01-0n at 10:00 UTC.
SAMPLES = make_records(
    7, id=lambda i: i + 1, name="S{i}", modified=lambda i: f"2026-01-{i + 1:02d}T10:00:00Z"
)
FAST = {"backoff_factor": 0.0, "max_retries": 1}


def settings(url: str = "http://127.0.0.1:1/api", **extra: Any) -> dict[str, Any]:
    """Raw settings with one ``samples`` stream, changed by ``extra``."""
    data: dict[str, Any] = {
        "type": "rest",
        "base_url": url,
        "streams": {"samples": {"path": "/samples", "key": ["id"]}},
        **FAST,
    }
    data.update(extra)
    return data


def make(data: dict[str, Any], name: str = "mylims") -> RestConnector:
    return RestConnector(name, RestConnector.parse_settings(data, name=name))


def read(connector: RestConnector, stream: str, *, cursor: str | None = None) -> list[Any]:
    ctx = ReadContext(full=cursor is None, cursor=cursor, known=nothing_known)
    return [record for page in connector.read(stream, ctx) for record in page]


def error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        make(data)
    return str(info.value)


# --- settings ---------------------------------------------------------------------------------


def test_valid_settings_define_streams() -> None:
    connector = make(
        settings(
            streams={
                "animals": {
                    "path": "/animals",
                    "key": ["id"],
                    "cursor": {"field": "modified", "param": "since", "lookback": "1h"},
                    "volatile": ["age_days"],
                },
                "weights": {
                    "path": "/animals/{animal_id}/weights",
                    "key": ["animal_id", "date"],
                    "parent": {"stream": "animals", "fields": {"animal_id": "id"}},
                },
            }
        )
    )
    animals, weights = connector.stream("animals"), connector.stream("weights")
    assert animals.key == ("id",) and animals.volatile == {"age_days"}
    assert animals.cursor is not None and animals.cursor.lookback == timedelta(hours=1)
    assert {"id", "modified"} <= set(animals.model.model_fields)
    assert weights.parent == "animals" and weights.path == "animals/{id}/weights"
    assert connector.lookback("animals") == timedelta(hours=1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"base_url": None}, "base_url: Field required"),
        ({"base_url": "ftp://x"}, "base_url: String should match pattern"),
        ({"streams": {}}, "streams: Dictionary should have at least 1 item"),
        ({"auth": {"type": "oauth"}}, "auth: Input tag 'oauth' found using 'type' does not match"),
        ({"auth": {"type": "basic", "username": "u"}}, "auth.basic.password: Field required"),
        ({"auth": {"type": "bearer"}}, "auth.bearer.token: Field required"),
        (
            {"auth": {"type": "token_login", "path": "/login", "password": "pw"}},
            "auth.token_login.username: Field required",
        ),
        (
            {"pagination": {"style": "page_number", "limit_param": "l"}},
            "pagination: Value error, limit_param do(es) not apply to style 'page_number'",
        ),
        ({"pagination": {"style": "cursor"}}, "pagination.style: Input should be"),
        (
            {"pagination": {"page_size": 500, "max_page_size": 100}},
            "page_size 500 is above max_page_size",
        ),
        ({"records": "data..items"}, "records 'data..items' has an empty part"),
        ({"records": "data.{x}"}, "records 'data.{x}' must be field names joined by dots (no { })"),
        ({"pagee_size": 3}, "pagee_size: Extra inputs are not permitted"),
    ],
)
def test_settings_errors_name_the_place(change: dict[str, Any], message: str) -> None:
    data = settings(**change)
    data = {k: v for k, v in data.items() if v is not None}
    text = error(data)
    assert text.startswith("connector 'mylims' settings: ") and message in text, text


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        ({"key": ["id"]}, "streams.s.path: Field required"),
        ({"path": "/s"}, "streams.s.key: Field required"),
        ({"path": "/s", "key": []}, "streams.s.key: List should have at least 1 item"),
        ({"path": "/s/{x}", "key": ["id"]}, "path placeholders need a parent"),
        ({"path": "http://h/s", "key": ["id"]}, "path must be relative to base_url"),
        ({"path": "/s", "key": ["id"], "volatile": ["id"]}, "a key field cannot be volatile"),
        ({"path": "/s", "key": ["_id"]}, "key field '_id' must not start with '_'"),
        ({"path": "/s", "key": ["id", "id"]}, "key repeats a field"),
        (
            {"path": "/s", "key": ["id"], "cursor": {"field": "m", "param": "p", "lookback": "x"}},
            "streams.s.cursor.lookback: Value error, not a duration",
        ),
        ({"path": "/s", "key": ["id"], "cursor": {"field": "m"}}, "cursor.param: Field required"),
        ({"path": "/s", "key": ["id"], "paging": {}}, "streams.s.paging: Extra inputs"),
        (
            {
                "path": "/s/{a}",
                "key": ["id"],
                "parent": {"stream": "samples", "fields": {"b": "id"}},
            },
            "path placeholder(s) a not in parent.fields",
        ),
        (
            {"path": "/s", "key": ["id"], "parent": {"stream": "samples", "fields": {"a": "id"}}},
            "a child stream's path needs a {placeholder}",
        ),
    ],
)
def test_stream_errors_name_the_place(stream: dict[str, Any], message: str) -> None:
    data = settings()
    data["streams"] = {**data["streams"], "s": stream}
    text = error(data)
    assert message in text, text


def test_parent_errors_across_streams() -> None:
    child = {"path": "/a/{a}/c", "key": ["id"], "parent": {"stream": "nope", "fields": {"a": "id"}}}
    text = error(settings(streams={"c": child}))
    assert text == "connectors.mylims.streams.c.parent.stream: no stream 'nope' (streams: c)"
    # A parent must come before its children, as the engine reads them in that order.
    child["parent"] = {"stream": "a", "fields": {"a": "id"}}
    text = error(settings(streams={"c": child, "a": {"path": "/a", "key": ["id"]}}))
    assert text.startswith("connectors.mylims.streams.c: parent stream 'a' is not declared before")


def test_page_size_above_the_api_cap_is_refused() -> None:
    data = settings(pagination={"max_page_size": 50}, page_size=100)
    assert "page size 100 is above the maximum 50" in error(data)
    # Without a page size, the default (250) is brought down to the cap.
    assert make(settings(pagination={"max_page_size": 50})).page_size("samples") == 50
    capped = settings()
    capped["streams"]["samples"]["pagination"] = {"max_page_size": 20}
    assert make(capped).page_size("samples") == 20


def test_page_size_precedence() -> None:
    assert make(settings(pagination={"page_size": 7})).page_size("samples") == 7
    both = make(settings(pagination={"page_size": 7}, page_size=9))
    assert both.page_size("samples") == 9
    per_stream = settings()
    per_stream["streams"]["samples"]["pagination"] = {"page_size": 4}
    assert make(per_stream).page_size("samples") == 4


def test_secrets_are_never_echoed_and_are_scrubbed() -> None:
    data = settings(auth={"type": "basic", "username": "u", "password": "hunter22"}, page_size=0)
    text = error(data)
    assert "hunter22" not in text and "page_size" in text
    parsed = RestConnector.parse_settings(settings(auth={"type": "bearer", "token": "tok-1234"}))
    assert isinstance(parsed, RestSettings)
    assert "tok-1234" not in repr(parsed) and parsed.secrets() == ["tok-1234"]
    assert "tok-1234" in make(settings(auth={"type": "bearer", "token": "tok-1234"})).secrets()


def test_source_model_checks_keys_only() -> None:
    model = make(settings()).stream("samples").model
    record = model.model_validate({"id": 3, "name": "x", "nested": {"a": [1]}})
    assert record.model_dump() == {"id": 3, "name": "x", "nested": {"a": [1]}}
    assert model.model_validate({"id": "S-1"}).id == "S-1"  # type: ignore[attr-defined]
    for bad in ({"name": "x"}, {"id": " "}, {"id": None}, {"id": True}, {"id": [1]}):
        with pytest.raises(pydantic.ValidationError):
            model.model_validate(bad)


# --- auth -------------------------------------------------------------------------------------


@pytest.fixture
def samples() -> Iterator[RecordServer]:
    """An open API serving seven samples, limit/offset paged."""
    with RecordServer(base_path="/api") as server:
        server.serve("samples", SAMPLES, since=("modified_since", "modified"))
        yield server


def test_no_auth(samples: RecordServer) -> None:
    with make(settings(samples.url)) as connector:
        assert [r["id"] for r in read(connector, "samples")] == list(range(1, 8))


@pytest.mark.parametrize(
    ("auth", "header", "scheme", "secret"),
    [
        ({"type": "bearer", "token": "b-token"}, "Authorization", "Bearer", "b-token"),
        ({"type": "token", "token": "t-token"}, "Authorization", "Token", "t-token"),
        (
            {"type": "token", "token": "k-123", "header": "X-Api-Key", "scheme": ""},
            "X-Api-Key",
            "",
            "k-123",
        ),
        (
            {"type": "basic", "username": "ann", "password": "pw-1"},
            "Authorization",
            "Basic",
            base64.b64encode(b"ann:pw-1").decode(),
        ),
    ],
)
def test_header_auth_styles(auth: dict[str, Any], header: str, scheme: str, secret: str) -> None:
    with RecordServer(token=secret, auth_header=header, auth_scheme=scheme) as server:
        server.serve("samples", SAMPLES)
        with make(settings(server.url, auth=auth)) as connector:
            assert len(read(connector, "samples")) == 7
        wrong = {**auth, **({"token": "nope"} if "token" in auth else {"password": "nope"})}
        with (
            make(settings(server.url, auth=wrong)) as connector,
            pytest.raises(AuthenticationError, match="401"),
        ):
            read(connector, "samples")


def login_server(*, form: bool = False, nested: bool = False) -> RecordServer:
    """A RecordServer with ``POST /login`` handing out a new token per login."""
    server = RecordServer(token="unknown", auth_scheme="Session")
    server.serve("samples", SAMPLES)
    server.logins = 0  # type: ignore[attr-defined]

    def login(request: Request) -> Reply:
        body = request.form() if form else request.json()
        if body.get("user") != "ann" or body.get("pass") != "pw-1":
            return Reply(403, {}, {"detail": "bad credentials"})
        server.logins += 1  # type: ignore[attr-defined]
        server.token = f"tok{server.logins}"  # type: ignore[attr-defined]
        return Reply(200, {}, {"data": {"key": server.token}} if nested else {"t": server.token})

    server.route("POST", "/login", login)
    return server


def token_login(nested: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "type": "token_login",
        "path": "login",
        "username": "ann",
        "password": "pw-1",
        "username_field": "user",
        "password_field": "pass",
        "token_field": "data.key" if nested else "t",
        "scheme": "Session",
        **extra,
    }


@pytest.mark.parametrize(("form", "nested"), [(False, False), (True, True)])
def test_token_login_and_one_relogin(form: bool, nested: bool) -> None:
    auth = token_login(nested, body="form" if form else "json")
    with (
        login_server(form=form, nested=nested) as server,
        make(settings(server.url, auth=auth)) as connector,
    ):
        assert len(read(connector, "samples")) == 7
        assert server.logins == 1  # type: ignore[attr-defined]
        server.token = "expired"
        assert len(read(connector, "samples")) == 7  # 401 -> one new login -> retried
        assert server.logins == 2  # type: ignore[attr-defined]
        assert "tok2" in connector.secrets()


def test_token_login_failures_are_clear() -> None:
    with login_server() as server:
        wrong = settings(server.url, auth=token_login(password="wrong-pw"))
        with pytest.raises(AuthenticationError) as info:
            make(wrong).open()
        assert "refused the username/password of user 'ann'" in str(info.value)
        assert "wrong-pw" not in str(info.value)
        no_token = settings(server.url, auth=token_login(token_field="token"))
        with pytest.raises(Exception, match="no token at 'token'"):
            make(no_token).open()
        # A token the server keeps refusing: one new login, then the 401 is the error.
        before = server.logins  # type: ignore[attr-defined]
        server.route("GET", "/stubborn", lambda request: Reply(401, {}, {"detail": "no"}))
        data = settings(server.url, auth=token_login())
        data["streams"]["samples"]["path"] = "/stubborn"
        with make(data) as connector, pytest.raises(AuthenticationError, match="401"):
            read(connector, "samples")
        assert server.logins == before + 2  # type: ignore[attr-defined]


def test_check_reports_each_stream() -> None:
    with FakeLims(n_animals=2, weights_per_animal=1) as lims:
        data = settings(
            lims.url,
            auth={
                "type": "token_login",
                "path": "/auth/login",
                "username": "sync",
                "password": FakeLims.PASSWORD,
            },
            streams={
                "animals": {"path": "/animals", "key": ["id"]},
                "weights": {
                    "path": "/animals/{animal}/weights",
                    "key": ["animal", "id"],
                    "parent": {"stream": "animals", "fields": {"animal": "id"}},
                    "records": "",
                    "pagination": {"style": "none"},
                },
            },
        )
        results = make(data).check()
        assert all(r.ok for r in results), results
        assert [r.name for r in results] == ["settings", "auth", "stream animals", "stream weights"]
        data["auth"]["password"] = "wrong"
        failed = make(data).check()
        assert not failed[1].ok and "refused" in failed[1].detail


# --- pagination -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("paging", "pagination", "records", "requests"),
    [
        (OffsetPaging(), {"style": "limit_offset"}, "results", 4),
        (
            OffsetPaging(limit_param="max", offset_param="skip"),
            {"style": "limit_offset", "limit_param": "max", "offset_param": "skip"},
            "results",
            4,
        ),
        (
            HeaderTotalPaging(limit_param="l", offset_param="o"),
            {"style": "header_total", "limit_param": "l", "offset_param": "o"},
            "",
            4,
        ),
        (
            PageNumberPaging(size_param="per_page"),
            {"style": "page_number", "size_param": "per_page"},
            "results",
            4,
        ),
        (
            NextLinkPaging(size_param="size"),
            {"style": "next_link", "size_param": "size"},
            "results",
            4,
        ),
    ],
)
def test_pagination_styles(
    paging: Paging, pagination: dict[str, Any], records: str, requests: int
) -> None:
    with RecordServer() as server:
        server.serve("samples", SAMPLES, paging=paging)
        data = settings(server.url, pagination={**pagination, "page_size": 2}, records=records)
        with make(data) as connector:
            got = read(connector, "samples")
        assert [r["id"] for r in got] == list(range(1, 8))
        assert server.requests_by_path["/samples"] == requests


@pytest.mark.parametrize(
    ("paging", "pagination"),
    [
        (OffsetPaging(), {"style": "limit_offset", "count_field": "meta.total"}),
        (NextLinkPaging(size_param="size"),
         {"style": "next_link", "size_param": "size", "next_field": "links.next",
          "count_field": "meta.total"}),
    ],
)  # fmt: skip
def test_records_count_and_next_link_may_be_nested(
    paging: OffsetPaging | NextLinkPaging, pagination: dict[str, Any]
) -> None:
    """``records = "data.items"``: an API that nests its envelope needs no code."""

    def nested(request: Request) -> Reply:
        flat = paging.reply(request, SAMPLES).body
        body = {"data": {"items": flat["results"]}, "meta": {"total": flat["count"]},
                "links": {"next": flat["next"]}}  # fmt: skip
        return Reply(200, {}, body)

    with RecordServer() as server:
        server.route("GET", "/samples", nested)
        data = settings(server.url, pagination={**pagination, "page_size": 3},
                        records="data.items")  # fmt: skip
        with make(data) as connector:
            assert [r["id"] for r in read(connector, "samples")] == list(range(1, 8))
        assert server.requests_by_path["/samples"] == 3  # 3 + 3 + 1: the count ends it
        with (
            make({**data, "records": "data.rows"}) as connector,
            pytest.raises(PaginationError, match=r"expected a 'data\.rows' list in the response"),
        ):
            read(connector, "samples")


def test_bare_array_with_limit_offset_stops_on_a_short_page() -> None:
    with RecordServer() as server:
        server.serve("samples", SAMPLES, paging=HeaderTotalPaging("limit", "offset", "X-None"))
        data = settings(server.url, pagination={"page_size": 3}, records="")
        with make(data) as connector:
            assert len(read(connector, "samples")) == 7
        assert server.requests_by_path["/samples"] == 3


def test_unpaged_listing_and_its_errors() -> None:
    with RecordServer() as server:
        server.route("GET", "/all", lambda request: Reply(200, {}, {"items": SAMPLES}))
        server.route("GET", "/broken", lambda request: Reply(200, {}, {"items": "no"}))
        server.route("GET", "/scalars", lambda request: Reply(200, {}, {"items": [1, 2]}))
        data = settings(server.url, pagination={"style": "none"}, records="items")
        data["streams"] = {"all": {"path": "/all", "key": ["id"]},
                           "broken": {"path": "/broken", "key": ["id"]},
                           "scalars": {"path": "/scalars", "key": ["id"]}}  # fmt: skip
        with make(data) as connector:
            assert len(read(connector, "all")) == 7
            with pytest.raises(PaginationError, match="expected a 'items' list in the response"):
                read(connector, "broken")
            with pytest.raises(PaginationError, match="holds records that are not objects"):
                read(connector, "scalars")


def test_records_key_missing_is_a_pagination_error(samples: RecordServer) -> None:
    with (
        make(settings(samples.url, records="data")) as connector,
        pytest.raises(PaginationError, match="expected a 'data' list"),
    ):
        read(connector, "samples")


def test_a_server_ignoring_paging_is_detected(samples: RecordServer) -> None:
    samples.faults.set(repeat_first_page=True)
    with (
        make(settings(samples.url, page_size=2)) as connector,
        pytest.raises(PaginationError, match="same page twice"),
    ):
        read(connector, "samples")


def test_fixed_params_are_sent() -> None:
    with RecordServer() as server:
        server.route("GET", "/echo", lambda request: Reply(200, {}, [{"id": 1, **request.query}]))
        data = settings(server.url, pagination={"style": "none"}, records="")
        data["streams"] = {
            "echo": {"path": "/echo", "key": ["id"], "params": {"state": "live", "f": ["a", "b"]}}
        }
        with make(data) as connector:
            (record,) = read(connector, "echo")
    assert record["state"] == ["live"] and record["f"] == ["a", "b"]


# --- parents ----------------------------------------------------------------------------------


def projects_server() -> RecordServer:
    """Projects (one with a '/' in its code) and their samples, which omit the project."""
    server = RecordServer()
    server.serve("projects", [{"code": "P1"}, {"code": "P/2"}, {"code": "P3"}], key="code")
    server.route(
        "GET",
        "/projects/{code}/samples",
        lambda request, code: Reply(
            200, {}, [{"id": 1, "n": code}, {"id": 2, "n": code, "project": f"own-{code}"}]
        ),
    )
    return server


def parent_settings(url: str) -> dict[str, Any]:
    return settings(
        url,
        streams={
            "projects": {"path": "/projects", "key": ["code"]},
            "samples": {
                "path": "/projects/{project}/samples",
                "key": ["project", "id"],
                "parent": {"stream": "projects", "fields": {"project": "code"}},
                "records": "",
                "pagination": {"style": "none"},
            },
        },
    )


def test_child_stream_reads_once_per_parent_and_gets_its_fields() -> None:
    with projects_server() as server, make(parent_settings(server.url)) as connector:
        got = read(connector, "samples")
        assert [(r["project"], r["id"], r["n"]) for r in got] == [
            ("P1", 1, "P1"), ("own-P1", 2, "P1"), ("P/2", 1, "P/2"), ("own-P/2", 2, "P/2"),
            ("P3", 1, "P3"), ("own-P3", 2, "P3"),
        ]  # fmt: skip
        # The parent's value is added only where the record lacks the field: its own wins.
        assert server.requests_by_path["/projects/P%2F2/samples"] == 1  # quoted path segment
        assert [r["n"] for r in connector.sample("samples", 1)] == ["P1"]


def test_parent_record_without_the_field_fails_the_child_stream() -> None:
    with RecordServer() as server:
        server.serve("projects", [{"other": 1}, {"code": "P1", "other": 2}], key="other")
        data = parent_settings(server.url)
        data["streams"]["projects"]["key"] = ["other"]
        with make(data) as connector, pytest.raises(RecordError) as info:
            read(connector, "samples")
        assert "has no 'code'" in str(info.value)
        assert "connectors.mylims.streams.samples.parent.fields.project" in str(info.value)


# --- cursors ----------------------------------------------------------------------------------


def cursor_settings(url: str, **cursor: Any) -> dict[str, Any]:
    data = settings(url)
    data["streams"]["samples"]["cursor"] = {
        "field": "modified",
        "param": "modified_since",
        **cursor,
    }
    return data


def test_incremental_read_sends_the_cursor_minus_lookback(samples: RecordServer) -> None:
    with make(cursor_settings(samples.url, lookback="1d")) as connector:
        # The server keeps modified >= 01-04 10:00: the cursor minus one day, inclusive.
        got = read(connector, "samples", cursor="2026-01-05T10:00:00+00:00")
        assert [r["id"] for r in got] == [4, 5, 6, 7]
        # A full read ignores the cursor.
        assert len(read(connector, "samples")) == 7


def test_cursor_format(samples: RecordServer) -> None:
    data = cursor_settings(samples.url, format="%Y-%m-%d")
    with make(data) as connector:
        got = read(connector, "samples", cursor="2026-01-06T10:00:00")
    # Sent as "2026-01-06", which the fake compares as text: 01-05T10:00 is before it.
    assert [r["id"] for r in got] == [6, 7]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-01-05T10:00:00Z", "2026-01-05T10:00:00+00:00"),
        ("2026-01-05T12:00:00+02:00", "2026-01-05T10:00:00+00:00"),
        ("2026-01-05T10:00:00", "2026-01-05T10:00:00"),
        ("2026-01-05", "2026-01-05T00:00:00"),
        ("yesterday", None),
        (None, None),
    ],
)
def test_cursor_values_are_normalised(value: str | None, expected: str | None) -> None:
    connector = make(cursor_settings("http://127.0.0.1:1"))
    assert connector.cursor_value("samples", {"id": 1, "modified": value}) == expected
    assert connector.cursor_value("samples", {"id": 1}) is None


def test_stored_cursor_that_is_not_a_date_is_a_config_error(samples: RecordServer) -> None:
    with make(cursor_settings(samples.url)) as connector, pytest.raises(ConfigError):
        read(connector, "samples", cursor="not-a-date")


def test_since_uses_stream_lookback_override() -> None:
    data = cursor_settings("http://127.0.0.1:1", lookback="2h")
    data["streams"]["samples"]["lookback"] = "PT30M"
    connector = make(data)
    ctx = ReadContext(full=False, cursor="2026-01-05T10:00:00", known=nothing_known)
    assert connector.since("samples", ctx) == datetime(2026, 1, 5, 9, 30)
