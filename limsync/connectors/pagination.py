"""Paginators: small objects that turn one list endpoint into pages of records.

Each paginator has one method, :meth:`Paginator.pages`, which calls a ``fetch(url, params)``
function (``session.get`` or a connector's authenticated ``get``) until the listing ends and
yields each page as a list of record dicts.

Servers misbehave while being paged: rows are inserted or deleted between pages, page sizes are
capped silently, ``next`` links come back with the wrong scheme. The paginators here therefore
follow what they can verify (offsets they compute themselves, links on the same host), and stop
with :class:`~limsync.errors.PaginationError` when paging does not make progress: the same page
twice in a row, a ``next`` link already followed, or more pages than the record count implies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests

from limsync.connectors.http import raise_for_response, redact_url
from limsync.errors import ConfigError, PaginationError

log = logging.getLogger(__name__)

Record = dict[str, Any]
Page = list[Record]


class Fetch(Protocol):
    """``fetch(url, params=...)`` returns the response of a GET; ``session.get`` is one."""

    def __call__(self, url: str, *, params: dict[str, Any]) -> requests.Response: ...


class Paginator(ABC):
    """Base of the paginators: page size handling and the common parsing helpers."""

    def __init__(self, page_size: int, max_page_size: int | None = None) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, not {page_size}")
        if max_page_size is not None and page_size > max_page_size:
            raise ValueError(f"page_size {page_size} is above max_page_size {max_page_size}")
        self.page_size = page_size
        self.max_page_size = max_page_size

    def page_size_for(self, requested: int | None) -> int:
        """The page size to use: ``requested`` (validated) or the paginator's default."""
        if requested is None:
            return self.page_size
        if requested < 1:
            raise ConfigError(f"page size must be at least 1, not {requested}")
        if self.max_page_size is not None and requested > self.max_page_size:
            raise ConfigError(
                f"page size {requested} is above the maximum {self.max_page_size} of this API"
            )
        return requested

    @abstractmethod
    def pages(
        self,
        fetch: Fetch,
        url: str,
        params: Mapping[str, Any] | None = None,
        *,
        page_size: int | None = None,
    ) -> Iterator[Page]:
        """Yield the pages of the listing at ``url`` with the fixed query ``params``."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


# --- helpers --------------------------------------------------------------------------------------


def _get(fetch: Fetch, url: str, params: dict[str, Any]) -> tuple[requests.Response, Any]:
    response = fetch(url, params=params)
    raise_for_response(response)
    try:
        return response, response.json()
    except ValueError:
        raise PaginationError(
            f"GET {redact_url(response.url or url)}: the response is not JSON"
        ) from None


def field_at(body: Any, path: str) -> Any:
    """The value at a dotted ``path`` of a JSON body (``"data.items"``), or None where absent.

    Paginators read the record list, the total count and the next link through it, so an API
    that nests them (``{"data": {"items": [...], "meta": {"total": 9}}}``) needs no code.
    """
    for part in path.split("."):
        if not isinstance(body, dict):
            return None
        body = body.get(part)
    return body


def _records(body: Any, results_key: str | None, url: str) -> Page:
    items = field_at(body, results_key) if results_key is not None else body
    if not isinstance(items, list):
        where = f"a {results_key!r} list" if results_key is not None else "a JSON array"
        raise PaginationError(f"GET {redact_url(url)}: expected {where} in the response")
    if not all(isinstance(item, dict) for item in items):
        raise PaginationError(f"GET {redact_url(url)}: the page holds records that are not objects")
    return items


def _count(value: Any) -> int | None:
    """A record count from a body field or header, or None when absent or unusable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


