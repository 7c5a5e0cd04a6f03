"""Logging for the CLI: readable text on a terminal or JSON lines, secrets redacted."""

from __future__ import annotations

import json
import logging
import re
import sys

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


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        for key in ("run_id", "connector", "stream"):
            if hasattr(record, key):
                doc[key] = getattr(record, key)
        if record.exc_info:
            doc["exception"] = scrub(self.formatException(record.exc_info))
        return json.dumps(doc, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def setup_logging(verbose: int, fmt: str) -> None:
    """Send limsync's logs to stderr at WARNING, INFO (-v) or DEBUG (-vv)."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("limsync")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
