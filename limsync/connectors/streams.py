"""Stream declarations: what a connector reads, and the checks run when a connector is defined.

A :class:`Stream` names a list endpoint, the pydantic model that validates one raw record, the
record's key, and optionally a paginator, cursor, volatile fields and parent stream.
:func:`check_stream` rejects a declaration that could only fail later (a key field the model
does not have, a parent declared after its child, ...) with a
:class:`~limsync.errors.DeclarationError` naming the connector class and the stream.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Callable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from typing import Any

import pydantic
from pydantic import BaseModel

from limsync.connectors.pagination import Paginator
from limsync.errors import DeclarationError

Key = tuple[Any, ...]

SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


@dataclass(frozen=True)
class Cursor:
    """A stream's high-water mark: the record field that grows on every change."""

    field: str
    lookback: timedelta = timedelta(0)
    """How far before the last committed value the next incremental read starts."""
    versions: bool = False
    """Keep, per record, the cursor value of the copy stored (``ReadContext.versions``), for a
    connector that skips records whose current value is one it holds."""


@dataclass(frozen=True)
class Stream:
    """One kind of record a connector reads (a list endpoint, usually)."""

    name: str
    """Lower snake case, unique within the connector."""
    path: str
    """Relative to the base URL; may contain ``{placeholders}`` of the parent record. For an
    instance-defined stream without a parent, a label of what is read (a glob, a table)."""
    model: type[BaseModel]
    """The source model: validates one raw record (as :meth:`Connector.read` yields it)."""
    key: tuple[str, ...]
    """The source primary key: field names of ``model``."""
    paginator: Paginator | None = None
    """None: the connector's default paginator."""
    cursor: Cursor | None = None
    volatile: AbstractSet[str] = frozenset()
    """Fields left out of the content hash (computed values that change without an edit)."""
    parent: str | None = None
    """The stream whose records this one hangs off; its path placeholders come from them."""
    params: Mapping[str, str | Sequence[str]] = field(default_factory=dict)
    """Fixed query parameters."""
    description: str = ""

    def __hash__(self) -> int:
        # params is a mapping (unhashable); these fields identify a declaration well enough.
        return hash((self.name, self.path, self.model, self.key))

    def __post_init__(self) -> None:
        # Accept lists and sets in declarations; store immutable forms.
        key = (self.key,) if isinstance(self.key, str) else tuple(self.key)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "volatile", frozenset(self.volatile))
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    @property
    def placeholders(self) -> tuple[str, ...]:
        """The ``{names}`` in :attr:`path`."""
        return tuple(name for _, name, _, _ in string.Formatter().parse(self.path) if name)

    def key_from_raw(self, record: Mapping[str, Any]) -> Key:
        """The key of a raw record, each value coerced as the model would (e.g. str -> UUID).

        Keys built this way compare equal to ``key_of(model.model_validate(record))``, which is
        what the engine stores, so connectors can ask ``ReadContext.known`` about raw records.
        """
        return tuple(_field_adapter(self.model, k).validate_python(record[k]) for k in self.key)

    def key_of(self, instance: BaseModel) -> Key:
        """The key of a validated record."""
        return tuple(getattr(instance, k) for k in self.key)


class Streams(Mapping[str, Stream]):
    """The ordered, read-only mapping of a connector's streams: ``Streams(Stream(...), ...)``.

    It keeps every declaration as given (duplicates included), so the class check can report
    a name declared twice instead of silently keeping the last one.
    """

    def __init__(self, *streams: Stream) -> None:
        self.declared: tuple[Stream, ...] = streams
        self._by_name = {getattr(s, "name", repr(s)): s for s in streams}

    def __getitem__(self, name: str) -> Stream:
        return self._by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def __repr__(self) -> str:
        return f"Streams({', '.join(self._by_name)})"


@functools.cache
def _field_adapter(model: type[BaseModel], name: str) -> pydantic.TypeAdapter[Any]:
    annotation = model.model_fields[name].annotation
    return pydantic.TypeAdapter(Any if annotation is None else annotation)


@dataclass
class ReadContext:
    """What the engine tells a connector when it reads a stream."""

    full: bool
    """True: a full scan (every record, used for delete detection); False: incremental."""
    cursor: str | None
    """The last committed cursor value of this stream (ISO string), or None."""
    known: Callable[[Sequence[Key]], set[Key]]
    """Which of these keys the ledger already holds (keys as :meth:`Stream.key_from_raw`)."""
    seen: Callable[[Sequence[Key]], None] | None = None
    """Optional: in a full scan, keys the connector confirms exist without yielding their
    records (e.g. known, unchanged Alyx sessions whose details it does not re-fetch). The engine
    counts them as present. When None, connectors yield every record in a full scan."""
    versions: Callable[[str], set[str]] | None = None
    """For streams whose cursor keeps versions (``Cursor.versions``): the distinct cursor values
    of the stored records that sort at or after the given text bound. Every record the engine
    stores (or finds unchanged) holds the cursor value of the copy it stored, so a record whose
    current value is not among these surely changed (or is new). None: no versions kept."""
    unhold: Callable[[Sequence[Key]], None] | None = None
    """With ``versions``: drop the versions held for these keys once the stream's
    records are stored, so a later read treats them as changed. For a connector that saw
    records change while it read them: the versions it yielded may not be the current ones."""
    present: Callable[[], int] | None = None
    """Optional, in a full scan: how many records of this stream the ledger holds as present
    (for a connector that compares it with the source's own count)."""
    seen_all: Callable[[], None] | None = None
    """Optional, in a full scan: the connector vouches that every record the ledger holds as
    present is still at the source, without listing them (e.g. Alyx sessions, when the
    server's count is the ledger's plus the new sessions the changed-since query found). The
    engine then counts them all as seen, and this scan detects no deletes."""


