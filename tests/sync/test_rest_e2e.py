"""A declarative REST connector, configured without Python, synced end to end over real HTTP.

The configuration is ``fixtures/rest/limsync.toml``, which is also the worked example of
``docs/rest.md`` (a test keeps the two identical). It reads the fake LIMS of
:mod:`limsync.testing.fake_lims` on 127.0.0.1 (token login, limit/offset paging, a cursor, a
child resource per animal) into the built-in element-animal-style tables, on SQLite, MariaDB and
PostgreSQL: first sync, an unchanged re-sync that writes nothing, changes, a death and a delete,
an incremental sync, and a session token that expires between syncs.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from limsync.cli.main import cli
from limsync.config.settings import Settings, load_settings
from limsync.pipeline.database import Database
from limsync.sync.maps import pyrat as pm
from limsync.sync.report import SyncReport
from limsync.sync.runner import sync
from limsync.testing.fake_lims import FakeLims

FIXTURE = Path(__file__).parent / "fixtures" / "rest" / "limsync.toml"
DOCS = Path(__file__).parents[2] / "docs" / "rest.md"
PASSWORD_ENV = "LIMSYNC_CONNECTORS__MYLIMS__AUTH__PASSWORD"


@pytest.fixture
def lims() -> Iterator[FakeLims]:
    """A running fake LIMS: 8 animals with 3 weighings each, on 3 strains."""
    with FakeLims(n_animals=8, weights_per_animal=3) as server:
        yield server


@pytest.fixture
def config(tmp_path: Path, db: Database, lims: FakeLims, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fixture configuration pointed at this test's database and fake LIMS."""
    text = FIXTURE.read_text()
    url = db.url.render_as_string(hide_password=False)
    text = text.replace('"sqlite:///limsync.db"', json.dumps(url))
    text = text.replace('"http://127.0.0.1:8000/api"', json.dumps(lims.url))
    # Small pages: every listing of the fake takes several pages.
    text = text.replace("page_size = 100", "page_size = 3")
    text = f"schema_prefix = {json.dumps(db.schema_prefix)}\n" + text
    path = tmp_path / "limsync.toml"
    path.write_text(text)
    monkeypatch.setenv(PASSWORD_ENV, FakeLims.PASSWORD)  # the secret comes from the environment
    return path


def run(settings: Settings, db: Database, *, full: bool = True) -> SyncReport:
    (report,) = sync(settings, db=db, full=full)
    assert report.ok, report.first_error()
    return report


def stream(report: SyncReport, name: str) -> Any:
    return next(s for s in report.streams if s.stream == name)


def written(report: SyncReport) -> int:
    counts = report.counts()
    return sum(counts.get(k, 0) for k in ("inserted", "updated", "deleted", "deleted_rows"))


def by(rows: list[dict[str, Any]], *key: str) -> dict[Any, dict[str, Any]]:
    return {r[key[0]] if len(key) == 1 else tuple(r[k] for k in key): r for r in rows}


def test_docs_example_is_the_tested_configuration() -> None:
    blocks = re.findall(r"```toml\n(.*?)```", DOCS.read_text(), re.S)
    assert blocks and blocks[0] == FIXTURE.read_text()


