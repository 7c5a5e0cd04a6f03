"""The ``limsync`` command line, through click's runner against a fake Alyx and SQLite.

Covers every command's ``--help``, the commands that read or change a synced database, the
one-line error messages and exit codes (2: configuration or credentials, 1: a failed run), and
that a password never reaches the output.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from limsync.cli.common import counts_text
from limsync.cli.main import cli
from limsync.config.settings import load_settings
from limsync.pipeline import state
from limsync.pipeline.database import Database
from limsync.sync.maps import alyx as ibl
from limsync.testing import Colony, FakeAlyx

PASSWORD_ENV = "LIMSYNC_CONNECTORS__ALYX__PASSWORD"


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command path of a click group, subgroups included."""
    for name, command in sorted(group.commands.items()):
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from all_commands(command, (*prefix, name))


def write_config(path: Path, db_path: Path, url: str, *, username: str = "admin") -> Path:
    """A limsync.toml for the fake server; the password comes from the environment."""
    path.write_text(
        f'database_url = "sqlite:///{db_path}"\n\n'
        "[connectors.alyx]\n"
        'type = "alyx"\n'
        f'base_url = "{url}"\n'
        f'username = "{username}"\n'
        "rate_limit_per_minute = 1000000\n"
        "backoff_factor = 0.01\n"
        "backoff_max = 0.05\n",
        encoding="utf-8",
    )
    return path


def invoke(*args: str) -> Result:
    """Run the CLI in-process."""
    return CliRunner().invoke(cli, list(args))


def one_line_error(result: Result) -> str:
    """The error line on stderr, checked to be a single ``error: ...`` line."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.fixture
def alyx() -> Iterator[FakeAlyx]:
    """A fake Alyx with a small colony."""
    colony = Colony.generate(seed=5, n_subjects=14, sessions_per_subject=2, weighings_per_subject=2)
    with FakeAlyx(colony) as server:
        yield server


@pytest.fixture
def config(tmp_path: Path, alyx: FakeAlyx, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A configuration for the fake server and a SQLite file, password in the environment."""
    monkeypatch.setenv(PASSWORD_ENV, FakeAlyx.DEFAULT_PASSWORD)
    return write_config(tmp_path / "limsync.toml", tmp_path / "pipeline.db", alyx.url)


@pytest.fixture
def synced(config: Path) -> Path:
    """The configuration after one successful ``limsync sync``."""
    result = invoke("sync", "--config", str(config), "--json")
    assert result.exit_code == 0, result.output
    return config


# --- help and version ------------------------------------------------------------------------


