"""``limsync populate`` from the command line: make, fail per key, list errors, retry, restrict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from limsync.cli.main import cli
from limsync.pipeline import Database, upsert

PIPELINE_TESTS = Path(__file__).resolve().parents[1] / "pipeline"


def invoke(*args: str) -> Result:
    """Run the CLI in-process."""
    return CliRunner().invoke(cli, list(args))


@pytest.fixture
def tables(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The populate tests' table module, importable by path as the configuration names it."""
    monkeypatch.syspath_prepend(str(PIPELINE_TESTS))
    import populate_tables

    return populate_tables


@pytest.fixture
def config(tmp_path: Path, tables: Any) -> Path:
    """A limsync.toml naming SessionStat, over 2 subjects x 3 sessions; session (1, 2) fails."""
    url = f"sqlite:///{tmp_path / 'pipeline.db'}"
    db = Database(url)
    try:
        db.declare(tables.upstream, tables.derived)
        with db.transaction() as conn:
            upsert(db, conn, tables.Subject, [{"subject_id": 1}, {"subject_id": 2}])
            upsert(db, conn, tables.Session, [
                {"subject_id": s, "session_no": n, "value": -1.0 if (s, n) == (1, 2) else n}
                for s in (1, 2) for n in (1, 2, 3)
            ])  # fmt: skip
    finally:
        db.dispose()
    path = tmp_path / "limsync.toml"
    path.write_text(
        f'database_url = "{url}"\n[populate]\ntables = ["populate_tables.SessionStat"]\n',
        encoding="utf-8",
    )
    return path


def test_help() -> None:
    result = invoke("populate", "--help")
    assert result.exit_code == 0
    for option in ("--workers", "--restriction", "--retry-errors", "--errors", "--json"):
        assert option in result.output


def test_populate_records_errors_lists_them_and_retries_on_request(
    config: Path, tables: Any
) -> None:
    cfg = str(config)
    restricted = invoke("populate", "--config", cfg, "--json", "--restriction",
                        '{"subject_id": [2]}')  # fmt: skip
    assert restricted.exit_code == 0, restricted.output
    (table,) = json.loads(restricted.stdout)["tables"].values()
    assert (table["queued"], table["made"], table["failed"]) == (3, 3, 0)

    first = invoke("populate", "--config", cfg, "--json")
    assert first.exit_code == 1, first.output  # a key failed: exit 1, the others were made
    report = json.loads(first.stdout)
    assert report["ok"] is False and (report["made"], report["failed"]) == (2, 1)

    listed = invoke("populate", "--config", cfg, "--errors", "--json")
    assert listed.exit_code == 0, listed.output
    (error,) = json.loads(listed.stdout)
    assert error["row_key"] == "[1,2]" and "negative value -1.0" in error["error_message"]
    assert "Traceback" in error["error_stack"]
    table_view = invoke("populate", "--config", cfg, "--errors")
    assert "[1,2]" in table_view.output and "negative" in table_view.output  # (wrapped)

    # Not retried by a plain run; retried with --retry-errors once the source is fixed.
    assert json.loads(invoke("populate", "--config", cfg, "--json").stdout)["made"] == 0
    db = Database(f"sqlite:///{config.parent / 'pipeline.db'}")
    try:
        db.declare(tables.upstream, tables.derived)
        with db.transaction() as conn:
            upsert(db, conn, tables.Session, [{"subject_id": 1, "session_no": 2, "value": 4.0}])
        retried = invoke("populate", "--config", cfg, "--retry-errors")
        assert retried.exit_code == 0, retried.output
        assert "populate, run" in retried.output  # the summary table
        assert db.count(tables.SessionStat) == 6
    finally:
        db.dispose()
    assert json.loads(invoke("populate", "--config", cfg, "--errors", "--json").stdout) == []


@pytest.mark.parametrize(
    "args, problem",
    [(["--restriction", "{subject"], "--restriction is not valid JSON"),
     (["--restriction", "[1]"], "must be a JSON object"),
     (["nowhere_xyz.Table"], "cannot be imported"),
     (["--restriction", '{"nope": 1}'], "no key-source table has a column 'nope'")],
)  # fmt: skip
def test_usage_errors_say_what_is_wrong(config: Path, args: list[str], problem: str) -> None:
    result = invoke("populate", "--config", str(config), *args)
    assert result.exit_code == 2
    assert problem in result.output


def test_no_tables_configured(tmp_path: Path) -> None:
    path = tmp_path / "limsync.toml"
    path.write_text(f'database_url = "sqlite:///{tmp_path / "x.db"}"\n', encoding="utf-8")
    result = invoke("populate", "--config", str(path))
    assert result.exit_code == 2 and "no tables to populate" in result.output


def test_progress_bars_count_made_and_failed_keys_per_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io
    import sys

    from rich.console import Console

    from limsync.cli import populate as populate_cli

    screen = io.StringIO()
    monkeypatch.setattr(populate_cli, "err", Console(file=screen, force_terminal=True, width=100))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with populate_cli._bars(enabled=True) as advance:
        assert advance is not None
        advance("derived.__stat", 5, 1, 10)
        advance("derived.__stat", 3, 1, 10)
    text = screen.getvalue()
    assert "derived.__stat" in text and "10/10" in text and "2 failed" in text
    with populate_cli._bars(enabled=False) as nothing:  # --json: no bars
        assert nothing is None
