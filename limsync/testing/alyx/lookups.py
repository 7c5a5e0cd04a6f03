"""``?django=`` ORM lookups for the fake Alyx, and the errors a query can end in.

``?django=<lookup>,<value>[,...]`` applies Django ORM lookups following relations
(``subject__lab__name``), with a ``~`` prefix to exclude. Values are coerced the way Alyx does
(``None``, ``true``/``false``, numbers) and bracketed lists are read with
:func:`ast.literal_eval`, never ``eval``. An unknown field is a 500 listing the valid ones, as
Django's ``FieldError`` is on the real server.
"""

from __future__ import annotations

import ast
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from limsync.testing.alyx.models import (
    SCHEMA,
    SUBJECT_CHILDREN,
    canon_date,
    canon_datetime,
    field_choices,
    unmodelled_field,
)
from limsync.testing.alyx.store import Hint

if TYPE_CHECKING:
    from limsync.testing.alyx.store import Store

__all__ = [
    "Cond",
    "QueryError",
    "Test",
    "cannot_resolve",
    "compile_lookup",
    "convert_value",
    "invalid_value",
    "parse_django",
    "server_error",
]

Test = Callable[[Any], bool]
Cond = tuple[Test, Hint | None]

_OPS = {
    "exact", "iexact", "contains", "icontains", "in", "gt", "gte", "lt", "lte",
    "startswith", "istartswith", "endswith", "iendswith", "isnull", "range",
}  # fmt: skip
_TRANSFORMS = {"date": ("datetime",), "year": ("date", "datetime")}
_DJANGO_FIELD = {
    "str": "CharField",
    "int": "IntegerField",
    "float": "FloatField",
    "bool": "BooleanField",
    "date": "DateField",
    "datetime": "DateTimeField",
    "uuid": "UUIDField",
    "json": "JSONField",
}


class QueryError(Exception):
    """A request the server answers with an error: ``status`` and the DRF-style ``body``."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("detail", body))
        self.status = status
        self.body = body


def server_error(detail: str) -> QueryError:
    """An uncaught exception on the real server: 500 with ``str(exc)`` as the detail."""
    return QueryError(500, {"status_code": 500, "detail": detail})


def invalid_value(name: str, message: str) -> QueryError:
    """A django-filter form error: 400 with the message under the parameter's name."""
    return QueryError(400, {name: [message], "status_code": 400})


def cannot_resolve(kind: str, name: str) -> QueryError:
    """Django's ``FieldError`` for an unknown field name, listing the valid ones."""
    choices = ", ".join(field_choices(kind))
    return server_error(f"Cannot resolve keyword '{name}' into field. Choices are: {choices}")


# --- ?django= parsing -----------------------------------------------------------------------------


def _split_outside_brackets(value: str) -> list[str]:
    """Split on commas that are not inside ``[...]`` or ``(...)``."""
    words, word, closing = [], "", ""
    for char in value:
        if char == "," and not closing:
            words.append(word)
            word = ""
            continue
        if not closing and char in "[(":
            closing = "]" if char == "[" else ")"
        elif char == closing:
            closing = ""
        word += char
    words.append(word)
    return words


def _coerce(text: str) -> Any:
    if text == "None":
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if text.replace(".", "", 1).isdigit():
        return float(text)
    if text.startswith(("(", "[")) and text.endswith((")", "]")):
        try:
            return ast.literal_eval(text)  # the real server eval()s this; a fake must not
        except (ValueError, SyntaxError) as exc:
            raise server_error(str(exc)) from None
    return text


def parse_django(raw: str) -> list[tuple[str, Any]]:
    """``"pk__in,['a','b'],~lab__name,x"`` -> ``[("pk__in", ["a", "b"]), ("~lab__name", "x")]``."""
    words = _split_outside_brackets(raw)
    if len(words) % 2:
        raise server_error("list index out of range")
    pairs: list[tuple[str, Any]] = []
    for lookup, text in zip(words[::2], words[1::2], strict=True):
        if any(lookup == seen for seen, _ in pairs):
            raise server_error(f'Duplicated fields in "{raw}"')
        pairs.append((lookup, _coerce(text)))
    return pairs


