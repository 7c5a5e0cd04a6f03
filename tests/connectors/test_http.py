"""Tests for limsync.connectors.http: session factory, retries, rate limit, error translation."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import responses
from pydantic import SecretStr

from limsync.connectors.base import ConnectorSettings
from limsync.connectors.http import (
    LimsyncAdapter,
    LimsyncRetry,
    RateLimiter,
    build_session,
    error_for_response,
    parse_retry_after,
    raise_for_response,
    redact_url,
    send,
)
from limsync.errors import (
    AuthenticationError,
    HTTPStatusError,
    SourceUnreachableError,
)

PASSWORD = "hunter2-Sup3rSecret"
BASE = "https://lims.test"


class SecretSettings(ConnectorSettings):
    password: SecretStr


def settings(**overrides: object) -> SecretSettings:
    values: dict[str, object] = {
        "type": "test",
        "password": PASSWORD,
        "backoff_factor": 0.0,
        "max_retries": 3,
    }
    values.update(overrides)
    return SecretSettings.model_validate(values)


class Recorder:
    """A fake sleep that records what it was asked to wait."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


# --- a tiny real server on 127.0.0.1 (exercises urllib3's own retry loop) -------------------------

Reply = tuple[int, dict[str, str], bytes]


@contextmanager
def serve(replies: Callable[[str], Reply], delay: float = 0.0) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if delay:
                time.sleep(delay)
            status, headers, body = replies(self.path)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)  # the client may have given up (timeout tests)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- session construction -------------------------------------------------------------------------


@responses.activate
def test_every_request_gets_the_configured_timeouts_and_user_agent() -> None:
    responses.add(responses.GET, f"{BASE}/x", json=[])
    session = build_session(
        settings(connect_timeout=2.5, read_timeout=7.0), user_agent="limsync/test"
    )
    session.get(f"{BASE}/x")
    call = responses.calls[0]
    assert call.request.req_kwargs["timeout"] == (2.5, 7.0)  # type: ignore[attr-defined]
    assert call.request.headers["User-Agent"] == "limsync/test"


@responses.activate
def test_tls_verification_is_on_by_default_and_off_only_when_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    responses.add(responses.GET, f"{BASE}/x", json=[])
    build_session(settings(), user_agent="t").get(f"{BASE}/x")
    # True, or the CA bundle path that REQUESTS_CA_BUNDLE names: verification is on either way.
    assert responses.calls[0].request.req_kwargs["verify"] not in (False, None)  # type: ignore[attr-defined]
    # requests would let this variable override a session's verify=False; the setting wins.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/bundle.pem")
    build_session(settings(verify_tls=False), user_agent="t").get(f"{BASE}/x")
    assert responses.calls[1].request.req_kwargs["verify"] is False  # type: ignore[attr-defined]


def test_retry_policy_follows_the_settings() -> None:
    session = build_session(
        settings(max_retries=4, backoff_factor=0.25, backoff_max=9, retry_after_max=30),
        user_agent="t",
        retry_post=(f"{BASE}/auth-token",),
    )
    adapter = session.get_adapter(f"{BASE}/subjects")
    assert isinstance(adapter, LimsyncAdapter)
    retry = adapter.max_retries
    assert isinstance(retry, LimsyncRetry)
    assert (retry.total, retry.connect, retry.read, retry.status) == (4, 4, 4, 4)
    assert set(retry.status_forcelist) == {429, 502, 503, 504}
    assert retry.allowed_methods == frozenset({"GET", "HEAD"})
    assert retry.backoff_max == 9 and retry.backoff_jitter == 0.25
    assert retry.respect_retry_after_header and retry.retry_after_limit == 30
    login = session.get_adapter(f"{BASE}/auth-token")
    assert isinstance(login, LimsyncAdapter)
    assert "POST" in (login.max_retries.allowed_methods or ())


# --- retries (responses) --------------------------------------------------------------------------


@responses.activate
def test_503_then_success_is_retried() -> None:
    responses.add(responses.GET, f"{BASE}/x", status=503, json={"detail": "down"})
    responses.add(responses.GET, f"{BASE}/x", json={"ok": 1})
    response = build_session(settings(), user_agent="t").get(f"{BASE}/x")
    assert response.json() == {"ok": 1}
    assert len(responses.calls) == 2


@responses.activate
def test_429_with_retry_after_is_retried() -> None:
    responses.add(
        responses.GET,
        f"{BASE}/x",
        status=429,
        headers={"Retry-After": "2"},
        json={"detail": "Request was throttled. Expected available in 2 seconds."},
    )
    responses.add(responses.GET, f"{BASE}/x", json={"ok": 1})
    assert build_session(settings(), user_agent="t").get(f"{BASE}/x").json() == {"ok": 1}


@responses.activate
def test_retries_exhausted_give_the_last_status_and_server_detail() -> None:
    responses.add(responses.GET, f"{BASE}/x", status=503, json={"detail": "maintenance"})
    session = build_session(settings(max_retries=2), user_agent="t")
    with pytest.raises(HTTPStatusError) as info:
        raise_for_response(send(session, "GET", f"{BASE}/x"))
    assert len(responses.calls) == 3
    assert info.value.status == 503
    assert "maintenance" in str(info.value) and "GET https://lims.test/x" in str(info.value)


