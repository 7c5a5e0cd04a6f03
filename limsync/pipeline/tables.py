"""Pipeline tables declared as annotated Python classes.

A table is a class whose annotated attributes are its columns, in the style of DataJoint::

    subject = Schema("subject")

    class Subject(Manual):
        '''Experimental subject.'''                      # the docstring is the table comment
        __schema__ = subject
        __references__ = (Lab,)                          # secondary reference: lab's key columns
        subject_uuid: Annotated[UUID, Key]
        nickname: Annotated[str, Field(max_length=64)]
        sex: Literal["M", "F", "U"] = "U"

    class Session(Manual):
        __schema__ = acquisition
        __references__ = (Ref(Subject, key=True),)       # part of the primary key
        session_start: Annotated[datetime, Key]

A reference adds the parent's whole primary key as columns plus a foreign key, as DataJoint's
``-> Parent`` does. Each class gets a :class:`TableSpec` (``Subject.spec``), the one description
of the table that the DDL emitter, the upsert and the graph use, and a pydantic row model
(``Subject.Row``) that validates rows before anything is written. Mistakes (bad names, unknown
types, a Computed table with its own key columns, ...) raise :class:`DeclarationError` when the
class is defined.
"""

from __future__ import annotations

import enum
import inspect
import operator
import re
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pydantic
from pydantic.fields import FieldInfo

from limsync.errors import DeclarationError
from limsync.pipeline.columns import (
    DEFAULT_VARCHAR,
    AnnotationInfo,
    ColumnType,
    column_type_from_annotation,
)

NAME_RE = re.compile(r"[a-z][a-z0-9]*(_[a-z][a-z0-9]*)*")
COLUMN_RE = re.compile(r"[a-z][a-z0-9_]*")
SCHEMA_RE = re.compile(r"[a-z][a-z0-9_]*")
CLASS_RE = re.compile(r"[A-Z][A-Za-z0-9]*")
# PostgreSQL truncates longer identifiers (MySQL allows 64): the stricter limit keeps a pipeline
# portable, and a truncated name would never be found again by reflection.
MAX_IDENTIFIER = 63


class Tier(enum.StrEnum):
    """DataJoint's table tiers; the value is the SQL name prefix."""

    LOOKUP = "#"
    MANUAL = ""
    IMPORTED = "_"
    COMPUTED = "__"
    PART = "part"

    @property
    def auto_populated(self) -> bool:
        """Imported and Computed tables are filled by ``populate``."""
        return self in (Tier.IMPORTED, Tier.COMPUTED)


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Any = _NoDefault()


@dataclass(frozen=True)
class ColumnSpec:
    """One column of a table."""

    name: str
    type: ColumnType
    nullable: bool = False
    default: Any = NO_DEFAULT
    comment: str = ""
    in_key: bool = False

    @property
    def has_default(self) -> bool:
        """True when inserts may leave the column out."""
        return self.default is not NO_DEFAULT


@dataclass(frozen=True)
class ForeignKeySpec:
    """A foreign key: ``columns`` of the child reference ``parent_columns`` of ``parent``."""

    parent: str  # qualified logical name "schema.table"
    columns: tuple[str, ...]
    parent_columns: tuple[str, ...]
    primary: bool = False
    nullable: bool = False


