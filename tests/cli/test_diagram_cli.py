"""``limsync diagram``: the configured pipeline drawn, without a server (nothing is synced)."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from limsync.cli.main import cli
from limsync.pipeline import Database
from limsync.pipeline.diagram import class_name
from limsync.pipeline.tables import tables_in
from limsync.sync.maps import alyx as ibl


def config(tmp_path: Path, db: Path | None = None) -> Path:
    path = tmp_path / "limsync.toml"
    path.write_text(
        f'database_url = "sqlite:///{db or tmp_path / "pipeline.db"}"\n\n'
        '[connectors.alyx]\ntype = "alyx"\nbase_url = "http://127.0.0.1:9"\n'
        'username = "bot"\npassword = "s3cret-pw"\n',
        encoding="utf-8",
    )
    return path


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def test_mermaid_of_the_configured_pipeline(tmp_path: Path) -> None:
    result = invoke("diagram", "--config", str(config(tmp_path)))
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert text.startswith("flowchart TD\n")
    for spec in tables_in(ibl.SCHEMAS):  # every declared table, by its DataJoint class name
        assert f'["{class_name(spec).replace("#", "#35;")}"]:::' in text
    for stream in ibl.STREAM_MAPS:  # every stream as a source node with dashed feeds
        assert f'[/"alyx.{stream}"/]:::source' in text
    assert text.count("-.->") == sum(len(m.specs) for m in ibl.STREAM_MAPS.values())
    assert "s3cret-pw" not in result.output


def test_the_configured_computed_tables_are_drawn(tmp_path: Path) -> None:
    path = config(tmp_path)
    with path.open("a", encoding="utf-8") as f:
        f.write('\n[populate]\ntables = ["limsync.sync.maps.alyx_derived.WeightSummary"]\n')
    result = invoke("diagram", "--config", str(path))
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert '["WeightSummary"]:::computed' in text
    assert '["WeightSummary.Input"]:::part' in text
    ids = {label: line.split("[", 1)[0].strip() for line in text.splitlines()
           for label in ("Subject", "WeightSummary") if f'["{label}"]' in line}  # fmt: skip
    assert f"{ids['Subject']} ==> {ids['WeightSummary']}" in text  # its key comes from Subject


def test_dot_to_a_file(tmp_path: Path) -> None:
    out = tmp_path / "pipeline.dot"
    result = invoke("diagram", "--config", str(config(tmp_path)), "--format", "dot", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and f"wrote {out}" in result.stderr
    text = out.read_text()
    assert text.startswith("digraph pipeline {") and text.rstrip().endswith("}")
    assert '"source:alyx.subjects" -> "subject.subject"' in text


def test_svg_without_graphviz_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    result = invoke("diagram", "--config", str(config(tmp_path)), "--format", "svg")
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error: SVG output needs Graphviz's 'dot'")


def test_svg_through_dot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("dot") is None:  # a stand-in that wraps its input, to check the plumbing
        fake = tmp_path / "bin" / "dot"
        fake.parent.mkdir()
        fake.write_text('#!/bin/sh\necho "<svg>"; cat; echo "</svg>"\n')
        fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
        monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    out = tmp_path / "p.svg"
    result = invoke("diagram", "--config", str(config(tmp_path)), "--format", "svg", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "<svg" in out.read_text() and "subject" in out.read_text()


def test_reflect_adds_tables_that_reference_the_pipeline(tmp_path: Path) -> None:
    from limsync.pipeline import Computed, Ref, Schema

    analysis = Schema("analysis")

    class WeightTrend(Computed):
        """A lab's own table downstream of the synced subjects."""

        __schema__ = analysis
        __references__ = (Ref(ibl.Subject, key=True),)
        slope: float

    db_file = tmp_path / "pipeline.db"
    db = Database(f"sqlite:///{db_file}")
    try:
        db.declare(*ibl.SCHEMAS, analysis)
    finally:
        db.dispose()
    path = config(tmp_path, db_file)
    plain = invoke("diagram", "--config", str(path))
    assert plain.exit_code == 0 and "WeightTrend" not in plain.stdout
    result = invoke("diagram", "--config", str(path), "--reflect")
    assert result.exit_code == 0, result.output
    assert '["WeightTrend"]:::computed' in result.stdout


def test_no_connectors(tmp_path: Path) -> None:
    path = tmp_path / "limsync.toml"
    path.write_text('database_url = "sqlite:///x.db"\n', encoding="utf-8")
    result = invoke("diagram", "--config", str(path))
    assert result.exit_code == 2 and "no connectors are configured" in result.stderr


def test_help() -> None:
    result = invoke("diagram", "--help")
    assert result.exit_code == 0 and "--format [mermaid|dot|svg]" in result.stdout