def test_first_sync_unchanged_resync_changes_and_delete(
    config: Path, db: Database, lims: FakeLims
) -> None:
    settings = load_settings(config)
    first = run(settings, db)
    assert [stream(first, s).new for s in ("strains", "animals", "weights")] == [3, 8, 24]
    assert db.count(pm.Line) == 3 and db.count(pm.Subject) == 8
    assert db.count(pm.SubjectWeight) == 24 and db.count(pm.SubjectDeath) == 0
    subjects = by(db.fetch(pm.Subject), "animal_id")
    assert subjects[1]["subject"] == "A-0001" and subjects[1]["sex"] == "F"
    assert subjects[2]["sex"] == "M" and subjects[2]["line_id"] == 3
    assert subjects[1]["subject_birth_date"] == dt.date(2025, 1, 8)
    weights = by(db.fetch(pm.SubjectWeight), "animal_id", "weight_id")
    assert weights[(2, 201)]["weight"] == pytest.approx(21.1)
    assert weights[(2, 201)]["weight_time"] == dt.datetime(2026, 1, 1, 8, 30)
    assert lims.logins == 1

    # Unchanged, except the computed age every animal has: nothing is written.
    lims.age(days=3)
    again = run(settings, db)
    assert written(again) == 0
    assert all(s.new == s.changed == s.gone == 0 for s in again.streams)

    # An edit, a death, a new animal with a weighing, a new weighing, and a deleted animal.
    lims.modify_animal(3, eartag="A-0003-renamed")
    lims.modify_animal(4, status="dead", death_date="2026-01-30", death_reason="end of study")
    newcomer = lims.add_animal(sex="m")
    lims.add_weight(newcomer["id"], weight_g=18.5)
    lims.add_weight(1, weight_g=33.0)
    lims.remove_animal(8)
    changed = run(settings, db)
    assert (stream(changed, "animals").new, stream(changed, "animals").changed) == (1, 2)
    assert stream(changed, "animals").gone == 1 and stream(changed, "weights").gone == 3
    assert stream(changed, "weights").new == 2
    subjects = by(db.fetch(pm.Subject), "animal_id")
    assert subjects[3]["subject"] == "A-0003-renamed" and subjects[4]["state"] == "dead"
    assert 8 not in subjects and subjects[9]["sex"] == "M"
    deaths = by(db.fetch(pm.SubjectDeath), "animal_id")
    assert set(deaths) == {4} and deaths[4]["cull_reason"] == "end of study"
    assert deaths[4]["death_date"] == dt.date(2026, 1, 30)
    weights = by(db.fetch(pm.SubjectWeight), "animal_id", "weight_id")
    assert weights[(1, 104)]["weight"] == pytest.approx(33.0)
    assert weights[(9, 901)]["weight"] == pytest.approx(18.5)
    assert not [k for k in weights if k[0] == 8]
    assert len(weights) == 24 - 3 + 2


def test_incremental_sync_reads_from_the_cursor(config: Path, db: Database, lims: FakeLims) -> None:
    settings = load_settings(config)
    run(settings, db)
    lims.modify_animal(2, eartag="A-0002-b")
    lims.reset_counters()
    report = run(settings, db, full=False)
    animals = stream(report, "animals")
    # Only records modified since the cursor minus the 1 h lookback are listed: the edited
    # animal, and animal 8 again (modified at the cursor itself), unchanged.
    assert (animals.read, animals.changed, animals.unchanged) == (2, 1, 1)
    # The request log holds queries decoded: split them by hand ("+" is not a space here).
    queries = [
        dict(p.split("=", 1) for p in r.query.split("&"))
        for r in lims.request_log
        if r.path == "/animals"
    ]
    # The last committed cursor was the newest modified time, 2026-01-08 09:00 UTC. (The
    # weights stream then lists every animal: children are read for all parents.)
    assert queries[0] == {
        "modified_after": "2026-01-08T08:00:00+00:00",
        "limit": "3",
        "offset": "0",
    }
    assert all("modified_after" not in q for q in queries[1:])
    assert by(db.fetch(pm.Subject), "animal_id")[2]["subject"] == "A-0002-b"


def test_expired_token_logs_in_again_and_cli_sync(
    config: Path, db: Database, lims: FakeLims
) -> None:
    runner = CliRunner()
    first = runner.invoke(cli, ["sync", "--config", str(config), "--json"])
    assert first.exit_code == 0, first.output
    assert db.count(pm.Subject) == 8 and lims.logins == 1
    lims.expire_tokens()
    lims.modify_animal(5, eartag="A-0005-b")
    second = runner.invoke(cli, ["sync", "--config", str(config), "--json"])
    assert second.exit_code == 0, second.output
    assert lims.logins == 2
    assert by(db.fetch(pm.Subject), "animal_id")[5]["subject"] == "A-0005-b"
    assert FakeLims.PASSWORD not in first.output + second.output


def test_wrong_password_fails_clearly(
    config: Path, db: Database, lims: FakeLims, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    result = CliRunner().invoke(cli, ["sync", "--config", str(config)])
    assert result.exit_code == 2  # fix the configuration: retrying does not help
    assert "refused the username/password of user 'sync'" in result.output
    assert "not-the-password" not in result.output
    assert db.count(pm.Subject) == 0
