"""The scheduled sync daemon (``limsync daemon``): APScheduler 3.x built from ``[[schedule]]``.

The schedule lives in ``limsync.toml`` and is rebuilt at every start (an in-memory job store, no
state of its own). Each entry becomes one job: a selection (``alyx``, ``alyx.sessions``,
``populate``), a cron expression or an interval, optional jitter; ``max_instances=1``,
coalescing of missed runs and a misfire grace time, all in UTC.

Runs execute one at a time in the main thread (APScheduler's ``DebugExecutor`` under a
``BlockingScheduler``). That keeps stopping simple and safe:

- the first SIGTERM or SIGINT sets a stop flag: the engine finishes the batch it is writing,
  records the run as ``interrupted`` and returns, and the daemon exits 0. If that takes longer
  than ``[daemon] stop_timeout``, the daemon escalates as if a second signal came;
- a second signal raises :class:`HardStop` (a ``KeyboardInterrupt``) in the main thread, i.e.
  inside the run: the open batch's transaction rolls back (no partial batch), the run is
  recorded as ``interrupted``, and the daemon exits with 128 + the signal number.

No overlap: the engine's writer lock holds across processes and hosts, so when another daemon or
a manual run holds it, the run is skipped and logged with who holds it (from the run log); a
skip is not a failure. A failed run is in the run log with its error class and message;
consecutive failures of a connector back off exponentially (``backoff_base`` doubling up to
``backoff_cap``): runs that fall due meanwhile are skipped. The first success resets it. Alerts
go to the webhook on the first failure of a streak, on recovery and when the quarantine grows.
Configuration errors stop the daemon at start (:meth:`Daemon.check`), not at every run.
"""

from __future__ import annotations

import _thread
import datetime as dt
import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from apscheduler.executors.debug import DebugExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.blocking import BlockingScheduler

from limsync.config.duration import format_duration
from limsync.config.settings import Settings
from limsync.errors import ConfigError, DatabaseError, DatabaseUnreachableError, LimsyncError
from limsync.pipeline import locks, state
from limsync.pipeline.database import Database
from limsync.sync import logcontext
from limsync.sync.alerts import Alert, Alerter
from limsync.sync.metrics import Metrics, MetricsServer, parse_address
from limsync.sync.runner import open_database, prepare
from limsync.sync.runner import sync as run_sync
from limsync.sync.schedule import (
    POPULATE,
    JobSpec,
    aware,
    build_trigger,
    job_specs,
    last_starts,
    populate_backlog,
    populate_function,
    quarantine_sizes,
)

if TYPE_CHECKING:  # populate is imported only when a run needs it
    from limsync.pipeline.populate.run import PopulateReport

log = logging.getLogger(__name__)


class HardStop(KeyboardInterrupt):
    """Raised in the main thread by a second stop signal: the open batch rolls back."""