@dataclass(eq=False)
class TableSpec:
    """Everything limsync knows about one table, declared or reflected."""

    schema: str
    name: str  # SQL table name, tier prefix included ("#lab", "__session_stats", "session__probe")
    tier: Tier
    columns: tuple[ColumnSpec, ...]
    primary_key: tuple[str, ...]
    foreign_keys: tuple[ForeignKeySpec, ...] = ()
    comment: str = ""
    row_model: type[pydantic.BaseModel] | None = None
    database_schema: str | None = None  # exact database/schema name, bypassing the prefix
    declared: bool = True  # False for reflected tables: never created or altered by limsync
    _by_name: dict[str, ColumnSpec] = field(default_factory=dict, init=False, repr=False)
    _key_getter: Any = field(default=None, init=False, repr=False)
    _names: tuple[str, ...] = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name = {c.name: c for c in self.columns}
        self._names = tuple(c.name for c in self.columns)
        # key_of runs for every row of every sync: one C-level itemgetter, not a generator.
        getter = operator.itemgetter(*self.primary_key) if self.primary_key else None
        self._key_getter = getter

    @property
    def qualname(self) -> str:
        """Logical qualified name ``schema.table``: the node name in the graph."""
        return f"{self.schema}.{self.name}"

    @property
    def column_names(self) -> tuple[str, ...]:
        """Column names in declaration order."""
        return self._names

    def column(self, name: str) -> ColumnSpec:
        """The column called ``name``; KeyError names the table."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"table {self.qualname} has no column {name!r}") from None

    def has_column(self, name: str) -> bool:
        """True when the table has a column called ``name``."""
        return name in self._by_name

    def key_of(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        """The primary-key tuple of a row."""
        getter = self._key_getter
        if getter is None:
            return ()
        if len(self.primary_key) == 1:
            return (getter(row),)
        return getter(row)  # type: ignore[no-any-return]

    def key_dict(self, key: Sequence[Any]) -> dict[str, Any]:
        """A key tuple as a dict."""
        return dict(zip(self.primary_key, key, strict=True))


class Schema:
    """A named group of tables: a MySQL database or PostgreSQL schema (after the prefix)."""

    def __init__(self, name: str, comment: str = "") -> None:
        if not SCHEMA_RE.fullmatch(name) or len(name) > 48:
            raise DeclarationError(
                f"schema name {name!r} must be lower snake case, at most 48 characters"
            )
        if name.startswith("limsync"):
            raise DeclarationError(f"schema name {name!r}: the 'limsync' prefix is reserved")
        self.name = name
        self.comment = comment
        self.tables: dict[str, type[Table]] = {}

    def register(self, table: type[Table]) -> None:
        """Add a table class to this schema (done by the class itself)."""
        sql_name = table.spec.name
        if sql_name in self.tables and self.tables[sql_name].__qualname__ != table.__qualname__:
            raise DeclarationError(f"schema {self.name} already has a table {sql_name!r}")
        self.tables[sql_name] = table

    def __repr__(self) -> str:
        return f"Schema({self.name!r}, tables={list(self.tables)})"


@dataclass(frozen=True)
class Ref:
    """A reference to another table: ``Ref(Subject, key=True)`` is part of the primary key."""

    table: type[Table] | TableSpec
    key: bool = False
    nullable: bool = False

    @property
    def spec(self) -> TableSpec:
        """The referenced table's spec."""
        return self.table if isinstance(self.table, TableSpec) else self.table.spec


def camel_to_snake(name: str) -> str:
    """``SubjectProject`` -> ``subject_project`` (DataJoint's rule)."""
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


