"""``limsync sync`` end to end: a fake PyRAT over real HTTP into SQLite, MariaDB and PostgreSQL.

Each test serves a small generated colony from :class:`FakePyrat` on 127.0.0.1, syncs it with
the library entry point and compares the pipeline's tables with the colony: first sync, an
unchanged re-sync that writes nothing and fetches no per-animal history, changes and deaths,
wrong tokens, and a token revoked in the middle of a run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from limsync.config.settings import Settings, load_settings
from limsync.connectors import registry
from limsync.errors import AuthenticationError
from limsync.pipeline.database import Database
from limsync.sync.maps import pyrat as pm
from limsync.sync.report import SyncReport
from limsync.sync.runner import sync
from limsync.testing.fake_pyrat import FakePyrat
from limsync.testing.pyrat.colony import PyratColony


def make_settings(db_url: str, prefix: str, url: str, **extra: Any) -> Settings:
    """Settings for one PyRAT instance named ``pyrat``; retries fast so faults stay cheap."""
    section: dict[str, Any] = {
        "type": "pyrat",
        "base_url": url,
        "client_token": FakePyrat.CLIENT_TOKEN,
        "user_token": FakePyrat.USER_TOKEN,
        "backoff_factor": 0.01,
        "backoff_max": 0.05,
        "page_size": 10,
        **extra,
    }
    return Settings(database_url=db_url, schema_prefix=prefix, connectors={"pyrat": section})


@pytest.fixture
def pyrat() -> Iterator[FakePyrat]:
    """A running fake PyRAT with a 30-animal colony."""
    with FakePyrat(PyratColony.generate(seed=3, n_animals=30)) as server:
        yield server


def run(settings: Settings, db: Database) -> SyncReport:
    """One sync of the ``pyrat`` instance."""
    (report,) = sync(settings, db=db)
    return report


def stream(report: SyncReport, name: str) -> Any:
    """One stream's report."""
    return next(s for s in report.streams if s.stream == name)


def written(report: SyncReport) -> int:
    """Rows inserted, updated or deleted by a run."""
    counts = report.counts()
    return sum(counts.get(k, 0) for k in ("inserted", "updated", "deleted", "deleted_rows"))


def addressable(colony: PyratColony) -> list[dict[str, Any]]:
    """The animals whose histories can be listed by eartag (unique, no '/')."""
    tags = [a["eartag_or_id"] for a in colony.animals]
    return [
        a
        for a in colony.animals
        if tags.count(a["eartag_or_id"]) == 1 and "/" not in a["eartag_or_id"]
    ]


def test_first_sync_then_unchanged(db: Database, db_url: str, pyrat: FakePyrat) -> None:
    settings = make_settings(db_url, db.schema_prefix, pyrat.url.removesuffix("/api/v3"))
    colony = pyrat.colony
    report = run(settings, db)
    assert report.ok, report.first_error()
    assert db.count(pm.Subject) == len(colony.animals)
    assert db.count(pm.Line) == len(colony.strains)
    assert db.count(pm.Pup) == len(colony.pups)
    assert db.count(pm.User) == len(colony.users)
    assert db.count(pm.Project) == len(colony.projects)
    protocols = {r["protocol_id"]: r["protocol"] for r in db.fetch(pm.Protocol)}
    assert protocols == {x["license_id"]: x["license_number"] for x in colony.licenses}
    alleles = {m["mutation_id"] for a in colony.animals for m in a["mutations"]}
    assert {r["allele_id"] for r in db.fetch(pm.Allele)} == alleles
    genotypes = {(a["animalid"], m["mutation_id"]) for a in colony.animals for m in a["mutations"]}
    # Both spellings: licence_* on animals, license_* on procedures.
    titles = {r["licence_title"] for r in db.fetch(pm.Subject)}
    assert titles == {"Zucht", None}
    assert {r["license_number"] for r in db.fetch(pm.SubjectProcedure)} == {"02_Zucht"}
    assert {(r["animal_id"], r["allele_id"]) for r in db.fetch(pm.SubjectGenotype)} == genotypes
    reachable = addressable(colony)
    ids = [a["animalid"] for a in reachable]
    assert db.count(pm.SubjectWeight) == len(colony.items("weights", ids))
    assert db.count(pm.SubjectComment) == len(colony.items("comments", ids))
    assert db.count(pm.SubjectProcedure) == len(colony.items("procedures", ids))
    dead = [a for a in colony.animals if a["state"] == "sacrificed"]
    assert db.count(pm.SubjectDeath) == len(dead) > 0
    parents = {(r["animal_id"], r["parent_id"]) for r in db.fetch(pm.SubjectParent)}
    assert sum(1 for a, _ in parents if a == colony.animals[5]["animalid"]) == 3
    # Duplicate eartags stay two subjects, keyed by animalid.
    assert {r["subject"] for r in db.fetch(pm.Subject)} >= {colony.animals[-1]["eartag_or_id"]}
    sexes = {r["animal_id"]: r["sex"] for r in db.fetch(pm.Subject)}
    assert {sexes[a["animalid"]] for a in colony.animals} == {"F", "M", "U"}
    zygosities = {r["zygosity"] for r in db.fetch(pm.SubjectGenotype)}
    assert zygosities <= {"Absent", "Heterozygous", "Homozygous"} and zygosities
    first_requests = pyrat.requests
    per_animal_first = sum(n for p, n in pyrat.requests_by_path.items() if p.count("/") == 3)
    assert per_animal_first == 3 * len(reachable)

    pyrat.reset_counters()
    again = run(settings, db)
    assert again.ok, again.first_error()
    assert written(again) == 0
    per_animal = sum(n for p, n in pyrat.requests_by_path.items() if p.count("/") == 3)
    assert per_animal == 0
    assert pyrat.requests < first_requests / 4
    print(f"requests: first sync {first_requests}, unchanged re-sync {pyrat.requests}")