class Daemon:
    """The daemon for one configuration. :meth:`run` blocks until stopped; returns an exit code.

    ``install_signals`` False leaves SIGTERM/SIGINT alone (for embedding; call :meth:`stop`).
    ``clock`` gives Unix time (tests).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        install_signals: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.options = settings.daemon
        self.install_signals = install_signals
        self.clock = clock
        self.stop_event = threading.Event()
        self.specs: list[JobSpec] = []
        self.db: Database | None = None
        self.metrics: Metrics | None = None
        self.server: MetricsServer | None = None
        alerts = settings.alerts
        events = tuple(
            e for e, on in (("failure", alerts.on_failure), ("recovery", alerts.on_recovery),
                            ("quarantine", alerts.on_quarantine)) if on
        )  # fmt: skip
        url = alerts.webhook_url.get_secret_value() if alerts.webhook_url else None
        self.alerter = Alerter(url, timeout=alerts.timeout, events=events)
        self.failures: dict[str, int] = {}
        self.not_before: dict[str, float] = {}
        self._backoff_logged: dict[str, float] = {}
        self._quarantine: dict[str, int] = {}
        # Failed keys of the populate that follows each connector's syncs, by connector: the
        # sync succeeded, so it is alerted on its own streak, without backing the sync off.
        self.populate_failures: dict[str, int] = {}
        self.scheduler: BlockingScheduler | None = None
        self._in_run = False
        self._hard_signal: int | None = None
        self._stop_signal: int | None = None
        self._timer: threading.Timer | None = None
        self._shutdown_thread: threading.Thread | None = None

    # -- start

    @property
    def connectors(self) -> list[str]:
        """The connectors the schedule syncs, in schedule order."""
        return list(dict.fromkeys(s.connector for s in self.specs if s.kind == "sync"))

    def check(self) -> list[JobSpec]:
        """Check everything a run needs, once; ConfigError (or another exit-2 error) if not.

        The schedule, the connectors and their streams, the populate library when scheduled,
        the metrics address, the alert webhook's URL and the database; connectors log in once,
        so refused credentials stop the daemon here (a source that is only down does not).
        """
        if not self.settings.schedule:
            raise ConfigError(
                "no schedule entries in the configuration: the daemon has nothing to run "
                "(see docs/daemon.md)"
            )
        self.specs = job_specs(self.settings)
        unknown = sorted(set(self.options.health_max_age_by_connector) - set(self.connectors))
        if unknown:
            raise ConfigError(
                f"daemon.health_max_age_by_connector: {', '.join(unknown)} "
                f"not scheduled (scheduled: {', '.join(self.connectors) or 'none'})"
            )
        if self.options.metrics_address:
            parse_address(self.options.metrics_address)
        url = self.settings.alerts.webhook_url
        if url is not None and not url.get_secret_value().startswith(("http://", "https://")):
            raise ConfigError("alerts.webhook_url: must start with http:// or https://")
        if any(s.kind == "populate" for s in self.specs):
            populate_function()
        self.db = db = self._open_and_declare()
        for name in self.connectors:
            prepared = prepare(self.settings, db, name)
            for spec in self.specs:
                if spec.connector == name and spec.streams:
                    missing = sorted(set(spec.streams) - set(prepared.engine.mappers))
                    if missing:
                        raise ConfigError(
                            f"schedule select {spec.entry.select!r}: connector {name!r} has no "
                            f"stream(s) {', '.join(missing)} "
                            f"(streams: {', '.join(prepared.engine.mappers)})"
                        )
            with prepared.connector:
                try:
                    prepared.connector.open()
                except LimsyncError as exc:
                    if exc.exit_code == 2:
                        raise
                    log.warning("connector %s is not reachable now (%s); runs will retry", name,
                                exc)  # fmt: skip
        return self.specs

    def _open_and_declare(self) -> Database:
        """The database with the bookkeeping and pipeline tables ready.

        Two daemons starting at once may both try to create the same tables; the loser's
        CREATE fails. One retry then finds them created.
        """
        for attempt in (1, 2):
            db = open_database(self.settings) if attempt == 1 or self.db is None else self.db
            self.db = db
            try:
                state.ensure(db)
                for name in self.connectors:
                    prepare(self.settings, db, name)
                return db
            except (DatabaseError, sa.exc.DBAPIError) as exc:
                if attempt == 2 or isinstance(exc, DatabaseUnreachableError):
                    raise
                log.info("creating tables raced with another process; trying again")
                db.extensions.pop("state_ready", None)
        raise AssertionError("unreachable")

    def _max_ages(self) -> dict[str, float | None]:
        by = self.options.health_max_age_by_connector
        return {name: by.get(name, self.options.health_max_age) for name in self.connectors}

    def run(self) -> int:
        """Check, serve metrics, schedule, and run until stopped; returns the exit code.

        0 after a graceful stop; 128 + the signal number after a hard stop.
        """
        try:
            self.check()
            db = self.db
            assert db is not None
            self.metrics = Metrics(self.connectors, self._max_ages(), clock=self.clock)
            for name in self.connectors:
                ok = state.runs(db, connector=name, status="success", limit=1)
                if ok and ok[0]["finished_at"] is not None:
                    when = aware(ok[0]["finished_at"]).timestamp()
                    self.metrics.set_last_success(name, when)
            self._refresh_state_metrics()
            if self.options.metrics_address:
                self.server = MetricsServer(self.metrics, self.options.metrics_address)
                self.server.start()
            self.scheduler = self._build_scheduler(db)
            if self.install_signals:
                signal.signal(signal.SIGTERM, self._on_signal)
                signal.signal(signal.SIGINT, self._on_signal)
            log.info("daemon started: %d job(s); alerts to %s", len(self.specs),
                     self.alerter.target)  # fmt: skip
            now = dt.datetime.now(dt.UTC)
            for job in self.scheduler.get_jobs():
                first = job.trigger.get_next_fire_time(None, now)
                log.info("scheduled %s, first run %s", job.name, _when(first))
            if not self.stop_event.is_set():
                self.scheduler.start()
        finally:
            self._close()
        if self._hard_signal is not None:
            log.warning("daemon stopped at once (signal %d); the open batch rolled back",
                        self._hard_signal)  # fmt: skip
            return 128 + self._hard_signal
        log.info("daemon stopped")
        return 0

    def _build_scheduler(self, db: Database) -> BlockingScheduler:
        sched = BlockingScheduler(
            jobstores={"default": MemoryJobStore()},
            executors={"default": DebugExecutor()},
            job_defaults={"coalesce": True, "max_instances": 1,
                          "misfire_grace_time": int(self.options.misfire_grace)},
            timezone=dt.UTC,
        )  # fmt: skip
        starts = last_starts(db)
        now = dt.datetime.now(dt.UTC)
        for spec in self.specs:
            trigger = build_trigger(
                spec.entry, last_start=starts.get((spec.connector, spec.kind)), now=now
            )
            sched.add_job(self._job, trigger, args=[spec], id=spec.id, name=spec.label)
        return sched

    # -- stopping

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Ask for a graceful stop (what the first SIGTERM/SIGINT does); safe from any thread."""
        if self.stop_event.is_set():
            return
        self._stop_signal = signum
        self.stop_event.set()
        # Shut the scheduler down from another thread: it waits for the running job (which is
        # in this, the main, thread) to return, and never takes a lock inside a signal handler.
        if self.scheduler is not None and self.scheduler.running:
            self._shutdown_thread = threading.Thread(
                target=self._shutdown_scheduler, name="limsync-stop", daemon=True
            )
            self._shutdown_thread.start()
        self._timer = threading.Timer(self.options.stop_timeout, self._escalate, args=[signum])
        self._timer.daemon = True
        self._timer.start()

    def _shutdown_scheduler(self) -> None:
        sched = self.scheduler
        if sched is not None and sched.running:
            sched.shutdown(wait=False)

    def _escalate(self, signum: int) -> None:
        log.warning("still running %s after stop_timeout: stopping at once",
                    format_duration(self.options.stop_timeout))  # fmt: skip
        _thread.interrupt_main(signal.Signals(signum))

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self.stop_event.is_set():
            log.warning("signal %d: finishing the current batch, then stopping (send it again "
                        "to stop at once)", signum)  # fmt: skip
            self.stop(signum)
            return
        if self._hard_signal is not None:
            return  # already stopping at once
        self._hard_signal = signum
        log.warning("signal %d again: stopping at once, rolling back the open batch", signum)
        if self._in_run:
            raise HardStop(signum)

    def _close(self) -> None:
        if self.install_signals:
            # Runs are over: a late signal must not kill the exiting process (the interpreter
            # restores the default handlers while it shuts down, but leaves "ignore" alone).
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        if self._timer is not None:
            self._timer.cancel()
        if self._shutdown_thread is not None:
            self._shutdown_thread.join(timeout=5)
        if self.server is not None:
            self.server.stop()
        self.alerter.close()
        if self.db is not None:
            self.db.dispose()

    # -- one run

    def _job(self, spec: JobSpec) -> None:
        """What the scheduler calls when an entry falls due."""
        if self.stop_event.is_set():
            return
        key = spec.connector
        now = self.clock()
        if now < self.not_before.get(key, 0.0):
            if self._backoff_logged.get(key) != self.not_before[key]:
                self._backoff_logged[key] = self.not_before[key]
                log.info("%s: backing off after %d failure(s); next attempt in %s", key,
                         self.failures.get(key, 0),
                         format_duration(self.not_before[key] - now))  # fmt: skip
            return
        started = time.monotonic()
        result: dict[str, Any] = {"outcome": "failed", "counts": {}, "run_id": None, "error": None}
        try:
            self._in_run = True
            if spec.kind == "populate":
                self._run_populate(spec, result)
            else:
                self._run_sync(spec, result)
        except HardStop:
            result.update(outcome="interrupted", error="stopped at once by a second signal")
        finally:
            self._in_run = False
        self._after(spec, result, time.monotonic() - started)

    def _run_sync(self, spec: JobSpec, result: dict[str, Any]) -> None:
        db = self.db
        assert db is not None
        select = [spec.entry.select]
        with logcontext.bound(connector=spec.connector):
            try:
                reports = run_sync(self.settings, select, full=spec.entry.mode == "full", db=db,
                                   stop=self.stop_event)  # fmt: skip
            except Exception as exc:
                # Failed before the engine recorded a run (login, connection, a bug): record it.
                if not isinstance(exc, LimsyncError):
                    log.exception("run of %s crashed", spec.entry.select)
                self._record_failure(spec, result, exc)
                return
        if not reports:  # stopped before it began
            result["outcome"] = "interrupted"
            return
        report = reports[0]
        result.update(run_id=report.run_id or None, counts=report.counts(),
                      error=report.first_error())  # fmt: skip
        if report.skipped:
            result["outcome"] = "skipped"
            log.warning("skipped %s: another run holds the lock (%s)", spec.entry.select,
                        self._holder(spec.connector))  # fmt: skip
        elif self.stop_event.is_set() and (report.error or "").startswith("interrupted"):
            result["outcome"] = "interrupted"
        else:
            result["outcome"] = "success" if report.ok else "failed"
        if report.populate is not None:
            self._after_sync_populate(spec, report.populate)

    def _after_sync_populate(self, spec: JobSpec, populated: PopulateReport) -> None:
        """Alert when the populate after a sync starts failing (keys whose ``make`` raised, the
        lab's DataJoint errors) and when it recovers; the sync's own outcome is not changed."""
        key = spec.connector
        if not populated.ok:
            n = self.populate_failures[key] = self.populate_failures.get(key, 0) + 1
            if n == 1:
                self.alerter.send(Alert("failure", POPULATE, f"{spec.entry.select} (after sync)",
                                        populated.error() or "populate failed",
                                        populated.run_id or None, n))  # fmt: skip
        elif previous := self.populate_failures.pop(key, 0):
            self.alerter.send(Alert("recovery", POPULATE, f"{spec.entry.select} (after sync)",
                                    f"succeeded after {previous} failed run(s)",
                                    populated.run_id or None, 0))  # fmt: skip

    def _run_populate(self, spec: JobSpec, result: dict[str, Any]) -> None:
        db = self.db
        assert db is not None
        try:
            # Log lines of the run (a make's errors, say) name it, as a sync's name its connector.
            with logcontext.bound(connector=spec.connector):
                outcome = populate_function()(db, self.settings)
        except Exception as exc:
            if not isinstance(exc, LimsyncError):
                log.exception("populate crashed")
            self._record_failure(spec, result, exc)
            return
        counts = outcome.to_dict() if hasattr(outcome, "to_dict") else outcome
        # Keys whose make failed are recorded per key and do not stop the run, but the run
        # failed: it counts as such for backoff, alerts and metrics, as in the run log.
        ok = bool(getattr(outcome, "ok", True))
        error = getattr(outcome, "error", None)
        result.update(
            outcome="success" if ok else "failed",
            run_id=getattr(outcome, "run_id", None) or None,
            counts=counts if isinstance(counts, dict) else {},
            error=None if ok else (error() if callable(error) else "populate failed"),
        )

    def _record_failure(self, spec: JobSpec, result: dict[str, Any], exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"
        result.update(outcome="failed", error=error)
        db = self.db
        assert db is not None
        try:
            run_id = state.start_run(db, spec.connector, spec.kind, spec.entry.mode)
            state.finish_run(db, run_id, "failed", {}, error)
            result["run_id"] = run_id
        except LimsyncError as log_exc:  # the database itself is down: say so, keep going
            log.error("cannot record the failed run of %s: %s", spec.connector, log_exc)
        except sa.exc.SQLAlchemyError as log_exc:
            log.error("cannot record the failed run of %s: %s", spec.connector,
                      type(log_exc).__name__)  # fmt: skip

    def _holder(self, connector: str) -> str:
        """Who holds a connector's lock: the lock's own record, else the run log."""
        assert self.db is not None
        try:
            held_by = locks.holder(self.db, f"sync:{connector}")
            running = state.runs(self.db, connector=connector, status="running", limit=1)
        except (LimsyncError, sa.exc.SQLAlchemyError):
            held_by, running = None, []
        if held_by is not None:
            return held_by
        if running:  # a lock taken before this version recorded its holder
            run = running[0]
            return (
                f"host {run['host']}, pid {run['pid']}, run {run['run_id']} "
                f"since {_when(run['started_at'])}"
            )
        return "holder unknown"

    def _after(self, spec: JobSpec, result: dict[str, Any], seconds: float) -> None:
        """Metrics, backoff, alerts and one log line for a finished run."""
        key = spec.connector
        outcome = result["outcome"]
        run_id = result["run_id"]
        metrics = self.metrics
        assert metrics is not None
        metrics.observe_run(key, spec.kind, outcome, result["counts"], seconds)
        with logcontext.bound(connector=key, run_id=run_id):
            if outcome == "failed":
                n = self.failures[key] = self.failures.get(key, 0) + 1
                delay = min(self.options.backoff_base * 2 ** (n - 1), self.options.backoff_cap)
                self.not_before[key] = self.clock() + delay
                log.warning("%s failed (%d in a row): %s; backing off %s", spec.entry.select, n,
                            result["error"], format_duration(delay))  # fmt: skip
                if n == 1:
                    self.alerter.send(Alert("failure", key, spec.entry.select,
                                            result["error"] or "failed", run_id, n))  # fmt: skip
            elif outcome == "success":
                previous = self.failures.pop(key, 0)
                self.not_before.pop(key, None)
                c = result["counts"]
                if spec.kind == "populate":
                    log.info("populate succeeded: %s key(s) made", c.get("made", 0))
                else:
                    log.info("%s succeeded: %s new, %s changed, %s unchanged, %s quarantined",
                             spec.entry.select, c.get("new", 0), c.get("changed", 0),
                             c.get("unchanged", 0), c.get("quarantined", 0))  # fmt: skip
                if previous:
                    self.alerter.send(Alert("recovery", key, spec.entry.select,
                                            f"succeeded after {previous} failed run(s)", run_id,
                                            0))  # fmt: skip
            elif outcome == "interrupted":
                log.warning("%s interrupted by a stop; the next run reads the rest",
                            spec.entry.select)  # fmt: skip
            if spec.kind == "sync":
                metrics.set_failures(key, self.failures.get(key, 0))
            grown = self._refresh_state_metrics()
            if outcome != "skipped" and grown.get(key):
                self.alerter.send(Alert("quarantine", key, spec.entry.select,
                                        f"{grown[key]} new record(s) in the quarantine", run_id,
                                        self.failures.get(key, 0),
                                        quarantined=grown[key]))  # fmt: skip

    def _refresh_state_metrics(self) -> dict[str, int]:
        """Read quarantine sizes and backlog into the gauges; returns quarantine growth."""
        db, metrics = self.db, self.metrics
        assert db is not None and metrics is not None
        try:
            sizes = quarantine_sizes(db, self.connectors)
            backlog, errors = populate_backlog(db)
        except (LimsyncError, sa.exc.SQLAlchemyError) as exc:
            log.error("cannot read quarantine and backlog: %s", type(exc).__name__)
            return {}
        before = self._quarantine
        self._quarantine = sizes
        metrics.set_state(sizes, backlog, errors)
        return {n: sizes[n] - before[n] for n in sizes if n in before and sizes[n] > before[n]}


def _when(value: dt.datetime | None) -> str:
    if value is None:
        return "never"
    return aware(value).astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
