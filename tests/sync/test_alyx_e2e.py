"""``limsync sync`` end to end: a fake Alyx over real HTTP into SQLite, MariaDB and PostgreSQL.

Each test serves a small generated colony from :class:`FakeAlyx` on 127.0.0.1, syncs it with
the library entry point (or the CLI in a subprocess) and compares the pipeline's tables with the
colony: counts, keys, the subject each weighing lands on, and what changes after the source
changes. Fault injection covers throttling, 5xx bursts, dropped connections and a sync killed
with SIGKILL halfway through.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from limsync.cli.main import cli
from limsync.config.settings import Settings
from limsync.pipeline import state
from limsync.pipeline.database import Database
from limsync.sync import admin
from limsync.sync.maps import alyx as ibl
from limsync.sync.report import SyncReport
from limsync.sync.runner import sync
from limsync.testing import Colony, FakeAlyx

REPO = Path(__file__).resolve().parents[2]

# Every default pipeline table and the colony record kind whose count it must equal
# (SubjectProject has no kind of its own: it is checked against the subjects' projects).
TABLE_KINDS: dict[type[Any], str] = {
    ibl.Lab: "lab",
    ibl.LabMember: "user",
    ibl.Project: "project",
    ibl.ProcedureType: "procedure",
    ibl.WaterType: "watertype",
    ibl.Subject: "subject",
    ibl.Session: "session",
    ibl.Weighing: "weighing",
    ibl.WaterAdministration: "wateradmin",
    ibl.WaterRestriction: "waterrestriction",
    ibl.Surgery: "surgery",
}
ALL_TABLES: tuple[type[Any], ...] = (*TABLE_KINDS, ibl.SubjectProject)


def small_colony(seed: int = 11, n_subjects: int = 26) -> Colony:
    """A colony that syncs in well under a second. 26 subjects: the generator gives the 26th
    the nickname of the 25th in another lab, so a duplicate nickname is always present."""
    return Colony.generate(
        seed=seed,
        n_subjects=n_subjects,
        sessions_per_subject=2,
        weighings_per_subject=3,
        water_admins_per_subject=2,
    )


def alyx_section(url: str, **extra: Any) -> dict[str, Any]:
    """The ``[connectors.alyx]`` section for a fake server; retries fast so faults stay cheap."""
    section: dict[str, Any] = {
        "type": "alyx",
        "base_url": url,
        "username": FakeAlyx.DEFAULT_USERNAME,
        "password": FakeAlyx.DEFAULT_PASSWORD,
        "rate_limit_per_minute": None,
        "backoff_factor": 0.01,
        "backoff_max": 0.05,
        "page_size": 50,
    }
    section.update(extra)
    return section


def make_settings(db_url: str, prefix: str, url: str, **extra: Any) -> Settings:
    """Settings for one Alyx instance named ``alyx``."""
    return Settings(
        database_url=db_url, schema_prefix=prefix, connectors={"alyx": alyx_section(url, **extra)}
    )


def only(reports: list[SyncReport]) -> SyncReport:
    """The one report of a one-connector sync, checked to have succeeded."""
    assert len(reports) == 1
    report = reports[0]
    assert report.ok, report.first_error()
    return report


def stream(report: SyncReport, name: str) -> Any:
    """One stream's report."""
    return next(s for s in report.streams if s.stream == name)


def counts(db: Database) -> dict[str, int]:
    """Row counts of every default table, by class name."""
    return {t.__name__: db.count(t) for t in ALL_TABLES}


def expected_counts(colony: Colony) -> dict[str, int]:
    """What :func:`counts` must be after a complete sync of ``colony``."""
    out = {t.__name__: colony.count(kind) for t, kind in TABLE_KINDS.items()}
    out["SubjectProject"] = sum(
        len(set(colony.record("subject", s).projects)) for s in colony.ids("subject")
    )
    return out


def snapshot(db: Database) -> dict[str, list[tuple[str, ...]]]:
    """Every row of every default table as sorted tuples of text: equal tables, equal values."""
    out = {}
    for table in ALL_TABLES:
        rows = [tuple(f"{k}={r[k]}" for k in sorted(r)) for r in db.fetch(table)]
        out[table.__name__] = sorted(rows)
    return out


def weighing_owners(db: Database) -> dict[str, str]:
    """weighing uuid -> subject uuid, as the pipeline holds them."""
    return {str(r["weighing_uuid"]): str(r["subject_uuid"]) for r in db.fetch(ibl.Weighing)}