def test_changes_and_deaths_arrive(db: Database, db_url: str, pyrat: FakePyrat) -> None:
    settings = make_settings(db_url, db.schema_prefix, pyrat.url)
    colony = pyrat.colony
    assert run(settings, db).ok
    live = next(a for a in addressable(colony) if a["state"] == "live")
    weight = colony.add_weight(live["animalid"], 31.5)
    colony.sacrifice(live["animalid"], "2026-03-30", "End of experiment")
    newcomer = colony.add_animal(eartag_or_id="CBR1-05823", sex="f", strain_id=5, weights=2)
    other = next(a for a in addressable(colony) if a["animalid"] != live["animalid"])
    colony.modify_animal(other["animalid"], labid="renamed")
    pyrat.reset_counters()
    report = run(settings, db)
    assert report.ok, report.first_error()
    weights = {r["weight_id"]: r for r in db.fetch(pm.SubjectWeight)}
    assert weights[weight["weight_id"]]["weight"] == 31.5
    death = {r["animal_id"]: r for r in db.fetch(pm.SubjectDeath)}[live["animalid"]]
    assert death["cull_reason"] == "End of experiment"
    assert str(death["death_date"]) == "2026-03-30"
    subjects = {r["animal_id"]: r for r in db.fetch(pm.Subject)}
    assert subjects[newcomer["animalid"]]["subject"] == "CBR1-05823"
    assert subjects[other["animalid"]]["subject_alias"] == "renamed"
    assert sum(1 for r in weights.values() if r["animal_id"] == newcomer["animalid"]) == 2
    # Histories were fetched (3 streams each) for the new animal and the weighed one only: a
    # labid edit is no sign that weights, comments or procedures changed.
    per_animal = sum(n for p, n in pyrat.requests_by_path.items() if p.count("/") == 3)
    assert per_animal == 2 * 3


def test_deleted_animal_is_flagged_then_deleted(
    db: Database, db_url: str, pyrat: FakePyrat
) -> None:
    colony = pyrat.colony
    gone = addressable(colony)[2]
    policy = {"delete_policy": "delete"}
    streams = {s: policy for s in ("animals", "weights", "comments", "procedures")}
    settings = make_settings(db_url, db.schema_prefix, pyrat.url, streams=streams)
    assert run(settings, db).ok
    colony.delete_animal(gone["animalid"])
    report = run(settings, db)
    assert report.ok, report.first_error()
    assert stream(report, "animals").deleted == 1
    assert gone["animalid"] not in {r["animal_id"] for r in db.fetch(pm.Subject)}
    assert gone["animalid"] not in {r["animal_id"] for r in db.fetch(pm.SubjectWeight)}


@pytest.mark.parametrize("bad", ["client", "user"])
def test_wrong_token_names_it(bad: str, pyrat: FakePyrat) -> None:
    settings = make_settings("sqlite://", "", pyrat.url, **{f"{bad}_token": "0-wrong"})
    cls = registry.get("pyrat")
    connector = cls("pyrat", settings.connector_settings("pyrat"))
    results = {r.name: r for r in connector.check()}
    assert not results["auth"].ok
    assert f"{bad} token" in results["auth"].detail
    assert ("user token" in results["auth"].detail) == (bad == "user")
    assert "0-wrong" not in results["auth"].detail
    assert results["api version"].ok


