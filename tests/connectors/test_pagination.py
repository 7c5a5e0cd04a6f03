"""Tests for limsync.connectors.pagination."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses

from limsync.connectors.pagination import HeaderTotal, LimitOffset, NextLink, PageNumber
from limsync.errors import ConfigError, HTTPStatusError, PaginationError

BASE = "https://lims.test"
Reply = tuple[int, dict[str, str], str]


def rows(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"id": i} for i in range(start, start + n)]


def query(request: requests.PreparedRequest) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(request.url or "").query).items()}


def serve(path: str, handler: Callable[[dict[str, str]], Reply]) -> None:
    def callback(request: requests.PreparedRequest) -> Reply:
        return handler(query(request))

    responses.add_callback(responses.GET, f"{BASE}/{path}", callback=callback)


def envelope(results: list[dict[str, Any]], count: int, next_url: str | None = None) -> Reply:
    body = {"count": count, "next": next_url, "previous": None, "results": results}
    return 200, {"Content-Type": "application/json"}, json.dumps(body)


def offsets() -> list[int]:
    return [int(query(c.request).get("offset", -1)) for c in responses.calls]


def collect(pages: Any) -> list[int]:
    return [r["id"] for page in pages for r in page]


# --- LimitOffset ----------------------------------------------------------------------------------


@responses.activate
def test_limit_offset_follows_offsets_not_the_next_link() -> None:
    data = rows(5)

    def handler(q: dict[str, str]) -> Reply:
        limit, offset = int(q["limit"]), int(q["offset"])
        # A next link on a plain-http foreign host, as a badly proxied server builds it.
        return envelope(data[offset : offset + limit], 5, "http://evil.test/x?offset=99")

    serve("subjects", handler)
    pages = list(LimitOffset(2).pages(requests.Session().get, f"{BASE}/subjects", {"lab": "x"}))
    assert [len(p) for p in pages] == [2, 2, 1]
    assert collect(pages) == [0, 1, 2, 3, 4]
    assert offsets() == [0, 2, 4]
    assert all(query(c.request)["lab"] == "x" for c in responses.calls)
    assert all(str(c.request.url).startswith(BASE) for c in responses.calls)


@responses.activate
def test_limit_offset_stops_on_an_empty_page() -> None:
    def handler(q: dict[str, str]) -> Reply:
        return envelope(rows(2) if q["offset"] == "0" else [], count=50)

    serve("x", handler)
    assert collect(LimitOffset(2).pages(requests.Session().get, f"{BASE}/x")) == [0, 1]
    assert offsets() == [0, 2]


@responses.activate
def test_limit_offset_survives_a_listing_that_shrinks_while_paging() -> None:
    state = {"count": 6}

    def handler(q: dict[str, str]) -> Reply:
        offset = int(q["offset"])
        page = envelope(rows(2, offset)[: max(0, state["count"] - offset)], state["count"])
        state["count"] = 3  # rows deleted after the first page
        return page

    serve("x", handler)
    assert collect(LimitOffset(2).pages(requests.Session().get, f"{BASE}/x")) == [0, 1, 2]
    assert offsets() == [0, 2]


@responses.activate
def test_limit_offset_advances_by_what_a_capping_server_returned() -> None:
    data = rows(7)

    def handler(q: dict[str, str]) -> Reply:
        limit = min(int(q["limit"]), 3)  # the server caps silently, as Alyx does at 1000
        offset = int(q["offset"])
        return envelope(data[offset : offset + limit], 7)

    serve("x", handler)
    ids = collect(LimitOffset(5).pages(requests.Session().get, f"{BASE}/x"))
    assert ids == list(range(7))
    assert offsets() == [0, 3, 6]


def test_page_size_is_validated_against_the_maximum() -> None:
    paginator = LimitOffset(250, max_page_size=1000)
    assert paginator.page_size_for(None) == 250
    assert paginator.page_size_for(1000) == 1000
    with pytest.raises(ConfigError, match="above the maximum 1000"):
        paginator.page_size_for(5000)
    with pytest.raises(ConfigError):
        paginator.page_size_for(0)
    with pytest.raises(ValueError):
        LimitOffset(2000, max_page_size=1000)


@responses.activate
def test_a_server_ignoring_the_offset_is_a_pagination_error() -> None:
    serve("x", lambda q: envelope(rows(3), 100))
    with pytest.raises(PaginationError, match="same page twice"):
        list(LimitOffset(3).pages(requests.Session().get, f"{BASE}/x"))
    assert len(responses.calls) == 2


@responses.activate
def test_limit_offset_raises_http_errors_and_rejects_non_json() -> None:
    responses.add(responses.GET, f"{BASE}/err", status=500, json={"detail": "boom"})
    responses.add(responses.GET, f"{BASE}/html", body="<html>", content_type="text/html")
    responses.add(responses.GET, f"{BASE}/shape", json={"results": [1, 2], "count": 2})
    get = requests.Session().get
    with pytest.raises(HTTPStatusError, match="boom"):
        list(LimitOffset(2).pages(get, f"{BASE}/err"))
    with pytest.raises(PaginationError, match="not JSON"):
        list(LimitOffset(2).pages(get, f"{BASE}/html"))
    with pytest.raises(PaginationError, match="not objects"):
        list(LimitOffset(2).pages(get, f"{BASE}/shape"))


# --- HeaderTotal ----------------------------------------------------------------------------------


@responses.activate
def test_header_total_pages_bare_arrays_with_l_and_o() -> None:
    data = rows(5)

    def handler(q: dict[str, str]) -> Reply:
        limit, offset = int(q["l"]), int(q["o"])
        headers = {"Content-Type": "application/json", "X-Total-Count": "5"}
        return 200, headers, json.dumps(data[offset : offset + limit])

    serve("animals", handler)
    paginator = HeaderTotal(2)
    assert collect(paginator.pages(requests.Session().get, f"{BASE}/animals")) == list(range(5))
    assert [query(c.request)["o"] for c in responses.calls] == ["0", "2", "4"]


@responses.activate
def test_header_total_without_the_header_stops_at_a_short_page() -> None:
    data = rows(3)

    def handler(q: dict[str, str]) -> Reply:
        offset = int(q["o"])
        return 200, {}, json.dumps(data[offset : offset + 2])

    serve("animals", handler)
    assert collect(HeaderTotal(2).pages(requests.Session().get, f"{BASE}/animals")) == [0, 1, 2]
    assert len(responses.calls) == 2


# --- PageNumber -----------------------------------------------------------------------------------


@responses.activate
def test_page_number_pages_until_a_short_page() -> None:
    data = rows(5)

    def handler(q: dict[str, str]) -> Reply:
        size, number = int(q["size"]), int(q["p"])
        start = (number - 1) * size
        return 200, {}, json.dumps({"items": data[start : start + size]})

    serve("x", handler)
    paginator = PageNumber("p", "size", "items", page_size=2)
    assert collect(paginator.pages(requests.Session().get, f"{BASE}/x")) == list(range(5))
    assert [query(c.request)["p"] for c in responses.calls] == ["1", "2", "3"]


@responses.activate
def test_page_number_detects_a_server_ignoring_the_page() -> None:
    serve("x", lambda q: (200, {}, json.dumps({"results": rows(2)})))
    with pytest.raises(PaginationError, match="same page twice"):
        list(PageNumber(page_size=2).pages(requests.Session().get, f"{BASE}/x"))


# --- NextLink -------------------------------------------------------------------------------------


@responses.activate
def test_next_link_is_followed_on_the_same_host_even_when_it_says_http() -> None:
    responses.add(
        responses.GET,
        f"{BASE}/x",
        json={"results": rows(2), "next": "http://lims.test/x?page=2"},
        match=[responses.matchers.query_param_matcher({"size": "2"})],
    )
    responses.add(
        responses.GET,
        f"{BASE}/x",
        json={"results": rows(1, 2), "next": "/x?page=3"},
        match=[responses.matchers.query_param_matcher({"page": "2"})],
    )
    responses.add(
        responses.GET,
        f"{BASE}/x",
        json={"results": [], "next": None},
        match=[responses.matchers.query_param_matcher({"page": "3"})],
    )
    paginator = NextLink(size_param="size", page_size=2)
    assert collect(paginator.pages(requests.Session().get, f"{BASE}/x")) == [0, 1, 2]
    assert all(str(c.request.url).startswith("https://lims.test/") for c in responses.calls)


@responses.activate
def test_next_link_to_another_host_is_refused() -> None:
    responses.add(
        responses.GET, f"{BASE}/x", json={"results": rows(1), "next": "https://evil.test/x"}
    )
    with pytest.raises(PaginationError, match="another host"):
        list(NextLink().pages(requests.Session().get, f"{BASE}/x"))


@responses.activate
def test_next_link_loop_is_detected() -> None:
    responses.add(
        responses.GET,
        f"{BASE}/a",
        json={"results": rows(1), "next": f"{BASE}/b"},
    )
    responses.add(
        responses.GET,
        f"{BASE}/b",
        json={"results": rows(1, 1), "next": f"{BASE}/a"},
    )
    with pytest.raises(PaginationError, match="already read"):
        list(NextLink().pages(requests.Session().get, f"{BASE}/a"))


@responses.activate
def test_more_pages_than_the_count_implies_is_detected() -> None:
    def handler(q: dict[str, str]) -> Reply:
        n = int(q.get("n", "0"))
        # Always a new page and a new link, while claiming there are only 2 records.
        return envelope(rows(1, n), 2, f"{BASE}/x?n={n + 1}")

    serve("x", handler)
    with pytest.raises(PaginationError, match="only 2 records"):
        list(NextLink().pages(requests.Session().get, f"{BASE}/x"))
    assert len(responses.calls) <= 6
