"""``limsync daemon``: run the ``[[schedule]]`` entries until stopped (see docs/daemon.md)."""

from __future__ import annotations

import datetime as dt
import logging
import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from limsync.cli.common import config_option, counts_text, handle_errors, out
from limsync.cli.logs import register_settings_secrets
from limsync.config.settings import load_settings


@click.command()
@config_option
@click.option("--check", "check_only", is_flag=True,
              help="Check the configuration and show the schedule, then exit.")  # fmt: skip
@handle_errors
def daemon(config_path: Path | None, check_only: bool) -> None:
    """Run scheduled syncs (and populate) until SIGTERM or SIGINT.

    The first signal lets the running batch commit and exits 0; a second one stops at once,
    rolling the open batch back. Serves /metrics and /healthz on [daemon] metrics_address.
    """
    from limsync.sync.schedule import next_runs
    from limsync.sync.scheduler import Daemon

    settings = load_settings(config_path)
    register_settings_secrets(settings)
    root = logging.getLogger("limsync")
    # A daemon's log is its only voice: INFO unless -v asked for more.
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    scheduler_log = logging.getLogger("apscheduler")
    scheduler_log.handlers[:] = root.handlers
    scheduler_log.setLevel(logging.WARNING)
    scheduler_log.propagate = False
    daemon_ = Daemon(settings)
    if check_only:
        daemon_.check()
        try:
            rows = next_runs(settings, daemon_.db)
        finally:
            if daemon_.db is not None:
                daemon_.db.dispose()
        t = Table("select", "kind", "schedule", "next run (UTC)")
        for r in rows:
            t.add_row(r["select"], r["kind"], r["schedule"], str(r["next_run"] or "never")[:19])
        out.print(t)
        out.print("configuration ok")
        return
    sys.exit(daemon_.run())


def parse_since(text: str) -> dt.datetime:
    """``--since``: a duration back from now (``2h``) or a UTC date/time; naive UTC."""
    from limsync.config.duration import parse_duration
    from limsync.errors import ConfigError

    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    try:
        return now - dt.timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"--since {text!r}: give a duration (2h, 1d) or a date/time (2025-01-31T02:00)"
        ) from None
    return when.astimezone(dt.UTC).replace(tzinfo=None) if when.tzinfo else when


def status_table(rows: list[dict[str, Any]]) -> Table:
    """``limsync status`` as a rich table: one row per connector."""
    from limsync.config.duration import format_duration

    t = Table("connector", "last run", "outcome", "counts", "next run (UTC)", "stale for",
              "records", "open quarantine", "populate backlog")  # fmt: skip
    for r in rows:
        last = r["last_run"] or {}
        stale = r.get("stale_seconds")
        backlog = r.get("populate_backlog") or {"outbox": r["outbox_backlog"]}
        t.add_row(
            r["connector"], str(last.get("started_at", "never"))[:19], str(last.get("status", "")),
            counts_text(last.get("counts") or {}),
            str(r.get("next_run") or "not scheduled")[:19],
            "never succeeded" if stale is None else format_duration(max(stale, 1)),
            str(r["records"].get("present", 0)), str(r["quarantined"]),
            ", ".join(f"{k} {v}" for k, v in backlog.items()),
        )  # fmt: skip
    return t
