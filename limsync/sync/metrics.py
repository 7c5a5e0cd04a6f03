"""The daemon's metrics (prometheus-client) and its ``/metrics`` and ``/healthz`` endpoints.

A private :class:`~prometheus_client.CollectorRegistry` (never the global default one), so two
daemons in one process, or tests, never share counters. Exposed metrics:

==========================================  ========================================================
``limsync_runs_total``                      runs by ``connector``, ``kind`` (sync, populate) and
                                            ``outcome`` (success, failed, interrupted, skipped)
``limsync_records_total``                   source records by ``connector`` and ``outcome``
                                            (inserted, updated, unchanged, gone, quarantined)
``limsync_last_success_timestamp_seconds``  per ``connector``, Unix time of the last success
``limsync_run_duration_seconds``            histogram of run durations per ``connector``
``limsync_consecutive_failures``            per ``connector``: failed runs since the last success
``limsync_quarantine_size``                 per ``connector``: open quarantine items
``limsync_populate_backlog``                per ``table`` ("outbox": unprocessed change rows)
``limsync_populate_errors``                 per ``table``: keys whose ``make`` failed
``limsync_healthy``                         1 when ``/healthz`` says healthy, else 0
==========================================  ========================================================

``/healthz`` answers 200 with a JSON document while every connector has succeeded within its
maximum age (``[daemon] health_max_age``, or per connector), else 503 with the same document
naming the stale connectors. A connector that never succeeded is measured from the daemon's start.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from limsync.errors import ConfigError

log = logging.getLogger(__name__)

RECORD_OUTCOMES = ("inserted", "updated", "unchanged", "gone", "quarantined")
RUN_OUTCOMES = ("success", "failed", "interrupted", "skipped")
# Record outcomes from the run log's counts: records, not rows ("new" records are inserted).
_COUNT_KEYS = {"inserted": "new", "updated": "changed", "unchanged": "unchanged",
               "gone": "gone", "quarantined": "quarantined"}  # fmt: skip
_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)


class Metrics:
    """The daemon's metrics and its health verdict.

    ``connectors``: the connectors the daemon syncs (their series start at 0).
    ``max_age``: per connector, seconds without a success before ``/healthz`` turns unhealthy
    (None: never).
    """

    def __init__(
        self,
        connectors: Iterable[str],
        max_age: Mapping[str, float | None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        self.started = clock()
        self.connectors = list(connectors)
        self.max_age = dict(max_age)
        self.last_success: dict[str, float] = {}
        self._lock = threading.Lock()
        r = self.registry = CollectorRegistry()
        self.runs = Counter("limsync_runs", "Runs by connector, kind and outcome.",
                            ["connector", "kind", "outcome"], registry=r)  # fmt: skip
        self.records = Counter("limsync_records", "Source records by connector and outcome.",
                               ["connector", "outcome"], registry=r)  # fmt: skip
        self.last_success_time = Gauge(
            "limsync_last_success_timestamp_seconds", "Unix time of the last successful run.",
            ["connector"], registry=r,
        )  # fmt: skip
        self.duration = Histogram("limsync_run_duration_seconds", "Run duration.", ["connector"],
                                  buckets=_BUCKETS, registry=r)  # fmt: skip
        self.failures = Gauge("limsync_consecutive_failures", "Failed runs since the last success.",
                              ["connector"], registry=r)  # fmt: skip
        self.quarantine = Gauge("limsync_quarantine_size", "Open quarantine items.",
                                ["connector"], registry=r)  # fmt: skip
        self.backlog = Gauge("limsync_populate_backlog", "Pending populate work per table.",
                             ["table"], registry=r)  # fmt: skip
        self.populate_errors = Gauge("limsync_populate_errors", "Keys whose make failed.",
                                     ["table"], registry=r)  # fmt: skip
        self.healthy = Gauge("limsync_healthy", "1 when /healthz is healthy.", registry=r)
        for name in self.connectors:
            for outcome in RUN_OUTCOMES:
                self.runs.labels(name, "sync", outcome)
            for outcome in RECORD_OUTCOMES:
                self.records.labels(name, outcome)
            self.failures.labels(name).set(0)
        self.healthy.set(1)

    # -- updates

    def observe_run(
        self,
        connector: str,
        kind: str,
        outcome: str,
        counts: Mapping[str, Any] | None = None,
        seconds: float | None = None,
    ) -> None:
        """Count one run and its records (``counts`` as the run log stores them)."""
        self.runs.labels(connector, kind, outcome).inc()
        for outcome_name, key in _COUNT_KEYS.items():
            n = int((counts or {}).get(key) or 0)
            if n:
                self.records.labels(connector, outcome_name).inc(n)
        if seconds is not None and outcome != "skipped":
            self.duration.labels(connector).observe(seconds)
        if outcome == "success":
            self.set_last_success(connector, self.clock())

    def set_last_success(self, connector: str, when: float) -> None:
        """Record a success time (also used at start, from the run log)."""
        with self._lock:
            if when > self.last_success.get(connector, 0.0):
                self.last_success[connector] = when
                self.last_success_time.labels(connector).set(when)

    def set_failures(self, connector: str, n: int) -> None:
        """The connector's current streak of failed runs."""
        self.failures.labels(connector).set(n)

    def set_state(
        self,
        quarantine: Mapping[str, int],
        backlog: Mapping[str, int],
        errors: Mapping[str, int] | None = None,
    ) -> None:
        """Gauges read from the database: quarantine sizes, populate backlog and errors."""
        for name, n in quarantine.items():
            self.quarantine.labels(name).set(n)
        for table, n in backlog.items():
            self.backlog.labels(table).set(n)
        for table, n in (errors or {}).items():
            self.populate_errors.labels(table).set(n)

    # -- health

    def health(self) -> tuple[bool, dict[str, Any]]:
        """The health verdict and a JSON-able document explaining it."""
        now = self.clock()
        doc: dict[str, Any] = {}
        ok = True
        with self._lock:
            for name in self.connectors:
                limit = self.max_age.get(name)
                last = self.last_success.get(name)
                age = now - (last if last is not None else self.started)
                good = limit is None or age <= limit
                ok = ok and good
                doc[name] = {
                    "healthy": good,
                    "last_success": _iso(last) if last is not None else None,
                    "seconds_since_success": round(age, 3),
                    "max_age_seconds": limit,
                }
        self.healthy.set(1 if ok else 0)
        return ok, {"healthy": ok, "connectors": doc}

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        self.health()  # keeps limsync_healthy current at every scrape
        return bytes(generate_latest(self.registry))


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_address(address: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"`` -> ``("127.0.0.1", 9464)``; ``"[::1]:9464"`` for IPv6."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(
            f"daemon.metrics_address: {address!r} is not HOST:PORT (e.g. 127.0.0.1:9464)"
        )
    return host, int(port)


class MetricsServer:
    """``/metrics`` and ``/healthz`` over HTTP in a background thread."""

    def __init__(self, metrics: Metrics, address: str) -> None:
        self.metrics = metrics
        host, port = parse_address(address)
        handler = _handler(metrics)
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ConfigError(
                f"daemon.metrics_address: cannot listen on {address}: {exc.strerror}"
            ) from None
        self.httpd.daemon_threads = True
        self.address = f"{host}:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="limsync-metrics", daemon=True
        )

    def start(self) -> None:
        """Serve in the background."""
        self._thread.start()
        log.info("metrics on http://%s/metrics, health on http://%s/healthz", *[self.address] * 2)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(metrics: Metrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, CONTENT_TYPE_LATEST, metrics.exposition())
            elif path == "/healthz":
                ok, doc = metrics.health()
                self._reply(200 if ok else 503, "application/json", json.dumps(doc).encode())
            else:
                self._reply(404, "text/plain", b"not found: try /metrics or /healthz\n")

        def _reply(self, status: int, ctype: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("metrics http: " + format, *args)

    return Handler