class _LoopGuard:
    """Detects paging that does not progress: a repeated page, or too many pages for the count.

    ``min_repeat`` is the smallest page that counts as "the same page twice": with offsets the
    paginator computes itself, one row shifted in by an insert can legitimately repeat a
    one-record page, so offset paginators only flag longer pages.
    """

    def __init__(self, url: str, *, min_repeat: int) -> None:
        self.url = redact_url(url)
        self.min_repeat = min_repeat
        self.last: str | None = None
        self.pages = 0
        self.max_count = 0
        self.min_len: int | None = None

    def see(self, page: Page, count: int | None) -> None:
        self.pages += 1
        fingerprint = hashlib.sha256(
            json.dumps(page, sort_keys=True, default=str).encode()
        ).hexdigest()
        if fingerprint == self.last and len(page) >= self.min_repeat:
            raise PaginationError(
                f"GET {self.url}: the server returned the same page twice in a row "
                f"(page {self.pages}); it seems to ignore the paging parameters"
            )
        self.last = fingerprint
        self.min_len = len(page) if self.min_len is None else min(self.min_len, len(page))
        if count is not None:
            self.max_count = max(self.max_count, count)
        if self.max_count and self.min_len:
            expected = math.ceil(self.max_count / self.min_len)
            if self.pages > expected + 2 + expected // 10:
                raise PaginationError(
                    f"GET {self.url}: {self.pages} pages read but the server reports only "
                    f"{self.max_count} records; paging does not terminate"
                )


# --- offset paging --------------------------------------------------------------------------------


class _OffsetPaginator(Paginator):
    """Limit/offset paging where the client computes the offsets itself."""

    limit_param: str
    offset_param: str
    results_key: str | None

    @abstractmethod
    def _total(self, response: requests.Response, body: Any) -> int | None:
        """The total record count the server reports, if any."""

    def pages(
        self,
        fetch: Fetch,
        url: str,
        params: Mapping[str, Any] | None = None,
        *,
        page_size: int | None = None,
    ) -> Iterator[Page]:
        size = self.page_size_for(page_size)
        guard = _LoopGuard(url, min_repeat=2)
        offset = 0
        while True:
            query = {**(params or {}), self.limit_param: size, self.offset_param: offset}
            response, body = _get(fetch, url, query)
            records = _records(body, self.results_key, url)
            if not records:
                return
            total = self._total(response, body)
            guard.see(records, total)
            yield records
            # Advance by what arrived, not by what was asked: a server that silently caps the
            # page size (Alyx caps at 1000) would otherwise make us skip rows.
            offset += len(records)
            if total is not None and offset >= total:
                return
            if total is None and len(records) < size:
                return


class LimitOffset(_OffsetPaginator):
    """``?limit=&offset=`` with an envelope ``{"count", "next", "previous", "results"}`` (DRF).

    The server's ``next`` URL is ignored on purpose: it is built from the Host header and can
    come back as ``http://`` behind a TLS proxy. Paging stops on an empty page or once the
    offset reaches ``count``.
    """

    def __init__(
        self,
        page_size: int = 100,
        max_page_size: int | None = None,
        limit_param: str = "limit",
        offset_param: str = "offset",
        results_key: str = "results",
        count_key: str = "count",
    ) -> None:
        super().__init__(page_size, max_page_size)
        self.limit_param = limit_param
        self.offset_param = offset_param
        self.results_key = results_key
        self.count_key = count_key

    def _total(self, response: requests.Response, body: Any) -> int | None:
        return _count(field_at(body, self.count_key))


class HeaderTotal(_OffsetPaginator):
    """``?l=&o=`` returning a bare JSON array, the total in a header (PyRAT's ``X-Total-Count``).

    Without the header, a page shorter than asked for ends the listing.
    """

    def __init__(
        self,
        page_size: int = 100,
        max_page_size: int | None = None,
        limit_param: str = "l",
        offset_param: str = "o",
        total_header: str = "X-Total-Count",
        results_key: str | None = None,
    ) -> None:
        super().__init__(page_size, max_page_size)
        self.limit_param = limit_param
        self.offset_param = offset_param
        self.total_header = total_header
        self.results_key = results_key

    def _total(self, response: requests.Response, body: Any) -> int | None:
        return _count(response.headers.get(self.total_header))


# --- page numbers and links -----------------------------------------------------------------------


