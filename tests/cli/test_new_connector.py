"""``limsync new-connector``: the generated package passes its own tests and ruff as written."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from limsync.cli.main import cli
from limsync.connectors import Connector
from limsync.scaffold import layout

VENV_BIN = Path(sys.executable).parent


def generate(tmp_path: Path, name: str = "mylims") -> Path:
    target = tmp_path / f"limsync-{name}"
    result = CliRunner().invoke(cli, ["new-connector", name, "--path", str(target)])
    assert result.exit_code == 0, result.output
    assert "wrote 6 files" in result.output
    return target


def test_writes_every_file_of_the_layout(tmp_path: Path) -> None:
    target = generate(tmp_path)
    written = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert written == sorted(layout("mylims"))


def test_the_entry_point_names_the_connector_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = generate(tmp_path, "lab_db")
    project = tomllib.loads((target / "pyproject.toml").read_text())
    assert project["project"]["name"] == "limsync-lab-db"
    entry = project["project"]["entry-points"]["limsync.connectors"]
    assert entry == {"lab_db": "limsync_lab_db:LabDbConnector"}
    monkeypatch.syspath_prepend(str(target / "src"))
    module, _, attr = entry["lab_db"].partition(":")
    cls = getattr(importlib.import_module(module), attr)
    assert issubclass(cls, Connector) and cls.type_name == "lab_db"


def test_the_generated_tests_pass_and_ruff_is_clean(tmp_path: Path) -> None:
    target = generate(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(target / "src")}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=target,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "13 passed" in run.stdout
    ruff = shutil.which("ruff", path=str(VENV_BIN)) or shutil.which("ruff")
    assert ruff, "ruff is not installed"
    for args in (["check", "."], ["format", "--check", "."]):
        lint = subprocess.run(
            [ruff, *args], cwd=target, capture_output=True, text=True, timeout=60, check=False
        )
        assert lint.returncode == 0, lint.stdout + lint.stderr


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    target = generate(tmp_path)
    before = (target / "README.md").read_text()
    result = CliRunner().invoke(cli, ["new-connector", "mylims", "--path", str(target)])
    assert result.exit_code == 2
    assert "already exists" in result.output
    assert (target / "README.md").read_text() == before


@pytest.mark.parametrize("name", ["MyLims", "my-lims", "1lims", "class", "lims__x", ""])
def test_rejects_names_that_cannot_be_a_connector_type(tmp_path: Path, name: str) -> None:
    result = CliRunner().invoke(cli, ["new-connector", name, "--path", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "lower snake case" in result.output
    assert not (tmp_path / "out").exists()
