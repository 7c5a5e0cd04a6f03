"""The reusable fake HTTP server: routing, keep-alive, counters, the log and fault injection."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from limsync.testing import Faults
from limsync.testing.fakeserver import FakeServer, Reply, Request


def _boom(request: Request) -> Reply:
    raise RuntimeError("handler exploded")


def _make_server(**kwargs: Any) -> FakeServer:
    server = FakeServer(**kwargs)
    server.route("GET", "/items", lambda req: Reply(200, {}, {"items": [1, 2, 3]}))
    server.route(
        "GET",
        "/items/{name}",
        lambda req, name: Reply(200, {}, {"name": name, "port": req.client_port}),
    )
    server.route("DELETE", "/items/{name}", lambda req, name: Reply(204, {}, b""))
    server.route("POST", "/echo", lambda req: Reply(201, {"X-Echo": "yes"}, {"got": req.json()}))
    server.route("GET", "/text", lambda req: Reply(200, {}, "plain words"))
    server.route("GET", "/boom", _boom)
    return server


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with _make_server() as srv:
        yield srv


def test_binds_loopback_on_an_ephemeral_port() -> None:
    with _make_server() as one, _make_server() as two:
        assert one.url.startswith("http://127.0.0.1:")
        assert one.port > 0
        assert one.port != two.port
        assert requests.get(f"{two.url}/items", timeout=5).json() == {"items": [1, 2, 3]}


def test_routes_by_method_and_pattern(server: FakeServer) -> None:
    r = requests.get(f"{server.url}/items/a%20b", timeout=5)
    assert r.json()["name"] == "a b"  # path parameters are percent-decoded
    r = requests.post(f"{server.url}/echo", json={"x": 1}, timeout=5)
    assert (r.status_code, r.headers["X-Echo"], r.json()) == (201, "yes", {"got": {"x": 1}})
    r = requests.get(f"{server.url}/text", timeout=5)
    assert r.text == "plain words"
    assert r.headers["Content-Type"].startswith("text/plain")
    assert requests.delete(f"{server.url}/items/x", timeout=5).status_code == 204


def test_unknown_path_is_404_and_wrong_method_405_with_allow(server: FakeServer) -> None:
    assert requests.get(f"{server.url}/nope", timeout=5).status_code == 404
    r = requests.patch(f"{server.url}/items/x", json={}, timeout=5)
    assert r.status_code == 405
    assert r.headers["Allow"] == "GET, DELETE, HEAD, OPTIONS"
    assert r.json() == {"detail": 'Method "PATCH" not allowed.', "status_code": 405}


def test_head_sends_headers_without_body(server: FakeServer) -> None:
    r = requests.head(f"{server.url}/items", timeout=5)
    assert r.status_code == 200
    assert int(r.headers["Content-Length"]) == len(b'{"items":[1,2,3]}')
    assert r.content == b""


def test_a_failing_handler_answers_500(server: FakeServer) -> None:
    r = requests.get(f"{server.url}/boom", timeout=5)
    assert r.status_code == 500
    assert r.json()["detail"] == "handler exploded"


def test_keep_alive_reuses_one_connection(server: FakeServer) -> None:
    with requests.Session() as session:
        first = session.get(f"{server.url}/items/a", timeout=5)
        second = session.get(f"{server.url}/items/b", timeout=5)
    assert first.raw.version == 11
    assert "close" not in first.headers.get("Connection", "")
    assert first.json()["port"] == second.json()["port"]


def test_counters_count_every_request_and_reset(server: FakeServer) -> None:
    for path in ("/items", "/items", "/items/a", "/nope"):
        requests.get(f"{server.url}{path}", timeout=5)
    assert server.requests == 4
    assert server.requests_by_path["/items"] == 2
    assert server.requests_by_route["GET /items/{name}"] == 1
    assert server.requests_by_route["GET <unmatched>"] == 1
    server.reset_counters()
    assert server.requests == 0
    assert not server.requests_by_path
    assert server.request_log == []


def test_request_log_never_holds_credentials(server: FakeServer) -> None:
    requests.get(
        f"{server.url}/items",
        params={"password": "hunter2", "api_token": "t0k3n", "limit": "5"},
        headers={"Authorization": "Token s3cr3t-key"},
        timeout=5,
    )
    requests.post(f"{server.url}/echo", json={"password": "b0dy-secret"}, timeout=5)
    text = repr(server.request_log)
    for secret in ("hunter2", "t0k3n", "s3cr3t-key", "b0dy-secret"):
        assert secret not in text
    first = server.request_log[0]
    assert (first.method, first.path, first.status) == ("GET", "/items", 200)
    assert "limit=5" in first.query
    assert "password=***" in first.query


def test_base_path_prefixes_every_route() -> None:
    with _make_server(base_path="api/") as srv:
        assert srv.url.endswith("/api")
        assert requests.get(f"{srv.url}/items", timeout=5).status_code == 200
        outside = srv.url.removesuffix("/api") + "/items"
        assert requests.get(outside, timeout=5).status_code == 404


def test_stop_closes_idle_keep_alive_connections() -> None:
    srv = _make_server().start()
    with requests.Session() as session:
        assert session.get(f"{srv.url}/items", timeout=5).status_code == 200
        url = srv.url
        srv.stop()
        with pytest.raises(requests.ConnectionError):
            session.get(f"{url}/items", timeout=5)
    srv.stop()  # stopping twice is harmless


# --- faults ---------------------------------------------------------------------------------------


def _statuses(server: FakeServer, n: int, path: str = "/items") -> list[int]:
    return [requests.get(f"{server.url}{path}", timeout=5).status_code for _ in range(n)]


def test_error_burst_answers_the_next_n_requests_with_an_error(server: FakeServer) -> None:
    server.faults.set(error_burst=2, error_status=502)
    assert _statuses(server, 3) == [502, 502, 200]
    assert [r.fault for r in server.request_log] == ["error_burst", "error_burst", None]


def test_throttle_answers_429_with_retry_after(server: FakeServer) -> None:
    server.faults.set(throttle=2, retry_after=7)
    first = requests.get(f"{server.url}/items", timeout=5)
    assert first.status_code == 429
    assert first.headers["Retry-After"] == "7"
    assert _statuses(server, 2) == [429, 200]


def test_throttle_every_m_requests_until_switched_off(server: FakeServer) -> None:
    server.faults.set(throttle_every=3)
    assert _statuses(server, 7) == [200, 200, 429, 200, 200, 429, 200]
    server.faults.set(throttle_every=0)
    assert _statuses(server, 3) == [200, 200, 200]


def test_delay_slows_every_response(server: FakeServer) -> None:
    server.faults.delay = 0.15
    started = time.perf_counter()
    assert _statuses(server, 2) == [200, 200]
    assert time.perf_counter() - started >= 0.3


def test_malformed_json_truncates_the_next_json_bodies(server: FakeServer) -> None:
    server.faults.set(malformed_json=1)
    assert requests.get(f"{server.url}/text", timeout=5).text == "plain words"  # not JSON
    broken = requests.get(f"{server.url}/items", timeout=5)
    assert broken.status_code == 200
    with pytest.raises(ValueError):
        broken.json()
    assert requests.get(f"{server.url}/items", timeout=5).json() == {"items": [1, 2, 3]}


def test_drop_connection_closes_without_a_response(server: FakeServer) -> None:
    server.faults.set(drop_connection=1)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/items", timeout=5)
    assert _statuses(server, 1) == [200]
    dropped = server.request_log[0]
    assert (dropped.status, dropped.fault) == (None, "drop_connection")
    assert server.requests == 2


def test_faults_are_consumed_exactly_once_under_concurrency(server: FakeServer) -> None:
    server.faults.set(error_burst=10, error_status=503)
    results: list[int] = []
    lock = threading.Lock()

    def call() -> None:
        status = requests.get(f"{server.url}/items", timeout=5).status_code
        with lock:
            results.append(status)

    threads = [threading.Thread(target=call) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200] * 14 + [503] * 10


def test_faults_set_reset_and_validation() -> None:
    faults = Faults()
    faults.set(error_burst=3, delay=1.5, throttle_every=4)
    assert (faults.error_burst, faults.delay, faults.throttle_every) == (3, 1.5, 4)
    faults.reset()
    assert faults == Faults()
    with pytest.raises(TypeError, match="no_such_fault"):
        faults.set(no_such_fault=1)