class PageNumber(Paginator):
    """``?page=N&page_size=M``; records in ``results_key`` (or a bare array when it is None)."""

    def __init__(
        self,
        page_param: str = "page",
        size_param: str = "page_size",
        results_key: str | None = "results",
        *,
        page_size: int = 100,
        max_page_size: int | None = None,
        first_page: int = 1,
        count_key: str = "count",
    ) -> None:
        super().__init__(page_size, max_page_size)
        self.page_param = page_param
        self.size_param = size_param
        self.results_key = results_key
        self.first_page = first_page
        self.count_key = count_key

    def pages(
        self,
        fetch: Fetch,
        url: str,
        params: Mapping[str, Any] | None = None,
        *,
        page_size: int | None = None,
    ) -> Iterator[Page]:
        size = self.page_size_for(page_size)
        # A server that ignores the page number would serve page 1 forever: flag any repeat.
        guard = _LoopGuard(url, min_repeat=1)
        number = self.first_page
        read = 0
        while True:
            query = {**(params or {}), self.page_param: number, self.size_param: size}
            _, body = _get(fetch, url, query)
            records = _records(body, self.results_key, url)
            if not records:
                return
            total = _count(field_at(body, self.count_key))
            guard.see(records, total)
            yield records
            read += len(records)
            if len(records) < size or (total is not None and read >= total):
                return
            number += 1


class NextLink(Paginator):
    """Follow the ``next`` link of each page, but only on the host of the first URL.

    A link to another host is refused (it would receive our credentials); a link to the same
    host with another scheme or port is rewritten to the first URL's, because servers behind a
    TLS proxy often build ``http://`` links. ``size_param``, when given, sets the page size on
    the first request; later pages keep whatever the link says.
    """

    def __init__(
        self,
        results_key: str | None = "results",
        next_key: str = "next",
        *,
        size_param: str | None = None,
        page_size: int = 100,
        max_page_size: int | None = None,
        count_key: str = "count",
    ) -> None:
        super().__init__(page_size, max_page_size)
        self.results_key = results_key
        self.next_key = next_key
        self.size_param = size_param
        self.count_key = count_key

    def _follow(self, base: str, current: str, link: str) -> str:
        target = urlsplit(urljoin(current, link))
        origin = urlsplit(base)
        if (target.hostname or "").lower() != (origin.hostname or "").lower():
            raise PaginationError(
                f"GET {redact_url(current)}: the next link points to another host "
                f"({target.hostname}); refusing to follow it"
            )
        return urlunsplit((origin.scheme, origin.netloc, target.path, target.query, ""))

    def pages(
        self,
        fetch: Fetch,
        url: str,
        params: Mapping[str, Any] | None = None,
        *,
        page_size: int | None = None,
    ) -> Iterator[Page]:
        query = dict(params or {})
        if self.size_param is not None:
            query[self.size_param] = self.page_size_for(page_size)
        guard = _LoopGuard(url, min_repeat=1)
        seen: set[str] = set()
        current = url
        while True:
            response, body = _get(fetch, current, query)
            records = _records(body, self.results_key, current)
            total = _count(field_at(body, self.count_key))
            if records:
                guard.see(records, total)
                yield records
            link = field_at(body, self.next_key)
            if not records or not isinstance(link, str) or not link:
                return
            seen.add(response.url or current)
            nxt = self._follow(url, response.url or current, link)
            if nxt in seen:
                raise PaginationError(
                    f"GET {redact_url(current)}: the next link leads back to a page already "
                    f"read ({redact_url(nxt)})"
                )
            current, query = nxt, {}


class SinglePage(Paginator):
    """An unpaged listing: one GET returns every record (the list is the body, or the body's
    ``results_key`` member)."""

    def __init__(self, results_key: str | None = None) -> None:
        super().__init__(page_size=1)
        self.results_key = results_key

    def page_size_for(self, requested: int | None) -> int:
        """Any page size is accepted: none is sent."""
        return requested or 1

    def pages(
        self,
        fetch: Fetch,
        url: str,
        params: Mapping[str, Any] | None = None,
        *,
        page_size: int | None = None,
    ) -> Iterator[Page]:
        """The one page of the listing (nothing when it is empty)."""
        _, body = _get(fetch, url, dict(params or {}))
        items = _records(body, self.results_key, url)
        if items:
            yield items
