"""``limsync migrate``: a one-off full migration with progress, a summary and a reject report."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich import box
from rich.table import Table

from limsync.cli.common import config_option, echo_json, err, handle_errors, json_option, out
from limsync.config.settings import load_settings


@click.command()
@config_option
@json_option
@click.argument("select", nargs=-1)
@click.option("--dry-run", is_flag=True, help="Plan only: write nothing, report what would happen.")
@click.option(
    "--reject-report",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write every rejected record to this CSV (source row, stage, error).",
)
@click.option("--allow-rejects", is_flag=True, help="Exit 0 even when records were rejected.")
@handle_errors
def migrate(
    config_path: Path | None,
    as_json: bool,
    select: tuple[str, ...],
    dry_run: bool,
    reject_report: Path | None,
    allow_rejects: bool,
) -> None:
    """Migrate connectors (all, or SELECT: NAME or NAME.STREAM) in one full run.

    Progress bars on a terminal, then a summary per stream. Killed or interrupted, run it
    again: it resumes without writing anything twice. Exit code 0 when every record landed,
    1 when a stream failed or records were rejected (unless --allow-rejects), 2 for a
    configuration error.
    """
    from limsync.cli.progress import progress_bars
    from limsync.sync.migrate import migrate as run_migrate

    settings = load_settings(config_path)
    try:
        with progress_bars(enabled=not as_json) as progress:
            result = run_migrate(
                settings, select, dry_run=dry_run, reject_report=reject_report, progress=progress
            )
    except KeyboardInterrupt:
        err.print("interrupted: committed batches are kept; run the same command to resume")
        sys.exit(130)
    if as_json:
        echo_json(result.to_dict())
        sys.exit(result.exit_code(allow_rejects))
    for report in result.reports:
        title = f"{report.connector} (migrate{', dry run' if dry_run else ''})"
        if report.run_id:
            title += f", run {report.run_id}"
        t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
        for col in ("stream", "read", "new", "changed", "unchanged", "rejected", "seconds",
                    "rec/s"):  # fmt: skip
            t.add_column(col, justify="left" if col == "stream" else "right", min_width=len(col))
        for s in report.streams:
            rate = s.read / s.seconds if s.seconds > 0 else 0.0
            t.add_row(
                s.stream, f"{s.read:,}", f"{s.new:,}", f"{s.changed:,}", f"{s.unchanged:,}",
                f"{s.quarantined:,}", f"{s.seconds:.1f}", f"{rate:,.0f}",
            )  # fmt: skip
        out.print(t)
        for s in report.streams:
            if s.error:
                err.print(f"[bold red]error:[/] {s.stream}: {s.error}", highlight=False)
        if report.error:
            err.print(f"[bold red]error:[/] {report.error}", highlight=False)
    verb = "would reject" if dry_run else "rejected"
    line = (
        f"{result.read:,} records in {result.seconds:.1f} s ({result.rate:,.0f} records/s); "
        f"{verb} {result.rejected:,}"
    )
    if result.reject_report is not None:
        line += f", listed in {result.reject_report}"
    elif result.rejected:
        line += " (see them with --reject-report PATH or limsync quarantine list)"
    out.print(line, highlight=False)
    sys.exit(result.exit_code(allow_rejects))
