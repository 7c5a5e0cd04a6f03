"""A fake-server toolkit for connector authors: a LIMS API from a few lines.

:class:`RecordServer` is a :class:`~limsync.testing.fakeserver.FakeServer` (so it has the same
request log, counters and :class:`~limsync.testing.fakeserver.Faults` as the built-in fake Alyx)
that serves lists of records, or pages recorded from a real server, at the paths you name::

    server = RecordServer(token="s3cret")  # requests need "Authorization: Bearer s3cret"
    server.serve(
        "samples",
        [{"id": i, "name": f"S{i}", "modified": "2026-01-01T00:00:00"} for i in range(1, 8)],
        paging=OffsetPaging(),  # ?limit=&offset= with a {"count", "results"} envelope
        since=("modified_since", "modified"),  # ?modified_since=<iso> keeps modified >= it
    )
    with server:
        ...  # server.url is the base URL; server.faults.set(error_burst=2) makes it fail

Four paging styles match the paginators of :mod:`limsync.connectors`: :class:`OffsetPaging`
(``LimitOffset``), :class:`HeaderTotalPaging` (``HeaderTotal``), :class:`PageNumberPaging`
(``PageNumber``) and :class:`NextLinkPaging` (``NextLink``). Tests change the data while the
server runs with :meth:`RecordServer.add`, :meth:`RecordServer.update` and
:meth:`RecordServer.remove`.
"""

from __future__ import annotations

import copy
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from limsync.testing.fakeserver import FakeServer, Reply, Request

__all__ = [
    "HeaderTotalPaging",
    "NextLinkPaging",
    "OffsetPaging",
    "PageNumberPaging",
    "Paging",
    "RecordServer",
    "make_records",
]

Record = dict[str, Any]


def make_records(n: int, **fields: Any) -> list[Record]:
    """``n`` generated records: each field is a value, a ``str.format`` template of ``i`` (the
    record's 0-based position) or a function of ``i``.

    ``make_records(3, id=lambda i: i + 1, name="S{i}", lab="main")`` gives
    ``[{"id": 1, "name": "S0", "lab": "main"}, ...]``.
    """
    out: list[Record] = []
    for i in range(n):
        record: Record = {}
        for name, spec in fields.items():
            if callable(spec):
                record[name] = spec(i)
            elif isinstance(spec, str):
                record[name] = spec.format(i=i)
            else:
                record[name] = copy.deepcopy(spec)
        out.append(record)
    return out


def _bad_request(detail: str) -> Reply:
    return Reply(400, {}, {"detail": detail})


def _size(request: Request, param: str, default: int, maximum: int) -> int | Reply:
    raw = request.param(param)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) < 1:
        return _bad_request(f"{param} must be a positive integer")
    return min(int(raw), maximum)  # like most APIs, cap silently


class Paging(ABC):
    """How a collection is paged: turns a request and the matching records into a reply."""

    @abstractmethod
    def reply(self, request: Request, records: Sequence[Record]) -> Reply:
        """The reply with the page of ``records`` that ``request`` asks for."""


@dataclass(frozen=True)
class OffsetPaging(Paging):
    """``?limit=&offset=`` with a ``{"count", "next", "previous", "results"}`` envelope (DRF)."""

    limit_param: str = "limit"
    offset_param: str = "offset"
    default_size: int = 100
    max_size: int = 1000

    def reply(self, request: Request, records: Sequence[Record]) -> Reply:
        """One page; ``next`` is an absolute link, as DRF builds it."""
        size = _size(request, self.limit_param, self.default_size, self.max_size)
        if isinstance(size, Reply):
            return size
        raw = request.param(self.offset_param) or "0"
        if not raw.isdigit():
            return _bad_request(f"{self.offset_param} must be a non-negative integer")
        offset = int(raw)
        page = list(records[offset : offset + size])
        base = request.absolute_url.split("?", 1)[0]
        params = {k: v[-1] for k, v in request.query.items()}
        nxt = None
        if offset + size < len(records):
            nxt = base + "?" + urlencode({**params, self.offset_param: offset + size})
        body = {"count": len(records), "next": nxt, "previous": None, "results": page}
        return Reply(200, {}, body)


@dataclass(frozen=True)
class HeaderTotalPaging(Paging):
    """``?l=&o=`` returning a bare JSON array, the total in ``X-Total-Count`` (PyRAT's style)."""

    limit_param: str = "l"
    offset_param: str = "o"
    total_header: str = "X-Total-Count"
    default_size: int = 100
    max_size: int = 1000

    def reply(self, request: Request, records: Sequence[Record]) -> Reply:
        """One page as an array."""
        size = _size(request, self.limit_param, self.default_size, self.max_size)
        if isinstance(size, Reply):
            return size
        raw = request.param(self.offset_param) or "0"
        if not raw.isdigit():
            return _bad_request(f"{self.offset_param} must be a non-negative integer")
        offset = int(raw)
        page = list(records[offset : offset + size])
        return Reply(200, {self.total_header: str(len(records))}, page)


