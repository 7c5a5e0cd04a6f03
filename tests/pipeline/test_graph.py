"""Tests for limsync.pipeline.graph: the foreign-key DAG, load order and descendants."""

from __future__ import annotations

import pytest
from example import TABLES, Lab, Session, SessionStats, Subject

from limsync.errors import DeclarationError
from limsync.pipeline import ForeignKeySpec, TableSpec, Tier
from limsync.pipeline.columns import ColumnType
from limsync.pipeline.graph import build_graph, descendants, load_order
from limsync.pipeline.tables import ColumnSpec


def spec(name: str, *parents: str) -> TableSpec:
    """A minimal table ``g.<name>`` referencing ``parents`` (qualified names)."""
    return TableSpec(
        schema="g",
        name=name,
        tier=Tier.MANUAL,
        columns=(ColumnSpec("id", ColumnType("int64"), in_key=True),),
        primary_key=("id",),
        foreign_keys=tuple(ForeignKeySpec(p, ("id",), ("id",)) for p in parents),
    )


def test_load_order_puts_parents_first() -> None:
    shuffled = [SessionStats.spec, Session.Probe.spec, Subject.spec, Session.spec, Lab.spec]
    order = [s.qualname for s in load_order(shuffled)]
    assert order == [
        "subject.#lab",
        "subject.subject",
        "acquisition.session",
        "acquisition.__session_stats",
        "acquisition.session__probe",
    ]
    assert load_order(reversed(shuffled)) == load_order(shuffled)  # stable, not input-ordered


def test_ties_are_broken_by_name() -> None:
    tables = [spec("c"), spec("a"), spec("b", "g.c"), spec("d", "g.a")]
    assert [s.name for s in load_order(tables)] == ["a", "c", "b", "d"]


def test_edges_carry_their_foreign_keys_and_outside_parents_are_nodes() -> None:
    g = build_graph([Session.spec, SessionStats.spec])
    assert set(g.nodes) == {
        "subject.subject",
        "subject.#lab",
        "acquisition.session",
        "acquisition.__session_stats",
    }
    assert "spec" not in g.nodes["subject.subject"]  # known only as a parent
    fk = g.edges["subject.#lab", "acquisition.session"]["fk"]
    assert fk.columns == ("lab_name",) and fk.nullable
    # a partial graph still orders what it has
    assert [s.name for s in load_order([SessionStats.spec, Session.spec])] == [
        "session",
        "__session_stats",
    ]


def test_descendants_parents_first() -> None:
    g = build_graph(t.spec for t in TABLES)
    assert descendants(g, "subject.subject") == [
        "acquisition.session",
        "acquisition.__session_stats",
        "acquisition.session__probe",
    ]
    assert descendants(g, "subject.#lab") == [
        "subject.subject",
        "acquisition.session",
        "acquisition.__session_stats",
        "acquisition.session__probe",
    ]
    assert descendants(g, "acquisition.__session_stats") == []


def test_cycles_are_refused() -> None:
    with pytest.raises(DeclarationError, match=r"cycle: g\.a -> g\.b -> g\.c -> g\.a"):
        build_graph([spec("a", "g.c"), spec("b", "g.a"), spec("c", "g.b")])
    with pytest.raises(DeclarationError, match=r"g\.a references itself"):
        load_order([spec("a", "g.a")])