class Table:
    """Base of declared tables; use one of the tier classes below."""

    __tier__: ClassVar[Tier]
    __schema__: ClassVar[Schema]
    __references__: ClassVar[Sequence[Ref | type[Table]]] = ()
    __master__: ClassVar[type[Table] | None] = None
    __table_name__: ClassVar[str | None] = None
    # Auto-populated tiers only (see limsync.pipeline.populate): what happens to derived rows
    # when an upstream row changes, which tables' keys define the work (default: the primary
    # references, DataJoint's rule) and which other tables ``make`` reads.
    __on_change__: ClassVar[str] = "recompute"
    __key_source__: ClassVar[Sequence[type[Table]] | None] = None
    __depends_on__: ClassVar[Sequence[type[Table]]] = ()
    spec: ClassVar[TableSpec]
    Row: ClassVar[type[pydantic.BaseModel]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("__abstract__", False):
            return
        if cls.__tier__ is Tier.PART and cls.__dict__.get("__master__") is None:
            # A nested Part: finished by its master class once that exists.
            cls.__pending_part__ = True  # type: ignore[attr-defined]
            return
        _finish(cls)
        for attr in list(vars(cls).values()):
            if (
                isinstance(attr, type)
                and issubclass(attr, Table)
                and getattr(attr, "__pending_part__", False)
            ):
                attr.__master__ = cls
                attr.__pending_part__ = False  # type: ignore[attr-defined]
                if "__schema__" not in attr.__dict__:
                    attr.__schema__ = cls.__schema__
                _finish(attr)


class Lookup(Table):
    """Reference data that changes rarely (SQL name prefix ``#``)."""

    __abstract__ = True
    __tier__ = Tier.LOOKUP


class Manual(Table):
    """Data entered from outside: what limsync syncs into."""

    __abstract__ = True
    __tier__ = Tier.MANUAL


# What ``make`` may return: rows of the table itself (dicts; the key's columns may be left out)
# and ``(PartClass, row)`` pairs for its Part tables. ``None`` means no rows for this key.
MakeRow = dict[str, Any] | tuple[type[Table], dict[str, Any]]
MakeResult = Iterable[MakeRow] | None


class AutoPopulated(Table):
    """Common base of Imported and Computed tables: ``make`` and what it gets to read with.

    ``populate`` creates one instance per worker and sets :attr:`db` (the Database) and
    :attr:`conn` (a read connection) before calling :meth:`make` for each key.
    """

    __abstract__ = True
    db: Any
    conn: Any

    def make(self, key: dict[str, Any]) -> MakeResult:
        """Compute the rows of one key; override it (delivery is at-least-once: be idempotent)."""
        from limsync.errors import PopulateError

        raise PopulateError(f"table class {type(self).__qualname__} defines no make(key)")

    def fetch(self, table: type[Table] | TableSpec, **where: Any) -> list[dict[str, Any]]:
        """Rows of ``table`` whose columns equal ``where`` (a list value means any of them)."""
        from limsync.pipeline.populate.keys import fetch_where

        return fetch_where(self.db, self.conn, table, where)

    def insert1(self, row: MakeRow) -> None:
        """Inside ``make``, insert a row instead of returning it: a dict for this table, or a
        ``(PartClass, row)`` pair. The rows are written with the key's others, all or none."""
        made = self.__dict__.get("_made_rows")
        if made is None:
            from limsync.errors import PopulateError

            raise PopulateError(
                f"{type(self).__qualname__}.insert1 works only inside make, run by populate"
            )
        made.append(row)

    def insert(self, rows: Iterable[MakeRow]) -> None:
        """Inside ``make``, insert several rows (see :meth:`insert1`)."""
        for row in rows:
            self.insert1(row)


class Imported(AutoPopulated):
    """Auto-populated from outside data (prefix ``_``)."""

    __abstract__ = True
    __tier__ = Tier.IMPORTED


class Computed(AutoPopulated):
    """Auto-populated from other tables (prefix ``__``)."""

    __abstract__ = True
    __tier__ = Tier.COMPUTED


class Part(Table):
    """A part of a master table, named ``master__part``; declare it nested in its master."""

    __abstract__ = True
    __tier__ = Tier.PART


def _finish(cls: type[Table]) -> None:
    where = f"table class {cls.__qualname__}"
    schema = cls.__dict__.get("__schema__") or getattr(cls, "__schema__", None)
    if not isinstance(schema, Schema):
        raise DeclarationError(f"{where}: set __schema__ to a limsync.pipeline.Schema")
    if not CLASS_RE.fullmatch(cls.__name__):
        raise DeclarationError(f"{where}: class names must be CamelCase")
    base = cls.__table_name__ or camel_to_snake(cls.__name__)
    if not NAME_RE.fullmatch(base):
        raise DeclarationError(f"{where}: table name {base!r} is not lower snake case")
    refs: list[Ref] = [r if isinstance(r, Ref) else Ref(r) for r in cls.__references__]
    for ref in refs:
        if ref.key and ref.nullable:
            raise DeclarationError(
                f"{where}: a reference in the primary key cannot be nullable ({ref.spec.qualname})"
            )
    if cls.__tier__ is Tier.PART:
        master = cls.__master__
        assert master is not None
        sql_name = f"{master.spec.name}__{base}"
        refs.insert(0, Ref(master, key=True))
    else:
        sql_name = cls.__tier__.value + base
    if len(sql_name) > MAX_IDENTIFIER:
        raise DeclarationError(
            f"{where}: table name {sql_name!r} is longer than {MAX_IDENTIFIER} characters"
        )

    own = _own_columns(cls, where)
    columns: list[ColumnSpec] = []
    fields: dict[str, tuple[Any, Any]] = {}
    fks: list[ForeignKeySpec] = []
    # Referenced key columns come first, primary references before secondary ones (DataJoint).
    for ref in sorted(refs, key=lambda r: not r.key):
        parent = ref.spec
        assert parent.row_model is not None
        for pk_name in parent.primary_key:
            pcol = parent.column(pk_name)
            if any(c.name == pk_name for c in columns):
                continue  # diamond: the same inherited column from two parents
            columns.append(
                ColumnSpec(
                    pk_name,
                    pcol.type,
                    nullable=ref.nullable,
                    default=None if ref.nullable else NO_DEFAULT,
                    comment=pcol.comment,
                    in_key=ref.key,
                )
            )
            ann = parent.row_model.model_fields[pk_name]
            annotation: Any = ann.annotation
            if ref.nullable:
                annotation = annotation | None
            fields[pk_name] = (
                typing.Annotated[annotation, *ann.metadata],
                None if ref.nullable else ...,
            )
        fks.append(
            ForeignKeySpec(
                parent=parent.qualname,
                columns=parent.primary_key,
                parent_columns=parent.primary_key,
                primary=ref.key,
                nullable=ref.nullable,
            )
        )
    for spec, annotation, finfo in own:
        if any(c.name == spec.name for c in columns):
            raise DeclarationError(f"{where}: column {spec.name!r} is already added by a reference")
        columns.append(spec)
        fields[spec.name] = (annotation, finfo)
    # Primary key columns first, as DataJoint lays them out.
    columns.sort(key=lambda c: not c.in_key)
    pk = tuple(c.name for c in columns if c.in_key)
    if not pk:
        raise DeclarationError(f"{where}: a table needs a primary key (mark columns with Key)")
    if cls.__tier__.auto_populated:
        inherited = {c for fk in fks if fk.primary for c in fk.columns}
        extra = [c for c in pk if c not in inherited]
        if extra:
            raise DeclarationError(
                f"{where}: {cls.__tier__.name.title()} tables take every primary-key column from "
                f"references; {extra} are their own"
            )
    row_model = pydantic.create_model(  # type: ignore[call-overload]
        f"{cls.__name__}Row",
        __config__=pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True),
        **{name: fields[name] for name in (c.name for c in columns)},
    )
    doc_lines = (cls.__doc__ or "").strip().splitlines()
    comment = doc_lines[0].strip() if doc_lines else ""
    if comment.startswith(":"):
        raise DeclarationError(f"{where}: a table comment must not start with ':'")
    cls.spec = TableSpec(
        schema=schema.name,
        name=sql_name,
        tier=cls.__tier__,
        columns=tuple(columns),
        primary_key=pk,
        foreign_keys=tuple(fks),
        comment=comment,
        row_model=row_model,
    )
    cls.Row = row_model
    _check_populate_attributes(cls, where)
    schema.register(cls)