@dataclass(frozen=True)
class PageNumberPaging(Paging):
    """``?page=N&page_size=M`` with ``{"count", "results"}``; a page past the end is a 404."""

    page_param: str = "page"
    size_param: str = "page_size"
    first_page: int = 1
    default_size: int = 100
    max_size: int = 1000

    def reply(self, request: Request, records: Sequence[Record]) -> Reply:
        """One page, or 404 "Invalid page." past the last one (the first page always exists)."""
        size = _size(request, self.size_param, self.default_size, self.max_size)
        if isinstance(size, Reply):
            return size
        raw = request.param(self.page_param) or str(self.first_page)
        if not raw.isdigit() or int(raw) < self.first_page:
            return Reply(404, {}, {"detail": "Invalid page."})
        start = (int(raw) - self.first_page) * size
        if start and start >= len(records):
            return Reply(404, {}, {"detail": "Invalid page."})
        return Reply(
            200, {}, {"count": len(records), "results": list(records[start : start + size])}
        )


@dataclass(frozen=True)
class NextLinkPaging(Paging):
    """An opaque ``?cursor=`` token in each page's absolute ``next`` link; ``size_param`` sets
    the page size of the first request."""

    size_param: str = "page_size"
    token_param: str = "cursor"
    default_size: int = 100
    max_size: int = 1000

    def reply(self, request: Request, records: Sequence[Record]) -> Reply:
        """One page with ``next`` (None on the last page)."""
        size = _size(request, self.size_param, self.default_size, self.max_size)
        if isinstance(size, Reply):
            return size
        token = request.param(self.token_param)
        try:
            start = int(token.removeprefix("p"), 16) if token else 0
        except ValueError:
            return _bad_request("invalid cursor")
        page = list(records[start : start + size])
        nxt = None
        if start + size < len(records):
            base = request.absolute_url.split("?", 1)[0]
            params = {k: v[-1] for k, v in request.query.items()}
            params.update({self.token_param: f"p{start + size:x}", self.size_param: str(size)})
            nxt = base + "?" + urlencode(params)
        return Reply(200, {}, {"count": len(records), "next": nxt, "results": page})


