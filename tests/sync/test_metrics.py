"""Metrics: counters from runs, gauges, the health verdict and the HTTP endpoints."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from limsync.errors import ConfigError
from limsync.sync.metrics import Metrics, MetricsServer, parse_address


class Clock:
    """A clock tests move by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(m.exposition().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_runs_and_records_are_counted() -> None:
    m = Metrics(["alyx"], {"alyx": None})
    m.observe_run("alyx", "sync", "success", {"new": 3, "changed": 1, "unchanged": 5}, 1.5)
    m.observe_run("alyx", "sync", "failed", {}, 0.2)
    m.observe_run("alyx", "sync", "skipped")
    s = samples(m)
    labels = (("connector", "alyx"), ("kind", "sync"))
    outcomes = ("success", "failed", "skipped", "interrupted")
    runs = {o: s[("limsync_runs_total", (*labels, ("outcome", o)))] for o in outcomes}
    assert runs == {"success": 1, "failed": 1, "skipped": 1, "interrupted": 0}
    rec = {k[1][1][1]: v for k, v in s.items() if k[0] == "limsync_records_total"}
    assert rec == {"inserted": 3, "updated": 1, "unchanged": 5, "gone": 0, "quarantined": 0}
    assert s[("limsync_run_duration_seconds_count", (("connector", "alyx"),))] == 2


def test_health_turns_unhealthy_after_max_age_and_back() -> None:
    clock = Clock()
    m = Metrics(["alyx", "pyrat"], {"alyx": 60.0, "pyrat": None}, clock=clock)
    assert m.health()[0]
    clock.now += 61  # never succeeded: measured from the start
    ok, doc = m.health()
    assert not ok and doc["connectors"]["alyx"]["healthy"] is False
    assert doc["connectors"]["pyrat"]["healthy"] is True
    m.observe_run("alyx", "sync", "success", {}, 1.0)
    assert m.health()[0]
    assert samples(m)[("limsync_healthy", ())] == 1


def test_endpoints_serve_metrics_and_health() -> None:
    clock = Clock()
    m = Metrics(["alyx"], {"alyx": 10.0}, clock=clock)
    m.set_state({"alyx": 2}, {"outbox": 5}, {"x.y": 1})
    server = MetricsServer(m, "127.0.0.1:0")
    server.start()
    base = f"http://{server.address}"
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
            body = r.read().decode()
        assert 'limsync_quarantine_size{connector="alyx"} 2.0' in body
        assert 'limsync_populate_backlog{table="outbox"} 5.0' in body
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as r:
            assert r.status == 200 and json.loads(r.read())["healthy"] is True
        clock.now += 11
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{base}/healthz", timeout=5)
        assert info.value.code == 503
        assert json.loads(info.value.read())["connectors"]["alyx"]["healthy"] is False
    finally:
        server.stop()


@pytest.mark.parametrize("address", ["9464", "localhost:", "host:port", ":99999"])
def test_bad_addresses_are_config_errors(address: str) -> None:
    with pytest.raises(ConfigError, match="metrics_address"):
        parse_address(address)
