"""Fault injection for the fake servers: :class:`Faults`, shared by every fake built on
:class:`~limsync.testing.fakeserver.FakeServer`.

Tests make any fake misbehave in the same way: error bursts, throttling, delays, truncated JSON,
dropped connections, and a server that ignores the paging parameters. The server asks
:meth:`Faults._plan` once per request and applies what it returns.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from limsync.testing.fakeserver import Reply, Request

__all__ = ["PAGING_PARAMS", "FaultPlan", "Faults"]

#: Query parameters that usually page rather than filter (see ``Faults.repeat_first_page``).
PAGING_PARAMS = frozenset(
    {"limit", "offset", "l", "o", "page", "page_size", "per_page", "size", "cursor", "page_token"}
)


@dataclass
class Faults:
    """Faults the server injects; change them at any time, from any thread.

    Counters (``error_burst``, ``throttle``, ``malformed_json``, ``drop_connection``) apply to the
    next N requests and count down. ``throttle_every`` answers every M-th request with 429 until
    it is set back to 0. Use :meth:`set` to change several fields atomically.
    """

    error_burst: int = 0
    """The next N requests are answered with ``error_status``."""
    error_status: int = 503
    throttle: int = 0
    """The next N requests are answered 429 with ``Retry-After: <retry_after>``."""
    throttle_every: int = 0
    """When > 0, every M-th request (counted from when it was set) is answered 429."""
    retry_after: int = 1
    delay: float = 0.0
    """Seconds added before every response."""
    malformed_json: int = 0
    """The next N successful JSON bodies are truncated to half their length."""
    drop_connection: int = 0
    """The next N requests get no response at all: the socket is closed."""
    repeat_first_page: bool = False
    """While on, the server ignores the paging parameters of GET requests: a request gets the
    first successful reply sent to the same path with the same other query parameters."""
    paging_params: frozenset[str] = PAGING_PARAMS
    """The query parameters ``repeat_first_page`` ignores."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _seen: int = field(default=0, repr=False, compare=False)
    _first_pages: dict[str, Reply] = field(default_factory=dict, repr=False, compare=False)

    def set(self, **changes: Any) -> None:
        """Change several fields at once, e.g. ``faults.set(error_burst=3, error_status=502)``."""
        names = {f.name for f in fields(self) if not f.name.startswith("_")}
        unknown = set(changes) - names
        if unknown:
            raise TypeError(f"unknown fault field(s): {', '.join(sorted(unknown))}")
        with self._lock:
            for name, value in changes.items():
                setattr(self, name, value)
            if "throttle_every" in changes:
                self._seen = 0
            if "repeat_first_page" in changes:
                self._first_pages.clear()

    def reset(self) -> None:
        """Turn every fault off."""
        self.set(**{f.name: f.default for f in fields(self) if not f.name.startswith("_")})

    def _plan(self) -> FaultPlan:
        """Decide, and consume, the faults for one incoming request."""
        with self._lock:
            if self.drop_connection > 0:
                self.drop_connection -= 1
                return FaultPlan(drop=True)
            plan = FaultPlan(delay=self.delay)
            if self.throttle_every > 0:
                self._seen += 1
            if self.error_burst > 0:
                self.error_burst -= 1
                plan.error_status = self.error_status
            elif self.throttle > 0 or (
                self.throttle_every > 0 and self._seen % self.throttle_every == 0
            ):
                if self.throttle > 0:
                    self.throttle -= 1
                plan.throttle_after = self.retry_after
            return plan

    def _repeat(self, request: Request, reply: Reply) -> Reply:
        """The reply to send under ``repeat_first_page``: the path's first one, once it has one."""
        with self._lock:
            if not self.repeat_first_page or request.method != "GET" or reply.status != 200:
                return reply
            listing = sorted(
                (name, value)
                for name, values in request.query.items()
                if name not in self.paging_params
                for value in values
            )
            return self._first_pages.setdefault(f"{request.path}?{listing}", reply)

    def _take_malformed(self) -> bool:
        with self._lock:
            if self.malformed_json > 0:
                self.malformed_json -= 1
                return True
            return False


@dataclass
class FaultPlan:
    """The faults decided for one request."""

    drop: bool = False
    delay: float = 0.0
    error_status: int | None = None
    throttle_after: int | None = None
