"""The pipeline diagram: Mermaid, DOT, SVG through Graphviz, and undeclared dependants."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import Field

from limsync.errors import ConfigError, DeclarationError, LimsyncError
from limsync.pipeline import Computed, Database, Imported, Key, Lookup, Manual, Part, Ref, Schema
from limsync.pipeline.diagram import (
    STYLES,
    class_name,
    find_dependants,
    render,
    to_dot,
    to_mermaid,
    to_svg,
)
from limsync.pipeline.tables import Tier, tables_in

lab = Schema("lab")
ephys = Schema("ephys")
extra = Schema("extra")


class Species(Lookup):
    """Species."""

    __schema__ = lab
    species: Annotated[str, Key, Field(max_length=16)]


class Animal(Manual):
    """An animal."""

    __schema__ = lab
    __references__ = (Species,)
    animal: Annotated[str, Key, Field(max_length=16)]


class Recording(Manual):
    """A recording."""

    __schema__ = ephys
    __references__ = (Ref(Animal, key=True),)
    rec: Annotated[int, Key]

    class Channel(Part):
        """Channels of a recording."""

        channel: Annotated[int, Key]


class RawFile(Imported):
    """The raw file of a recording."""

    __schema__ = ephys
    __references__ = (Ref(Recording, key=True),)
    size: int


class Sorting(Computed):
    """Spike sorting."""

    __schema__ = ephys
    __references__ = (Ref(RawFile, key=True),)
    units: int


class Summary(Computed):
    """Not declared by the tests' 'limsync': found in the database by its foreign key."""

    __schema__ = extra
    __references__ = (Ref(Sorting, key=True),)
    total: int


SPECS = tables_in([lab, ephys])
FEEDS = {"alyx.subjects": ["lab.animal", "lab.#species"], "alyx.sessions": ["ephys.recording"]}


def test_class_names() -> None:
    names = {s.qualname: class_name(s) for s in SPECS}
    assert names == {
        "lab.#species": "Species",
        "lab.animal": "Animal",
        "ephys.recording": "Recording",
        "ephys.recording__channel": "Recording.Channel",
        "ephys._raw_file": "RawFile",
        "ephys.__sorting": "Sorting",
    }


def test_mermaid() -> None:
    text = to_mermaid(SPECS, FEEDS)
    lines = text.splitlines()
    assert lines[0] == "flowchart TD"
    # one class per tier, in DataJoint's colours; parts smaller
    assert "    classDef manual fill:#E8F0E9,stroke:#3E7A52,color:#28513A" in lines
    assert "    classDef lookup fill:#F0F0F1,stroke:#808285,color:#5A5C5F" in lines
    assert "    classDef imported fill:#E0F4FC,stroke:#00A0DF,color:#00537A" in lines
    assert "    classDef computed fill:#FFEDE5,stroke:#FF5113,color:#B23200" in lines
    assert "    classDef part fill:#FFFFFF,stroke:#B9BBBE,color:#55585C,font-size:8px" in lines
    ids = {}
    for line in lines:
        if '["' in line and ":::" in line:
            node_id, rest = line.strip().split("[", 1)
            label = rest.split('"')[1]
            ids[label] = (node_id, rest.rsplit(":::", 1)[1])
    assert ids == {
        "Species": (ids["Species"][0], "lookup"),
        "Animal": (ids["Animal"][0], "manual"),
        "Recording": (ids["Recording"][0], "manual"),
        "Recording.Channel": (ids["Recording.Channel"][0], "part"),
        "RawFile": (ids["RawFile"][0], "imported"),
        "Sorting": (ids["Sorting"][0], "computed"),
    }
    sources = {line.split('"')[1]: line.strip().split("[", 1)[0] for line in lines if "[/" in line}
    assert set(sources) == {"alyx.subjects", "alyx.sessions"}
    assert all(line.endswith(":::source") for line in lines if "[/" in line)
    n = {label: v[0] for label, v in ids.items()}
    edges = {line.strip() for line in lines if "->" in line or "==>" in line}
    assert edges == {
        f"{n['Species']} --> {n['Animal']}",  # secondary reference: thin
        f"{n['Animal']} ==> {n['Recording']}",  # in the primary key: thick
        f"{n['Recording']} ==> {n['Recording.Channel']}",
        f"{n['Recording']} ==> {n['RawFile']}",
        f"{n['RawFile']} ==> {n['Sorting']}",
        f"{sources['alyx.subjects']} -.-> {n['Animal']}",  # feeds: dashed
        f"{sources['alyx.subjects']} -.-> {n['Species']}",
        f"{sources['alyx.sessions']} -.-> {n['Recording']}",
    }
    # one subgraph per schema, each closed
    assert [line.split('"')[1] for line in lines if "subgraph" in line] == ["ephys", "lab"]
    assert text.count("subgraph") == text.count("    end")
    assert text == to_mermaid(reversed(SPECS), FEEDS)  # stable whatever the input order


