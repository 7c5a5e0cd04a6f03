"""``limsync daemon`` end to end: a daemon process with one-second intervals against a fake Alyx.

Each test starts the daemon as ``limsync --log-format json daemon`` in a subprocess and watches
it through its JSON log lines, the run log, ``/metrics``, ``/healthz`` and a local HTTP
receiver for alerts, all on 127.0.0.1.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from limsync.pipeline import state
from limsync.pipeline.database import Database
from limsync.sync.maps import alyx as ibl
from limsync.testing import Colony, FakeAlyx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(
    path: Path,
    db_url: str,
    prefix: str,
    alyx_url: str,
    *,
    schedule: list[dict[str, Any]],
    daemon: dict[str, Any],
    alerts: dict[str, Any] | None = None,
    **alyx: Any,
) -> Path:
    """A limsync.toml for the fake Alyx; the password comes from the environment."""

    def value(v: Any) -> str:
        return json.dumps(v)

    section = {"type": "alyx", "base_url": alyx_url, "username": FakeAlyx.DEFAULT_USERNAME,
               "rate_limit_per_minute": 1_000_000, "backoff_factor": 0.01, "backoff_max": 0.05,
               "max_retries": 2, "page_size": 50, **alyx}  # fmt: skip
    lines = [f"database_url = {value(db_url)}", f"schema_prefix = {value(prefix)}",
             "batch_size = 20", "", "[connectors.alyx]"]  # fmt: skip
    lines += [f"{k} = {value(v)}" for k, v in section.items()]
    lines += ["", "[daemon]"] + [f"{k} = {value(v)}" for k, v in daemon.items()]
    if alerts:
        lines += ["", "[alerts]"] + [f"{k} = {value(v)}" for k, v in alerts.items()]
    for entry in schedule:
        lines += ["", "[[schedule]]"] + [f"{k} = {value(v)}" for k, v in entry.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class DaemonProcess:
    """A daemon subprocess whose JSON log lines are collected as they come."""

    def __init__(self, config: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO),
               "LIMSYNC_CONNECTORS__ALYX__PASSWORD": FakeAlyx.DEFAULT_PASSWORD}  # fmt: skip
        code = "from limsync.cli.main import main; main()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, "--log-format", "json", "daemon", "--config", str(config)],
            env=env, cwd=config.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            text = line.decode(errors="replace").rstrip("\n")
            self.raw.append(text)
            try:
                self.lines.append(json.loads(text))
            except ValueError:
                continue

    def messages(self, contains: str = "") -> list[str]:
        """Log messages containing ``contains``."""
        return [m["message"] for m in list(self.lines) if contains in m["message"]]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send ``sig`` and wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        """Kill it if still running (test clean-up)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_text(self) -> str:
        """Everything it wrote to stderr (for failure messages)."""
        return "\n".join(self.raw[-40:])


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """Daemons started by a test; killed afterwards if still running."""
    started: list[DaemonProcess] = []
    yield started
    for d in started:
        d.kill()


