"""``limsync migrate`` on legacy exports (files connector), on SQLite, MariaDB and PostgreSQL.

The fixtures under ``fixtures/legacy/`` look like a real lab's exports: a latin-1 subjects file
with semicolons and CRLF, mixed date formats, an Excel serial date, blank lines, an id entered
twice (once identically, once differently), a row without id, a lab and subjects that do not
exist; a UTF-8 weighings file with a BOM and decimal commas. Good rows land; each bad row is in
the reject report with its reason.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from limsync.cli.main import cli
from limsync.config.settings import Settings, load_settings
from limsync.pipeline import Database, state
from limsync.sync import admin
from limsync.sync.migrate import migrate

FIXTURES = Path(__file__).parent / "fixtures" / "legacy"
sys.path.insert(0, str(FIXTURES))
import legacy_pipeline as lp  # noqa: E402  (found by name, as `pipelines` does)

EXPECTED_REJECTS = {
    # (stream, source row): (stage, part of the error)
    ("subjects", "subjects.csv:6"): ("map", "column date_of_birth: '31.02.2020' is not a date"),
    ("subjects", "subjects.csv:7"): ("reference", "no row of colony.#lab has lab_name='nowhere'"),
    ("subjects", "subjects.csv:8"): ("map", "column sex: 'x' is not in its map"),
    ("subjects", "subjects.csv:11"): ("validate", "first at subjects.csv:2"),
    ("subjects", "subjects.csv:13"): ("validate", "key column is empty"),
    ("weighings", "weighings.csv:4"): (
        "reference",
        "key subject='A9', weighed_at='2020-03-01 09:30:00' column subject: references "
        "colony.subject (subject='A9'), which does not exist",
    ),
    ("weighings", "weighings.csv:5"): ("map", "column weight: 'abc' is not a number"),
    ("weighings", "weighings.csv:6"): ("reference", "colony.subject"),
}


def config(tmp_path: Path, db: Database, root: Path = FIXTURES, batch_size: int = 3) -> Path:
    """The fixture configuration pointed at this test's database and export directory."""
    text = (FIXTURES / "migrate.toml").read_text()
    text = text.replace('type = "files"', f'type = "files"\nroot = {json.dumps(str(root))}')
    url = db.url.render_as_string(hide_password=False)
    head = f"database_url = {json.dumps(url)}\nschema_prefix = {json.dumps(db.schema_prefix)}\n"
    head += f"batch_size = {batch_size}\n"
    path = tmp_path / "limsync.toml"
    path.write_text(head + text)
    return path


def read_report(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0]) == [
        "connector", "stream", "source_key", "source_row", "stage", "error"
    ]  # fmt: skip
    return {(r["stream"], r["source_row"]): r for r in rows}


def check_rejects(path: Path) -> None:
    report = read_report(path)
    assert set(report) == set(EXPECTED_REJECTS)
    for place, (stage, error) in EXPECTED_REJECTS.items():
        assert report[place]["stage"] == stage, place
        assert error in report[place]["error"], (place, report[place]["error"])
        if stage == "map":  # limsync's own mapping errors read as the mapping wrote them
            assert report[place]["error"].startswith("column "), report[place]["error"]