def nothing_known(keys: Sequence[Key]) -> set[Key]:
    """A ``ReadContext.known`` for a reader without a ledger."""
    return set()


@dataclass(frozen=True)
class CheckResult:
    """One line of ``limsync check``: what was checked, whether it passed, and why not."""

    name: str
    ok: bool
    detail: str = ""


# --- declaration checks -------------------------------------------------------------------------


def declaration_error(cls: type | str, stream: str | None, problem: str) -> DeclarationError:
    """The error for a bad declaration of ``cls`` (a class, or a label such as a config place)."""
    where = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
    if stream is not None:
        where += f" stream {stream!r}"
    return DeclarationError(f"{where}: {problem}")


def check_stream(
    cls: type | str,
    entry: str,
    stream: Stream,
    declared: Mapping[str, Stream],
    *,
    instance: bool = False,
) -> None:
    """Raise DeclarationError for the first problem in one stream declaration.

    ``instance`` True checks a stream an instance built from its settings (files, SQL, ...):
    its ``path`` is a free label (a glob, a table) unless it has a parent, and its volatile
    fields may be extra fields when the model allows them (a source's own columns, or the
    ``_source`` a connector adds, which cannot be pydantic fields).
    """
    name = stream.name
    if not isinstance(name, str) or not SNAKE_CASE.match(name):
        raise declaration_error(cls, str(name), "stream names must be lower snake case")
    if entry != name:
        raise declaration_error(cls, name, f"declared under the name {entry!r}")
    if not isinstance(stream.model, type) or not issubclass(stream.model, BaseModel):
        raise declaration_error(cls, name, "model must be a pydantic BaseModel subclass")
    free_path = instance and stream.parent is None
    if not stream.path:
        raise declaration_error(cls, name, "path must not be empty")
    if not free_path and (stream.path.startswith("/") or "://" in stream.path):
        raise declaration_error(cls, name, f"path {stream.path!r} must be relative to the base URL")
    fields = set(stream.model.model_fields)
    extras_allowed = instance and stream.model.model_config.get("extra") == "allow"
    model = stream.model.__name__
    if not stream.key:
        raise declaration_error(cls, name, "key must name at least one field")
    if len(set(stream.key)) != len(stream.key):
        raise declaration_error(cls, name, f"key {stream.key} repeats a field")
    for label, names in (("key", stream.key), ("volatile", sorted(stream.volatile))):
        if label == "volatile" and extras_allowed:
            continue
        missing = [f for f in names if f not in fields]
        if missing:
            raise declaration_error(
                cls, name, f"{label} field(s) {', '.join(missing)} not on {model}"
            )
    if stream.volatile & set(stream.key):
        raise declaration_error(cls, name, "a key field cannot be volatile")
    if stream.cursor is not None:
        if stream.cursor.field not in fields:
            raise declaration_error(
                cls, name, f"cursor field {stream.cursor.field!r} not on {model}"
            )
        if stream.cursor.lookback < timedelta(0):
            raise declaration_error(cls, name, "cursor lookback must not be negative")
    if stream.paginator is not None and not isinstance(stream.paginator, Paginator):
        raise declaration_error(cls, name, "paginator must be a Paginator")
    for param, value in stream.params.items():
        ok = isinstance(value, str) or (
            isinstance(value, Sequence) and all(isinstance(v, str) for v in value)
        )
        if not isinstance(param, str) or not ok:
            raise declaration_error(cls, name, f"param {param!r} must map to a string or strings")
    if free_path:
        return
    try:
        placeholders = stream.placeholders
    except ValueError as exc:
        raise declaration_error(
            cls, name, f"path {stream.path!r} is not a valid template: {exc}"
        ) from None
    if stream.parent is None:
        if placeholders:
            raise declaration_error(
                cls, name, f"path placeholders {placeholders} need a parent stream"
            )
        return
    if stream.parent == name:
        raise declaration_error(cls, name, "a stream cannot be its own parent")
    parent = declared.get(stream.parent)
    if parent is None:
        raise declaration_error(
            cls, name, f"parent stream {stream.parent!r} is not declared before it"
        )
    missing = [p for p in placeholders if p not in parent.model.model_fields]
    if missing:
        raise declaration_error(
            cls, name, f"path placeholder(s) {', '.join(missing)} not on {parent.model.__name__}"
        )