POPULATE_ATTRIBUTES = ("__on_change__", "__key_source__", "__depends_on__")


def _check_populate_attributes(cls: type[Table], where: str) -> None:
    """The populate class attributes: only on auto-populated tiers, and well formed."""
    if not cls.__tier__.auto_populated:
        given = [a for a in POPULATE_ATTRIBUTES if a in cls.__dict__]
        if given or "make" in cls.__dict__:
            raise DeclarationError(
                f"{where}: {', '.join(given or ['make'])} only apply to Computed and Imported "
                "tables"
            )
        return
    if cls.__on_change__ not in ("recompute", "keep"):
        raise DeclarationError(
            f"{where}: __on_change__ must be 'recompute' or 'keep', not {cls.__on_change__!r}"
        )
    for attr in ("__key_source__", "__depends_on__"):
        value = getattr(cls, attr)
        if value is None:
            continue
        if isinstance(value, type) or not all(
            isinstance(t, type) and issubclass(t, Table) and hasattr(t, "spec") for t in value
        ):
            raise DeclarationError(f"{where}: {attr} must be a tuple of table classes")
    pk = cls.spec.primary_key
    if cls.__key_source__ is not None:
        if not cls.__key_source__:
            raise DeclarationError(f"{where}: __key_source__ names no table")
        covered = {c for t in cls.__key_source__ for c in t.spec.column_names}
        missing = [c for c in pk if c not in covered]
        if missing:
            raise DeclarationError(
                f"{where}: __key_source__ tables do not provide the key column(s) {missing}"
            )
    for dep in cls.__depends_on__:
        if not set(dep.spec.column_names) & set(pk):
            raise DeclarationError(
                f"{where}: __depends_on__ table {dep.spec.qualname} shares no column with the "
                f"primary key {list(pk)}, so its changes cannot be mapped to keys"
            )