def test_legacy_exports_dry_run_then_migrate_then_again(tmp_path: Path, db: Database) -> None:
    settings = load_settings(config(tmp_path, db))
    plan = migrate(settings, dry_run=True, reject_report=tmp_path / "plan.csv", db=db)
    assert plan.ok and plan.rejected == 8
    check_rejects(tmp_path / "plan.csv")  # the dry run names the same rejects...
    db.declare(*lp.SCHEMAS)
    assert db.count(lp.Subject) == 0  # ...and writes nothing
    assert admin.quarantine_list(db, "legacy") == []

    result = migrate(settings, reject_report=tmp_path / "rejects.csv", db=db)
    assert result.ok and result.rejected == 8 and result.exit_code() == 1
    assert result.exit_code(allow_rejects=True) == 0
    check_rejects(tmp_path / "rejects.csv")
    streams = {s.stream: s for s in result.reports[0].streams}
    assert (streams["labs"].new, streams["subjects"].new, streams["weighings"].new) == (2, 4, 3)
    assert streams["subjects"].duplicates == 1  # A2 twice, identical: harmless
    subjects = {r["subject"]: r for r in db.fetch(lp.Subject)}
    assert sorted(subjects) == ["A1", "A2", "A3", "A7"]
    assert subjects["A1"]["notes"] == "Käfig 3, Müller"  # latin-1, decoded
    assert subjects["A1"]["date_of_birth"] == dt.date(2020, 2, 3)  # the first A1
    assert subjects["A2"]["date_of_birth"] == dt.date(2020, 2, 5)  # ISO
    assert subjects["A3"]["date_of_birth"] == dt.date(2020, 1, 1)  # Excel serial 43831
    assert (subjects["A7"]["sex"], subjects["A7"]["date_of_birth"]) == ("U", None)
    weights = {(r["subject"], r["weighed_at"]): r["weight"] for r in db.fetch(lp.Weighing)}
    assert weights == {
        ("A1", dt.datetime(2020, 3, 1, 10, 0)): decimal.Decimal("21.50"),
        ("A3", dt.datetime(2020, 3, 1, 9, 30)): decimal.Decimal("19.00"),
        ("A2", dt.datetime(2020, 3, 1, 12, 0)): decimal.Decimal("22.10"),  # Excel 43891.5
    }
    [run] = state.runs(db, connector="legacy", limit=1)
    assert (run["kind"], run["status"]) == ("migrate", "success")

    again = migrate(settings, reject_report=tmp_path / "again.csv", db=db)
    totals = again.reports[0].counts()
    assert (totals["new"], totals["changed"], totals["inserted"], totals["updated"]) == (0, 0, 0, 0)
    check_rejects(tmp_path / "again.csv")
    assert (db.count(lp.Lab), db.count(lp.Subject), db.count(lp.Weighing)) == (2, 4, 3)


def test_fixed_rows_leave_the_reject_report(tmp_path: Path, db: Database) -> None:
    exports = tmp_path / "exports"
    shutil.copytree(FIXTURES, exports, ignore=shutil.ignore_patterns("*.py", "*.toml"))
    settings = load_settings(config(tmp_path, db, root=exports))
    assert migrate(settings, db=db).rejected == 8
    subjects = (exports / "subjects.csv").read_bytes()
    subjects = subjects.replace(b"31.02.2020", b"28.02.2020")  # A4 fixed
    subjects = subjects.replace(b"A6;cortex;x;01.01.2020;bad sex code\r\n", b"")  # A6 removed
    (exports / "subjects.csv").write_bytes(subjects)
    result = migrate(settings, reject_report=tmp_path / "rejects.csv", db=db)
    report = read_report(tmp_path / "rejects.csv")
    # A4 landed (and its weighing with it); A6 is gone from the source: neither is listed.
    assert result.rejected == 5
    keys = {(stream, r["source_key"], r["stage"]) for (stream, _), r in report.items()}
    assert keys == {
        ("subjects", '["A5"]', "reference"),
        ("subjects", '["A1"]', "validate"),
        ("subjects", '[""]', "validate"),  # the row without an id
        ("weighings", '["A9","01.03.2020 09:30"]', "reference"),
        ("weighings", '["A1","02.03.2020 10:00"]', "map"),
    }
    assert db.count(lp.Subject) == 5 and db.count(lp.Weighing) == 4


