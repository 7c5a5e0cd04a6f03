"""The foreign-key graph of a pipeline (networkx): load order and descendants.

Nodes are logical qualified table names (``schema.table``); an edge runs from a parent to each
table that references it. Parents come before children in :func:`load_order`, which is how the
engine orders writes; :func:`descendants` is what a change upstream can make stale.
"""

from __future__ import annotations

from collections.abc import Iterable

import networkx as nx

from limsync.errors import DeclarationError
from limsync.pipeline.tables import TableSpec


def build_graph(specs: Iterable[TableSpec]) -> nx.DiGraph:
    """A DAG of the given tables; edges carry the foreign key (``fk``) they come from.

    Parents outside ``specs`` still appear as nodes (without a ``spec`` attribute), so a graph of
    part of a pipeline still orders correctly.
    """
    specs = list(specs)  # walked twice: an iterator would leave the graph without edges
    g = nx.DiGraph()
    for spec in specs:
        g.add_node(spec.qualname, spec=spec)
    for spec in specs:
        for fk in spec.foreign_keys:
            if fk.parent == spec.qualname:
                raise DeclarationError(f"table {spec.qualname} references itself")
            g.add_edge(fk.parent, spec.qualname, fk=fk)
    if not nx.is_directed_acyclic_graph(g):
        cycle = nx.find_cycle(g)
        raise DeclarationError(
            "foreign keys form a cycle: " + " -> ".join(a for a, _ in cycle) + f" -> {cycle[0][0]}"
        )
    return g


def load_order(specs: Iterable[TableSpec]) -> list[TableSpec]:
    """Tables parents-first; ties broken by name so the order is stable."""
    specs = list(specs)
    g = build_graph(specs)
    order = nx.lexicographical_topological_sort(g)
    return [g.nodes[n]["spec"] for n in order if "spec" in g.nodes[n]]


def descendants(g: nx.DiGraph, qualname: str) -> list[str]:
    """Every table that depends on ``qualname``, parents-first."""
    below = nx.descendants(g, qualname)
    return [n for n in nx.lexicographical_topological_sort(g.subgraph(below))]
