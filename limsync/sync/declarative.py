"""Declarative mappings from the configuration, compiled into the engine's stream maps.

``[[mappings.CONNECTOR.STREAM]]`` sections (:mod:`limsync.config.mappings`) say which table a
stream writes and where each target column's value comes from. :func:`stream_map` turns them
into one :class:`~limsync.sync.mapping.StreamMap` per stream, the same object a Python mapping
module provides, so everything downstream (overrides, load order, lookups resolved per batch,
row validation, quarantine) is shared with the code mappings.

The tables and columns named are checked here, when a sync is prepared: an unknown table or
column, or a required column left unmapped, is a :class:`~limsync.errors.ConfigError` naming its
place (``mappings.legacy.subjects[0].columns.sex``). A value that cannot be parsed fails the one
record (quarantine stage ``map``) with a message naming the column and the value; a lookup that
finds no parent quarantines it at stage ``reference``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import importlib
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pydantic
import sqlalchemy as sa

from limsync.config.mappings import ColumnSource, TableMapping, template_fields
from limsync.errors import ConfigError, DeclarationError, RecordError
from limsync.pipeline.database import Database
from limsync.pipeline.tables import Schema, TableSpec
from limsync.sync.mapping import Emitted, Lookup, StreamMap

Data = Mapping[str, Any]
ValueFn = Callable[[Data], Any]
_MISSING: Any = object()
_TRUE = frozenset({"true", "t", "yes", "y", "1", "on"})
_FALSE = frozenset({"false", "f", "no", "n", "0", "off"})
# Excel's 1900 date system: serial 1 is 1900-01-01, and Excel counts a 29 February 1900 that
# never was, so counting from 1899-12-30 is right for every date after February 1900.
_EXCEL_EPOCH = dt.datetime(1899, 12, 30)
_EXCEL_MAX = 2958465  # 9999-12-31


class MappingError(RecordError):
    """A source value cannot be mapped (unparseable, not in a map, missing field)."""


# --- tables --------------------------------------------------------------------------------------


def resolve_table(db: Database, name: str, where: str) -> TableSpec:
    """A ``schema.table`` the database knows, declared or reflected; ConfigError if none.

    ``table`` may be given without DataJoint's tier prefix (``reference.lab`` finds
    ``reference.#lab``). Known (declared) tables come first, then the database's tables in the
    pipeline schema (the prefix added), then a database/schema of exactly that name.
    """
    schema, _, table = name.partition(".")
    names = [table] if table[:1] in "#_" else [table, f"#{table}", f"_{table}", f"__{table}"]
    for candidate in names:
        qualname = f"{schema}.{candidate}"
        if qualname in {s.qualname for s in db.specs}:
            return db.spec(qualname)
    for physical in (False, True):
        db_schema = schema if physical else db.physical_schema(schema)
        if physical and db_schema == db.physical_schema(schema):
            continue
        for candidate in names:
            if _exists(db, db_schema, candidate):
                try:
                    return db.reflect(db_schema, candidate, physical=True)
                except DeclarationError as exc:
                    raise ConfigError(f"{where}: table {name}: {exc}") from None
    raise ConfigError(
        f"{where}: no table {name!r} (declare it with `pipelines`, or create it in the database)"
    )


def _exists(db: Database, db_schema: str, table: str) -> bool:
    if db.dialect == "sqlite":
        sql_schema, sql_name = None, f"{db_schema}.{table}"
    else:
        sql_schema, sql_name = db_schema, table
    with db.engine.connect() as conn:
        return bool(sa.inspect(conn).has_table(sql_name, schema=sql_schema))


def declare_pipelines(db: Database, names: Sequence[str], builtin: Mapping[str, str]) -> None:
    """Declare the ``pipelines`` of the configuration: built-in names or modules with SCHEMAS."""
    for i, name in enumerate(names):
        path = builtin.get(name, name)
        try:
            module = importlib.import_module(path)
        except ImportError as exc:
            known = ", ".join(sorted(builtin))
            raise ConfigError(
                f"pipelines[{i}]: {name!r} is neither a built-in pipeline ({known}) nor an "
                f"importable module ({exc})"
            ) from None
        schemas = getattr(module, "SCHEMAS", None)
        if not isinstance(schemas, (list, tuple)) or not all(
            isinstance(s, Schema) for s in schemas
        ):
            raise ConfigError(f"pipelines[{i}]: module {path} has no SCHEMAS list of Schema")
        db.declare(*schemas)


# --- values --------------------------------------------------------------------------------------


def _field(data: Data, name: str) -> Any:
    value = data.get(name, _MISSING)
    if value is _MISSING and "." in name:  # a dotted path into nested JSON
        value = data
        for part in name.split("."):
            if not isinstance(value, Mapping) or part not in value:
                return _MISSING
            value = value[part]
    return value


def _fail(column: str, message: str) -> MappingError:
    return MappingError(f"column {column}: {message}")


def _clean(src: ColumnSource, nulls: frozenset[str]) -> Callable[[Any], Any]:
    trim = src.trim

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            if trim:
                value = value.strip()
            if not value or value in nulls:
                return None
        return value

    return clean


def _reader(src: ColumnSource, column: str, nulls: frozenset[str]) -> ValueFn:
    """The raw value (from a field or a template), cleaned; None when empty."""
    clean = _clean(src, nulls)
    if src.from_ is not None:
        name, optional = src.from_, src.optional

        def from_field(data: Data) -> Any:
            value = _field(data, name)
            if value is _MISSING:
                if optional:
                    return None
                raise _fail(column, f"the record has no field {name!r}")
            return clean(value)

        return from_field
    assert src.template is not None
    template, fields, trim = src.template, template_fields(src.template), src.trim

    def from_template(data: Data) -> Any:
        values = {}
        for name in fields:
            value = data.get(name, _MISSING)
            if value is _MISSING:
                value = _field(data, name)  # a dotted path, or missing
            if isinstance(value, str):  # clean(), inlined: this runs for every record
                if trim:
                    value = value.strip()
                if not value or value in nulls:
                    return None  # a key built from an empty part would be a wrong key
            if value is _MISSING:
                if src.optional:
                    return None
                raise _fail(column, f"the record has no field {name!r} (template {template!r})")
            if value is None:
                return None
            values[name] = value
        return template.format_map(values)

    return from_template


def _mapper(src: ColumnSource, column: str) -> Callable[[Any], Any] | None:
    if src.map is None:
        return None
    table = {k.casefold(): v for k, v in src.map.items()} if src.ignore_case else dict(src.map)
    fold, shown = src.ignore_case, ", ".join(repr(k) for k in list(src.map)[:8])

    def mapped(value: Any) -> Any:
        text = str(value).casefold() if fold else str(value)
        try:
            return table[text]
        except KeyError:
            raise _fail(column, f"{value!r} is not in its map ({shown})") from None

    return mapped


def _number_text(value: Any, comma: bool) -> str:
    text = str(value).replace(" ", "").replace("\u00a0", "")
    if comma:
        text = text.replace(".", "").replace(",", ".")  # 1.234,5 -> 1234.5
    return text


def _excel(value: Any) -> dt.datetime | None:
    """An Excel serial day number (``43831``, ``43831.5``) as a datetime, or None."""
    if isinstance(value, bool):
        return None
    try:
        serial = float(value)
    except (TypeError, ValueError):
        return None
    if not 1 <= serial <= _EXCEL_MAX:
        return None
    return _EXCEL_EPOCH + dt.timedelta(days=serial)


def _parser(src: ColumnSource, column: str) -> Callable[[Any], Any] | None:
    kind, formats, comma = src.parse, tuple(src.formats), src.decimal_comma
    if kind is None:
        return None

    def bad(value: Any, what: str) -> MappingError:
        return _fail(column, f"{value!r} is not {what}")

    if kind == "str":
        return str
    if kind == "int":

        def to_int(value: Any) -> int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            try:
                number = decimal.Decimal(_number_text(value, comma))
            except (decimal.InvalidOperation, ValueError):
                raise bad(value, "an integer") from None
            if number != number.to_integral_value():
                raise bad(value, "an integer")
            return int(number)

        return to_int
    if kind in ("float", "decimal"):
        cast: Callable[[str], Any] = float if kind == "float" else decimal.Decimal
        what = "a number"

        def to_number(value: Any) -> Any:
            try:
                number = cast(_number_text(value, comma))
            except (decimal.InvalidOperation, ValueError):
                raise bad(value, what) from None
            if number != number:  # NaN: not a measurement
                raise bad(value, what)
            return number

        return to_number
    if kind == "bool":

        def to_bool(value: Any) -> bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().casefold()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise bad(value, "a yes/no value")

        return to_bool
    if kind in ("uuid", "uuid5"):
        if kind == "uuid5":
            return lambda value: uuid.uuid5(uuid.NAMESPACE_URL, str(value))

        def to_uuid(value: Any) -> uuid.UUID:
            try:
                return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
            except ValueError:
                raise bad(value, "a UUID") from None

        return to_uuid
    want_date = kind == "date"
    shown = " or ".join([*formats, "ISO 8601", "an Excel serial number"])

    # Exports repeat dates a lot (birth dates, session days) and strptime is slow (it checks
    # the locale on every call): remember recent texts. Values are immutable, errors are not
    # cached.
    @functools.lru_cache(maxsize=8192)
    def cached(text: str) -> Any:
        return to_datetime(text)

    def parse(value: Any) -> Any:
        return cached(value) if isinstance(value, str) else to_datetime(value)

    def to_datetime(value: Any) -> Any:
        if isinstance(value, dt.datetime):
            return value.date() if want_date else value
        if isinstance(value, dt.date):
            return value if want_date else dt.datetime(value.year, value.month, value.day)
        text = str(value)
        for fmt in formats:
            try:
                parsed = dt.datetime.strptime(text, fmt)  # naive, as exported
            except ValueError:
                continue
            return parsed.date() if want_date else parsed
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            parsed = _excel(text)  # type: ignore[assignment]
            if parsed is None:
                raise bad(value, f"a {kind} ({shown})") from None
        return parsed.date() if want_date else parsed

    return parse


def compile_value(src: ColumnSource, column: str, nulls: frozenset[str]) -> ValueFn:
    """One target column's value from a record's data (a dict of source fields)."""
    if "value" in src.model_fields_set:
        constant = src.value
        return lambda data: constant
    col_nulls = frozenset(src.nulls) if src.nulls is not None else nulls
    steps = [f for f in (_mapper(src, column), _parser(src, column)) if f is not None]
    default, has_default = src.default, src.has_default
    if src.from_ is not None and "." not in src.from_:
        return _plain_field(src, column, col_nulls, steps, default, has_default)
    read = _reader(src, column, col_nulls)

    def value(data: Data) -> Any:
        v = read(data)
        if v is not None:
            for step in steps:
                v = step(v)
                if v is None:
                    break
        if v is None and has_default:
            return default
        return v

    return value


def _plain_field(
    src: ColumnSource,
    column: str,
    nulls: frozenset[str],
    steps: list[Callable[[Any], Any]],
    default: Any,
    has_default: bool,
) -> ValueFn:
    """:func:`compile_value` for a field named without a dotted path, the usual column: the
    read, the cleaning, the steps and the default in one function.

    Every record runs this once per column, so it does what ``_reader``, ``_field``, ``_clean``
    and the generic ``value`` do together without their four Python calls a value.
    """
    name, optional, trim = src.from_, src.optional, src.trim
    assert name is not None
    step = steps[0] if len(steps) == 1 else None
    missing = f"the record has no field {name!r}"

    def value(data: Data) -> Any:
        v = data.get(name, _MISSING)
        if v is _MISSING:
            if not optional:
                raise _fail(column, missing)
            v = None
        elif isinstance(v, str):
            if trim:
                v = v.strip()
            if not v or v in nulls:
                v = None
        if v is not None:
            if step is not None:
                v = step(v)
            else:
                for f in steps:
                    v = f(v)
                    if v is None:
                        break
        if v is None and has_default:
            return default
        return v

    return value


def _lookup(
    db: Database, src: ColumnSource, column: str, where: str, nulls: frozenset[str]
) -> ValueFn:
    assert src.lookup is not None and src.match is not None
    spec = resolve_table(db, src.lookup, f"{where}.lookup")
    wanted = src.column or column
    for name in [*src.match, wanted]:
        if not spec.has_column(name):
            raise ConfigError(
                f"{where}: lookup table {spec.qualname} has no column {name!r} "
                f"(columns: {', '.join(spec.column_names)})"
            )
    assert spec.row_model is not None
    fields = spec.row_model.model_fields
    parts = [
        (
            name,
            compile_value(sub, f"{column} (match {name})", nulls),
            pydantic.TypeAdapter(fields[name].annotation or Any),
        )
        for name, sub in src.match.items()
    ]
    default, has_default = src.default, src.has_default

    def find(data: Data) -> Any:
        match: dict[str, Any] = {}
        for name, fn, adapter in parts:
            v = fn(data)
            if v is not None:
                try:
                    v = adapter.validate_python(v)
                except pydantic.ValidationError as exc:
                    msg = exc.errors()[0]["msg"]
                    raise _fail(
                        column, f"{v!r} cannot match {spec.qualname}.{name}: {msg}"
                    ) from None
            match[name] = v
        if all(v is None for v in match.values()):
            return default if has_default else None  # no natural key: no parent to name
        return Lookup(spec, match, wanted)

    return find


# --- tables and streams --------------------------------------------------------------------------


def _check_fields(model: type[pydantic.BaseModel] | None, src: ColumnSource, where: str) -> None:
    """With a closed source model, source fields must be among its fields."""
    if model is None or model.model_config.get("extra") == "allow":
        return
    known = set(model.model_fields) | {
        f.alias for f in model.model_fields.values() if f.alias is not None
    }
    names = [src.from_] if src.from_ else template_fields(src.template) if src.template else []
    for name in names:
        if name.split(".")[0] not in known:
            raise ConfigError(
                f"{where}: the source has no field {name!r} (fields: {', '.join(sorted(known))})"
            )


def compile_table(
    db: Database,
    tm: TableMapping,
    where: str,
    model: type[pydantic.BaseModel] | None = None,
) -> tuple[TableSpec, Callable[[Data], dict[str, Any] | None]]:
    """A table mapping's target table and its data-to-row function (None: no row)."""
    spec = resolve_table(db, tm.table, f"{where}.table")
    nulls = frozenset(tm.nulls)
    fns: list[tuple[str, ValueFn]] = []
    for column, src in tm.columns.items():
        cwhere = f"{where}.columns.{column}"
        if not spec.has_column(column):
            raise ConfigError(
                f"{cwhere}: table {spec.qualname} has no column {column!r} "
                f"(columns: {', '.join(spec.column_names)})"
            )
        if src.lookup is not None:
            for name, sub in (src.match or {}).items():
                _check_fields(model, sub, f"{cwhere}.match.{name}")
            fns.append((column, _lookup(db, src, column, cwhere, nulls)))
        else:
            _check_fields(model, src, cwhere)
            col = spec.column(column)
            if not src.has_default and col.has_default and not col.nullable:
                # An empty cell gets the table's default, as if the column were left out.
                src = src.model_copy(update={"default": col.default})
                src.model_fields_set.add("default")
            fns.append((column, compile_value(src, column, nulls)))
    required = [
        c.name
        for c in spec.columns
        if not c.has_default and not c.nullable and c.name not in tm.columns
    ]
    if required:
        raise ConfigError(
            f"{where}: table {spec.qualname} needs column(s) {', '.join(required)}, "
            "which are not mapped"
        )
    when = tm.when
    if when is not None:
        _check_fields(model, ColumnSource(from_=when), f"{where}.when")
    when_clean = _clean(ColumnSource(from_=when or "-"), nulls)

    def row(data: Data) -> dict[str, Any] | None:
        if when is not None and when_clean(_field(data, when)) in (None, _MISSING):
            return None
        return {column: fn(data) for column, fn in fns}

    return spec, row