def big_exports(root: Path, subjects: int, weighings_each: int) -> None:
    """Generated exports: every record good, so row counts are exact."""
    root.mkdir()
    (root / "labs.csv").write_text("Name;Institute\ncortex;UCL\n")
    with (root / "subjects.csv").open("w") as f:
        f.write("Animal ID;Lab;Sex;DOB;Notes\n")
        for i in range(subjects):
            f.write(f"S{i:04d};cortex;{'fm'[i % 2]};{1 + i % 28:02d}.01.2020;\n")
    with (root / "weighings.csv").open("w") as f:
        f.write("Animal ID,Date,Weight (g)\n")
        for i in range(subjects):
            for d in range(weighings_each):
                f.write(f'S{i:04d},{1 + d:02d}.03.2020 10:00,"{20 + d},5"\n')


def test_a_crashed_migration_resumes_without_duplicates(tmp_path: Path, db: Database) -> None:
    big_exports(tmp_path / "exports", subjects=30, weighings_each=4)
    settings = load_settings(config(tmp_path, db, root=tmp_path / "exports", batch_size=10))
    read: dict[str, int] = {}

    def crash_halfway(stream: str, n: int) -> None:
        read[stream] = read.get(stream, 0) + n
        if stream == "weighings" and read[stream] > 60:
            raise KeyboardInterrupt  # as a kill between batches: the open batch rolls back

    with pytest.raises(KeyboardInterrupt):
        migrate(settings, progress=crash_halfway, db=db)
    landed = db.count(lp.Weighing)
    assert db.count(lp.Subject) == 30 and 0 < landed < 120
    [run] = state.runs(db, connector="legacy", limit=1)
    assert run["status"] == "interrupted"

    result = migrate(settings, db=db)
    streams = {s.stream: s for s in result.reports[0].streams}
    assert result.ok and result.rejected == 0
    assert streams["subjects"].unchanged == 30
    assert (streams["weighings"].unchanged, streams["weighings"].new) == (landed, 120 - landed)
    assert (db.count(lp.Subject), db.count(lp.Weighing)) == (30, 120)
    with db.engine.connect() as conn:
        ledger = state.ensure(db).ledger
        entries = conn.execute(
            ledger.select().where(ledger.c.connector == "legacy", ledger.c.stream == "weighings")
        ).all()
    assert len(entries) == 120


def test_cli_migrate(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        path = config(tmp_path, db)
        runner = CliRunner()
        args = ["migrate", "--config", str(path), "--reject-report", str(tmp_path / "r.csv")]
        dry = runner.invoke(cli, [*args, "--dry-run"])
        assert dry.exit_code == 1, dry.output
        assert "would reject 8, listed in" in dry.output
        done = runner.invoke(cli, [*args, "--allow-rejects"])
        assert done.exit_code == 0, done.output
        assert "weighings" in done.output and "rejected 8" in done.output
        check_rejects(tmp_path / "r.csv")
        as_json = runner.invoke(cli, ["migrate", "--config", str(path), "--json", "legacy.labs"])
        data: dict[str, Any] = json.loads(as_json.output)
        assert as_json.exit_code == 0 and data["rejected"] == 0
        assert [s["stream"] for s in data["connectors"][0]["streams"]] == ["labs"]
        bad = runner.invoke(cli, ["migrate", "--config", str(path), "legacy.animals"])
        assert bad.exit_code == 2 and "no mapped stream(s) animals" in bad.output
        # discover shows the streams the settings define and the tables the mappings write
        found = runner.invoke(cli, ["discover", "--config", str(path), "--json"])
        assert found.exit_code == 0, found.output
        streams = {r["stream"]: r for r in json.loads(found.output)}
        assert "labs" in streams and streams["labs"]["tables"]
        assert all(r["connector"] == "legacy" for r in streams.values())
    finally:
        db.dispose()


def test_a_files_connector_without_mappings(tmp_path: Path) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'p.db'}",
        connectors={
            "legacy": {"type": "files", "streams": {"s": {"path": "x.csv", "key": ["id"]}}}
        },
    )
    from limsync.errors import ConfigError

    with pytest.raises(ConfigError, match="has no default mapping: map its streams with"):
        migrate(settings)