def as_datetime(value: Any) -> datetime | None:
    """``value`` as a datetime when it is one or ISO text for one, else None."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def _at_least(value: Any, bound: str) -> bool:
    """``value >= bound``: as datetimes when both are ISO datetimes, else as numbers or text."""
    left, right = as_datetime(value), as_datetime(bound)
    if left is not None and right is not None and (left.tzinfo is None) == (right.tzinfo is None):
        return left >= right
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return value >= float(bound)
        except ValueError:
            return False
    return str(value) >= bound


@dataclass
class _Collection:
    path: str
    records: list[Record]
    paging: Paging
    key: tuple[str, ...]
    since: tuple[str, str] | None
    filters: Mapping[str, str]


class RecordServer(FakeServer):
    """A fake JSON API serving record lists and recorded pages (see the module docstring).

    ``token``: when set, every request needs header ``auth_header`` equal to
    ``f"{auth_scheme} {token}"`` (just the token when ``auth_scheme`` is empty), else 401.
    """

    server_version = "limsync-recordserver"

    def __init__(
        self,
        *,
        token: str | None = None,
        auth_header: str = "Authorization",
        auth_scheme: str = "Bearer",
        base_path: str = "",
    ) -> None:
        super().__init__(base_path=base_path)
        self.token = token
        self.auth_header = auth_header
        self.auth_scheme = auth_scheme
        self._collections: dict[str, _Collection] = {}
        self._data_lock = threading.RLock()

    # --- declaring what is served ----------------------------------------------------------------

    def serve(
        self,
        path: str,
        records: Sequence[Record],
        *,
        paging: Paging | None = None,
        key: str | Sequence[str] = "id",
        since: tuple[str, str] | None = None,
        filters: Mapping[str, str] | None = None,
        detail: bool = False,
    ) -> None:
        """Serve ``records`` at ``GET /{path}``, paged by ``paging`` (default: OffsetPaging).

        ``path`` may hold ``{placeholders}`` (``"projects/{project}/samples"``): a request then
        lists the records whose field of that name equals the path segment. ``key`` names the
        field(s) that identify a record (for :meth:`update`, :meth:`remove` and ``detail``).
        ``since = (param, field)`` keeps the records whose ``field >= ?param=``; ``filters``
        maps more query parameters to fields that must equal them. ``detail`` also serves
        ``GET /{path}/{key}`` (one record or 404), for single-key collections.
        """
        path = path.strip("/")
        keys = (key,) if isinstance(key, str) else tuple(key)
        coll = _Collection(
            path, [dict(r) for r in records], paging or OffsetPaging(), keys, since, filters or {}
        )
        with self._data_lock:
            self._collections[path] = coll
        self.route("GET", f"/{path}", lambda request, **params: self._list(coll, request, params))
        if detail:
            if len(keys) != 1:
                raise ValueError("detail routes need a single-field key")
            self.route(
                "GET",
                f"/{path}/{{_record_key}}",
                lambda request, _record_key, **params: self._detail(coll, request, _record_key),
            )

    def serve_pages(
        self,
        path: str,
        pages: Sequence[Any],
        *,
        page_param: str = "page",
        first_page: int = 1,
        headers: Sequence[Mapping[str, str]] | None = None,
    ) -> None:
        """Serve recorded response bodies at ``GET /{path}``: ``?{page_param}=N`` gets page N.

        ``pages`` are the bodies as captured (any JSON value); ``headers``, one mapping per
        page, are sent with them. A page number out of range answers 404.
        """
        path = path.strip("/")
        bodies = [copy.deepcopy(p) for p in pages]
        extra = list(headers or [{} for _ in bodies])

        def handler(request: Request, **params: str) -> Reply:
            if (denied := self._denied(request)) is not None:
                return denied
            raw = request.param(page_param) or str(first_page)
            index = int(raw) - first_page if raw.lstrip("-").isdigit() else -1
            if not 0 <= index < len(bodies):
                return Reply(404, {}, {"detail": "Invalid page."})
            return Reply(200, dict(extra[index]), bodies[index])

        self.route("GET", f"/{path}", handler)

    # --- changing the data while serving ---------------------------------------------------------

    def records(self, path: str) -> list[Record]:
        """A copy of the records served at ``path``."""
        with self._data_lock:
            return [dict(r) for r in self._collection(path).records]

    def add(self, path: str, record: Record) -> None:
        """Append a record to a collection."""
        with self._data_lock:
            self._collection(path).records.append(dict(record))

    def update(self, path: str, key: Any, **changes: Any) -> Record:
        """Change fields of the record with ``key`` (a value, or a tuple for composite keys)."""
        with self._data_lock:
            coll = self._collection(path)
            record = coll.records[self._index(coll, key)]
            record.update(changes)
            return dict(record)

    def remove(self, path: str, key: Any) -> Record:
        """Delete the record with ``key``; returns it."""
        with self._data_lock:
            coll = self._collection(path)
            return coll.records.pop(self._index(coll, key))

    def key_of(self, path: str, record: Mapping[str, Any]) -> Any:
        """The key of a record of a collection: a value, or a tuple for composite keys."""
        keys = self._collection(path).key
        return record[keys[0]] if len(keys) == 1 else tuple(record[k] for k in keys)

    def _collection(self, path: str) -> _Collection:
        try:
            return self._collections[path.strip("/")]
        except KeyError:
            raise KeyError(f"no collection served at {path!r}") from None

    def _index(self, coll: _Collection, key: Any) -> int:
        wanted = tuple(key) if isinstance(key, tuple) else (key,)
        for i, record in enumerate(coll.records):
            if tuple(record.get(k) for k in coll.key) == wanted:
                return i
        raise KeyError(f"{coll.path}: no record with key {key!r}")

    # --- request handling ------------------------------------------------------------------------

    def _denied(self, request: Request) -> Reply | None:
        if self.token is None:
            return None
        expected = f"{self.auth_scheme} {self.token}" if self.auth_scheme else self.token
        if request.header(self.auth_header) != expected:
            return Reply(401, {}, {"detail": "Authentication credentials were not provided."})
        return None

    def _matching(
        self, coll: _Collection, request: Request, params: Mapping[str, str]
    ) -> list[Record]:
        with self._data_lock:
            rows = [dict(r) for r in coll.records]
        for name, value in params.items():
            rows = [r for r in rows if str(r.get(name)) == value]
        for param, fieldname in coll.filters.items():
            wanted = request.param(param)
            if wanted is not None:
                rows = [r for r in rows if str(r.get(fieldname)) == wanted]
        if coll.since is not None:
            bound = request.param(coll.since[0])
            if bound is not None:
                rows = [r for r in rows if _at_least(r.get(coll.since[1]), bound)]
        return rows

    def _list(self, coll: _Collection, request: Request, params: Mapping[str, str]) -> Reply:
        if (denied := self._denied(request)) is not None:
            return denied
        return coll.paging.reply(request, self._matching(coll, request, params))

    def _detail(self, coll: _Collection, request: Request, key: str) -> Reply:
        if (denied := self._denied(request)) is not None:
            return denied
        with self._data_lock:
            for record in coll.records:
                if str(record.get(coll.key[0])) == key:
                    return Reply(200, {}, dict(record))
        return Reply(404, {}, {"detail": "Not found."})