def _own_columns(cls: type[Table], where: str) -> list[tuple[ColumnSpec, Any, Any]]:
    hints = typing.get_type_hints(cls, include_extras=True)
    out: list[tuple[ColumnSpec, Any, Any]] = []
    for name in inspect.get_annotations(cls):
        hint = hints[name]
        if typing.get_origin(hint) is ClassVar:
            continue
        cwhere = f"{where} column {name!r}"
        if not COLUMN_RE.fullmatch(name) or len(name) > MAX_IDENTIFIER:
            raise DeclarationError(
                f"{cwhere}: column names are lower snake case, do not start with '_' "
                f"(reserved for hidden columns) and are at most {MAX_IDENTIFIER} characters"
            )
        default = cls.__dict__.get(name, NO_DEFAULT)
        finfo = (
            FieldInfo.from_annotated_attribute(hint, default)
            if default is not NO_DEFAULT
            else FieldInfo.from_annotation(hint)
        )
        info: AnnotationInfo = column_type_from_annotation(hint, finfo, cwhere)
        annotation: Any = hint
        if info.type.kind == "varchar" and info.type.length == DEFAULT_VARCHAR:
            # Enforce the column's width in the row model, so an over-long value is a clear
            # validation error instead of a database error (or silent truncation).
            annotation = typing.Annotated[hint, pydantic.Field(max_length=DEFAULT_VARCHAR)]
        col_default: Any = default
        if isinstance(default, FieldInfo):
            col_default = default.default
            if col_default is pydantic_core_undefined():
                col_default = NO_DEFAULT
        if col_default is NO_DEFAULT and info.nullable:
            col_default = None
        comment = (finfo.description or info.comment).strip()
        if comment.startswith(":"):
            raise DeclarationError(f"{cwhere}: a column comment must not start with ':'")
        spec = ColumnSpec(
            name=name,
            type=info.type,
            nullable=info.nullable,
            default=col_default,
            comment=comment,
            in_key=info.in_key,
        )
        if spec.in_key and spec.nullable:
            raise DeclarationError(f"{cwhere}: a primary-key column cannot be nullable")
        pyd_default: Any = ... if col_default is NO_DEFAULT else col_default
        if isinstance(default, FieldInfo):
            pyd_default = default
        out.append((spec, annotation, pyd_default))
    return out


def pydantic_core_undefined() -> Any:
    """pydantic's marker for 'no default' (kept in one place)."""
    from pydantic_core import PydanticUndefined

    return PydanticUndefined


def tables_in(items: Iterable[Schema | type[Table] | TableSpec]) -> list[TableSpec]:
    """Flatten schemas, table classes and specs into a list of specs."""
    out: list[TableSpec] = []
    for item in items:
        if isinstance(item, Schema):
            out.extend(t.spec for t in item.tables.values())
        elif isinstance(item, TableSpec):
            out.append(item)
        else:
            out.append(item.spec)
    return out
