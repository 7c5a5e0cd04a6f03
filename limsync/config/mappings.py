"""The declarative mapping section of the configuration: ``[[mappings.CONNECTOR.STREAM]]``.

Plain pydantic models, checked when the configuration is loaded (the places in their error
messages read ``mappings.legacy.subjects[0].columns.sex.map``). They know nothing of the
database: :mod:`limsync.sync.declarative` compiles them into stream maps and checks the tables
and columns they name when a sync is prepared. ``docs/migrations.md`` is the reference::

    [[mappings.legacy.subjects]]
    table = "animal.subject"
    [mappings.legacy.subjects.columns]
    subject = "Animal ID"
    sex = { from = "Sex", map = { f = "F", m = "M" }, default = "U" }
    date_of_birth = { from = "DOB", parse = "date", formats = ["%d.%m.%Y"] }
"""

from __future__ import annotations

import re
import string
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

Parser = Literal["str", "int", "float", "decimal", "bool", "date", "datetime", "uuid", "uuid5"]
PARSERS: tuple[str, ...] = Parser.__args__  # type: ignore[attr-defined]
TABLE_RE = re.compile(r"[A-Za-z0-9_]+\.[#_A-Za-z0-9]+")
COLUMN_RE = re.compile(r"[a-z][a-z0-9_]*")


def template_fields(template: str) -> list[str]:
    """The ``{Field Name}`` placeholders of a template, in order (ValueError if malformed)."""
    fields = []
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if not name:
            raise ValueError("empty {} placeholder: name a source field, e.g. {Animal ID}")
        if spec or conversion:
            raise ValueError(
                f"placeholder {{{name}...}}: format specs and conversions are not supported"
            )
        fields.append(name)
    return fields


def _as_source(value: Any) -> Any:
    # `subject = "Animal ID"` is short for `subject = { from = "Animal ID" }`.
    return {"from": value} if isinstance(value, str) else value


class ColumnSource(BaseModel):
    """Where one target column's value comes from and how it is cleaned.

    Exactly one of ``from`` (a source field), ``template`` (a string built from several fields),
    ``value`` (a constant) or ``lookup`` (a foreign key found by a natural key) gives the value.
    Then, in this order: strings are trimmed; empty strings and ``nulls`` become null; ``map``
    translates the value; ``parse`` converts it; a null becomes ``default``.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: str | None = Field(None, alias="from", min_length=1)
    template: str | None = None
    value: Any = None
    lookup: str | None = None
    match: dict[str, Annotated[ColumnSource, BeforeValidator(_as_source)]] | None = None
    column: str | None = None
    parse: Parser | None = None
    formats: list[str] = []
    map: dict[str, Any] | None = None
    ignore_case: bool = False
    default: Any = None
    trim: bool = True
    nulls: list[str] | None = None
    decimal_comma: bool = False
    optional: bool = False

    @field_validator("template")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        if v is not None and not template_fields(v):
            raise ValueError("a template needs at least one {Field} placeholder")
        return v

    @field_validator("formats")
    @classmethod
    def _formats(cls, v: list[str]) -> list[str]:
        for f in v:
            if "%" not in f:
                raise ValueError(f"format {f!r} has no % directive (strptime formats: %Y-%m-%d)")
        return v

    @field_validator("map")
    @classmethod
    def _map(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and not v:
            raise ValueError("an empty map would reject every value")
        return v

    @field_validator("lookup")
    @classmethod
    def _lookup(cls, v: str | None) -> str | None:
        if v is not None and not TABLE_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not schema.table")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        given = [k for k in ("from", "template", "value", "lookup") if self._has(k)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of from, template, value or lookup"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.lookup is None and (self.match is not None or self.column is not None):
            raise ValueError("match and column belong to a lookup")
        if self.lookup is not None:
            if not self.match:
                raise ValueError('a lookup needs match = { its_column = "Source field" }')
            for key in self.match:
                if not COLUMN_RE.fullmatch(key):
                    raise ValueError(f"match: {key!r} is not a column name")
        if self.formats and self.parse not in ("date", "datetime"):
            raise ValueError('formats belong to parse = "date" or "datetime"')
        if self._has("value") and (self.parse or self.map or self._has("default")):
            raise ValueError("a constant value takes no parse, map or default")
        return self

    def _has(self, key: str) -> bool:
        name = "from_" if key == "from" else key
        return name in self.model_fields_set and (key != "from" or self.from_ is not None)

    @property
    def has_default(self) -> bool:
        """True when a default was given (TOML has no null, so any given value counts)."""
        return "default" in self.model_fields_set


Column = Annotated[ColumnSource, BeforeValidator(_as_source)]


class TableMapping(BaseModel):
    """One target table of a stream: ``[[mappings.CONNECTOR.STREAM]]``."""

    model_config = ConfigDict(extra="forbid")

    table: str = Field(description='"schema.table": a declared pipeline table or a reflected one')
    columns: dict[str, Column] = Field(min_length=1)
    when: str | None = None
    """Write this row only when this source field is not empty."""
    nulls: list[str] = []
    """Values that mean "no value" in every column (e.g. "NA", "-"), besides the empty string."""

    @field_validator("table")
    @classmethod
    def _table(cls, v: str) -> str:
        if not TABLE_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not schema.table")
        return v

    @field_validator("columns")
    @classmethod
    def _columns(cls, v: dict[str, ColumnSource]) -> dict[str, ColumnSource]:
        bad = [k for k in v if not COLUMN_RE.fullmatch(k)]
        if bad:
            raise ValueError(f"{', '.join(map(repr, bad))}: target columns are lower snake case")
        return v


def _as_list(value: Any) -> Any:
    # `[mappings.x.s]` (one table) is accepted as well as `[[mappings.x.s]]` (a list).
    return [value] if isinstance(value, dict) else value


StreamMappings = Annotated[list[TableMapping], BeforeValidator(_as_list), Field(min_length=1)]
Mappings = dict[str, dict[str, StreamMappings]]
"""connector instance -> stream -> its table mappings."""
