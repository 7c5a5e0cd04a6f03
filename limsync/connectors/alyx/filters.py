"""Checking Alyx query filters against the server's OpenAPI schema before trusting them.

Alyx silently ignores query parameters it does not know: ``/subjects?bogus=1`` returns every
subject. A typo in a filter would therefore turn "the sessions changed since X" into "all
sessions", or, worse, "these 100 subjects" into "the first page of all subjects", which a
delete check would misread. :class:`FilterGuard` validates parameter names, and the field names
inside ``django=<lookup>,<value>`` filters, against the parameters the schema lists for the
endpoint. When the schema cannot be fetched it says so, and the caller must check the results
instead (each use site in the connector does).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote_plus, urlsplit

from limsync.errors import ConfigError, LimsyncError

log = logging.getLogger(__name__)

#: Query parameters that page, not filter.
PAGING = frozenset({"limit", "offset"})

#: Django lookups and transforms that may follow a field name in a ``django=`` filter.
LOOKUPS = frozenset(
    {
        "exact", "iexact", "contains", "icontains", "in", "gt", "gte", "lt", "lte",
        "startswith", "istartswith", "endswith", "iendswith", "range", "isnull", "regex",
        "iregex", "date", "time", "year", "iso_year", "month", "day", "week", "week_day",
        "iso_week_day", "quarter", "hour", "minute", "second",
    }
)  # fmt: skip

#: Parameter types of plain values, which cannot be followed by a related field's name.
_SCALAR_TYPES = frozenset({"integer", "number", "boolean"})
_SCALAR_FORMATS = frozenset({"date", "date-time", "time", "duration"})


def split_django(value: str) -> list[str]:
    """Split a ``django=`` value at commas outside brackets, as the Alyx server does."""
    parts: list[str] = []
    word = ""
    closing = ""
    for char in value:
        if char == "," and not closing:
            parts.append(word)
            word = ""
            continue
        if char == "[":
            closing = "]"
        elif char == "(":
            closing = ")"
        elif char == closing:
            closing = ""
        word += char
    parts.append(word)
    return parts


def pk_in(ids: list[str]) -> str:
    """The ``django=`` value selecting these primary keys (Alyx evaluates the list literal)."""
    return in_list("pk", ids)


def in_list(field: str, values: Sequence[str]) -> str:
    """The ``django=`` value ``<field>__in,['a','b']`` (Alyx evaluates the list literal)."""
    return f"{field}__in,[" + ",".join(f"'{v}'" for v in values) + "]"


#: gunicorn's default ``limit_request_line``: a longer ``GET <target> HTTP/1.1`` line is a 400.
MAX_REQUEST_LINE = 4094

#: Room for ``&limit=1000&offset=<n>`` and the request line around the target.
_LINE_OVERHEAD = len("GET  HTTP/1.1") + len("&limit=1000&offset=10000000")


def pk_batches(ids: list[str], url: str, max_url: int = 6000) -> list[list[str]]:
    """Split ids into ``pk__in`` batches whose request URL stays under ``max_url`` characters
    and whose request line stays within gunicorn's default limit."""
    return in_batches("pk", ids, url, max_url)


def in_batches(field: str, values: list[str], url: str, max_url: int = 6000) -> list[list[str]]:
    """Split values into ``<field>__in`` batches whose request URL stays under ``max_url``
    characters and whose request line stays within gunicorn's default limit."""
    origin = len(url) - len(urlsplit(url).path)  # scheme and host: not in the request line
    max_url = min(max_url, MAX_REQUEST_LINE - len("GET  HTTP/1.1") + origin)
    overhead = len(url) + len("?django=") + _encoded(f"{field}__in,[]") + 40  # limit+offset
    batches: list[list[str]] = []
    batch: list[str] = []
    size = overhead
    for item in values:
        cost = _encoded(f"'{item}',")
        if batch and size + cost > max_url:
            batches.append(batch)
            batch, size = [], overhead
        batch.append(item)
        size += cost
    if batch:
        batches.append(batch)
    return batches


def _encoded(text: str) -> int:
    """Length of ``text`` in a query string as ``requests`` encodes it."""
    return len(quote_plus(text))


def excluding_slices(
    field: str,
    since: datetime,
    held: Sequence[str],
    url: str,
    max_line: int = MAX_REQUEST_LINE,
) -> list[str]:
    """``django=`` values that together select ``field >= since`` minus the values in ``held``.

    One filter excluding every held value could exceed the request line limit, so the window
    is cut into consecutive slices ``[lo, hi)``, each excluding the held values inside it
    (``field__gte,lo,field__lt,hi,~field__in,[...]``; the last slice has no upper bound). The
    slices cover the window exactly, so their union is the one filter's result. ``held`` are
    ISO datetimes (at or after ``since``, distinct) in the form the server compares exactly.
    """
    ordered = sorted(set(held), key=datetime.fromisoformat)
    path = len(urlsplit(url).path) + len("?django=")
    bound = max((_encoded(v) for v in [since.isoformat(), *ordered]), default=0)
    # Every slice may carry both bounds; an upper bound is one of the held values.
    room = max_line - _LINE_OVERHEAD - path
    fixed = _encoded(f"{field}__gte,,{field}__lt,,~{field}__in,[]") + 2 * bound
    if ordered and room - fixed < _encoded(f"'{ordered[0]}',"):
        raise ValueError(f"{url}: no room in a request line for even one excluded value")
    slices: list[str] = []
    lo = since.isoformat()
    chunk: list[str] = []
    size = fixed
    for value in ordered:
        cost = _encoded(f"'{value}',")
        if chunk and size + cost > room:
            slices.append(_slice(field, lo, value, chunk))
            lo, chunk, size = value, [], fixed
        chunk.append(value)
        size += cost
    slices.append(_slice(field, lo, None, chunk))
    return slices


