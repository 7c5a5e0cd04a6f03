"""The pipeline as a picture: Mermaid and Graphviz DOT text, and SVG through Graphviz.

Tables are coloured by tier with DataJoint's own palette (Manual green, Lookup gray, Imported
blue, Computed red, Part small and plain), grouped by schema; foreign keys are arrows from parent
to child (thick for references in the primary key, thin for secondary ones). Which source stream
writes which table is passed in as data (``feeds``: ``"connector.stream"`` -> table qualnames,
since this layer knows nothing of connectors) and drawn as separate source nodes with dashed
arrows. :func:`find_dependants` adds tables that limsync never declared but that reference its
tables in the database (a lab's DataJoint Computed tables), so they show up too.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import networkx as nx

from limsync.errors import ConfigError, DatabaseError, DeclarationError, LimsyncError
from limsync.pipeline import cascade
from limsync.pipeline.database import Database
from limsync.pipeline.graph import build_graph
from limsync.pipeline.tables import TableSpec, Tier

FORMATS = ("mermaid", "dot", "svg")


@dataclass(frozen=True)
class TierStyle:
    """Colours (DataJoint 2.x light theme) and shape of one tier."""

    fill: str
    stroke: str
    text: str
    dot_shape: str
    rounded: bool
    font_size: int


# DataJoint's light theme (datajoint/diagram.py): (fill, stroke, text) per tier.
STYLES: dict[Tier, TierStyle] = {
    Tier.MANUAL: TierStyle("#E8F0E9", "#3E7A52", "#28513A", "box", True, 10),
    Tier.LOOKUP: TierStyle("#F0F0F1", "#808285", "#5A5C5F", "box", True, 10),
    Tier.IMPORTED: TierStyle("#E0F4FC", "#00A0DF", "#00537A", "ellipse", False, 10),
    Tier.COMPUTED: TierStyle("#FFEDE5", "#FF5113", "#B23200", "ellipse", False, 10),
    Tier.PART: TierStyle("#FFFFFF", "#B9BBBE", "#55585C", "box", False, 8),
}
SOURCE = TierStyle("#FFFFFF", "#7B61FF", "#3D2E99", "cds", False, 10)


def class_name(spec: TableSpec) -> str:
    """DataJoint's class name of a table: ``__session_stats`` -> ``SessionStats``,
    ``session__probe`` -> ``Session.Probe``."""

    def camel(s: str) -> str:
        return "".join(w.capitalize() for w in s.split("_") if w)

    name = spec.name.lstrip("#_")
    if spec.tier is Tier.PART and "__" in name:
        master, _, part = name.partition("__")
        return f"{camel(master)}.{camel(part)}"
    return camel(name)


def build(
    specs: Iterable[TableSpec], feeds: Mapping[str, Sequence[str]] | None = None
) -> nx.DiGraph:
    """The graph to draw: tables (``spec``), sources (``source=True``) and their edges.

    Parents that are not among ``specs`` stay as plain nodes, as in :func:`build_graph`. A feed
    naming a table that is not in the graph is a mistake in the caller's data: DeclarationError.
    """
    g = build_graph(specs)
    for source, tables in sorted((feeds or {}).items()):
        node = f"source:{source}"
        g.add_node(node, source=source)
        for table in tables:
            if table not in g:
                raise DeclarationError(
                    f"stream {source} feeds {table}, which is not in the diagram"
                )
            g.add_edge(node, table, feed=True)
    return g


# --- Mermaid


def _mermaid_text(text: str) -> str:
    # Inside a quoted Mermaid label, '"' ends the label and '#' starts an entity code.
    return text.replace("#", "#35;").replace('"', "#quot;")


def to_mermaid(specs: Iterable[TableSpec], feeds: Mapping[str, Sequence[str]] | None = None) -> str:
    """A Mermaid ``flowchart``: one subgraph per schema, a class per tier, dashed feeds."""
    g = build(specs, feeds)
    ids = {n: f"n{i}" for i, n in enumerate(sorted(g.nodes, key=str))}
    lines = ["flowchart TD"]
    for tier, st in STYLES.items():
        extra = f",font-size:{st.font_size}px" if tier is Tier.PART else ""
        lines.append(
            f"    classDef {tier.name.lower()} fill:{st.fill},stroke:{st.stroke},"
            f"color:{st.text}{extra}"
        )
    lines.append(
        f"    classDef source fill:{SOURCE.fill},stroke:{SOURCE.stroke},color:{SOURCE.text},"
        "stroke-dasharray:4 3"
    )
    lines.append("    classDef external fill:#FFFFFF,stroke:#B9BBBE,color:#55585C")
    by_schema: dict[str, list[str]] = {}
    for n in g.nodes:
        if "source" not in g.nodes[n]:
            by_schema.setdefault(n.partition(".")[0], []).append(n)
    for i, (schema, nodes) in enumerate(sorted(by_schema.items())):
        lines.append(f'    subgraph s{i}["{_mermaid_text(schema)}"]')
        for n in sorted(nodes):
            spec = g.nodes[n].get("spec")
            label, cls = (class_name(spec), spec.tier.name.lower()) if spec else (n, "external")
            lines.append(f'        {ids[n]}["{_mermaid_text(label)}"]:::{cls}')
        lines.append("    end")
    for n in sorted(n for n in g.nodes if "source" in g.nodes[n]):
        lines.append(f'    {ids[n]}[/"{_mermaid_text(g.nodes[n]["source"])}"/]:::source')
    for a, b, data in sorted(g.edges(data=True), key=lambda e: (str(e[0]), str(e[1]))):
        if data.get("feed"):
            arrow = "-.->"
        elif data["fk"].primary:
            arrow = "==>"
        else:
            arrow = "-->"
        lines.append(f"    {ids[a]} {arrow} {ids[b]}")
    return "\n".join(lines) + "\n"


# --- Graphviz DOT


def _dot_id(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dot_attrs(**attrs: str | int | float) -> str:
    return "[" + ", ".join(f"{k}={_dot_id(str(v))}" for k, v in attrs.items()) + "]"


def _node_attrs(label: str, st: TierStyle, *, dashed: bool = False) -> str:
    style = ["filled"]
    if st.rounded:
        style.append("rounded")
    if dashed:
        style.append("dashed")
    return _dot_attrs(
        label=label,
        shape=st.dot_shape,
        style=",".join(style),
        fillcolor=st.fill,
        color=st.stroke,
        fontcolor=st.text,
        fontsize=st.font_size,
    )


def to_dot(specs: Iterable[TableSpec], feeds: Mapping[str, Sequence[str]] | None = None) -> str:
    """Graphviz DOT text: a cluster per schema, tier colours and shapes, dashed feeds."""
    g = build(specs, feeds)
    lines = [
        "digraph pipeline {",
        "    rankdir=TB;",
        '    node [fontname="Helvetica"];',
        '    edge [color="#666666", arrowsize=0.6];',
    ]
    by_schema: dict[str, list[str]] = {}
    for n in g.nodes:
        if "source" not in g.nodes[n]:
            by_schema.setdefault(n.partition(".")[0], []).append(n)
    for schema, nodes in sorted(by_schema.items()):
        lines.append(f"    subgraph {_dot_id('cluster_' + schema)} {{")
        lines.append(f'        label={_dot_id(schema)}; style="rounded"; color="#B9BBBE";')
        for n in sorted(nodes):
            spec = g.nodes[n].get("spec")
            if spec is None:
                attrs = _node_attrs(n, STYLES[Tier.PART], dashed=True)
            else:
                attrs = _node_attrs(class_name(spec), STYLES[spec.tier])
            lines.append(f"        {_dot_id(n)} {attrs};")
        lines.append("    }")
    for n in sorted(n for n in g.nodes if "source" in g.nodes[n]):
        lines.append(f"    {_dot_id(n)} {_node_attrs(g.nodes[n]['source'], SOURCE, dashed=True)};")
    for a, b, data in sorted(g.edges(data=True), key=lambda e: (str(e[0]), str(e[1]))):
        if data.get("feed"):
            attrs = _dot_attrs(style="dashed", color=SOURCE.stroke)
        elif data["fk"].primary:
            attrs = _dot_attrs(penwidth=2)
        else:
            attrs = _dot_attrs(penwidth=1)
        lines.append(f"    {_dot_id(a)} -> {_dot_id(b)} {attrs};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_svg(dot_text: str, *, timeout: float = 60.0) -> str:
    """SVG from DOT text by Graphviz's ``dot -Tsvg`` (ConfigError when it is not installed)."""
    exe = shutil.which("dot")
    if exe is None:
        raise ConfigError(
            "SVG output needs Graphviz's 'dot' on PATH (e.g. apt install graphviz); "
            "or use --format dot / --format mermaid"
        )
    try:
        done = subprocess.run(  # a fixed executable; our own DOT text on stdin
            [exe, "-Tsvg"], input=dot_text, capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LimsyncError(f"{exe} -Tsvg failed: {exc}") from None
    if done.returncode != 0:
        raise LimsyncError(f"{exe} -Tsvg failed (exit {done.returncode}): {done.stderr.strip()}")
    return done.stdout


def render(
    specs: Iterable[TableSpec],
    feeds: Mapping[str, Sequence[str]] | None = None,
    fmt: str = "mermaid",
) -> str:
    """The diagram in ``fmt``: ``mermaid``, ``dot`` or ``svg``."""
    if fmt == "mermaid":
        return to_mermaid(specs, feeds)
    if fmt == "dot":
        return to_dot(specs, feeds)
    if fmt == "svg":
        return to_svg(to_dot(specs, feeds))
    raise ConfigError(f"unknown diagram format {fmt!r} (use {', '.join(FORMATS)})")


# --- undeclared tables from the database

_HIDDEN = re.compile(r"~")


def find_dependants(db: Database, specs: Iterable[TableSpec]) -> list[TableSpec]:
    """Tables in the database that reference ``specs`` (transitively) but were not declared.

    They are reflected (``declared=False``), e.g. a lab's DataJoint tables downstream of the
    synced ones; tables whose names start with ``~`` (DataJoint's job queues, limsync's own
    bookkeeping) are left out, as DataJoint leaves them out of its diagrams.
    """
    known = {s.qualname for s in specs}
    frontier = list(specs)
    found: list[TableSpec] = []
    try:
        with db.engine.connect() as conn:
            while frontier:
                spec = frontier.pop()
                db.register(spec)
                for edge in cascade._children(db, conn, db.physical(spec)):
                    schema, name = edge.child
                    if schema is None:  # SQLite: "physical_schema.table"
                        schema, _, name = name.partition(".")
                    if _HIDDEN.match(name) or not schema:
                        continue
                    child = db.reflect(schema, name, physical=True)
                    if child.qualname not in known:
                        known.add(child.qualname)
                        found.append(child)
                        frontier.append(child)
    except LimsyncError:
        raise
    except Exception as exc:
        raise DatabaseError(
            f"reading the tables that reference the pipeline failed: {exc}"
        ) from exc
    return found