# --- lookups --------------------------------------------------------------------------------------


def convert_value(ftype: str, value: Any, name: str) -> Any:
    """A lookup value converted the way the Django field would, or a 500 like Django's."""
    if value is None or (ftype in ("json", "str") and isinstance(value, str)):
        return value
    text = str(value)
    try:
        if ftype == "str":
            return text
        if ftype in ("int", "float"):
            return float(value)
        if ftype == "bool":
            if isinstance(value, bool | float | int) and value in (0, 1):
                return bool(value)
            if text in ("t", "True", "1", "f", "False", "0"):
                return text in ("t", "True", "1")
            raise server_error(f"['“{text}” value must be either True or False.']")
        if ftype == "date":
            return canon_date(text)
        if ftype == "datetime":
            return canon_datetime(text)
        if ftype == "uuid":
            return str(uuid.UUID(text))
    except (ValueError, TypeError):
        if ftype in ("int", "float"):
            raise server_error(f"Field '{name}' expected a number but got {value!r}.") from None
        message = {
            "date": "value has an invalid date format. It must be in YYYY-MM-DD format.",
            "datetime": "value has an invalid format. It must be in "
            "YYYY-MM-DD HH:MM[:ss[.uuuuuu]][TZ] format.",
            "uuid": "is not a valid UUID.",
        }[ftype]
        raise server_error(f"['“{text}” {message}']") from None
    return value


def _resolve(
    colony: Store, kind: str, parts: list[str]
) -> tuple[Callable[[Any], list[Any]], str, list[str], list[str]]:
    """Walk a lookup path: the value getter, the terminal type, the remaining parts (transforms
    and operator) and the field names walked (for index hints)."""
    follows: list[tuple[str, Any]] = []
    walked: list[str] = []
    current = kind
    for i, part in enumerate(parts):
        name = "id" if part == "pk" else part
        spec = SCHEMA[current].get(name)
        if spec is None:
            if unmodelled_field(current, name):
                # a real column the fake does not keep: it never holds a value
                op = [p for p in parts[i + 1 :] if p in _OPS][-1:]
                return (lambda record: []), "str", op, [*walked, name]
            raise cannot_resolve(current, name)
        walked.append(name)
        rest = parts[i + 1 :]
        if spec.type in ("fk", "m2m", "reverse"):
            following = rest and (rest[0] in ("pk", *SCHEMA[spec.target]))
            if following or (rest and unmodelled_field(spec.target, rest[0])):
                follows.append((name, spec))
                current = spec.target
                continue
            if rest and rest[0] not in _OPS:
                raise server_error(f"Related Field got invalid lookup: {rest[0]}")
            return _getter(colony, follows, name, spec.type, spec), "uuid", rest, walked
        return _getter(colony, follows, name, "attr", spec), spec.type, rest, walked
    raise cannot_resolve(kind, "")


def _getter(
    colony: Store, follows: list[tuple[str, Any]], name: str, how: str, spec: Any
) -> Callable[[Any], list[Any]]:
    """Values of the path's last field, for one record, through the relations followed."""

    def last(record: Any) -> list[Any]:
        if how in ("attr", "fk"):
            return [getattr(record, name, None)]
        if how == "m2m":
            return list(getattr(record, name))
        return [child.id for child in colony.reverse(spec.target, spec.attr, record.id)]

    if not follows:
        if how == "attr":
            return lambda record: [getattr(record, name, None)]
        return last

    def walk(record: Any) -> list[Any]:
        records = [record]
        for field_name, field_spec in follows:
            records = [r for rec in records for r in colony.related(field_spec, rec, field_name)]
        return [value for rec in records for value in last(rec)]

    return walk


