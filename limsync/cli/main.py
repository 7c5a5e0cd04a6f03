"""The ``limsync`` command: each subcommand is a thin shell over one library function.

Results go to stdout (a rich table, or JSON with ``--json``), logs to stderr. Exit codes: 0 ok,
1 a stream or run failed, 2 usage or configuration error. A :class:`LimsyncError` is printed as
one line (``error: ...``) without a traceback.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from limsync import __version__
from limsync.cli.common import (
    config_option,
    counts_text,
    database_only,
    echo_json,
    err,
    handle_errors,
    json_option,
    opened,
    out,
    print_reports,
)
from limsync.cli.daemon import daemon
from limsync.cli.diagram import diagram
from limsync.cli.migrate import migrate
from limsync.cli.new_connector import new_connector
from limsync.cli.populate import populate
from limsync.config.settings import load_settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="limsync")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv: debug).")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    help="Log lines as text or JSON lines.",
)
def cli(verbose: int, log_format: str) -> None:
    """Keep a lab's data pipeline in step with its LIMS (Alyx, PyRAT, legacy exports)."""
    from limsync.cli.logs import setup_logging

    setup_logging(verbose, log_format)


# How often a busy thread hands the interpreter lock over (Python's default: 5 ms).
SWITCH_INTERVAL = 0.001
# The garbage collector's thresholds (Python's default: 700, 10, 10): the youngest generation
# holds 50,000 objects before it is collected, about what a batch of records makes.
GC_THRESHOLDS = (50_000, 20, 10)


def own_process() -> None:
    """Tune the interpreter of a process that is limsync's own, once it has imported everything.

    What it has imported lives as long as the process: frozen out of the garbage collector's
    way, a long run's full collections no longer walk those ~95,000 objects (a sixth of a first
    load into MariaDB went there). The collector's young generation is made as large as a
    batch: at Python's 700 objects, every record, model and row of the batches in flight was
    promoted to the oldest generation, and full collections walked them again and again (the
    interpreter holds those back while the old generation is large, and after the freeze it is
    small): a quarter of a million-row migration's CPU. And its database waits run in
    background threads (see
    :mod:`limsync.sync.overlap`): a thread whose answer has arrived gets the interpreter lock
    from the busy main thread within a millisecond instead of five, which a batch's write, a
    round trip after another, pays for at every statement (a first load into MariaDB ~10%
    faster). As a library, limsync leaves its caller's interpreter alone; they can call this.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    sys.setswitchinterval(SWITCH_INTERVAL)


def main() -> None:
    """Console-script entry point."""
    own_process()
    cli()


# --- commands


@cli.command()
@config_option
@json_option
@click.argument("select", nargs=-1)
@click.option("--incremental", is_flag=True, help="Read only what changed since the cursor.")
@click.option("--force", is_flag=True, help="Delete even above the delete threshold.")
@handle_errors
def sync(config_path: Path | None, as_json: bool, select: tuple[str, ...], incremental: bool,
         force: bool) -> None:  # fmt: skip
    """Sync connectors (all, or SELECT: NAME or NAME.STREAM) into the pipeline."""
    from limsync.cli.progress import progress_bars
    from limsync.sync.runner import sync as run_sync

    settings = load_settings(config_path)
    with progress_bars(enabled=not as_json) as progress:
        reports = run_sync(settings, select, full=not incremental, force_delete=force,
                           progress=progress)  # fmt: skip
    code = print_reports(reports, as_json)
    populated = [r.populate for r in reports if r.populate is not None]
    if populated and not as_json:
        from limsync.cli.populate import print_after_sync

        print_after_sync(populated[0])
    sys.exit(code)


@cli.command()
@config_option
@json_option
@click.argument("select", nargs=-1)
@click.option("--incremental", is_flag=True, help="Plan an incremental run.")
@handle_errors
def plan(
    config_path: Path | None, as_json: bool, select: tuple[str, ...], incremental: bool
) -> None:
    """Show what a sync would insert, update, quarantine and delete, changing nothing."""
    from limsync.sync.runner import sync as run_sync

    settings = load_settings(config_path)
    reports = run_sync(settings, select, full=not incremental, dry_run=True)
    if not as_json:
        for r in reports:
            for s in r.streams:
                for table, c in sorted(s.tables.items()):
                    out.print(
                        f"  {s.stream}: {table} would insert {c['inserted']}, update "
                        f"{c['updated']}",
                        highlight=False,
                    )
                for table, n in sorted(s.deleted_rows.items()):
                    out.print(f"  {s.stream}: {table} would delete {n}", highlight=False)
    sys.exit(print_reports(reports, as_json))


@cli.command()
@config_option
@json_option
@handle_errors
def check(config_path: Path | None, as_json: bool) -> None:
    """Check settings, the database, each connector's credentials and one page per stream."""
    from limsync.sync.runner import open_database, prepare

    settings = load_settings(config_path)
    results: list[dict[str, Any]] = [{"name": "settings", "ok": True, "detail": "valid"}]
    db = open_database(settings)
    results.append({"name": "database", "ok": True, "detail": repr(db)})
    try:
        for name in settings.connectors:
            prepared = prepare(settings, db, name)
            for c in prepared.connector.check():
                results.append({"name": f"{name}: {c.name}", "ok": c.ok, "detail": c.detail})
    finally:
        db.dispose()
    if as_json:
        echo_json(results)
    else:
        for r in results:
            mark = "[green]ok[/]" if r["ok"] else "[red]FAIL[/]"
            out.print(f"{mark}  {r['name']}: {r['detail']}", highlight=False)
    sys.exit(0 if all(r["ok"] for r in results) else 1)