def wait_for(
    what: str, check: Callable[[], Any], timeout: float = 20.0, *, proc: Any = None
) -> Any:
    """Poll ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc is not None and proc.proc.poll() is not None:
            pytest.fail(f"daemon exited ({proc.proc.returncode}) waiting for {what}:\n"
                        + proc.log_text())  # fmt: skip
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}" + (f":\n{proc.log_text()}" if proc else ""))


def alyx_runs(db: Database) -> list[dict[str, Any]]:
    """The run log of connector alyx, oldest first."""
    return list(reversed(state.runs(db, connector="alyx", limit=1000)))


def small_colony() -> Colony:
    """A colony that syncs in a fraction of a second."""
    return Colony.generate(seed=5, n_subjects=12, sessions_per_subject=1,
                           weighings_per_subject=2, water_admins_per_subject=1)  # fmt: skip


class Receiver:
    """A local HTTP server that collects the JSON documents POSTed to it."""

    def __init__(self) -> None:
        received = self.received = []  # type: list[dict[str, Any]]
        paths = self.paths = []  # type: list[str]

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(json.loads(body))
                paths.append(self.path)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hooks/s3cr3t-path-token"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def events(self) -> list[str]:
        """The event names received so far."""
        return [d["event"] for d in self.received]

    def close(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()


def get(url: str) -> tuple[int, bytes]:
    """Status and body of a GET (errors included)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` parsed: (sample name, sorted labels) -> value."""
    status, body = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


# --- schedule, failures, backoff, alerts, recovery, metrics and health ----------------------


def test_daemon_runs_fails_backs_off_recovers_and_reports(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    db_url = f"sqlite:///{tmp_path / 'daemon.db'}"
    port = free_port()
    receiver = Receiver()
    try:
        with FakeAlyx(small_colony()) as alyx:
            config = write_config(
                tmp_path / "limsync.toml", db_url, "", alyx.url,
                schedule=[{"select": "alyx", "interval": "1s"}],
                daemon={"metrics_address": f"127.0.0.1:{port}", "health_max_age": "3s",
                        "backoff_base": "1s", "backoff_cap": "2s"},
                alerts={"webhook_url": receiver.url, "timeout": 5},
            )  # fmt: skip
            d = DaemonProcess(config)
            daemons.append(d)
            db = Database(db_url)
            try:
                ok_runs = lambda: [r for r in alyx_runs(db) if r["status"] == "success"]  # noqa: E731
                wait_for("two successful runs", lambda: len(ok_runs()) >= 2, proc=d)
                assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200

                alyx.faults.set(error_burst=10**6, error_status=503)
                failed = lambda: [r for r in alyx_runs(db) if r["status"] == "failed"]  # noqa: E731
                wait_for("three failed runs", lambda: len(failed()) >= 3, proc=d)
                _, body = wait_for(
                    "healthz to turn unhealthy",
                    lambda: (r := get(f"http://127.0.0.1:{port}/healthz"))[0] == 503 and r,
                    proc=d,
                )
                health = json.loads(body)
                assert health["healthy"] is False
                assert health["connectors"]["alyx"]["healthy"] is False

                alyx.faults.reset()
                wait_for("recovery alert", lambda: "recovery" in receiver.events(), proc=d)
                wait_for(
                    "healthz healthy again",
                    lambda: get(f"http://127.0.0.1:{port}/healthz")[0] == 200,
                    proc=d,
                )
                # A record the source model refuses lands in the quarantine: an alert says so.
                alyx.colony.add_subject(nickname="odd_sex_mouse", sex="X")
                wait_for("quarantine alert", lambda: "quarantine" in receiver.events(), proc=d)
                metrics, runs = consistent_snapshot(port, db, d)
            finally:
                db.dispose()
            assert d.stop() == 0, d.log_text()
    finally:
        receiver.close()

    # A failed run is in the run log with the error's class and message.
    failures = [r for r in runs if r["status"] == "failed"]
    assert len(failures) >= 3
    for r in failures:
        assert "503" in r["error"] and "Error: " in r["error"], r["error"]
    # Backoff doubles from 1 s up to the 2 s cap; no failed run starts before its backoff ended.
    delays = [m.rsplit("backing off ", 1)[1] for m in d.messages("in a row)")]
    assert delays[:3] == ["1s", "2s", "2s"], delays
    streak = [r for r in runs if r["status"] == "failed"][:3]
    for (a, b), wait in zip(itertools.pairwise(streak), (1.0, 2.0), strict=False):
        assert (b["started_at"] - a["finished_at"]).total_seconds() >= wait - 0.01
    # Alerts: one on the first failure of the streak, one on recovery; the URL never logged.
    assert receiver.events().count("failure") == 1
    assert receiver.events().count("recovery") == 1
    first = next(a for a in receiver.received if a["event"] == "failure")
    assert first["connector"] == "alyx" and "503" in first["message"]
    assert receiver.events().count("quarantine") == 1  # once: the same record stays there
    quarantine = next(a for a in receiver.received if a["event"] == "quarantine")
    assert quarantine["quarantined"] == 1 and quarantine["connector"] == "alyx"
    assert "s3cr3t-path-token" not in "\n".join(d.raw)
    # Every line carries the run context fields.
    assert all({"run_id", "connector", "stream"} <= set(m) for m in d.lines)
    assert any(m["connector"] == "alyx" and m["run_id"] for m in d.lines)

    # /metrics counts match the run log.
    def sample(name: str, **labels: str) -> float:
        return metrics.get((name, tuple(sorted(labels.items()))), 0.0)

    for outcome in ("success", "failed"):
        n = sum(1 for r in runs if r["status"] == outcome)
        assert sample("limsync_runs_total", connector="alyx", kind="sync", outcome=outcome) == n
    for outcome, key in (("inserted", "new"), ("updated", "changed"), ("unchanged", "unchanged"),
                         ("quarantined", "quarantined")):  # fmt: skip
        n = sum(int(r["counts"].get(key, 0)) for r in runs)
        assert sample("limsync_records_total", connector="alyx", outcome=outcome) == n
    assert sample("limsync_records_total", connector="alyx", outcome="inserted") > 0
    last_ok = max(r["finished_at"] for r in runs if r["status"] == "success")
    stamp = sample("limsync_last_success_timestamp_seconds", connector="alyx")
    assert abs(stamp - last_ok.replace(tzinfo=__import__("datetime").UTC).timestamp()) < 5
    assert sample("limsync_consecutive_failures", connector="alyx") == 0
    assert sample("limsync_healthy") == 1
    assert sample("limsync_quarantine_size", connector="alyx") == 1
    assert sample("limsync_records_total", connector="alyx", outcome="quarantined") > 0
    assert ("limsync_populate_backlog", (("table", "outbox"),)) in metrics


def consistent_snapshot(
    port: int, db: Database, d: DaemonProcess
) -> tuple[dict[Any, float], list[dict[str, Any]]]:
    """Metrics and run log read between two identical scrapes with no run in progress."""

    def attempt() -> tuple[dict[Any, float], list[dict[str, Any]]] | None:
        before = scrape(port)
        runs = alyx_runs(db)
        after = scrape(port)
        if before != after or any(r["status"] == "running" for r in runs):
            return None
        return after, runs

    result: tuple[dict[Any, float], list[dict[str, Any]]] = wait_for(
        "a quiet moment", attempt, proc=d
    )
    return result


# --- graceful and immediate stops leave no partial batch -----------------------------------


def assert_no_partial_batch(db: Database) -> None:
    """Every ledger entry's rows are there and every row has its ledger entry."""
    st = state.ensure(db)
    with db.engine.connect() as conn:
        import sqlalchemy as sa

        ledger = dict(
            conn.execute(
                sa.select(st.ledger.c.stream, sa.func.count()).group_by(st.ledger.c.stream)
            ).all()
        )
    for stream, table in (("subjects", ibl.Subject), ("sessions", ibl.Session),
                          ("weighings", ibl.Weighing)):  # fmt: skip
        assert ledger.get(stream, 0) == db.count(table), (stream, ledger)


def subjects(db: Database) -> int:
    """Rows in the subject table; 0 while it does not exist yet."""
    try:
        return db.count(ibl.Subject)
    except Exception:
        return 0


def slow_daemon(
    tmp_path: Path, db_url: str, prefix: str, alyx: FakeAlyx, **daemon: Any
) -> DaemonProcess:
    """A daemon whose first run takes a couple of seconds (small pages, a slow server)."""
    alyx.faults.set(delay=0.02)
    config = write_config(
        tmp_path / "limsync.toml", db_url, prefix, alyx.url, page_size=5,
        schedule=[{"select": "alyx", "interval": "1s"}],
        daemon={"metrics_address": "", **daemon},
    )  # fmt: skip
    return DaemonProcess(config)


def test_sigterm_during_a_run_commits_the_batch_and_exits_0(
    tmp_path: Path,
    db: Database,
    db_url: str,
    schema_prefix: str,
    daemons: list[DaemonProcess],
) -> None:
    with FakeAlyx(small_colony()) as alyx:
        d = slow_daemon(tmp_path, db_url, schema_prefix, alyx)
        daemons.append(d)
        wait_for("a run with a few batches written",
                 lambda: alyx.requests > 12 and subjects(db) > 0, proc=d)  # fmt: skip
        code = d.stop(timeout=30)
    assert code == 0, d.log_text()
    runs = alyx_runs(db)
    assert runs and runs[-1]["status"] == "interrupted", runs
    assert not [r for r in runs if r["status"] in ("running", "failed")]
    assert_no_partial_batch(db)


def test_sigint_stops_as_gracefully_as_sigterm(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    """Ctrl-C on a daemon in a terminal: the batch commits, the run is interrupted, exit 0."""
    db_url = f"sqlite:///{tmp_path / 'int.db'}"
    db = Database(db_url)
    try:
        with FakeAlyx(small_colony()) as alyx:
            d = slow_daemon(tmp_path, db_url, "", alyx)
            daemons.append(d)
            wait_for("a run with a few batches written",
                     lambda: alyx.requests > 12 and subjects(db) > 0, proc=d)  # fmt: skip
            code = d.stop(signal.SIGINT, timeout=30)
        assert code == 0, d.log_text()
        assert d.messages("signal 2: finishing the current batch")
        runs = alyx_runs(db)
        assert runs and runs[-1]["status"] == "interrupted", runs
        assert_no_partial_batch(db)
    finally:
        db.dispose()


def test_a_second_signal_stops_at_once_without_a_partial_batch(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    db_url = f"sqlite:///{tmp_path / 'hard.db'}"
    db = Database(db_url)
    try:
        with FakeAlyx(small_colony()) as alyx:
            d = slow_daemon(tmp_path, db_url, "", alyx)
            daemons.append(d)
            wait_for("a run with a few batches written",
                     lambda: alyx.requests > 12 and subjects(db) > 0, proc=d)  # fmt: skip
            # A slow request in flight: the first signal alone would wait for it; the second
            # interrupts it, and with it the run.
            alyx.faults.set(delay=1.5)
            seen = alyx.requests
            wait_for("a slow request", lambda: alyx.requests > seen, proc=d)
            d.proc.send_signal(signal.SIGTERM)
            wait_for("the first signal", lambda: d.messages("finishing the current batch"))
            code = d.stop(timeout=30)
        assert code == 128 + signal.SIGTERM, d.log_text()
        assert d.messages("stopping at once")
        runs = alyx_runs(db)
        assert runs and runs[-1]["status"] == "interrupted", runs
        assert "HardStop" in runs[-1]["error"]
        assert_no_partial_batch(db)
    finally:
        db.dispose()


def test_a_stop_that_takes_longer_than_stop_timeout_becomes_immediate(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    """One signal, and a batch that cannot finish in time: the daemon still exits, boundedly."""
    db_url = f"sqlite:///{tmp_path / 'timeout.db'}"
    db = Database(db_url)
    try:
        with FakeAlyx(small_colony()) as alyx:
            d = slow_daemon(tmp_path, db_url, "", alyx, stop_timeout="1s")
            daemons.append(d)
            wait_for("a run with a few batches written",
                     lambda: alyx.requests > 12 and subjects(db) > 0, proc=d)  # fmt: skip
            alyx.faults.set(delay=3.0)  # each request now outlasts stop_timeout
            seen = alyx.requests
            wait_for("a slow request", lambda: alyx.requests > seen, proc=d)
            code = d.stop(signal.SIGTERM, timeout=30)  # one signal only
        assert code == 128 + signal.SIGTERM, d.log_text()
        assert d.messages("after stop_timeout: stopping at once")
        runs = alyx_runs(db)
        assert runs and runs[-1]["status"] == "interrupted", runs
        assert_no_partial_batch(db)
    finally:
        db.dispose()


# --- two daemons on one database never sync a connector at the same time -------------------
# On every backend: MariaDB's GET_LOCK, PostgreSQL's advisory lock, SQLite's lock row.


def test_two_daemons_never_overlap(
    tmp_path: Path,
    db: Database,
    db_url: str,
    schema_prefix: str,
    daemons: list[DaemonProcess],
) -> None:
    with FakeAlyx(small_colony()) as alyx:
        # Each request slowed so that a run (~20 requests re-syncing) takes longer than the 1 s
        # interval: the two daemons must contend for the lock.
        alyx.faults.set(delay=0.1)
        for i in range(2):
            home = tmp_path / f"d{i}"
            home.mkdir()
            config = write_config(
                home / "limsync.toml", db_url, schema_prefix, alyx.url, page_size=10,
                schedule=[{"select": "alyx", "interval": "1s"}], daemon={"metrics_address": ""},
            )  # fmt: skip
            daemons.append(DaemonProcess(config))
            x = daemons[-1]
            wait_for("the daemon to start", lambda x=x: x.messages("daemon started"), proc=x)
        wait_for("a lock skip", lambda: any(x.messages("skipped alyx") for x in daemons),
                 proc=daemons[0])  # fmt: skip
        wait_for(
            "four finished runs",
            lambda: len([r for r in alyx_runs(db) if r["status"] == "success"]) >= 4,
        )
        for x in daemons:
            assert x.stop() == 0, x.log_text()
    runs = [r for r in alyx_runs(db) if r["status"] != "running"]
    spans = sorted((r["started_at"], r["finished_at"]) for r in runs)
    for (_, end), (begin, _) in itertools.pairwise(spans):
        assert end <= begin, f"two runs of alyx overlap: {spans}"
    skip = next(m for x in daemons for m in x.messages("skipped alyx"))
    assert "another run holds the lock" in skip and "pid" in skip