def test_token_revoked_mid_run_stops_cleanly(db: Database, db_url: str, pyrat: FakePyrat) -> None:
    settings = make_settings(db_url, db.schema_prefix, pyrat.url)
    settings.batch_size = 7
    calls = {"n": 0}
    original = pyrat._guard

    def revoke_after_some(request: Any) -> Any:
        if request.path == "/animals" and "labid" in request.query.get("k", []):
            calls["n"] += 1
            if calls["n"] == 2:  # the second page of the animals stream
                pyrat.user_token = "revoked"
        return original(request)

    pyrat._guard = revoke_after_some  # type: ignore[method-assign]
    report = run(settings, db)
    assert not report.ok
    error = stream(report, "animals").error
    assert "401" in error and "user_token" in error and "revoked" not in error
    # Whole batches only: the first page (10 animals) made one batch of 7; the other 3 wait.
    assert db.count(pm.Subject) == 7
    pyrat._guard = original  # type: ignore[method-assign]
    pyrat.user_token = FakePyrat.USER_TOKEN
    report = run(settings, db)
    assert report.ok, report.first_error()
    assert db.count(pm.Subject) == len(pyrat.colony.animals)


def env_config(tmp_path: Path, db: Database, db_url: str, url: str) -> Path:
    """A limsync.toml without tokens: they come from LIMSYNC_* environment variables."""
    path = tmp_path / "limsync.toml"
    path.write_text(
        f"database_url = {json.dumps(db_url)}\nschema_prefix = {json.dumps(db.schema_prefix)}\n"
        f'[connectors.pyrat]\ntype = "pyrat"\nbase_url = {json.dumps(url)}\npage_size = 10\n'
    )
    return path


def test_tokens_from_the_environment_are_never_logged(
    tmp_path: Path,
    db: Database,
    db_url: str,
    pyrat: FakePyrat,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("LIMSYNC_CONNECTORS__PYRAT__CLIENT_TOKEN", FakePyrat.CLIENT_TOKEN)
    monkeypatch.setenv("LIMSYNC_CONNECTORS__PYRAT__USER_TOKEN", FakePyrat.USER_TOKEN)
    settings = load_settings(env_config(tmp_path, db, db_url, pyrat.url))
    report = run(settings, db)
    assert report.ok, report.first_error()
    assert db.count(pm.Subject) == len(pyrat.colony.animals)
    secrets = (FakePyrat.CLIENT_TOKEN, FakePyrat.USER_TOKEN)
    assert caplog.records and not any(s in caplog.text for s in secrets)
    assert not any(s in json.dumps(report.to_dict()) for s in secrets)


@pytest.mark.parametrize("bad", ["client", "user"])
def test_a_sync_with_a_wrong_token_names_it_and_writes_nothing(
    tmp_path: Path,
    db: Database,
    db_url: str,
    pyrat: FakePyrat,
    monkeypatch: pytest.MonkeyPatch,
    bad: str,
) -> None:
    tokens = {"client": FakePyrat.CLIENT_TOKEN, "user": FakePyrat.USER_TOKEN, bad: "0-wrong"}
    for label, token in tokens.items():
        monkeypatch.setenv(f"LIMSYNC_CONNECTORS__PYRAT__{label.upper()}_TOKEN", token)
    settings = load_settings(env_config(tmp_path, db, db_url, pyrat.url))
    with pytest.raises(AuthenticationError) as info:
        run(settings, db)
    message = str(info.value)
    assert f"the {bad} token (connectors.pyrat.{bad}_token) is not valid" in message
    other = "user" if bad == "client" else "client"
    assert f"{other} token" not in message and "0-wrong" not in message
    assert info.value.exit_code == 2
    assert set(pyrat.requests_by_path) == {"/credentials"}  # nothing read past the check


def test_histories_are_optional(db: Database, db_url: str, pyrat: FakePyrat) -> None:
    histories = ("weights", "comments", "procedures")
    streams = {name: {"enabled": False} for name in histories}
    settings = make_settings(db_url, db.schema_prefix, pyrat.url, streams=streams)
    report = run(settings, db)
    assert report.ok, report.first_error()
    assert not {s.stream for s in report.streams} & set(histories)
    assert db.count(pm.Subject) == len(pyrat.colony.animals)
    assert db.count(pm.SubjectWeight) == 0
    assert not [p for p in pyrat.requests_by_path if p.count("/") == 3]  # no per-animal request
