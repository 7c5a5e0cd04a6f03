"""The fake-server toolkit for authors: record lists, recorded pages, paging styles, auth,
changes while serving, and the shared fault injection."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from limsync.connectors import HeaderTotal, LimitOffset, NextLink, PageNumber, Paginator
from limsync.errors import PaginationError
from limsync.testing.toolkit import (
    HeaderTotalPaging,
    NextLinkPaging,
    OffsetPaging,
    PageNumberPaging,
    RecordServer,
    make_records,
)

RECORDS = make_records(7, id=lambda i: i + 1, name="S{i}", lab="main")


@pytest.fixture
def server() -> Iterator[RecordServer]:
    srv = RecordServer(token="tok")
    srv.serve("offset", RECORDS, paging=OffsetPaging(), detail=True)
    srv.serve("header", RECORDS, paging=HeaderTotalPaging())
    srv.serve("numbered", RECORDS, paging=PageNumberPaging())
    srv.serve("linked", RECORDS, paging=NextLinkPaging())
    srv.serve("labs/{lab}/samples", RECORDS)
    srv.serve(
        "changes",
        make_records(3, id=lambda i: i, modified=lambda i: f"2026-01-0{i + 1}T00:00:00"),
        since=("since", "modified"),
        filters={"only": "id"},
    )
    srv.serve_pages("recorded", [{"items": [1, 2]}, {"items": [3]}], headers=[{"X-P": "1"}, {}])
    with srv:
        yield srv


def session() -> requests.Session:
    s = requests.Session()
    s.headers["Authorization"] = "Bearer tok"
    return s


def test_make_records_fills_templates_values_and_functions() -> None:
    assert RECORDS[2] == {"id": 3, "name": "S2", "lab": "main"}


@pytest.mark.parametrize(
    ("path", "paginator"),
    [
        ("offset", LimitOffset(page_size=3)),
        ("header", HeaderTotal(page_size=3)),
        ("numbered", PageNumber(page_size=3)),
        ("linked", NextLink(size_param="page_size", page_size=3)),
    ],
)
def test_each_paging_style_works_with_its_paginator(
    server: RecordServer, path: str, paginator: Paginator
) -> None:
    s = session()
    pages = list(paginator.pages(s.get, f"{server.url}/{path}"))
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [r["id"] for p in pages for r in p] == list(range(1, 8))


def test_requests_without_the_token_are_refused(server: RecordServer) -> None:
    assert requests.get(f"{server.url}/offset", timeout=5).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert requests.get(f"{server.url}/offset", headers=wrong, timeout=5).status_code == 401


def test_path_placeholders_filter_and_details_are_served(server: RecordServer) -> None:
    s = session()
    assert s.get(f"{server.url}/labs/main/samples").json()["count"] == 7
    assert s.get(f"{server.url}/labs/other/samples").json()["count"] == 0
    assert s.get(f"{server.url}/offset/3").json()["name"] == "S2"
    assert s.get(f"{server.url}/offset/99").status_code == 404


def test_since_and_filters(server: RecordServer) -> None:
    s = session()
    body = s.get(f"{server.url}/changes", params={"since": "2026-01-02T00:00:00"}).json()
    assert [r["id"] for r in body["results"]] == [1, 2]
    assert [r["id"] for r in s.get(f"{server.url}/changes?only=2").json()["results"]] == [2]


def test_recorded_pages_are_served_by_number(server: RecordServer) -> None:
    s = session()
    first = s.get(f"{server.url}/recorded")
    assert first.json() == {"items": [1, 2]} and first.headers["X-P"] == "1"
    assert s.get(f"{server.url}/recorded?page=2").json() == {"items": [3]}
    assert s.get(f"{server.url}/recorded?page=3").status_code == 404


def test_data_changes_while_serving(server: RecordServer) -> None:
    s = session()
    server.update("offset", 1, name="renamed")
    server.remove("offset", 7)
    server.add("offset", {"id": 8, "name": "S8", "lab": "main"})
    names = [r["name"] for r in s.get(f"{server.url}/offset?limit=50").json()["results"]]
    assert names[0] == "renamed" and "S6" not in names and names[-1] == "S8"
    with pytest.raises(KeyError, match="no record with key 99"):
        server.remove("offset", 99)


def test_faults_apply_as_on_every_fake(server: RecordServer) -> None:
    s = session()
    server.faults.set(error_burst=1, error_status=503)
    assert s.get(f"{server.url}/offset").status_code == 503
    assert s.get(f"{server.url}/offset").status_code == 200
    assert [r.fault for r in server.request_log][-2:] == ["error_burst", None]


def test_repeat_first_page_makes_the_paginators_detect_a_loop(server: RecordServer) -> None:
    server.faults.set(repeat_first_page=True)
    s = session()
    assert s.get(f"{server.url}/offset").json()["results"][0]["id"] == 1
    assert s.get(f"{server.url}/offset?offset=3").json()["results"][0]["id"] == 1
    server.faults.set(repeat_first_page=True)  # forgets the first pages seen so far
    with pytest.raises(PaginationError, match="same page twice"):
        list(LimitOffset(page_size=3).pages(s.get, f"{server.url}/offset"))
    server.faults.reset()
    assert s.get(f"{server.url}/offset?offset=3").json()["results"][0]["id"] == 4
