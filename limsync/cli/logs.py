"""Logging for the CLI: readable text on a terminal or JSON lines, secrets redacted.

Every line carries the run id, connector and stream bound by the engine
(:mod:`limsync.sync.logcontext`): as fields of a JSON line, or as ``[connector.stream #run]``
in text.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

from limsync.sync import logcontext

_SECRETS: set[str] = set()
_PATTERNS = (
    (re.compile(r"(://[^:/@\s]+:)[^@\s]+@"), r"\1***@"),  # user:password@ in URLs
    (re.compile(r"(Token |Bearer |Basic )[A-Za-z0-9+/=._-]+"), r"\1***"),
    (re.compile(r"((?:password|token|secret)[\"']?\s*[=:]\s*[\"']?)[^\s\"'&,]+", re.I), r"\1***"),
)


def register_secret(value: str) -> None:
    """Never print this value in a log line (settings' secrets are registered at start)."""
    if value and len(value) >= 4:
        _SECRETS.add(value)


def scrub(text: str) -> str:
    """Redact registered secrets and credential-looking patterns."""
    for secret in _SECRETS:
        text = text.replace(secret, "***")
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


def register_settings_secrets(settings: Any) -> None:
    """Register every secret a :class:`~limsync.config.settings.Settings` holds: connector
    secrets, the database URL's password and the alert webhook URL (its path is often a key)."""
    from sqlalchemy.engine import make_url

    for name in settings.connectors:
        for value in settings.connector_settings(name).secrets():
            register_secret(value)
    try:
        password = make_url(settings.database_url).password
    except Exception:  # an unreadable URL is reported elsewhere; nothing to register
        password = None
    if password:
        register_secret(str(password))
    webhook = settings.alerts.webhook_url
    if webhook is not None:
        register_secret(webhook.get_secret_value())


class _ContextFilter(logging.Filter):
    """Copies the bound run id, connector and stream onto each record (None when unbound)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in logcontext.current().items():
            if getattr(record, key, None) is None:
                setattr(record, key, value)
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        for key in logcontext.FIELDS:
            doc[key] = getattr(record, key, None)
        if record.exc_info:
            doc["exception"] = scrub(self.formatException(record.exc_info))
        return json.dumps(doc, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        where = ".".join(
            str(v)
            for v in (getattr(record, "connector", None), getattr(record, "stream", None))
            if v
        )
        run_id = getattr(record, "run_id", None)
        if run_id:
            where += f" #{run_id}"
        text = super().format(record)
        if where:
            head, sep, tail = text.partition(": ")
            text = f"{head} [{where}]{sep}{tail}"
        return scrub(text)


def setup_logging(verbose: int, fmt: str) -> None:
    """Send limsync's logs to stderr at WARNING, INFO (-v) or DEBUG (-vv)."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("limsync")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
