"""``limsync populate``: make the missing keys of Computed/Imported tables, with N workers."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from limsync.cli.common import (
    config_option,
    echo_json,
    err,
    handle_errors,
    json_option,
    opened,
    out,
)
from limsync.errors import ConfigError


@contextmanager
def _bars(enabled: bool) -> Iterator[Any]:
    """A populate progress callback drawing one bar per table, or None off a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(), console=err,
    ) as bars:  # fmt: skip
        tasks: dict[str, TaskID] = {}

        def advance(table: str, made: int, failed: int, total: int) -> None:
            if table not in tasks:
                tasks[table] = bars.add_task(table, total=total, failed=0)
            task = tasks[table]
            bars.update(
                task,
                advance=made + failed,
                failed=bars.tasks[task].fields["failed"] + failed,
            )

        yield advance


@click.command()
@config_option
@json_option
@click.argument("tables", nargs=-1)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=None,
    help="At most this many worker processes on this host (default: [populate] workers); "
    "extra ones start only when the keys left would keep one busy for a while.",
)
@click.option(
    "--restriction",
    default=None,
    metavar="JSON",
    help='Only these keys, e.g. \'{"subject_uuid": ["…", "…"]}\'.',
)
@click.option("--retry-errors", is_flag=True, help="Queue keys whose make failed again.")
@click.option("--errors", "show_errors", is_flag=True,
              help="Only list the failed keys with their messages; make nothing.")  # fmt: skip
@handle_errors
def populate(
    config_path: Path | None,
    as_json: bool,
    tables: tuple[str, ...],
    workers: int | None,
    restriction: str | None,
    retry_errors: bool,
    show_errors: bool,
) -> None:
    """Make the missing keys of Computed/Imported tables.

    TABLES are import paths (package.module.Class); default: [populate] tables. Errors of
    make are recorded per key and do not stop the run (see --errors, --retry-errors). The
    same command on several hosts shares the work through the database.
    """
    from limsync.pipeline import populate as pop

    where: dict[str, Any] | None = None
    if restriction:
        try:
            where = json.loads(restriction)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--restriction is not valid JSON: {exc}") from None
        if not isinstance(where, dict):
            raise ConfigError('--restriction must be a JSON object, e.g. {"subject_uuid": "…"}')
    with opened(config_path) as (settings, db):
        paths = list(tables) or settings.populate.tables
        if not paths:
            raise ConfigError("no tables to populate: name them, or set [populate] tables")
        classes = pop.load_tables(paths)
        if show_errors:
            rows = [e for c in classes for e in pop.errors(db, c.spec.qualname)]
            if as_json:
                echo_json(rows)
            else:
                t = Table(title="failed keys", title_justify="left")
                for col in ("table", "key", "attempts", "error"):
                    t.add_column(col)
                for e in rows:
                    t.add_row(e["table_name"], e["row_key"], str(e["attempts"]),
                              e["error_message"])  # fmt: skip
                out.print(t)
            return
        with _bars(enabled=not as_json) as progress:
            report = pop.populate(
                db,
                classes,
                restriction=where,
                workers=workers or settings.populate.workers,
                retry_errors=retry_errors,
                reservation_timeout=settings.populate.reservation_timeout,
                progress=progress,
            )
    if as_json:
        echo_json(report.to_dict())
    else:
        t = Table(title=f"populate, run {report.run_id}", title_justify="left")
        for col in ("table", "queued", "made", "failed", "errors", "processes", "seconds"):
            t.add_column(col, justify="left" if col == "table" else "right")
        for r in report.tables:
            t.add_row(r.table, str(r.queued), str(r.made), str(r.failed), str(r.errors),
                      str(r.processes), f"{r.seconds:.1f}")  # fmt: skip
        out.print(t)
    sys.exit(0 if report.ok else 1)


def print_after_sync(report: Any) -> None:
    """One line per populated table after a sync (recomputed, made, failed), one per DataJoint
    table ([populate.datajoint]), then every DataJoint error with its key."""
    recomputed = report.outbox.recomputed if report.outbox else {}
    for t in report.tables:
        out.print(
            f"populate {t.table}: {len(recomputed.get(t.table, []))} recomputed after "
            f"upstream changes, {t.made} made, {t.failed} failed",
            highlight=False,
        )
    totals: dict[str, dict[str, int]] = {}
    for dj_report in report.outbox.datajoint if report.outbox else []:
        for name, t in dj_report.tables.items():
            row = totals.setdefault(name, dict.fromkeys(("deleted", "populated", "queued"), 0))
            row["deleted"] += t.deleted
            row["populated"] += t.populated
            row["queued"] += t.queued
    for name, row in totals.items():
        out.print(
            f"datajoint {name}: {row['deleted']} stale rows deleted, {row['populated']} "
            f"populated, {row['queued']} queued",
            highlight=False,
        )
    for table, key, message in report.datajoint_errors():
        err.print(f"datajoint {table} {key or '(whole table)'}: {message}", highlight=False)
    if report.tables and any(t.failed for t in report.tables):
        err.print("failed keys: limsync populate --errors lists them", highlight=False)