@functools.cache
def _aliases(model: type[pydantic.BaseModel]) -> tuple[tuple[str, str], ...]:
    return tuple(
        (name, f.alias) for name, f in model.model_fields.items() if f.alias and f.alias != name
    )


def record_data(record: pydantic.BaseModel) -> dict[str, Any]:
    """A validated record's fields by name and by alias, declared and extra.

    Configuration names source fields as the source spells them (``Animal ID``), which is the
    alias when a source model renames a field.
    """
    extra = record.__pydantic_extra__
    data = {**record.__dict__, **extra} if extra else dict(record.__dict__)
    for name, alias in _aliases(type(record)):
        data[alias] = data[name]
    return data


def stream_map(
    db: Database,
    connector: str,
    stream: str,
    mappings: Sequence[TableMapping],
    model: type[pydantic.BaseModel] | None = None,
) -> StreamMap:
    """The :class:`StreamMap` of one stream's declarative mappings (tables checked now)."""
    compiled = [
        compile_table(db, tm, f"mappings.{connector}.{stream}[{i}]", model)
        for i, tm in enumerate(mappings)
    ]
    tables: list[TableSpec] = []
    for spec, _ in compiled:
        if spec not in tables:
            tables.append(spec)

    def fn(record: pydantic.BaseModel) -> Iterable[Emitted]:
        data = record_data(record)
        out: list[Emitted] = []
        for spec, make in compiled:
            row = make(data)
            if row is not None:
                out.append((spec, row))
        return out

    lookups = any(src.lookup is not None for tm in mappings for src in tm.columns.values())
    return StreamMap(stream, tables, fn, lookups)
