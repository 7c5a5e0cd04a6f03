"""Alerts: an HTTP POST of a small JSON document to a webhook when something needs a person.

Events: ``failure`` (the first failed run of a streak), ``recovery`` (the first success after
failures) and ``quarantine`` (a run put new records into the quarantine). The document::

    {"event": "failure", "connector": "alyx", "selection": "alyx", "run_id": 12,
     "message": "...", "consecutive_failures": 1, "quarantined": 0,
     "host": "...", "time": "2025-01-01T02:00:00Z"}

Webhook URLs often carry their secret in the path or query (Slack, Teams, Mattermost), so the
URL is never logged: log lines name only its scheme and host. Delivery is best effort with a
short timeout; a failed delivery is logged and never fails a run.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

log = logging.getLogger(__name__)

EVENTS = ("failure", "recovery", "quarantine")


@dataclass
class Alert:
    """One alert; :meth:`document` is what the webhook receives."""

    event: str
    connector: str
    selection: str
    message: str
    run_id: int | None = None
    consecutive_failures: int = 0
    quarantined: int = 0
    host: str = field(default_factory=socket.gethostname)
    time: str = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    )

    def document(self) -> dict[str, Any]:
        """The JSON document posted to the webhook."""
        return asdict(self)


def redacted_url(url: str) -> str:
    """``https://hooks.example.org/…``: scheme and host only, never path, query or user."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…"


class Alerter:
    """Posts alerts to one webhook; without a URL it only logs them.

    ``events`` limits which events are sent (all by default).
    """

    def __init__(
        self,
        url: str | None,
        *,
        timeout: float = 10.0,
        events: tuple[str, ...] = EVENTS,
        session: requests.Session | None = None,
    ) -> None:
        self._url = url
        self.timeout = timeout
        self.events = events
        self.session = session or requests.Session()
        self.sent = 0
        self.failed = 0

    @property
    def target(self) -> str:
        """Where alerts go, safe to show."""
        return redacted_url(self._url) if self._url else "nowhere (no webhook_url)"

    def send(self, alert: Alert) -> bool:
        """Post one alert; True when the webhook answered 2xx. Never raises."""
        log.warning("alert %s for %s: %s", alert.event, alert.connector, alert.message)
        if not self._url or alert.event not in self.events:
            return False
        try:
            response = self.session.post(
                self._url, json=alert.document(), timeout=(min(self.timeout, 5.0), self.timeout)
            )
        except requests.RequestException as exc:
            # The exception's text holds the URL, path included: name only its class.
            self.failed += 1
            log.error("alert webhook %s unreachable (%s)", self.target, type(exc).__name__)
            return False
        if not response.ok:
            self.failed += 1
            log.error("alert webhook %s answered HTTP %s", self.target, response.status_code)
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        """Close the HTTP session."""
        self.session.close()
