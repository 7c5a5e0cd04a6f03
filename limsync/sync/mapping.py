"""From a validated source record to rows of pipeline tables.

A :class:`StreamMap` says which tables a stream writes and how one record becomes rows: a Python
function, or a declarative :class:`ColumnMap` (target column <- source field) when no code is
needed. Configuration can then point a default table at the user's own table, rename columns
and leave some out (:class:`~limsync.connectors.base.TableOverride`), without code: the
:class:`Mapper` applies those overrides to whatever the map produces.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydantic

from limsync.connectors.base import TableOverride
from limsync.errors import ConfigError
from limsync.pipeline.database import Database
from limsync.pipeline.tables import Table, TableSpec

Row = dict[str, Any]
Emitted = tuple["type[Table] | TableSpec", Row]
MapFunction = Callable[[pydantic.BaseModel], Iterable[Emitted]]


def _spec(t: type[Table] | TableSpec) -> TableSpec:
    return t if isinstance(t, TableSpec) else t.spec


@dataclass(frozen=True)
class ColumnMap:
    """A declarative map: each target column takes a source field (dotted paths allowed)."""

    table: type[Table] | TableSpec
    columns: Mapping[str, str]
    constants: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, record: pydantic.BaseModel) -> Iterable[Emitted]:
        """One row of :attr:`table` per record."""
        row: Row = dict(self.constants)
        for target, source in self.columns.items():
            row[target] = _path(record, source)
        yield self.table, row


def _path(record: Any, dotted: str) -> Any:
    value = record
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else getattr(value, part, None)
        if value is None:
            return None
    return value


@dataclass(frozen=True)
class StreamMap:
    """What one stream writes: its tables (for load order) and the record-to-rows function.

    ``lookups=False`` promises that no row holds a :class:`Lookup`, so the engine does not look
    through every value of every row for one (a declarative map knows; a function may not).
    """

    stream: str
    tables: Sequence[type[Table] | TableSpec]
    fn: MapFunction
    lookups: bool = True

    @property
    def specs(self) -> list[TableSpec]:
        """The default target tables."""
        return [_spec(t) for t in self.tables]


class Mapper:
    """A stream map with the configuration's table overrides applied, bound to a database."""

    def __init__(
        self, db: Database, smap: StreamMap, overrides: Mapping[str, TableOverride] | None = None
    ) -> None:
        self.smap = smap
        self.stream = smap.stream
        self._targets: dict[str, tuple[TableSpec, dict[str, str], frozenset[str]]] = {}
        # The same by id() of the table objects the map emits, each kept alive with its entry.
        self._by_id: dict[int, tuple[Any, TableSpec, dict[str, str], frozenset[str]]] = {}
        defaults = {s.qualname: s for s in smap.specs}
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(defaults))
        if unknown:
            raise ConfigError(
                f"stream {smap.stream}: tables {', '.join(unknown)} are not written by this "
                f"stream (it writes {', '.join(sorted(defaults))})"
            )
        for qualname, spec in defaults.items():
            ov = overrides.get(qualname) or TableOverride()
            target = spec
            if ov.table:
                schema, _, name = ov.table.partition(".")
                if not name:
                    raise ConfigError(
                        f"stream {smap.stream}: override table {ov.table!r} must be schema.table"
                    )
                target = db.reflect(schema, name, physical=True)
            rename = dict(ov.rename)
            exclude = frozenset(ov.exclude)
            for col in [*rename, *exclude]:
                if not spec.has_column(col):
                    raise ConfigError(
                        f"stream {smap.stream}: {qualname} has no column {col!r} to rename or "
                        "exclude"
                    )
            for col in rename.values():
                if not target.has_column(col):
                    raise ConfigError(
                        f"stream {smap.stream}: target table {target.qualname} has no column "
                        f"{col!r}"
                    )
            self._targets[qualname] = (target, rename, exclude)

    @property
    def targets(self) -> list[TableSpec]:
        """The tables actually written."""
        return [t for t, _, _ in self._targets.values()]

    def rows(self, record: pydantic.BaseModel) -> list[tuple[TableSpec, Row]]:
        """The rows one record maps to, after overrides (validation is the engine's job)."""
        out: list[tuple[TableSpec, Row]] = []
        by_id = self._by_id
        for table, row in self.smap.fn(record):
            # Per table object (a class or a spec the map holds), not per qualname: that is a
            # property, a string built at every call, and this runs for every row.
            found = by_id.get(id(table))
            if found is None or found[0] is not table:
                found = by_id[id(table)] = (table, *self._targets[_spec(table).qualname])
            _, target, rename, exclude = found
            if rename or exclude:
                row = {rename.get(k, k): v for k, v in row.items() if k not in exclude}
            out.append((target, row))
        return out


# --- lookups of foreign keys by a natural key