def test_mermaid_escapes_labels() -> None:
    text = to_mermaid(SPECS, {'odd "src" #1': ["lab.animal"]})
    assert '[/"odd #quot;src#quot; #35;1"/]:::source' in text


def test_dot() -> None:
    text = to_dot(SPECS, FEEDS)
    lines = [line.strip() for line in text.splitlines()]
    assert lines[0] == "digraph pipeline {" and lines[-1] == "}"
    assert text.count("{") == text.count("}")
    st = STYLES[Tier.COMPUTED]
    assert (
        f'"ephys.__sorting" [label="Sorting", shape="ellipse", style="filled", '
        f'fillcolor="{st.fill}", color="{st.stroke}", fontcolor="{st.text}", fontsize="10"];'
    ) in lines
    st = STYLES[Tier.LOOKUP]
    assert (
        f'"lab.#species" [label="Species", shape="box", style="filled,rounded", '
        f'fillcolor="{st.fill}", color="{st.stroke}", fontcolor="{st.text}", fontsize="10"];'
    ) in lines
    assert any(line.startswith('"ephys.recording__channel" [label="Recording.Channel"') and
               'fontsize="8"' in line for line in lines)  # fmt: skip
    assert '"lab.#species" -> "lab.animal" [penwidth="1"];' in lines
    assert '"ephys._raw_file" -> "ephys.__sorting" [penwidth="2"];' in lines
    assert '"source:alyx.sessions" -> "ephys.recording" [style="dashed", color="#7B61FF"];' in lines
    assert [line for line in lines if line.startswith("subgraph")] == [
        'subgraph "cluster_ephys" {',
        'subgraph "cluster_lab" {',
    ]
    assert sum(" -> " in line for line in lines) == 8


def test_dot_escapes_identifiers() -> None:
    text = to_dot(SPECS, {'a"b\\c': ["lab.animal"]})
    assert '"source:a\\"b\\\\c" -> "lab.animal"' in text


def test_feeds_must_name_tables_in_the_diagram() -> None:
    with pytest.raises(DeclarationError, match=r"alyx\.x feeds lab\.nope"):
        to_mermaid(SPECS, {"alyx.x": ["lab.nope"]})


def test_parents_outside_the_tables_are_drawn_plain() -> None:
    text = to_mermaid([Recording.spec])
    assert '["lab.animal"]:::external' in text
    assert 'label="lab.animal", shape="box", style="filled,dashed"' in to_dot([Recording.spec])


def test_unknown_format() -> None:
    with pytest.raises(ConfigError, match="unknown diagram format 'png'"):
        render(SPECS, FEEDS, "png")
    assert render(SPECS, FEEDS, "dot") == to_dot(SPECS, FEEDS)
    assert render(SPECS, FEEDS) == to_mermaid(SPECS, FEEDS)


def test_svg_without_graphviz(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="needs Graphviz's 'dot' on PATH"):
        render(SPECS, FEEDS, "svg")


def _fake_dot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    script = tmp_path / "dot"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")


def test_svg_pipes_dot_text_through_dot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in 'dot' that proves it got -Tsvg and the DOT text on stdin.
    _fake_dot(
        tmp_path, monkeypatch, 'echo "<svg args=\\"$*\\">"; grep -c -- " -> "; echo "</svg>"\n'
    )
    svg = render(SPECS, FEEDS, "svg")
    assert svg.splitlines() == ['<svg args="-Tsvg">', "8", "</svg>"]
    _fake_dot(tmp_path, monkeypatch, 'echo "syntax error in line 1" >&2; exit 3\n')
    with pytest.raises(LimsyncError, match=r"failed \(exit 3\): syntax error in line 1"):
        to_svg("digraph {}")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed here")
def test_svg_with_graphviz() -> None:
    svg = render(SPECS, FEEDS, "svg")
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    for label in ("Species", "Recording.Channel", "Sorting", "alyx.sessions"):
        assert f">{label}<" in svg


def test_undeclared_dependants_are_found(db: Database, db_url: str) -> None:
    db.declare(lab, ephys, extra)
    # Another process that knows only lab and ephys finds extra's table by its foreign key.
    other = Database(db_url, schema_prefix=db.schema_prefix)
    try:
        found = find_dependants(other, SPECS)
        assert [s.qualname for s in found] == ["extra.__summary"]
        assert found[0].tier is Tier.COMPUTED and not found[0].declared
        text = to_mermaid(SPECS + found)
        assert '["Summary"]:::computed' in text
    finally:
        other.dispose()