def _slice(field: str, lo: str, hi: str | None, excluded: list[str]) -> str:
    parts = [f"{field}__gte,{lo}"]
    if hi is not None:
        parts.append(f"{field}__lt,{hi}")
    if excluded:
        parts.append(f"~{field}__in,[" + ",".join(f"'{v}'" for v in excluded) + "]")
    return ",".join(parts)


class FilterGuard:
    """Validates filters against the OpenAPI schema, fetched once (lazily) and cached.

    ``load_schema`` returns the parsed schema or raises; a failure is logged once and leaves
    the guard in fallback mode, where :meth:`check` returns False.
    """

    def __init__(self, load_schema: Callable[[], Any]) -> None:
        self._load_schema = load_schema
        self._lock = threading.Lock()
        self._loaded = False
        self._paths: Mapping[str, Any] | None = None

    def _schema_paths(self) -> Mapping[str, Any] | None:
        with self._lock:
            if not self._loaded:
                self._loaded = True
                try:
                    schema = self._load_schema()
                    paths = schema.get("paths") if isinstance(schema, dict) else None
                    if not isinstance(paths, dict):
                        raise ValueError("no 'paths' object in the OpenAPI schema")
                    self._paths = paths
                except (LimsyncError, ValueError) as exc:
                    log.warning(
                        "cannot use the server's OpenAPI schema (%s); filters will be checked "
                        "against the results instead",
                        exc,
                    )
            return self._paths

    @property
    def available(self) -> bool:
        """Whether the schema could be fetched (fetches it if not done yet)."""
        return self._schema_paths() is not None

    def parameters(self, endpoint: str) -> dict[str, dict[str, Any]] | None:
        """Query parameters the schema lists for ``GET endpoint``; None without a schema.

        ``endpoint`` is relative to the base URL (``"sessions"``); a schema served under a
        path prefix (``/api/sessions``) matches too.
        """
        paths = self._schema_paths()
        if paths is None:
            return None
        wanted = "/" + endpoint.strip("/")
        item = paths.get(wanted)
        if item is None:
            matches = [v for k, v in paths.items() if k.rstrip("/").endswith(wanted)]
            item = matches[0] if len(matches) == 1 else None
        if not isinstance(item, dict) or not isinstance(item.get("get"), dict):
            raise ConfigError(f"the server's OpenAPI schema has no GET {wanted}")
        found: dict[str, dict[str, Any]] = {}
        for param in item["get"].get("parameters", []):
            if isinstance(param, dict) and param.get("in") == "query" and "name" in param:
                schema = param.get("schema")
                found[str(param["name"])] = schema if isinstance(schema, dict) else {}
        return found

    def check(self, endpoint: str, params: Mapping[str, Any]) -> bool:
        """True when every filter in ``params`` is known to the schema for ``endpoint``.

        False when the schema is unavailable (the caller must verify the results). Raises
        ConfigError naming the filter and endpoint when the schema does not know a filter.
        """
        known = self.parameters(endpoint)
        if known is None:
            return False
        for name, value in params.items():
            if name in PAGING:
                continue
            if name not in known:
                raise ConfigError(
                    f"filter {name!r} is not a query parameter of /{endpoint} on this server "
                    f"(it would be silently ignored); known: {', '.join(sorted(known))}"
                )
            if name == "django":
                self._check_django(endpoint, str(value), known)
        return True

    def _check_django(self, endpoint: str, value: str, known: dict[str, dict[str, Any]]) -> None:
        parts = split_django(value)
        if len(parts) % 2:
            raise ConfigError(f"filter django={value[:80]!r} on /{endpoint}: expected pairs")
        fields = {k: v for k, v in known.items() if k not in PAGING and k != "django"}
        for lookup in parts[0::2]:
            segments = lookup.lstrip("~").split("__")
            field = segments[0]
            if field != "pk" and field not in fields:
                raise ConfigError(
                    f"filter django={lookup} on /{endpoint}: {field!r} is not a field of this "
                    f"endpoint; known: pk, {', '.join(sorted(fields))}"
                )
            schema = fields.get(field, {})
            scalar = field == "pk" or (
                schema.get("type") in _SCALAR_TYPES or schema.get("format") in _SCALAR_FORMATS
            )
            for segment in segments[1:]:
                if segment in LOOKUPS:
                    continue
                if scalar:
                    raise ConfigError(
                        f"filter django={lookup} on /{endpoint}: {segment!r} is not a lookup "
                        f"of the field {field!r}"
                    )
                # A relation: the related model's fields are not in this endpoint's schema, so
                # the rest of the path cannot be verified here.
                break