@pytest.mark.parametrize("path", [(), *all_commands(cli)], ids=lambda p: " ".join(p) or "limsync")
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = invoke(*path, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.startswith("limsync, version ")


@pytest.mark.parametrize(
    ("counts", "text"),
    [
        ({"made": 3, "failed": 0, "tables": {}}, "made 3"),
        ({"made": 3, "failed": 2, "tables": {}}, "made 3, 2 failed"),
        ({"read": 480, "new": 0, "changed": 0, "unchanged": 480}, "read 480"),
        (
            {"read": 480, "new": 1, "changed": 8, "gone": 1, "deleted": 1, "quarantined": 0},
            "read 480: 1 new, 8 changed, 1 gone, 1 deleted",
        ),
        ({}, ""),
    ],
)
def test_counts_text_says_what_a_run_did(counts: dict[str, int], text: str) -> None:
    assert counts_text(counts) == text


# --- init -------------------------------------------------------------------------------------


def test_init_writes_a_file_load_settings_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "limsync.toml"
    result = invoke("init", "--path", str(target))
    assert result.exit_code == 0, result.output
    monkeypatch.setenv(PASSWORD_ENV, "from-the-env")

    settings = load_settings(target)

    alyx = settings.connector_settings("alyx")
    assert alyx.password is not None  # type: ignore[attr-defined]
    assert alyx.password.get_secret_value() == "from-the-env"  # type: ignore[attr-defined]
    assert [e.select for e in settings.schedule] == ["alyx", "alyx"]

    again = invoke("init", "--path", str(target))
    assert again.exit_code == 2
    assert "exists" in one_line_error(again)
    assert invoke("init", "--path", str(target), "--force").exit_code == 0


# --- sync, plan and what reads the database ---------------------------------------------------


def test_sync_json_parses_and_plan_writes_nothing(config: Path, alyx: FakeAlyx) -> None:
    planned = invoke("plan", "--config", str(config), "--json")
    assert planned.exit_code == 0, planned.output
    plan = json.loads(planned.stdout)[0]
    assert plan["dry_run"] is True
    assert plan["totals"]["inserted"] > 0
    db = Database(load_settings(config).database_url)
    try:
        assert db.count(ibl.Subject) == 0
        assert state.runs(db) == []
    finally:
        db.dispose()

    result = invoke("sync", "--config", str(config), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)[0]
    assert report["ok"] is True and report["dry_run"] is False
    assert report["populate"] is None  # no [populate] tables configured
    # The dry run predicted exactly what the real run inserted.
    assert report["totals"]["inserted"] == plan["totals"]["inserted"]
    db = Database(load_settings(config).database_url)
    try:
        assert db.count(ibl.Subject) == alyx.colony.count("subject")
    finally:
        db.dispose()

    text = invoke("plan", "--config", str(config))
    assert text.exit_code == 0
    assert "dry run" in text.stdout


def test_sync_reports_the_after_sync_populate(config: Path) -> None:
    with config.open("a", encoding="utf-8") as f:
        f.write('\n[populate]\ntables = ["limsync.sync.maps.alyx_derived.WeightSummary"]\n')
    result = invoke("sync", "--config", str(config), "--json")
    assert result.exit_code == 0, result.output
    (report,) = json.loads(result.stdout)
    populated = report["populate"]
    assert populated["mode"] == "outbox" and populated["ok"] is True
    assert populated["made"] == 14  # one summary per subject of the colony
    text = invoke("sync", "--config", str(config))
    assert text.exit_code == 0, text.output
    assert "0 recomputed after upstream changes, 0 made" in " ".join(text.stdout.split())

    # status has a row for populate (its runs are logged under that name), runs says what it made
    status = invoke("status", "--config", str(config), "--json")
    assert status.exit_code == 0, status.output
    rows = {r["connector"]: r for r in json.loads(status.stdout)}
    assert set(rows) == {"alyx", "populate"}
    last = rows["populate"]["last_run"]
    assert last["kind"] == "populate" and last["counts"]["made"] == 0
    assert rows["populate"]["stale_seconds"] is not None
    runs = json.loads(
        invoke("runs", "--config", str(config), "--json", "--kind", "populate").stdout
    )
    assert [counts_text(r["counts"]) for r in runs] == ["made 0", "made 14"]


def test_runs_status_and_state(synced: Path) -> None:
    cfg = str(synced)
    runs = invoke("runs", "--config", cfg, "--json")
    assert runs.exit_code == 0, runs.output
    rows = json.loads(runs.stdout)
    assert [(r["connector"], r["status"]) for r in rows] == [("alyx", "success")]
    assert invoke("runs", "--config", cfg).exit_code == 0

    status = invoke("status", "--config", cfg, "--json")
    assert status.exit_code == 0, status.output
    (row,) = json.loads(status.stdout)
    assert row["connector"] == "alyx" and row["quarantined"] == 0
    assert row["records"]["present"] > 0
    assert invoke("status", "--config", cfg).exit_code == 0

    shown = invoke("state", "show", "--config", cfg, "--json")
    assert shown.exit_code == 0, shown.output
    streams = {r["stream"]: r for r in json.loads(shown.stdout)}
    assert streams["subjects"]["present"] == 14
    assert any(r["cursor"] for r in streams.values())

    refused = CliRunner().invoke(cli, ["state", "reset", "alyx", "--config", cfg], input="n\n")
    assert refused.exit_code != 0
    reset = invoke("state", "reset", "alyx", "--config", cfg, "--yes", "--ledger")
    assert reset.exit_code == 0, reset.output
    assert "removed" in reset.stdout
    after = json.loads(invoke("state", "show", "--config", cfg, "--json").stdout)
    assert after == []


def test_db_status_upgrade_connectors_discover_check(synced: Path) -> None:
    cfg = str(synced)
    status = invoke("db", "status", "--config", cfg)
    assert status.exit_code == 0, status.output
    assert "up to date" in status.stdout
    upgrade = invoke("db", "upgrade", "--config", cfg)
    assert upgrade.exit_code == 0, upgrade.output
    assert f"-> {state.SCHEMA_VERSION}" in upgrade.stdout

    connectors = invoke("connectors")
    assert connectors.exit_code == 0
    assert "alyx" in connectors.stdout

    discover = invoke("discover", "--config", cfg, "--json")
    assert discover.exit_code == 0, discover.output
    rows = {r["stream"]: r for r in json.loads(discover.stdout)}
    assert "subject.subject" in rows["subjects"]["tables"]
    assert rows["weighings"]["tables"] == ["action.weighing"]
    assert invoke("discover", "--config", cfg).exit_code == 0

    check = invoke("check", "--config", cfg, "--json")
    assert check.exit_code == 0, check.output
    assert all(c["ok"] for c in json.loads(check.stdout))


def test_demo_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "demo.db"
    result = invoke("demo", "--db", str(target), "--subjects", "12", "--seed", "3")
    assert result.exit_code == 0, result.output
    assert "renamed_mouse" in result.stdout
    # The weight summary is recomputed for exactly the three subjects whose rows changed.
    text = " ".join(result.stdout.split())  # rich wraps long lines
    assert "3 summaries made, 3 of them recomputed" in text
    for why in ("weighing added", "weighing deleted", "subject renamed"):
        assert text.count(f"({why})") == 1, text
    assert "unexpected!" not in text and "differ from the changed ones" not in text
    assert target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.db"]


# --- errors: one line, the right exit code, never the password -------------------------------


def test_wrong_credentials(tmp_path: Path, alyx: FakeAlyx, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "not-the-password-s3cr3t"
    monkeypatch.setenv(PASSWORD_ENV, secret)
    config = write_config(tmp_path / "limsync.toml", tmp_path / "p.db", alyx.url)

    result = invoke("sync", "--config", str(config))

    assert result.exit_code == 2
    line = one_line_error(result)
    assert "admin" in line and "refused" in line
    assert secret not in result.output and secret not in result.stderr


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "pw-that-must-not-show")
    port = closed_port()
    config = write_config(tmp_path / "limsync.toml", tmp_path / "p.db", f"http://127.0.0.1:{port}")

    result = invoke("sync", "--config", str(config))

    # A source that cannot be reached is a failure while running, not a configuration error.
    assert result.exit_code == 1
    line = one_line_error(result)
    assert f"127.0.0.1:{port}" in line
    assert "pw-that-must-not-show" not in result.output + result.stderr


@pytest.mark.parametrize(
    ("text", "place"),
    [
        pytest.param('database_url = "sqlite:///x.db\n', "not valid TOML", id="toml-syntax"),
        pytest.param('databse_url = "sqlite:///x.db"\n', "databse_url", id="unknown-top-key"),
        pytest.param(
            '[connectors.alyx]\ntype = "alyx"\nbase_url = "http://127.0.0.1:9"\n'
            'username = "u"\npasword = "x"\n',
            "'alyx' settings: pasword",
            id="unknown-connector-key",
        ),
        pytest.param(
            '[connectors.alyx]\ntype = "alyx"\nbase_url = "http://127.0.0.1:9"\nusername = "u"\n',
            "'alyx' settings",
            id="missing-password",
        ),
        pytest.param("batch_size = 0\n", "batch_size", id="out-of-range"),
    ],
)
def test_bad_config_is_one_message_naming_the_place(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    text: str,
    place: str,
) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    config = tmp_path / "limsync.toml"
    config.write_text(text, encoding="utf-8")

    result = invoke("sync", "--config", str(config))

    assert result.exit_code == 2
    assert result.stderr.startswith("error: ")
    assert result.stderr.count("error:") == 1  # one message (it may list several problems)
    assert place in result.stderr
    if "password" in request.node.callspec.id:
        assert "password" in result.stderr
    assert "Traceback" not in result.output + result.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    result = invoke("runs", "--config", str(tmp_path / "nope.toml"))
    assert result.exit_code == 2
    assert "nope.toml" in one_line_error(result)


def test_error_messages_keep_square_brackets(tmp_path: Path) -> None:
    """Messages name TOML places like [[schedule]]: they are text, never rich markup."""
    config = tmp_path / "limsync.toml"
    config.write_text("[[schedule]]\nselect = 'alyx'\n", encoding="utf-8")
    result = invoke("runs", "--config", str(config))
    assert result.exit_code == 2
    assert "schedule[0]" in result.stderr and "interval or cron" in result.stderr


def test_python_dash_m_runs_the_cli() -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "limsync.cli.main", "--help"],
        capture_output=True,
        text=True,
        cwd=repo,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert "Usage:" in done.stdout


def test_the_console_script_tunes_its_own_process_before_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ``limsync`` entry point moves its imports out of the collector's way, sizes its
    young generation for batches, shortens the interpreter's switch interval for its
    background threads, then runs."""
    import gc
    import sys

    from limsync.cli import main as entry

    calls: list[object] = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(gc, "set_threshold", lambda *t: calls.append(("gc", t)))
    monkeypatch.setattr(sys, "setswitchinterval", lambda s: calls.append(("switch", s)))
    monkeypatch.setattr(entry, "cli", lambda: calls.append("cli"))
    entry.main()
    assert calls == ["freeze", ("gc", (50_000, 20, 10)), ("switch", 0.001), "cli"]
