"""Reading Alyx sessions: summaries listed, details fetched only where needed.

The session list is an 8-field summary without ``auto_datetime``; the detail has the data and
``auto_datetime``, the only change timestamp. :class:`SessionReader` decides which details to
fetch (see :meth:`SessionReader.read`), and leaves out sessions of the lookback window whose
``auto_datetime`` the engine already holds (see :meth:`SessionReader._changed_listing`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import quote

from limsync.connectors import Key, Page, ReadContext, Record, Stream
from limsync.connectors.alyx.filters import excluding_slices, in_batches, in_list
from limsync.errors import ConfigError, HTTPStatusError, LimsyncError, SourceError

if TYPE_CHECKING:
    from limsync.connectors.alyx.connector import AlyxConnector

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 1000  # the server's max_limit since Alyx 3.6.0


class SessionReader:
    """One read of the sessions stream through an :class:`AlyxConnector`."""

    def __init__(self, conn: AlyxConnector) -> None:
        self.conn = conn

    def read(self, ctx: ReadContext) -> Iterator[Page]:
        """Pages of session details (summaries when ``session_details`` is off).

        * Incremental with a cursor: only the sessions listed by the changed-since query
          (``?django=auto_datetime__gte,<cursor - lookback>``, less the sessions whose
          ``auto_datetime`` is held), each fetched in detail.
        * Full scan: first the changed-since query, then the server's count of sessions (one
          request). When that count is the ledger's present sessions plus the new ones the
          query found, nothing was deleted and nothing new was missed: only the query's
          sessions are fetched, and ``ctx.seen_all`` tells the engine the others are still
          there (see :meth:`_nothing_missed`). Otherwise, the whole list, with details fetched
          only for sessions the ledger does not know (``ctx.known``) or that the query
          returned; the others are reported through ``ctx.seen`` so the engine counts them as
          present. Without ``ctx.seen``, or without a cursor, every session is fetched in
          detail.
        * Sessions the changed query returned but the list paging missed (rows shift while
          paging) are fetched at the end.
        * Last, the details just read are checked to be current (:meth:`_settle`).
        """
        since = self.conn.since("sessions", ctx)
        decl = self.conn.stream("sessions")
        yielded: dict[Key, tuple[str, str | None]] = {}  # key -> (id, auto_datetime)
        with ThreadPoolExecutor(self.conn.settings.detail_workers, "alyx-session") as pool:
            if not ctx.full and since is not None:
                pages = self._changed_sessions(since, ctx, pool)
            else:
                pages = self._all_sessions(ctx, since, pool)
            for page in pages:
                for record in page:
                    key = self.conn._key(decl, record)
                    if key is not None and "auto_datetime" in record:
                        yielded[key] = (
                            str(record["id"]),
                            self.conn.cursor_value("sessions", record),
                        )
                yield page
            if yielded and ctx.unhold is not None:
                self._settle(yielded, ctx.unhold, pool)

    def _changed_query(self, since: datetime) -> dict[str, str]:
        params = {"django": f"auto_datetime__gte,{since.isoformat()}"}
        self.conn.filters.check("sessions", params)
        return params

    def _changed_listing(self, since: datetime, ctx: ReadContext) -> Iterator[Page]:
        """Summaries of the sessions changed since ``since``, less those known to be unchanged.

        The list has no ``auto_datetime``, so a session of the lookback window cannot be told
        unchanged from its summary. The engine holds the ``auto_datetime`` of every session
        detail it stored (``ctx.versions``); the query leaves out sessions whose
        ``auto_datetime`` is one of those (``~auto_datetime__in,[...]``, in time slices that
        keep each request line under gunicorn's limit). A session changed since we stored it
        has a new ``auto_datetime`` (``auto_now``), whenever its transaction committed, so it
        is listed. Without held versions, a schema to check the filter against, or when the
        server refuses the filter, the plain query lists the whole window (details for all).
        """
        queries = self._excluding_queries(since, ctx)
        if queries is None:
            yield from self.conn.list_pages("sessions", params=self._changed_query(since))
            return
        try:
            # Read every slice before yielding: a refusal midway falls back cleanly.
            pages = [p for q in queries for p in self.conn.list_pages("sessions", params=q)]
        except HTTPStatusError as exc:
            if exc.status not in (400, 414, 500):
                raise
            log.warning(
                "Alyx refused the changed-sessions filter that leaves out known versions "
                "(HTTP %s); listing every session of the window instead",
                exc.status,
            )
            pages = list(self.conn.list_pages("sessions", params=self._changed_query(since)))
        yield from pages

    def _excluding_queries(self, since: datetime, ctx: ReadContext) -> list[dict[str, str]] | None:
        """The changed query in slices that exclude held versions, or None to use the plain one."""
        if ctx.versions is None or not self.conn.settings.session_details:
            return None
        # Versions compare as text in the database: two days before the window's date is a
        # lower bound whatever the stamps' offsets; the exact bound is applied here.
        lower = (since - timedelta(days=2)).date().isoformat()
        held: list[str] = []
        for value in ctx.versions(lower):
            try:
                stamp = datetime.fromisoformat(value)
            except ValueError:
                continue  # not excluded: such a session is fetched, which is always safe
            if (stamp.tzinfo is None) == (since.tzinfo is None) and stamp >= since:
                held.append(value)
        if not held:
            return None
        queries = [
            {"django": value}
            for value in excluding_slices("auto_datetime", since, held, self.conn.url("sessions"))
        ]
        if not all(self.conn.filters.check("sessions", q) for q in queries):
            return None  # no schema to check the filter against: list the whole window
        return queries

    def _changed_sessions(
        self, since: datetime, ctx: ReadContext, pool: ThreadPoolExecutor
    ) -> Iterator[Page]:
        decl = self.conn.stream("sessions")
        done: set[Key] = set()
        for page in self._changed_listing(since, ctx):
            if not self.conn.settings.session_details:
                yield page
                continue
            fresh, unkeyed = self._split_new(decl, page, done)
            details = self._details([s for _, s in fresh], pool)
            self._verify_changed(details, since)
            if details or unkeyed:
                yield unkeyed + details

    def _all_sessions(
        self, ctx: ReadContext, since: datetime | None, pool: ThreadPoolExecutor
    ) -> Iterator[Page]:
        decl = self.conn.stream("sessions")
        changed: dict[Key, Record] | None = None
        if since is not None and self.conn.settings.session_details and ctx.seen is not None:
            changed = {}
            for page in self._changed_listing(since, ctx):
                for summary in page:
                    key = self.conn._key(decl, summary)
                    if key is not None:
                        changed[key] = summary
        if since is not None and changed is not None and self._nothing_missed(changed, ctx):
            details = self._details(list(changed.values()), pool)
            self._verify_changed(details, since)
            if details:
                yield details
            assert ctx.seen_all is not None  # checked by _nothing_missed
            ctx.seen_all()
            return
        done: set[Key] = set()
        for page in self.conn.list_pages("sessions"):
            if not self.conn.settings.session_details:
                yield page
                continue
            fresh, unkeyed = self._split_new(decl, page, done)
            if changed is None or ctx.seen is None:
                wanted = fresh
            else:
                known = ctx.known([k for k, _ in fresh])
                wanted = [(k, s) for k, s in fresh if k not in known or k in changed]
                unchanged = [k for k, _ in fresh if k in known and k not in changed]
                if unchanged:
                    ctx.seen(unchanged)
            details = self._details([s for _, s in wanted], pool)
            if since is not None and changed is not None:
                fetched_as_changed = [d for d in details if self.conn._key(decl, d) in changed]
                self._verify_changed(fetched_as_changed, since)
            if details or unkeyed:
                yield unkeyed + details
        if changed:
            missed = [s for k, s in changed.items() if k not in done]
            details = self._details(missed, pool)
            if since is not None:
                self._verify_changed(details, since)
            if details:
                yield details

    def _nothing_missed(self, changed: Mapping[Key, Record], ctx: ReadContext) -> bool:
        """True when the changed-since query found everything a full list would.

        ``auto_datetime`` is ``auto_now``: a session created or changed since the last read
        has a stamp inside the window, so the query lists it (less the versions held, which
        are the ones stored). What only the full list can find is a deleted session, or one
        created with an old stamp (a raw SQL import). Either changes the server's count
        against the ledger's present sessions plus the query's new ones; a deletion and such
        an import exactly cancelling out would go unseen until the next full scan whose
        counts differ. A session created or deleted while this runs makes the counts differ
        too, and the whole list is read as before.
        """
        if ctx.present is None or ctx.seen_all is None or self.conn.settings.full_session_list:
            return False
        total = self._server_count()
        if total is None:
            return False
        known = ctx.known(list(changed)) if changed else set()
        return total == ctx.present() + sum(1 for key in changed if key not in known)

    def _server_count(self) -> int | None:
        """How many sessions the list holds (its ``count``, read off a one-row page)."""
        params = {**self.conn.stream("sessions").params, "limit": 1}
        try:
            body = self.conn.get(self.conn.url("sessions"), params).json()
        except ValueError:
            return None  # not JSON: the full list will say what is wrong
        count = body.get("count") if isinstance(body, dict) else None
        return count if isinstance(count, int) and not isinstance(count, bool) else None

    def _settle(
        self,
        yielded: dict[Key, tuple[str, str | None]],
        unhold: Callable[[Sequence[Key]], None],
        pool: ThreadPoolExecutor,
    ) -> None:
        """Unhold the versions of this read's details unless they are surely current.

        The engine keeps each yielded detail's ``auto_datetime``, and the next read leaves out
        every session whose ``auto_datetime`` is kept. One transaction can stamp several
        sessions alike (``QuerySet.update()``); if it committed while this read fetched
        details, some of its sessions may have been read before the commit (old stamp) and
        others after (its stamp, now kept): those read before, and those not read at all,
        would be hidden next time. Two checks, after all details were read, rule that out
        for the sessions whose stamps a later read can leave out (those inside the window
        that starts a lookback before the newest stamp):

        * each such session is fetched again and must have the same ``auto_datetime``;
        * ``?django=auto_datetime__in,[those stamps]`` must list only those sessions.

        Otherwise (or when the checks cannot be made), their versions are unheld, so the
        next read fetches them again. An unchanged re-sync yields no detail: nothing to check.
        """
        stamps = {k: _parse_stamp(v) for k, (_, v) in yielded.items() if v is not None}
        if not stamps:
            return
        aware = {s.tzinfo is not None for s in stamps.values() if s is not None}
        if None in stamps.values() or len(aware) > 1:
            unhold(list(stamps))  # stamps that cannot be ordered: never trust them
            return
        newest = max(s for s in stamps.values() if s is not None)
        bound = newest - self.conn.lookback("sessions")
        window = {k: yielded[k] for k, s in stamps.items() if s is not None and s >= bound}
        if not window:
            return
        try:
            changed = self._stamps_moved(window, pool) or self._stamps_shared(window)
        except LimsyncError as exc:
            log.warning("cannot check the sessions just read (%s); they will be read again", exc)
            changed = True
        if changed:
            log.info(
                "sessions changed while they were read; the next run fetches %d of them again",
                len(window),
            )
            unhold(list(window))

    def _stamps_moved(
        self, window: dict[Key, tuple[str, str | None]], pool: ThreadPoolExecutor
    ) -> bool:
        ids = [sid for sid, _ in window.values()]
        again = {sid: d for sid, d in zip(ids, pool.map(self._detail, ids), strict=True)}
        for sid, version in window.values():
            detail = again.get(sid)
            if detail is None or self.conn.cursor_value("sessions", detail) != version:
                return True
        return False

    def _stamps_shared(self, window: dict[Key, tuple[str, str | None]]) -> bool:
        values = sorted({v for _, v in window.values() if v is not None})
        decl = self.conn.stream("sessions")
        try:
            for batch in in_batches("auto_datetime", values, self.conn.url("sessions")):
                params = {"django": in_list("auto_datetime", batch)}
                if not self.conn.filters.check("sessions", params):
                    return True  # unverifiable: an ignored filter would list everything
                for page in self.conn.list_pages(
                    "sessions", params=params, page_size=MAX_PAGE_SIZE
                ):
                    if any(self.conn._key(decl, s) not in window for s in page):
                        return True
        except HTTPStatusError as exc:
            if exc.status not in (400, 414, 500):
                raise
            return True
        return False

    def _split_new(
        self, decl: Stream, page: Page, done: set[Key]
    ) -> tuple[list[tuple[Key, Record]], list[Record]]:
        """Summaries not handled yet (marking them handled), and those without a usable id."""
        fresh: list[tuple[Key, Record]] = []
        unkeyed: list[Record] = []
        for summary in page:
            key = self.conn._key(decl, summary)
            if key is None:
                unkeyed.append(summary)  # passed on as is: the engine quarantines it
            elif key not in done:
                done.add(key)
                fresh.append((key, summary))
        return fresh, unkeyed

    def _details(self, summaries: list[Record], pool: ThreadPoolExecutor) -> list[Record]:
        ids = [str(s["id"]) for s in summaries]
        return [d for d in pool.map(self._detail, ids) if d is not None]

    def _detail(self, session_id: str) -> Record | None:
        try:
            body = self.conn.get(self.conn.url(f"sessions/{quote(session_id, safe='')}")).json()
        except HTTPStatusError as exc:
            if exc.status == 404:
                log.debug("session %s was deleted while being read", session_id)
                return None
            raise
        except ValueError:
            raise SourceError(f"GET sessions/{session_id}: the response is not JSON") from None
        if not isinstance(body, dict):
            raise SourceError(f"GET sessions/{session_id}: the response is not an object")
        return body

    def _verify_changed(self, details: list[Record], since: datetime) -> None:
        """Raise if a session older than ``since`` came back: the server ignored the filter.

        ``auto_datetime`` only grows, so a detail read after the filtered list cannot be older
        than the filter's bound unless the filter was not applied.
        """
        for detail in details:
            raw = detail.get("auto_datetime")
            try:
                value = datetime.fromisoformat(raw) if isinstance(raw, str) else None
            except ValueError:
                value = None
            if value is None or (value.tzinfo is None) != (since.tzinfo is None):
                continue
            if value < since:
                raise ConfigError(
                    f"the server ignored the filter django=auto_datetime__gte on /sessions: "
                    f"session {detail.get('id')} last changed at {raw}, before {since.isoformat()}"
                )


def _parse_stamp(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None