@dataclass(frozen=True)
class Lookup:
    """A value to find in another table by a natural key, resolved per batch in one query.

    ``Lookup(Subject, {"lab_name": "cortexlab", "subject_nickname": "M1"}, "subject_uuid")``
    stands for the ``subject_uuid`` of the one Subject row with that lab and nickname. Keys
    whose value is None are left out of the match. No match, or more than one, quarantines the
    record with a message that says which.
    """

    table: type[Table] | TableSpec
    match: Mapping[str, Any]
    column: str

    def signature(self) -> tuple[str, tuple[str, ...], str]:
        """What lookups can share one query: table, matched columns, wanted column."""
        cols = tuple(sorted(k for k, v in self.match.items() if v is not None))
        return (_spec(self.table).qualname, cols, self.column)

    def values(self) -> tuple[Any, ...]:
        """The matched values, in the order of :meth:`signature`'s columns."""
        return tuple(self.match[k] for k in self.signature()[1])


Wanted = dict[tuple[str, tuple[str, ...], str], set[tuple[Any, ...]]]
"""The lookups of some rows: values to match, by :meth:`Lookup.signature` (table first)."""


def wanted_lookups(rows: Sequence[tuple[TableSpec, Row]]) -> Wanted:
    """The :class:`Lookup` values in ``rows``, grouped by what can share one query."""
    wanted: Wanted = {}
    for _, row in rows:
        for v in row.values():
            if isinstance(v, Lookup):
                wanted.setdefault(v.signature(), set()).add(v.values())
    return wanted


def resolve_lookups(
    db: Database, conn: Any, rows: Sequence[tuple[TableSpec, Row]], wanted: Wanted | None = None
) -> dict[int, str]:
    """Replace :class:`Lookup` values in ``rows`` in place; returns {row index: problem}.

    ``wanted``: the rows' :func:`wanted_lookups`, when the caller has them already.
    """
    from limsync.pipeline.upsert import select_by_keys  # the SQL helpers live with the upsert

    if wanted is None:
        wanted = wanted_lookups(rows)
    if not wanted:
        return {}
    found: dict[tuple[str, tuple[str, ...], str], dict[tuple[Any, ...], list[Any]]] = {}
    for sig, values in wanted.items():
        qualname, cols, column = sig
        spec = db.spec(qualname)
        codecs = db.codecs(spec)
        names = spec.column_names
        enc = [codecs[names.index(c)] for c in cols]
        out_codec = codecs[names.index(column)]
        result: dict[tuple[Any, ...], list[Any]] = {}
        by_encoded = {
            tuple(c.encode(v) for c, v in zip(enc, key, strict=True)): key for key in values
        }
        for r in select_by_keys(db, conn, spec, (*cols, column), cols, list(by_encoded)):
            stored = tuple(c.stored(v) for c, v in zip(enc, r[: len(cols)], strict=True))
            key = by_encoded.get(stored)
            if key is not None:
                result.setdefault(key, []).append(out_codec.decode(r[len(cols)]))
        found[sig] = result
    problems: dict[int, str] = {}
    for i, (_, row) in enumerate(rows):
        for col, v in list(row.items()):
            if not isinstance(v, Lookup):
                continue
            sig = v.signature()
            hits = found[sig].get(v.values(), [])
            where = ", ".join(f"{k}={x!r}" for k, x in zip(sig[1], v.values(), strict=True))
            if len(hits) == 1:
                row[col] = hits[0]
            elif not hits:
                problems[i] = f"{col}: no row of {sig[0]} has {where}"
            else:
                problems[i] = f"{col}: {len(hits)} rows of {sig[0]} have {where} (ambiguous)"
    return problems


# --- keys stored as JSON (ledger targets, outbox)


def key_json(key: Sequence[Any]) -> list[Any]:
    """A key tuple as JSON-able values (uuid, dates and decimals as strings).

    The same values as ``json.loads(json.dumps(list(key), default=str))``, without the round
    trip: every row written needs one.
    """
    return [_json_value(v) for v in key]


def _json_value(v: Any) -> Any:
    t = type(v)
    if v is None or t is str or t is int or t is float or t is bool:
        return v
    if isinstance(v, str):
        return str.__str__(v)  # a str enum: its value, as json.dumps writes it
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v)
    if isinstance(v, list | tuple | dict):
        return json.loads(json.dumps(v, default=str))
    return str(v)


@functools.cache
def _adapter(annotation: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(annotation)


def key_from_json(spec: TableSpec, values: Sequence[Any]) -> tuple[Any, ...]:
    """A key tuple back from JSON, each value validated to its column's Python type."""
    assert spec.row_model is not None
    fields = spec.row_model.model_fields
    return tuple(
        _adapter(fields[k].annotation).validate_python(v)  # type: ignore[arg-type]
        for k, v in zip(spec.primary_key, values, strict=True)
    )
