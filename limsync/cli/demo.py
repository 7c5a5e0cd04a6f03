"""``limsync demo``: the whole loop against a fake Alyx on 127.0.0.1, in under a minute.

1. Start the fake Alyx server with a generated colony.
2. Sync everything into a fresh SQLite file.
3. Sync again: nothing is written (idempotent).
4. Change the source: rename a subject, add a weighing, edit a session, delete a weighing.
5. Sync again and show exactly what changed, and where it went.

After each sync the change outbox drives ``populate`` of a computed per-subject weight summary
(:mod:`limsync.sync.maps.alyx_derived`): the first sync makes every subject's summary, the
second none, the third exactly the subjects whose weighings changed (plus the renamed one,
whose subject row changed).
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from limsync.config.settings import Settings
from limsync.pipeline.database import Database
from limsync.sync.maps import alyx as ibl
from limsync.sync.maps.alyx_derived import WeightSummary
from limsync.sync.report import SyncReport
from limsync.sync.runner import sync
from limsync.testing import Colony, FakeAlyx


def _settings(db_path: Path, url: str) -> Settings:
    return Settings(
        database_url=f"sqlite:///{db_path}",
        connectors={
            "alyx": {
                "type": "alyx",
                "base_url": url,
                "username": FakeAlyx.DEFAULT_USERNAME,
                "password": FakeAlyx.DEFAULT_PASSWORD,
                "rate_limit_per_minute": None,
                "streams": {"weighings": {"delete_policy": "delete"}},
            }
        },
        populate={"tables": [f"{WeightSummary.__module__}.WeightSummary"]},
    )


def _populated(console: Console, sync_report: SyncReport) -> set[str]:
    """Print what the after-sync populate did; returns the recomputed subject uuids."""
    report = sync_report.populate
    if report is None:
        return set()
    table = WeightSummary.spec.qualname
    made = sum(t.made for t in report.tables)
    stale = report.outbox.recomputed.get(table, []) if report.outbox else []
    console.print(
        f"   populate {table}: {made} summaries made, {len(stale)} of them recomputed "
        "because their upstream rows changed"
    )
    return {str(k[0]) for k in stale}


def _summary(console: Console, title: str, report: SyncReport) -> None:
    t = Table(title=title, title_justify="left")
    for col in ("stream", "read", "new", "changed", "unchanged", "gone", "deleted", "rows written"):
        t.add_column(col, justify="left" if col == "stream" else "right")
    for s in report.streams:
        t.add_row(s.stream, str(s.read), str(s.new), str(s.changed), str(s.unchanged),
                  str(s.gone), str(s.deleted), str(s.rows_written))  # fmt: skip
    console.print(t)


def run_demo(db_path: Path, *, subjects: int = 60, seed: int = 7, console: Console) -> None:
    """Run the demo, printing what happens."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    colony = Colony.generate(seed=seed, n_subjects=subjects, sessions_per_subject=4,
                             weighings_per_subject=8)  # fmt: skip
    with FakeAlyx(colony) as server:
        console.print(f"fake Alyx serving {subjects} subjects at {server.url}")
        settings = _settings(db_path, server.url)

        first = sync(settings)[0]
        _summary(console, "1. first sync", first)
        _populated(console, first)
        second = sync(settings)[0]
        _summary(console, "2. the same sync again (nothing to write)", second)
        _populated(console, second)

        subject_ids = colony.ids("subjects")
        renamed = subject_ids[0]
        colony.rename_subject(renamed, "renamed_mouse")
        weighed = colony.record("subjects", subject_ids[1])
        colony.add_weighing(weighed.nickname, weight=23.4, date_time=colony.now)
        session_id = colony.ids("sessions")[0]
        colony.modify_session(session_id, narrative="edited in the demo")
        gone = next(
            w for w in colony.ids("weighings")
            if colony.record("weighings", w).subject == subject_ids[2]
        )  # fmt: skip
        colony.delete_weighing(gone)
        console.print(
            "source changed: 1 subject renamed, 1 weighing added, 1 weighing deleted, "
            "1 session edited"
        )
        expected = {subject_ids[1]: "weighing added", subject_ids[2]: "weighing deleted",
                    renamed: "subject renamed"}  # fmt: skip
        third = sync(settings)[0]
        _summary(console, "3. sync after the changes", third)
        recomputed = _populated(console, third)
        for subject_uuid in sorted(recomputed):
            why = expected.get(subject_uuid, "unexpected!")
            console.print(f"   recomputed the weight summary of subject {subject_uuid} ({why})")
        if recomputed != set(expected):
            console.print("[bold red]the recomputed subjects differ from the changed ones[/]")

    db = Database(settings.database_url)
    try:
        rows = [r for r in db.fetch(ibl.Subject) if str(r["subject_uuid"]) == renamed]
        if rows:
            console.print(
                f"subject {renamed} is now called {rows[0]['subject_nickname']!r} in "
                "subject.subject (keyed by UUID, so the rename is an update)"
            )
        n = db.count(ibl.Weighing)
        console.print(f"action.weighing holds {n} rows; the deleted weighing is gone")
    finally:
        db.dispose()
    console.print(
        f"done: explore {db_path} with sqlite3, or point a limsync.toml at it and run "
        "'limsync runs' / 'limsync state show'"
    )
