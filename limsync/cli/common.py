"""What every command shares: options, error handling, output, opening settings and database.

Command modules (``limsync/cli/<command>.py``) import from here; :mod:`limsync.cli.main` only
assembles the group. Results go to stdout (a rich table, or JSON with ``--json``), logs to stderr.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from limsync.config.settings import Settings, load_settings
from limsync.errors import LimsyncError
from limsync.sync.report import SyncReport

F = TypeVar("F", bound=Callable[..., Any])
out = Console()
err = Console(stderr=True, soft_wrap=True)


def handle_errors(fn: F) -> F:
    """Turn LimsyncError into one line on stderr and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LimsyncError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]


def config_option(fn: F) -> F:
    """``--config PATH`` on every command (default ./limsync.toml)."""
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Configuration file (default: ./limsync.toml, then LIMSYNC_* variables).",
    )(fn)


def json_option(fn: F) -> F:
    """``--json`` for machine-readable output."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(
        fn
    )


def echo_json(data: Any) -> None:
    """Print JSON to stdout."""
    click.echo(json.dumps(data, indent=2, default=str))


@contextmanager
def opened(config_path: Path | None) -> Iterator[tuple[Settings, Any]]:
    """Settings and database for a command."""
    from limsync.sync.runner import open_database

    settings = load_settings(config_path)
    db = open_database(settings)
    try:
        yield settings, db
    finally:
        db.dispose()


@contextmanager
def database_only(config_path: Path | None) -> Iterator[Any]:
    """The configured database without touching its bookkeeping tables (for ``db`` commands)."""
    from limsync.pipeline.database import Database

    settings = load_settings(config_path)
    database = Database(
        settings.database_url,
        schema_prefix=settings.schema_prefix,
        state_schema=settings.state_schema,
    )
    try:
        yield database
    finally:
        database.dispose()


# --- reports


def counts_text(counts: dict[str, Any]) -> str:
    """A run log entry's counts in a few words, for the kind of run it was.

    A populate run counts keys made and failed; a sync, migrate or replay counts records read and
    what became of them (zeros left out, so what happened stands out).
    """
    if "made" in counts:
        failed = counts.get("failed") or 0
        return f"made {counts['made']}" + (f", {failed} failed" if failed else "")
    if "read" not in counts:
        return ""
    parts = [
        f"{counts[k]} {k}"
        for k in ("new", "changed", "gone", "deleted", "quarantined")
        if counts.get(k)
    ]
    return f"read {counts['read']}" + (f": {', '.join(parts)}" if parts else "")


def print_reports(reports: list[SyncReport], as_json: bool) -> int:
    """Print sync reports; returns the exit code (1 if anything failed)."""
    if as_json:
        echo_json([r.to_dict() for r in reports])
    else:
        for r in reports:
            title = f"{r.connector} ({r.mode}{', dry run' if r.dry_run else ''})"
            if r.run_id:
                title += f", run {r.run_id}"
            t = Table(title=title, title_justify="left")
            for col in ("stream", "read", "new", "changed", "unchanged", "quarantined", "gone",
                        "deleted", "rows written", "seconds", "error"):  # fmt: skip
                t.add_column(col, justify="left" if col in ("stream", "error") else "right")
            for s in r.streams:
                t.add_row(
                    s.stream, str(s.read), str(s.new), str(s.changed), str(s.unchanged),
                    str(s.quarantined), str(s.gone), str(s.deleted), str(s.rows_written),
                    f"{s.seconds:.1f}", s.error or "",
                )  # fmt: skip
            out.print(t)
            if r.error:
                err.print(f"[bold red]error:[/] {escape(r.error)}", highlight=False)
    return 0 if all(r.ok for r in reports) else 1