@responses.activate
def test_retry_after_above_the_limit_fails_at_once_with_a_clear_error() -> None:
    responses.add(responses.GET, f"{BASE}/x", status=429, headers={"Retry-After": "3600"})
    responses.add(responses.GET, f"{BASE}/x", json={})
    session = build_session(settings(retry_after_max=300), user_agent="t")
    started = time.monotonic()
    with pytest.raises(HTTPStatusError) as info:
        session.get(f"{BASE}/x")
    assert time.monotonic() - started < 1
    assert info.value.status == 429
    assert "3600" in str(info.value) and "retry_after_max" in str(info.value)
    assert len(responses.calls) == 1


@responses.activate
def test_post_is_retried_only_on_the_declared_urls() -> None:
    responses.add(responses.POST, f"{BASE}/auth-token", status=503)
    responses.add(responses.POST, f"{BASE}/auth-token", json={"token": "t"})
    responses.add(responses.POST, f"{BASE}/other", status=503)
    session = build_session(settings(), user_agent="t", retry_post=(f"{BASE}/auth-token",))
    assert session.post(f"{BASE}/auth-token").json() == {"token": "t"}
    assert session.post(f"{BASE}/other").status_code == 503
    assert [c.request.url for c in responses.calls].count(f"{BASE}/other") == 1


# --- retries (real urllib3 loop, sleeping recorded) -----------------------------------------------


def test_retry_after_is_slept_with_jitter_against_a_real_server() -> None:
    seen: list[str] = []

    def replies(path: str) -> Reply:
        seen.append(path)
        if len(seen) == 1:
            return 429, {"Retry-After": "2", "Content-Type": "application/json"}, b"{}"
        return 200, {"Content-Type": "application/json"}, b'{"ok": true}'

    sleep = Recorder()
    with serve(replies) as base:
        session = build_session(settings(backoff_factor=0.5), user_agent="t", sleep=sleep)
        assert session.get(f"{base}/x").json() == {"ok": True}
    assert len(seen) == 2
    assert len(sleep.calls) == 1 and 2.0 <= sleep.calls[0] <= 2.5


def test_backoff_grows_between_retries_against_a_real_server() -> None:
    def replies(path: str) -> Reply:
        return 503, {"Content-Type": "application/json"}, b'{"detail": "busy"}'

    sleep = Recorder()
    with serve(replies) as base:
        session = build_session(
            settings(max_retries=3, backoff_factor=1.0, backoff_max=100),
            user_agent="t",
            sleep=sleep,
        )
        assert session.get(f"{base}/x").status_code == 503
    # urllib3: no wait before the first retry, then factor * 2**(n-1) plus up to one factor.
    assert len(sleep.calls) == 2
    assert 2.0 <= sleep.calls[0] <= 3.0 and 4.0 <= sleep.calls[1] <= 5.0


def test_retry_after_http_date_is_understood() -> None:
    assert parse_retry_after("120") == 120
    assert parse_retry_after("not a date") is None
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 100))
    seconds = parse_retry_after(future)
    assert seconds is not None and 95 <= seconds <= 101


# --- unreachable ----------------------------------------------------------------------------------


def test_connection_refused_is_source_unreachable_naming_the_url() -> None:
    url = f"http://127.0.0.1:{closed_port()}/subjects?limit=1"
    session = build_session(settings(max_retries=1), user_agent="t", sleep=Recorder())
    with pytest.raises(SourceUnreachableError) as info:
        send(session, "GET", url)
    message = str(info.value)
    assert "connection refused" in message
    assert f"GET {url}" in message


def test_read_timeout_is_source_unreachable() -> None:
    def replies(path: str) -> Reply:
        return 200, {}, b"[]"

    with serve(replies, delay=0.5) as base:
        session = build_session(settings(max_retries=0, read_timeout=0.1), user_agent="t")
        with pytest.raises(SourceUnreachableError, match="timed out"):
            send(session, "GET", f"{base}/slow")


# --- error translation and secrets ----------------------------------------------------------------


def test_redact_url_removes_credentials_and_secret_query_values() -> None:
    url = "https://bot:pw@alyx.test:8443/api/subjects?token=abc&limit=5&password=x&api_key=k"
    assert redact_url(url) == (
        "https://alyx.test:8443/api/subjects?token=***&limit=5&password=***&api_key=***"
    )
    assert redact_url("http://[::1]:80/x") == "http://[::1]:80/x"