def colony_weighing_owners(colony: Colony) -> dict[str, str]:
    """weighing id -> subject id, as the source holds them."""
    return {w: colony.record("weighing", w).subject for w in colony.ids("weighing")}


def subject_row(db: Database, subject_id: str) -> dict[str, Any]:
    """The pipeline row of one subject."""
    rows = [r for r in db.fetch(ibl.Subject) if str(r["subject_uuid"]) == subject_id]
    assert len(rows) == 1, f"subject {subject_id}: {len(rows)} rows"
    return rows[0]


@pytest.fixture
def colony() -> Colony:
    """A fresh small colony."""
    return small_colony()


@pytest.fixture
def alyx(colony: Colony) -> Iterator[FakeAlyx]:
    """The fake Alyx serving ``colony``."""
    with FakeAlyx(colony) as server:
        yield server


# --- 1. a complete sync, an idempotent one, and changes at the source ------------------------


def test_initial_sync_lands_every_record_and_a_second_writes_nothing(
    db: Database, db_url: str, schema_prefix: str, colony: Colony, alyx: FakeAlyx
) -> None:
    settings = make_settings(db_url, schema_prefix, alyx.url)

    first = only(sync(settings, db=db))

    assert counts(db) == expected_counts(colony)
    assert weighing_owners(db) == colony_weighing_owners(colony)
    totals = first.counts()
    assert totals["read"] == totals["new"] > 0
    assert totals["quarantined"] == 0
    assert {r["status"] for r in state.runs(db)} == {"success"}

    before = snapshot(db)
    second = only(sync(settings, db=db))
    totals = second.counts()
    assert (totals["inserted"], totals["updated"], totals["new"], totals["changed"]) == (0, 0, 0, 0)
    assert totals["unchanged"] == totals["read"]
    assert snapshot(db) == before


def test_duplicate_nicknames_across_labs_resolve_to_the_right_subject(
    db: Database, db_url: str, schema_prefix: str, colony: Colony, alyx: FakeAlyx
) -> None:
    by_name: dict[str, list[str]] = {}
    for sid in colony.ids("subject"):
        by_name.setdefault(colony.record("subject", sid).nickname, []).append(sid)
    twins = next(ids for ids in by_name.values() if len(ids) > 1)
    labs = {colony.record("subject", s).lab for s in twins}
    assert len(labs) == len(twins), "the generator's duplicate nickname must span labs"
    # Both twins get a fresh weighing, so each has at least one to land on the right subject.
    extra = {s: colony.add_weighing(s, weight=20.0 + i)["id"] for i, s in enumerate(twins)}

    report = only(sync(make_settings(db_url, schema_prefix, alyx.url), db=db))

    assert stream(report, "weighings").quarantined == 0
    owners = weighing_owners(db)
    assert owners == colony_weighing_owners(colony)
    for sid, weighing_id in extra.items():
        assert owners[weighing_id] == sid
    nicknames = {str(subject_row(db, s)["subject_nickname"]) for s in twins}
    assert len(nicknames) == 1


def test_source_changes_arrive(
    db: Database, db_url: str, schema_prefix: str, colony: Colony, alyx: FakeAlyx
) -> None:
    settings = make_settings(
        db_url,
        schema_prefix,
        alyx.url,
        streams={"weighings": {"delete_policy": "delete"}},
    )
    only(sync(settings, db=db))

    subjects = colony.ids("subject")
    renamed = subjects[0]
    colony.rename_subject(renamed, "renamed_mouse")
    added = colony.add_weighing(subjects[1], weight=31.5)["id"]
    session_id = colony.ids("session")[0]
    colony.modify_session(session_id, narrative="edited at the source")
    deleted_weighing = colony.ids("weighing")[0]
    colony.delete_weighing(deleted_weighing)
    flagged_admin = colony.ids("wateradmin")[0]
    colony.delete_water_administration(flagged_admin)
    new_subject = colony.add_subject(nickname="brand_new_mouse", sex="F")["id"]

    report = only(sync(settings, db=db))

    subj = stream(report, "subjects")
    assert (subj.new, subj.changed) == (1, 1)
    assert subject_row(db, renamed)["subject_nickname"] == "renamed_mouse"
    assert subject_row(db, new_subject)["sex"] == "F"
    assert db.count(ibl.Subject) == colony.count("subject")

    sess = stream(report, "sessions")
    assert (sess.new, sess.changed) == (0, 1)
    rows = [r for r in db.fetch(ibl.Session) if str(r["session_uuid"]) == session_id]
    assert rows[0]["session_narrative"] == "edited at the source"

    weigh = stream(report, "weighings")
    assert (weigh.new, weigh.gone, weigh.deleted) == (1, 1, 1)
    # Labels are physical table names: "<prefix>action.weighing".
    assert [(t.endswith("action.weighing"), n) for t, n in weigh.deleted_rows.items()] == [
        (True, 1)
    ]
    owners = weighing_owners(db)
    assert owners == colony_weighing_owners(colony)
    assert owners[added] == subjects[1] and deleted_weighing not in owners

    # The default policy "flag": the row stays, the report and the ledger say it is gone.
    water = stream(report, "water_administrations")
    assert (water.gone, water.deleted) == (1, 0)
    admins = {str(r["wateradmin_uuid"]) for r in db.fetch(ibl.WaterAdministration)}
    assert flagged_admin in admins
    assert admins == set(colony.ids("wateradmin")) | {flagged_admin}
    gone = {r["stream"]: r["gone"] for r in admin.state_show(db, "alyx")}
    assert gone["water_administrations"] == 1 and gone["weighings"] == 0

    third = only(sync(settings, db=db))
    totals = third.counts()
    assert (totals["inserted"], totals["updated"], totals["deleted"]) == (0, 0, 0)


