"""Alert webhooks: the JSON document, delivery to a local receiver, no secrets in the log."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from limsync.sync.alerts import Alert, Alerter, redacted_url


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]], list[int]]]:
    """A local webhook: its URL (with a secret path), the documents it got, status to answer."""
    got: list[dict[str, Any]] = []
    answer = [204]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(answer[0])
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/hook/T0KEN-xyz?key=abc", got, answer
    httpd.shutdown()
    httpd.server_close()


def test_an_alert_is_posted_as_json(receiver: Any) -> None:
    url, got, _ = receiver
    alerter = Alerter(url, timeout=5)
    assert alerter.send(Alert("failure", "alyx", "alyx.sessions", "HTTPStatusError: 503", 7, 1))
    assert len(got) == 1
    doc = got[0]
    assert doc["event"] == "failure" and doc["connector"] == "alyx" and doc["run_id"] == 7
    assert doc["consecutive_failures"] == 1 and doc["selection"] == "alyx.sessions"
    assert set(doc) >= {"message", "host", "time", "quarantined"}


def test_events_can_be_turned_off(receiver: Any) -> None:
    url, got, _ = receiver
    alerter = Alerter(url, events=("failure",))
    assert not alerter.send(Alert("recovery", "alyx", "alyx", "ok"))
    assert got == []


def test_failed_deliveries_never_log_the_url(
    receiver: Any, caplog: pytest.LogCaptureFixture
) -> None:
    url, _, answer = receiver
    answer[0] = 500
    caplog.set_level(logging.INFO, logger="limsync")
    assert not Alerter(url).send(Alert("failure", "alyx", "alyx", "boom"))
    unreachable = "http://127.0.0.1:9/hook/T0KEN-xyz"  # port 9 (discard): refused
    assert not Alerter(unreachable, timeout=1).send(Alert("failure", "alyx", "alyx", "boom"))
    text = caplog.text
    assert "HTTP 500" in text and "ConnectionError" in text
    assert "T0KEN" not in text and "key=abc" not in text


def test_redacted_url_keeps_scheme_and_host_only() -> None:
    assert redacted_url("https://u:p@hooks.example.org:8443/a/b?c=d") == (
        "https://hooks.example.org:8443/…"
    )