@responses.activate
def test_error_statuses_map_to_our_errors_with_the_server_detail() -> None:
    responses.add(
        responses.GET,
        f"{BASE}/a",
        status=403,
        json={"detail": "Authentication credentials were not provided.", "status_code": 403},
    )
    responses.add(responses.GET, f"{BASE}/b", status=401, body="nope")
    responses.add(
        responses.GET, f"{BASE}/c", status=400, json={"lab": ["required"], "status_code": 400}
    )
    responses.add(responses.GET, f"{BASE}/d", status=502, body="<html>" + "x" * 1000 + "</html>")
    session = requests.Session()
    auth = error_for_response(session.get(f"{BASE}/a"))
    assert isinstance(auth, AuthenticationError) and auth.status == 403
    assert auth.detail == "Authentication credentials were not provided."
    assert str(auth).startswith("GET https://lims.test/a failed with HTTP 403")
    assert isinstance(error_for_response(session.get(f"{BASE}/b")), AuthenticationError)
    bad = error_for_response(session.get(f"{BASE}/c"))
    assert type(bad) is HTTPStatusError and bad.detail == '{"lab":["required"]}'
    assert len(error_for_response(session.get(f"{BASE}/d")).detail) <= 300
    raise_for_response(responses_ok())


def responses_ok() -> requests.Response:
    response = requests.Response()
    response.status_code = 200
    return response


def test_secrets_never_appear_in_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    config = settings(max_retries=1, retry_after_max=5)
    secrets = config.secrets()
    assert secrets == [PASSWORD]
    errors: list[Exception] = []

    # Connection refused, with the password in the URL's user info and query.
    url = f"http://bot:{PASSWORD}@127.0.0.1:{closed_port()}/x?password={PASSWORD}"
    session = build_session(config, user_agent="t", sleep=Recorder())
    with pytest.raises(SourceUnreachableError) as refused:
        send(session, "GET", url, secrets=secrets)
    errors.append(refused.value)

    with responses.RequestsMock() as mock:
        # The server echoes the password back in its error body.
        mock.add(responses.POST, f"{BASE}/login", status=401, json={"detail": f"bad {PASSWORD}"})
        mock.add(responses.GET, f"{BASE}/busy", status=503, headers={"Retry-After": "999"})
        mock.add(responses.GET, f"{BASE}/fail", status=500, body=f"trace: {PASSWORD}")
        session = build_session(config, user_agent="t", sleep=Recorder())
        response = send(session, "POST", f"{BASE}/login", data={"password": PASSWORD})
        with pytest.raises(AuthenticationError) as auth:
            raise_for_response(response, secrets=secrets)
        errors.append(auth.value)
        with pytest.raises(HTTPStatusError) as busy:
            send(session, "GET", f"{BASE}/busy?token={PASSWORD}", secrets=secrets)
        errors.append(busy.value)
        with pytest.raises(HTTPStatusError) as failed:
            raise_for_response(send(session, "GET", f"{BASE}/fail"), secrets=secrets)
        errors.append(failed.value)

    for error in errors:
        assert PASSWORD not in str(error)
        assert PASSWORD not in repr(error)
        assert error.__cause__ is None or PASSWORD not in str(error.__cause__)
    assert PASSWORD not in caplog.text
    assert PASSWORD not in repr(config)


# --- rate limiting --------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_rate_limiter_spaces_requests_after_the_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(120, clock=clock, sleep=clock.sleep)  # 2/s, burst of 2
    waits = [limiter.acquire() for _ in range(6)]
    assert waits[:2] == [0.0, 0.0]
    assert waits[2:] == pytest.approx([0.5, 0.5, 0.5, 0.5])
    clock.now += 10  # idle: the bucket refills, but only up to its capacity
    assert [limiter.acquire() for _ in range(3)] == pytest.approx([0.0, 0.0, 0.5])


def test_rate_limiter_reservations_are_thread_safe() -> None:
    clock = FakeClock()
    waits: list[float] = []
    lock = threading.Lock()
    # The clock does not move while threads sleep, so each reservation must queue behind the
    # previous ones: 1 token in the bucket, then one more every second.
    limiter = RateLimiter(60, clock=clock, sleep=lambda s: None)

    def worker() -> None:
        wait = limiter.acquire()
        with lock:
            waits.append(wait)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(waits) == pytest.approx([0, 1, 2, 3, 4, 5, 6, 7])


@responses.activate
def test_session_applies_the_rate_limit_to_every_request() -> None:
    responses.add(responses.GET, f"{BASE}/x", json=[])
    clock = FakeClock()
    limiter = RateLimiter(60, clock=clock, sleep=clock.sleep)
    session = build_session(settings(rate_limit_per_minute=60), user_agent="t", limiter=limiter)
    for _ in range(3):
        session.get(f"{BASE}/x")
    assert clock.sleeps == pytest.approx([1.0, 1.0])


def test_session_builds_its_limiter_from_the_settings() -> None:
    session = build_session(settings(rate_limit_per_minute=500), user_agent="t")
    adapter = session.get_adapter(f"{BASE}/x")
    assert adapter.limiter is not None  # type: ignore[attr-defined]
    assert adapter.limiter.rate == pytest.approx(500 / 60)  # type: ignore[attr-defined]
    unlimited = build_session(settings(), user_agent="t").get_adapter(f"{BASE}/x")
    assert unlimited.limiter is None  # type: ignore[attr-defined]
