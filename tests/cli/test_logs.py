"""CLI logging: JSON lines with run id, connector and stream; readable text; secrets redacted."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from limsync.cli import logs
from limsync.config.settings import Settings
from limsync.sync import logcontext


@pytest.fixture
def captured(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    """Leave the limsync logger and the registered secrets as they were."""
    root = logging.getLogger("limsync")
    handlers, level, propagate = root.handlers[:], root.level, root.propagate
    secrets = set(logs._SECRETS)
    yield capsys
    root.handlers[:] = handlers
    root.setLevel(level)
    root.propagate = propagate
    logs._SECRETS.clear()
    logs._SECRETS.update(secrets)


def test_json_lines_carry_the_run_context(captured: pytest.CaptureFixture[str]) -> None:
    logs.setup_logging(1, "json")
    log = logging.getLogger("limsync.sync.engine")
    log.info("outside a run")
    with logcontext.bound(connector="alyx", run_id=12), logcontext.bound(stream="sessions"):
        log.warning("page %d failed", 3)
    first, second = (json.loads(line) for line in captured.readouterr().err.splitlines())
    assert (first["run_id"], first["connector"], first["stream"]) == (None, None, None)
    assert second["message"] == "page 3 failed" and second["level"] == "warning"
    assert (second["run_id"], second["connector"], second["stream"]) == (12, "alyx", "sessions")
    assert second["logger"] == "limsync.sync.engine"


def test_text_lines_name_connector_stream_and_run(captured: pytest.CaptureFixture[str]) -> None:
    logs.setup_logging(1, "text")
    with logcontext.bound(connector="alyx", stream="sessions", run_id=7):
        logging.getLogger("limsync.sync.engine").info("done")
    assert "limsync.sync.engine [alyx.sessions #7]: done" in captured.readouterr().err


def test_settings_secrets_are_redacted_everywhere(captured: pytest.CaptureFixture[str]) -> None:
    settings = Settings(
        database_url="mysql+pymysql://sync:db-pa55word@127.0.0.1/lab",
        connectors={"alyx": {"type": "alyx", "base_url": "http://127.0.0.1:9", "username": "u",
                             "password": "alyx-pa55word"}},
        alerts={"webhook_url": "https://hooks.example.org/services/T0/B0/xoxb-hook-key"},
    )  # fmt: skip
    logs.register_settings_secrets(settings)
    logs.setup_logging(0, "json")
    log = logging.getLogger("limsync.test")
    log.error("db %s, alyx %s", "db-pa55word", "alyx-pa55word")
    log.error("posting to https://hooks.example.org/services/T0/B0/xoxb-hook-key failed")
    try:
        raise RuntimeError("login with alyx-pa55word refused")
    except RuntimeError:
        log.exception("crash")
    text = captured.readouterr().err
    for secret in ("db-pa55word", "alyx-pa55word", "xoxb-hook-key", "/services/T0"):
        assert secret not in text
    assert text.count("***") >= 4


@pytest.mark.parametrize(
    "line, secret",
    [("GET mysql://user:hunter22@db/x", "hunter22"),
     ("Authorization: Token 0123456789abcdef", "0123456789abcdef"),
     ("Authorization: Bearer eyJhbGciOi.x.y", "eyJhbGciOi.x.y"),
     ('{"password": "swordfish1"}', "swordfish1"),
     ("url?token=abcd1234&x=1", "abcd1234")],
)  # fmt: skip
def test_credential_looking_text_is_redacted_without_registration(line: str, secret: str) -> None:
    assert secret not in logs.scrub(line) and "***" in logs.scrub(line)
