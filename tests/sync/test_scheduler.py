"""The daemon's schedule: jobs from settings, triggers, configuration errors at start, status."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from limsync.cli.main import cli
from limsync.config.settings import ScheduleEntry, Settings
from limsync.errors import ConfigError
from limsync.pipeline import state
from limsync.pipeline.database import Database
from limsync.sync.metrics import Metrics
from limsync.sync.schedule import build_trigger, job_specs, next_runs
from limsync.sync.scheduler import Daemon

ALYX = {"type": "alyx", "base_url": "http://127.0.0.1:9", "username": "u", "password": "p"}
NOW = dt.datetime(2025, 3, 1, 12, 0, 30, tzinfo=dt.UTC)


def settings(tmp_path: Path, schedule: list[dict[str, Any]], **extra: Any) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
                    connectors={"alyx": ALYX}, schedule=schedule, **extra)  # fmt: skip


def test_entries_become_jobs(tmp_path: Path) -> None:
    s = settings(tmp_path, [{"select": "alyx", "cron": "0 2 * * *"},
                            {"select": "alyx.sessions", "interval": "15m",
                             "mode": "incremental"}])  # fmt: skip
    specs = job_specs(s)
    assert [(j.connector, j.streams, j.entry.mode) for j in specs] == [
        ("alyx", None, "full"), ("alyx", ["sessions"], "incremental")
    ]  # fmt: skip
    assert specs[1].label == "alyx.sessions (incremental, every 15m)"


def test_an_unknown_connector_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"schedule\[0\].*unknown connector 'pyrat'"):
        job_specs(settings(tmp_path, [{"select": "pyrat", "interval": "1h"}]))


@pytest.mark.parametrize(
    "entry, problem",
    [({"select": "alyx", "interval": "15 minutes"}, "not a duration"),
     ({"select": "alyx", "cron": "61 * * * *"}, "not a cron expression"),
     ({"select": "alyx"}, "exactly one of interval or cron")],
)  # fmt: skip
def test_bad_triggers_fail_validation(entry: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        ScheduleEntry.model_validate(entry)


def test_cron_fires_in_utc_and_intervals_count_from_the_last_run() -> None:
    cron = build_trigger(ScheduleEntry(select="alyx", cron="0 2 * * *"), now=NOW)
    assert cron.get_next_fire_time(None, NOW) == dt.datetime(2025, 3, 2, 2, tzinfo=dt.UTC)
    entry = ScheduleEntry(select="alyx", interval="15m")
    fresh = build_trigger(entry, now=NOW)
    assert fresh.get_next_fire_time(None, NOW) == NOW  # never ran: at once
    recent = build_trigger(entry, last_start=NOW - dt.timedelta(minutes=5), now=NOW)
    assert recent.get_next_fire_time(None, NOW) == NOW + dt.timedelta(minutes=10)
    overdue = build_trigger(entry, last_start=NOW - dt.timedelta(hours=5), now=NOW)
    assert overdue.get_next_fire_time(None, NOW) == NOW


def test_jobs_run_one_at_a_time_coalesced_with_a_misfire_grace_in_utc(tmp_path: Path) -> None:
    s = settings(tmp_path, [{"select": "alyx", "interval": "15m", "jitter": 30},
                            {"select": "alyx", "cron": "0 2 * * *", "jitter": 5}],
                 daemon={"misfire_grace": "10m"})  # fmt: skip
    daemon = Daemon(s)
    daemon.specs = job_specs(s)
    db = Database(s.database_url)
    try:
        sched = daemon._build_scheduler(db)
        # Defaults are applied when the scheduler starts: start it paused (nothing runs), in a
        # thread of its own since it blocks, and wait until it has.
        runner = threading.Thread(target=sched.start, kwargs={"paused": True}, daemon=True)
        runner.start()
        deadline = time.monotonic() + 30
        while not sched.running:
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.01)
        jobs = sched.get_jobs()
        assert [j.name for j in jobs] == ["alyx (full, every 15m)", "alyx (full, cron 0 2 * * *)"]
        for job in jobs:
            assert (job.max_instances, job.coalesce, job.misfire_grace_time) == (1, True, 600)
            assert str(job.trigger.timezone) == "UTC"
        assert [j.trigger.jitter for j in jobs] == [30, 5]
        sched.shutdown(wait=False)
        runner.join(timeout=30)
        assert not runner.is_alive()
    finally:
        db.dispose()


def test_config_errors_stop_the_daemon_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no schedule entries"):
        Daemon(settings(tmp_path, [])).check()
    bad_stream = settings(tmp_path, [{"select": "alyx.nothing", "interval": "1h"}])
    with pytest.raises(ConfigError, match="has no stream\\(s\\) nothing"):
        Daemon(bad_stream).check()
    health = settings(tmp_path, [{"select": "alyx", "interval": "1h"}],
                      daemon={"health_max_age_by_connector": {"pyrat": "1h"}})  # fmt: skip
    with pytest.raises(ConfigError, match="pyrat not scheduled"):
        Daemon(health).check()
    hook = settings(tmp_path, [{"select": "alyx", "interval": "1h"}],
                    alerts={"webhook_url": "ftp://x"})  # fmt: skip
    with pytest.raises(ConfigError, match="webhook_url"):
        Daemon(hook).check()


def test_the_cli_reports_a_config_error_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "limsync.toml"
    config.write_text(f'database_url = "sqlite:///{tmp_path / "x.db"}"\n', encoding="utf-8")
    result = CliRunner().invoke(cli, ["daemon", "--config", str(config)])
    assert result.exit_code == 2
    assert "no schedule entries" in result.output


def test_status_shows_next_run_and_staleness_and_runs_filter(tmp_path: Path) -> None:
    s = settings(tmp_path, [{"select": "alyx", "interval": "1h"}])
    db = Database(s.database_url)
    try:
        ok = state.start_run(db, "alyx", "sync", "full")
        state.finish_run(db, ok, "success", {"read": 3, "new": 3})
        bad = state.start_run(db, "alyx", "populate", "full")
        state.finish_run(db, bad, "failed", {}, "PopulateError: x")
        rows = next_runs(s, db)
        assert rows[0]["next_run"] is not None
    finally:
        db.dispose()
    config = tmp_path / "limsync.toml"
    config.write_text(
        f'database_url = "{s.database_url}"\n[connectors.alyx]\n'
        + "".join(f'{k} = "{v}"\n' for k, v in ALYX.items())
        + '[[schedule]]\nselect = "alyx"\ninterval = "1h"\n',
        encoding="utf-8",
    )
    runner = CliRunner()
    status = runner.invoke(cli, ["status", "--config", str(config), "--json"])
    assert status.exit_code == 0, status.output
    row = json.loads(status.stdout)[0]
    assert row["next_run"] and row["stale_seconds"] is not None
    assert row["populate_backlog"] == {"outbox": 0}
    table = runner.invoke(cli, ["status", "--config", str(config)])
    assert table.exit_code == 0 and "alyx" in table.output
    runs = runner.invoke(cli, ["runs", "--config", str(config), "--json", "--kind", "populate",
                               "--since", "1h"])  # fmt: skip
    assert runs.exit_code == 0, runs.output
    assert [r["run_id"] for r in json.loads(runs.stdout)] == [bad]
    later = runner.invoke(cli, ["runs", "--config", str(config), "--json",
                                "--since", "2999-01-01"])  # fmt: skip
    assert json.loads(later.stdout) == []


def test_a_populate_entry_populates_and_is_in_the_run_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """select = "populate": the configured computed tables are made, the run is logged."""
    from limsync.pipeline import upsert

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "pipeline"))
    import populate_tables as tables

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    s = Settings(database_url=url, schedule=[{"select": "populate", "interval": "1h"}],
                 populate={"tables": ["populate_tables.SessionStat"]},
                 daemon={"metrics_address": ""})  # fmt: skip
    db = Database(url)
    db.declare(tables.upstream, tables.derived)
    with db.transaction() as conn:
        upsert(db, conn, tables.Subject, [{"subject_id": 1}, {"subject_id": 2}])
        upsert(db, conn, tables.Session, [
            {"subject_id": s, "session_no": n, "value": float(n)} for s in (1, 2) for n in (1, 2, 3)
        ])  # fmt: skip
    daemon = Daemon(s)
    (spec,) = daemon.check()
    daemon.db = Database(url)
    metrics = daemon.metrics = Metrics(daemon.connectors, {}, clock=daemon.clock)
    try:
        daemon._job(spec)  # what the scheduler calls when the entry falls due
        assert db.count(tables.SessionStat) == 6
        assert db.count(tables.SessionStat.Channel) == 12
        (run,) = state.runs(db, connector="populate")
        assert run["status"] == "success" and run["kind"] == "populate"

        # A key whose make fails: the run goes on, but it failed, for the daemon too.
        with db.transaction() as conn:
            upsert(db, conn, tables.Session, [{"subject_id": 1, "session_no": 9, "value": -1.0}])
        daemon._job(spec)
    finally:
        daemon.db.dispose()
    failed, _ = state.runs(db, connector="populate")
    assert failed["status"] == "failed" and "1 key(s) failed" in failed["error"]
    assert daemon.failures == {"populate": 1} and "populate" in daemon.not_before
    labels = {"connector": "populate", "kind": "populate", "outcome": "failed"}
    assert metrics.registry.get_sample_value("limsync_runs_total", labels) == 1
    assert db.count(tables.SessionStat) == 6
    db.dispose()


def test_the_populate_after_a_sync_alerts_on_its_own_streak(tmp_path: Path) -> None:
    """Failed keys after a successful sync: one failure alert, one recovery alert, and the
    connector's sync neither fails nor backs off."""
    from limsync.pipeline.populate.run import PopulateReport, TableReport

    got: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        hook = f"http://127.0.0.1:{httpd.server_address[1]}/hook"
        s = settings(tmp_path, [{"select": "alyx", "interval": "1h"}],
                     alerts={"webhook_url": hook}, daemon={"metrics_address": ""})  # fmt: skip
        daemon = Daemon(s)
        (spec,) = job_specs(s)

        def report(failed: int, run_id: int) -> PopulateReport:
            return PopulateReport("outbox", run_id, [TableReport("analysis.__stat", failed=failed)])

        daemon._after_sync_populate(spec, report(2, 11))
        daemon._after_sync_populate(spec, report(1, 12))  # still failing: no second alert
        daemon._after_sync_populate(spec, report(0, 13))
        daemon._after_sync_populate(spec, report(0, 14))  # still fine: nothing
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert [(d["event"], d["connector"], d["run_id"]) for d in got] == [
        ("failure", "populate", 11),
        ("recovery", "populate", 13),
    ]
    assert got[0]["selection"] == "alyx (after sync)"
    assert "2 key(s) failed" in got[0]["message"]
    assert got[1]["message"] == "succeeded after 2 failed run(s)"
    assert daemon.failures == {} and daemon.not_before == {}  # the sync itself is not backed off