def _predicate(op: str, ftype: str, value: Any, name: str) -> Callable[[list[Any]], bool]:
    """A test on a field's values (any value may match: relations can be multi-valued)."""
    if op == "isnull" or (op == "exact" and value is None):
        wanted = True if op == "exact" else bool(value)
        return lambda values: all(v is None for v in values) is wanted
    if op in ("in", "range"):
        if isinstance(value, str):
            items = list(value)  # Django iterates a string given to __in
        elif isinstance(value, Iterable):
            items = list(value)
        else:
            raise server_error(f"'{type(value).__name__}' object is not iterable")
        converted = [convert_value(ftype, item, name) for item in items]
        if op == "in":
            allowed = set(converted)
            return lambda values: any(v in allowed for v in values if v is not None)
        if len(converted) != 2:
            raise server_error(f"expected 2 values for a range, got {len(converted)}")
        low, high = converted
        return lambda values: any(low <= v <= high for v in values if v is not None)
    target = convert_value(ftype, value, name)
    if op in ("iexact", "contains", "icontains", "startswith", "istartswith", "endswith",
              "iendswith"):  # fmt: skip
        fold = op.startswith("i")
        needle = str(target).lower() if fold else str(target)
        check: Callable[[str], bool] = {
            "exact": lambda s: s == needle,
            "contains": lambda s: needle in s,
            "startswith": lambda s: s.startswith(needle),
            "endswith": lambda s: s.endswith(needle),
        }[op[1:] if fold else op]
        if fold:
            return lambda values: any(check(str(v).lower()) for v in values if v is not None)
        return lambda values: any(check(str(v)) for v in values if v is not None)
    compare: Callable[[Any], bool] = {
        "exact": lambda v: v == target,
        "gt": lambda v: v > target,
        "gte": lambda v: v >= target,
        "lt": lambda v: v < target,
        "lte": lambda v: v <= target,
    }[op]
    return lambda values: any(compare(v) for v in values if v is not None)


def compile_lookup(colony: Store, kind: str, lookup: str, value: Any) -> Cond:
    """One ORM lookup (``subject__lab__name__iexact``, ``~pk__in``...) as a record test."""
    negate = lookup.startswith("~")
    parts = lookup.removeprefix("~").split("__")
    getter, ftype, rest, walked = _resolve(colony, kind, parts)
    field_name = walked[-1]
    if rest and rest[0] in _TRANSFORMS:
        transform = rest.pop(0)
        if ftype not in _TRANSFORMS[transform]:
            raise server_error(
                f"Unsupported lookup '{transform}' for {_DJANGO_FIELD[ftype]} or join on the "
                "field not permitted."
            )
        inner = getter
        if transform == "date":
            getter, ftype = (lambda r: [v[:10] if v else v for v in inner(r)]), "date"
        else:
            getter, ftype = (lambda r: [int(v[:4]) if v else v for v in inner(r)]), "int"
    op = rest[0] if rest else "exact"
    if op not in _OPS or len(rest) > 1:
        raise server_error(
            f"Unsupported lookup '{'__'.join(rest)}' for {_DJANGO_FIELD[ftype]} or join on the "
            "field not permitted."
        )
    matches = _predicate(op, ftype, value, field_name)
    if negate:
        return (lambda record: not matches(getter(record))), None
    return (lambda record: matches(getter(record))), _hint(kind, walked, op, ftype, value)


def _hint(kind: str, walked: list[str], op: str, ftype: str, value: Any) -> Hint | None:
    """An index shortcut for lookups by id, by subject, or by subject nickname."""
    if op not in ("exact", "iexact", "in") or value is None:
        return None
    raw = value if op == "in" and not isinstance(value, str) else [value]
    try:
        values = frozenset(str(convert_value(ftype, v, walked[-1])) for v in raw)
    except QueryError:
        return None
    if walked == ["id"] and op != "iexact":
        return Hint("id", values)
    if kind in SUBJECT_CHILDREN and walked in (["subject"], ["subject", "id"]):
        return Hint("subject", values) if op != "iexact" else None
    nickname_path = ["nickname"] if kind == "subject" else ["subject", "nickname"]
    if walked == nickname_path and op in ("exact", "iexact"):
        return Hint("nickname", frozenset(v.lower() for v in values))
    return None