# --- 3. throttling, server errors and dropped connections ------------------------------------


@pytest.mark.parametrize(
    "faults",
    [
        pytest.param({"throttle": 4, "retry_after": 0}, id="429-retry-after-0"),
        pytest.param({"throttle": 1, "retry_after": 1}, id="429-retry-after-1"),
        pytest.param({"error_burst": 3, "error_status": 503}, id="503-burst"),
        pytest.param({"throttle_every": 7, "retry_after": 0}, id="every-7th-429"),
        pytest.param({"drop_connection": 2}, id="dropped-connections"),
    ],
)
def test_faults_are_ridden_out(
    tmp_path: Path, faults: dict[str, Any], colony: Colony, alyx: FakeAlyx
) -> None:
    db_url = f"sqlite:///{tmp_path / 'faults.db'}"
    settings = make_settings(db_url, "", alyx.url)
    alyx.faults.set(**faults)

    only(sync(settings))

    injected = [r for r in alyx.request_log if r.fault]
    assert injected, "the faults were never injected"
    db = Database(db_url)
    try:
        assert counts(db) == expected_counts(colony)
    finally:
        db.dispose()


# --- 4. a malformed record is quarantined, the rest lands -----------------------------------


def write_config(path: Path, db_url: str, prefix: str, server_url: str, **extra: Any) -> Path:
    """A limsync.toml for the fake server (the password comes from the environment)."""
    lines = [f'database_url = "{db_url}"', f'schema_prefix = "{prefix}"', "", "[connectors.alyx]"]
    section = alyx_section(server_url, **extra)
    # TOML has no null: "no rate limit" becomes one far above what a test can reach.
    section["rate_limit_per_minute"] = section["rate_limit_per_minute"] or 1_000_000
    for key, value in section.items():
        if key == "password" or isinstance(value, dict):
            continue
        lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_malformed_records_are_quarantined_and_listed(
    tmp_path: Path,
    db: Database,
    db_url: str,
    schema_prefix: str,
    colony: Colony,
    alyx: FakeAlyx,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bad_subject = colony.add_subject(nickname="odd_sex_mouse", sex="X")["id"]
    bad_weighing = colony.ids("weighing")[3]
    with colony.lock:
        # The mutation API only takes numbers: corrupt the stored record as a broken LIMS would.
        colony.table("weighing")[bad_weighing].weight = "abc"
    monkeypatch.setenv("LIMSYNC_CONNECTORS__ALYX__PASSWORD", FakeAlyx.DEFAULT_PASSWORD)
    config = write_config(tmp_path / "limsync.toml", db_url, schema_prefix, alyx.url)

    runner = CliRunner()
    result = runner.invoke(cli, ["sync", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)[0]
    by_stream = {s["stream"]: s for s in report["streams"]}
    assert by_stream["subjects"]["quarantined"] == 1
    assert by_stream["weighings"]["quarantined"] == 1

    expected = expected_counts(colony)
    expected["Subject"] -= 1
    expected["Weighing"] -= 1
    expected["SubjectProject"] -= len(set(colony.record("subject", bad_subject).projects))
    assert counts(db) == expected

    listed = runner.invoke(cli, ["quarantine", "list", "--config", str(config), "--json"])
    assert listed.exit_code == 0, listed.output
    entries = {(e["stream"], e["source_key"]): e for e in json.loads(listed.stdout)}
    keys = {(s, k) for s, k in entries}
    assert any(s == "subjects" and bad_subject in k for s, k in keys), keys
    assert any(s == "weighings" and bad_weighing in k for s, k in keys), keys
    assert {e["stage"] for e in entries.values()} == {"validate"}
    weighing_error = next(e["error"] for (s, _), e in entries.items() if s == "weighings")
    assert "weight" in weighing_error


# --- 2. SIGKILL halfway, then a rerun: the same tables as a clean sync -----------------------


def run_cli_process(config: Path, password: str) -> subprocess.Popen[bytes]:
    """``limsync sync --config CONFIG`` in a child process."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "LIMSYNC_CONNECTORS__ALYX__PASSWORD": password,
    }
    code = "from limsync.cli.main import main; main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, "sync", "--json", "--config", str(config)],
        env=env,
        cwd=config.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_sigkill_mid_run_then_rerun_equals_a_clean_sync(
    tmp_path: Path,
    backend: str,
    db: Database,
    db_url: str,
    schema_prefix: str,
    colony: Colony,
    alyx: FakeAlyx,
) -> None:
    rng = random.Random(f"sigkill-{backend}")
    # Small pages and a slow server: the run makes ~80 requests over a second or two.
    config = write_config(tmp_path / "limsync.toml", db_url, schema_prefix, alyx.url, page_size=5)
    alyx.faults.set(delay=0.01)
    kills = 0
    for _ in range(2):
        alyx.reset_counters()
        proc = run_cli_process(config, FakeAlyx.DEFAULT_PASSWORD)
        target = rng.randint(15, 70)  # kill after this many requests reached the server
        deadline = time.monotonic() + 30
        while alyx.requests < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=30)
    assert kills, "the sync always finished before the kill: make the server slower"
    alyx.faults.set(delay=0.0)

    rerun = run_cli_process(config, FakeAlyx.DEFAULT_PASSWORD)
    stdout, stderr = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, stderr.decode()
    report = json.loads(stdout)[0]
    assert report["ok"] and not report["skipped"]

    clean_prefix = f"{schema_prefix}clean_"  # under the fixture's prefix: dropped with it
    clean_url = f"sqlite:///{tmp_path / 'clean.db'}" if backend == "sqlite" else db_url
    clean = Database(clean_url, schema_prefix=clean_prefix, state_schema="limsync")
    try:
        only(sync(make_settings(clean_url, clean_prefix, alyx.url), db=clean))
        assert counts(clean) == expected_counts(colony)
        assert snapshot(db) == snapshot(clean)
    finally:
        clean.dispose()
    statuses = [r["status"] for r in state.runs(db, limit=10)]
    assert statuses[0] == "success"


# --- 6. two syncs of one connector at once never both write ----------------------------------


def test_concurrent_syncs_never_both_write(
    db: Database, db_url: str, schema_prefix: str, colony: Colony, alyx: FakeAlyx
) -> None:
    settings = make_settings(db_url, schema_prefix, alyx.url, page_size=10)
    state.ensure(db)
    only(sync(settings, db=db))  # declare the tables before the race, outside it
    colony.add_weighing(colony.ids("subject")[2], weight=27.0)
    alyx.faults.set(delay=0.01)  # each run takes a while, so the two overlap
    results: list[SyncReport | BaseException] = []
    start = threading.Barrier(2)

    def worker() -> None:
        start.wait()
        try:
            results.extend(sync(settings))
        except BaseException as exc:  # collected and asserted on below
            results.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 2
    reports = [r for r in results if isinstance(r, SyncReport)]
    assert len(reports) == 2, results
    skipped = [r for r in reports if r.skipped]
    for r in skipped:
        assert r.error is not None and "another sync of it is running" in r.error
    ran = [r for r in reports if not r.skipped]
    assert ran and all(r.ok for r in ran)
    assert sum(r.counts()["inserted"] for r in ran) == 1  # the new weighing, written once

    writing = [
        r
        for r in state.runs(db, limit=50)
        if r["status"] == "success" and (r["counts"].get("inserted") or r["counts"].get("updated"))
    ]
    spans = sorted((r["started_at"], r["finished_at"]) for r in writing)
    for (_, end), (begin, _) in itertools.pairwise(spans):
        assert end <= begin, f"two writing runs overlap: {spans}"
    assert counts(db) == expected_counts(colony)
