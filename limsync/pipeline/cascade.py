"""Deleting keys with everything that depends on them, previewed first.

The dependants come from the database's own foreign keys (``information_schema`` on MySQL,
``pg_constraint`` on PostgreSQL, ``PRAGMA foreign_key_list`` on SQLite), not from limsync's
declarations, so tables that limsync never declared but that reference its tables (a lab's
DataJoint Computed tables, in any schema) are found too, as DataJoint's own ``delete`` does.
:func:`plan_delete` only reads; :func:`delete` removes leaves first, inside the caller's
transaction, so the whole cascade commits or rolls back as one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import sqlalchemy as sa

from limsync.pipeline.database import Database
from limsync.pipeline.tables import Table, TableSpec
from limsync.pipeline.upsert import MAX_PARAMS, placeholder

Node = tuple[str | None, str]  # (database schema or None on SQLite, table name)


@dataclass(frozen=True)
class _Edge:
    child: Node
    columns: tuple[str, ...]  # child columns
    parent_columns: tuple[str, ...]


@dataclass
class CascadePlan:
    """What deleting some keys removes: rows per table, dependants included."""

    root: str
    rows: dict[str, int] = field(default_factory=dict)  # "schema.table" -> number of rows
    keys: dict[Node, tuple[tuple[str, ...], list[tuple[Any, ...]]]] = field(
        default_factory=dict, repr=False
    )
    order: list[Node] = field(default_factory=list, repr=False)  # leaves first

    @property
    def total(self) -> int:
        """Rows removed in all tables."""
        return sum(self.rows.values())


def plan_delete(
    db: Database,
    conn: sa.Connection,
    table: type[Table] | TableSpec,
    keys: Sequence[Sequence[Any]],
) -> CascadePlan:
    """Every row that deleting ``keys`` (primary-key tuples of Python values) would remove."""
    spec = table if isinstance(table, TableSpec) else table.spec
    db.register(spec)
    root = db.physical(spec)
    codecs = db.codecs(spec)
    idx = [spec.column_names.index(c) for c in spec.primary_key]
    encoded = [tuple(codecs[i].encode(v) for i, v in zip(idx, k, strict=True)) for k in keys]
    plan = CascadePlan(root=spec.qualname)
    pk_cache: dict[Node, tuple[str, ...]] = {root: spec.primary_key}
    found: dict[Node, set[tuple[Any, ...]]] = {}
    graph = nx.DiGraph()
    graph.add_node(root)
    # Rows that really exist among the requested keys.
    roots = _select_matching(db, conn, root, spec.primary_key, spec.primary_key, encoded)
    frontier: list[tuple[Node, list[tuple[Any, ...]]]] = [(root, roots)]
    found[root] = set(roots)
    while frontier:
        node, node_keys = frontier.pop()
        if not node_keys:
            continue
        pk = pk_cache[node]
        for edge in _children(db, conn, node):
            graph.add_edge(node, edge.child)
            child_pk = pk_cache.get(edge.child) or _primary_key(conn, edge.child)
            pk_cache[edge.child] = child_pk
            pos = (
                [pk.index(c) for c in edge.parent_columns]
                if set(edge.parent_columns) <= set(pk)
                else None
            )
            if pos is None:
                continue  # references a non-key unique column: not produced by limsync tables
            wanted = list({tuple(k[i] for i in pos) for k in node_keys})
            rows = _select_matching(db, conn, edge.child, child_pk, edge.columns, wanted)
            known = found.setdefault(edge.child, set())
            new = [r for r in rows if r not in known]
            known.update(new)
            if new:
                frontier.append((edge.child, new))
    order = list(reversed(list(nx.topological_sort(graph))))
    plan.order = [n for n in order if found.get(n)]
    for node in plan.order:
        plan.keys[node] = (pk_cache[node], sorted(found[node], key=repr))
        plan.rows[_label(node)] = len(found[node])
    return plan


def delete(
    db: Database,
    conn: sa.Connection,
    table: type[Table] | TableSpec,
    keys: Sequence[Sequence[Any]],
    plan: CascadePlan | None = None,
) -> CascadePlan:
    """Delete ``keys`` and their dependants, leaves first, in the caller's transaction."""
    plan = plan or plan_delete(db, conn, table, keys)
    for node in plan.order:
        pk, node_keys = plan.keys[node]
        step = max(1, MAX_PARAMS[db.dialect] // len(pk))
        for start in range(0, len(node_keys), step):
            part = node_keys[start : start + step]
            sql = f"DELETE FROM {_qualified(db, node)} WHERE {_in_clause(db, pk, len(part))}"  # noqa: S608
            conn.exec_driver_sql(sql, tuple(v for k in part for v in k))
    return plan


def _label(node: Node) -> str:
    schema, name = node
    return f"{schema}.{name}" if schema else name


def _qualified(db: Database, node: Node) -> str:
    schema, name = node
    return f"{db.quote(schema)}.{db.quote(name)}" if schema else db.quote(name)


def _in_clause(db: Database, columns: Sequence[str], n: int) -> str:
    p = placeholder(db)
    if len(columns) == 1:
        return f"{db.quote(columns[0])} IN ({', '.join([p] * n)})"
    tup = "(" + ", ".join([p] * len(columns)) + ")"
    return f"({', '.join(db.quote(c) for c in columns)}) IN ({', '.join([tup] * n)})"


def _select_matching(
    db: Database,
    conn: sa.Connection,
    node: Node,
    select: Sequence[str],
    match: Sequence[str],
    values: Sequence[tuple[Any, ...]],
) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    step = max(1, MAX_PARAMS[db.dialect] // max(1, len(match)))
    cols = ", ".join(db.quote(c) for c in select)
    for start in range(0, len(values), step):
        part = values[start : start + step]
        sql = f"SELECT {cols} FROM {_qualified(db, node)} WHERE {_in_clause(db, match, len(part))}"  # noqa: S608
        out.extend(tuple(r) for r in conn.exec_driver_sql(sql, tuple(v for k in part for v in k)))
    return out


def _primary_key(conn: sa.Connection, node: Node) -> tuple[str, ...]:
    schema, name = node
    return tuple(sa.inspect(conn).get_pk_constraint(name, schema=schema)["constrained_columns"])


def _children(db: Database, conn: sa.Connection, node: Node) -> list[_Edge]:
    """Foreign keys in the whole database that reference ``node``."""
    schema, name = node
    grouped: dict[tuple[str | None, str, str], list[tuple[int, str, str]]] = {}
    if db.dialect == "mysql":
        rows = conn.exec_driver_sql(
            "SELECT table_schema, table_name, constraint_name, ordinal_position, column_name, "
            "referenced_column_name FROM information_schema.key_column_usage "
            "WHERE referenced_table_schema = %s AND referenced_table_name = %s",
            (schema, name),
        )
        for s, t, c, pos, col, ref in rows:
            grouped.setdefault((s, t, c), []).append((int(pos), col, ref))
    elif db.dialect == "postgresql":
        rows = conn.exec_driver_sql(
            """
            SELECT cn.nspname, cl.relname, con.conname, k.ord, a.attname, af.attname
            FROM pg_constraint con
            JOIN pg_class cl ON con.conrelid = cl.oid
            JOIN pg_namespace cn ON cl.relnamespace = cn.oid
            JOIN pg_class pcl ON con.confrelid = pcl.oid
            JOIN pg_namespace pn ON pcl.relnamespace = pn.oid
            CROSS JOIN LATERAL unnest(con.conkey, con.confkey) WITH ORDINALITY
                AS k(attnum, fattnum, ord)
            JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
            JOIN pg_attribute af ON af.attrelid = con.confrelid AND af.attnum = k.fattnum
            WHERE con.contype = 'f' AND pn.nspname = %s AND pcl.relname = %s
            """,
            (schema, name),
        )
        for s, t, c, pos, col, ref in rows:
            grouped.setdefault((s, t, c), []).append((int(pos), col, ref))
    else:
        tables = [
            r[0]
            for r in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        for t in tables:
            for fk in conn.exec_driver_sql(f"PRAGMA foreign_key_list({db.quote(t)})"):
                fk_id, seq, parent, col, ref = fk[0], fk[1], fk[2], fk[3], fk[4]
                if parent == name:
                    grouped.setdefault((None, t, str(fk_id)), []).append((int(seq), col, ref))
    edges = []
    for (s, t, _c), cols in grouped.items():
        cols.sort()
        edges.append(
            _Edge(
                child=(s, t),
                columns=tuple(c for _, c, _ in cols),
                parent_columns=tuple(r for _, _, r in cols),
            )
        )
    return edges