@cli.command()
@config_option
@json_option
@handle_errors
def discover(config_path: Path | None, as_json: bool) -> None:
    """List each connector's streams and the pipeline tables they write."""
    from limsync.sync import admin

    rows = admin.discover(load_settings(config_path))
    if as_json:
        echo_json(rows)
        return
    t = Table("connector", "stream", "path", "key", "cursor", "tables")
    for r in rows:
        t.add_row(r["connector"], r["stream"], r["path"], ",".join(r["key"]), r["cursor"] or "",
                  ", ".join(r["tables"]))  # fmt: skip
    out.print(t)


@cli.command()
@click.option("--path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("limsync.toml"), show_default=True, help="Where to write.")  # fmt: skip
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@handle_errors
def init(path: Path, force: bool) -> None:
    """Write a commented example limsync.toml."""
    from limsync.config.example import EXAMPLE
    from limsync.errors import ConfigError

    if path.exists() and not force:
        raise ConfigError(f"{path} exists (use --force to overwrite)")
    path.write_text(EXAMPLE, encoding="utf-8")
    out.print(f"wrote {path}; set the password with LIMSYNC_CONNECTORS__ALYX__PASSWORD")


@cli.command()
@handle_errors
def connectors() -> None:
    """List installed connector types (built-in and plugins)."""
    from limsync.connectors import registry

    t = Table("type", "class", "streams")
    for name, cls in registry.usable().items():
        streams = "(from settings)" if getattr(cls, "instance_streams", False) else ""
        t.add_row(name, f"{cls.__module__}.{cls.__qualname__}", streams or ", ".join(cls.streams))
    out.print(t)
    for name, problem in sorted(registry.broken().items()):
        err.print(f"[red]broken plugin[/] {name}: {problem}", highlight=False)
    conflicts = registry.duplicates()
    for name, sources in conflicts.items():
        err.print(f"[bold red]error:[/] {registry.duplicate_error(name, sources)}", highlight=False)
    if conflicts:
        sys.exit(2)


@cli.command()
@config_option
@json_option
@click.option("--connector", help="Only this connector.")
@click.option("--status", "status_", help="Only runs with this status.")
@click.option("--kind", help="Only runs of this kind (sync, migrate, populate, replay).")
@click.option("--since", help="Only runs started within this duration (2h, 1d) or since a UTC "
              "date/time (2025-01-31, 2025-01-31T02:00).")  # fmt: skip
@click.option("--limit", default=20, show_default=True, help="How many runs.")
@handle_errors
def runs(config_path: Path | None, as_json: bool, connector: str | None, status_: str | None,
         kind: str | None, since: str | None, limit: int) -> None:  # fmt: skip
    """List past runs, newest first, with filters."""
    from limsync.cli.daemon import parse_since
    from limsync.sync import admin

    start = parse_since(since) if since else None
    with opened(config_path) as (_, db):
        rows = admin.runs(db, connector=connector, status=status_, kind=kind, since=start,
                          limit=limit)  # fmt: skip
    if as_json:
        echo_json(rows)
        return
    t = Table("run", "connector", "kind", "mode", "status", "started", "finished", "counts",
              "rows written", "error")  # fmt: skip
    for r in rows:
        c = r["counts"]
        written = (
            f"{c.get('inserted', 0)} inserted, {c.get('updated', 0)} updated" if "read" in c else ""
        )
        t.add_row(str(r["run_id"]), r["connector"], r["kind"], r["mode"], r["status"],
                  str(r["started_at"])[:19], str(r["finished_at"] or "")[:19],
                  counts_text(c), written, (r["error"] or "")[:60])  # fmt: skip
    out.print(t)


@cli.command()
@config_option
@json_option
@handle_errors
def status(config_path: Path | None, as_json: bool) -> None:
    """One screen: each connector's last run, freshness, quarantine and backlog."""
    from limsync.sync import admin

    with opened(config_path) as (settings, db):
        rows = admin.status(db, settings)
    if as_json:
        echo_json(rows)
        return
    from limsync.cli.daemon import status_table

    out.print(status_table(rows))


@cli.group()
def quarantine() -> None:
    """Records that failed validation, mapping or writing."""


@quarantine.command("list")
@config_option
@json_option
@click.option("--connector", help="Only this connector.")
@click.option("--stream", help="Only this stream.")
@handle_errors
def quarantine_list(config_path: Path | None, as_json: bool, connector: str | None,
                    stream: str | None) -> None:  # fmt: skip
    """List quarantined records with their stage and error."""
    from limsync.sync import admin

    with opened(config_path) as (_, db):
        rows = admin.quarantine_list(db, connector, stream)
    if as_json:
        echo_json(rows)
        return
    t = Table("connector", "stream", "key", "stage", "error")
    for r in rows:
        t.add_row(r["connector"], r["stream"], r["source_key"], r["stage"], r["error"])
    out.print(t)


@quarantine.command("show")
@config_option
@click.argument("connector")
@click.argument("stream")
@click.argument("key")
@handle_errors
def quarantine_show(config_path: Path | None, connector: str, stream: str, key: str) -> None:
    """Show one quarantined record, raw payload included (KEY as listed)."""
    from limsync.sync import admin

    with opened(config_path) as (_, db):
        echo_json(admin.quarantine_show(db, connector, stream, key))


@quarantine.command("replay")
@config_option
@json_option
@click.argument("connector")
@click.option("--stream", help="Only this stream.")
@click.option("--key", "keys", multiple=True, help="Only these keys (repeatable).")
@handle_errors
def quarantine_replay(config_path: Path | None, as_json: bool, connector: str,
                      stream: str | None, keys: tuple[str, ...]) -> None:  # fmt: skip
    """Run quarantined records through validation, mapping and writing again."""
    from limsync.sync import admin

    with opened(config_path) as (settings, db):
        report = admin.quarantine_replay(db, settings, connector, stream, keys)
    sys.exit(print_reports([report], as_json))


@cli.group("state")
def state_group() -> None:
    """Per-stream sync state: cursors and the ledger of content hashes."""


@state_group.command("show")
@config_option
@json_option
@click.option("--connector", help="Only this connector.")
@handle_errors
def state_show(config_path: Path | None, as_json: bool, connector: str | None) -> None:
    """Show cursors and how many records each stream's ledger holds."""
    from limsync.sync import admin

    with opened(config_path) as (_, db):
        rows = admin.state_show(db, connector)
    if as_json:
        echo_json(rows)
        return
    t = Table("connector", "stream", "cursor", "present", "gone")
    for r in rows:
        t.add_row(r["connector"], r["stream"], str(r["cursor"] or ""), str(r["present"]),
                  str(r["gone"]))  # fmt: skip
    out.print(t)


@state_group.command("reset")
@config_option
@click.argument("connector")
@click.option("--stream", help="Only this stream.")
@click.option("--ledger", is_flag=True, help="Also forget content hashes (re-compare all).")
@click.confirmation_option(prompt="Reset the sync state?")
@handle_errors
def state_reset(config_path: Path | None, connector: str, stream: str | None, ledger: bool) -> None:
    """Forget cursors (and optionally hashes) so the next run re-reads everything."""
    from limsync.sync import admin

    with opened(config_path) as (_, db):
        result = admin.state_reset(db, connector, stream, ledger=ledger)
    out.print(f"removed {result['cursors']} cursor(s), {result['ledger_entries']} ledger entries")


@cli.group()
def db() -> None:
    """limsync's bookkeeping tables (~limsync_*)."""


@db.command("upgrade")
@config_option
@handle_errors
def db_upgrade(config_path: Path | None) -> None:
    """Create or migrate the bookkeeping tables."""
    from limsync.pipeline import state

    with database_only(config_path) as database:
        before, after = state.upgrade(database)
    out.print(f"bookkeeping schema version {before} -> {after}")


@db.command("status")
@config_option
@handle_errors
def db_status(config_path: Path | None) -> None:
    """Show the bookkeeping schema version."""
    from limsync.pipeline import state

    with database_only(config_path) as database:
        version = state.current_version(database)
    latest = state.SCHEMA_VERSION
    note = "up to date" if version == latest else "run: limsync db upgrade"
    out.print(f"{database!r}: version {version} of {latest} ({note})", highlight=False)


@cli.command()
@click.option("--db", "db_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("limsync-demo.db"), show_default=True,
              help="SQLite file the demo syncs into (recreated).")  # fmt: skip
@click.option("--subjects", default=60, show_default=True, help="Colony size.")
@click.option("--seed", default=7, show_default=True, help="Colony seed.")
@handle_errors
def demo(db_path: Path, subjects: int, seed: int) -> None:
    """Sync a generated colony from a local fake Alyx, change it, and sync again."""
    from limsync.cli.demo import run_demo

    run_demo(db_path, subjects=subjects, seed=seed, console=out)


# --- commands that live in their own modules (limsync/cli/<command>.py); one line each.

cli.add_command(daemon)
cli.add_command(diagram)
cli.add_command(migrate)
cli.add_command(new_connector)
cli.add_command(populate)


if __name__ == "__main__":
    main()
