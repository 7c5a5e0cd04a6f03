"""The Alyx connector (cortex-lab/alyx 3.x REST API; contract: ``contracts/alyx.md``).

What it handles beyond plain paging, trap by trap:

* **Auth.** ``POST /auth-token`` with the username and password gives a token sent as
  ``Authorization: Token <t>``; a configured token skips the login. A 403 "Invalid token."
  triggers one new login and one retry of the request.
* **Pagination.** Limit/offset with offsets computed here (``next`` links can come back as
  ``http://``), never more than 1000 a page (the server cap), 250 by default.
* **Throttling.** 550 requests/minute per user: a client-side limit of 500/minute by default,
  and 429 with ``Retry-After`` retried by the session.
* **No ids.** Weighings and water administrations get ``id`` from their ``url``; water
  restrictions get a derived id (see :func:`~limsync.connectors.alyx.models.water_restriction_id`).
* **Subjects** are keyed by UUID, never by the non-unique nickname; the computed fields are
  volatile.
* **Sessions.** The list is a summary; the detail has the data and ``auto_datetime``, the only
  change timestamp. See :meth:`AlyxConnector.read`.
* **Filters are ignored when unknown.** Every filter is checked against the OpenAPI schema, and
  results are checked too (see :mod:`~limsync.connectors.alyx.filters`).
* **Hard deletes, unordered paging.** :meth:`AlyxConnector.confirm_gone` looks missing keys up
  directly before anyone deletes anything.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, Literal, Self
from urllib.parse import quote, urlsplit

import pydantic
import requests
from pydantic import Field, SecretStr, field_validator, model_validator

from limsync.connectors import (
    CheckResult,
    Connector,
    ConnectorSettings,
    Cursor,
    Key,
    LimitOffset,
    Page,
    ReadContext,
    Record,
    Stream,
    Streams,
    raise_for_response,
    redact_url,
    response_detail,
    send,
)
from limsync.connectors.alyx import models
from limsync.connectors.alyx.filters import (
    FilterGuard,
    excluding_slices,
    in_batches,
    in_list,
    pk_batches,
    pk_in,
)
from limsync.errors import (
    AuthenticationError,
    ConfigError,
    HTTPStatusError,
    LimsyncError,
    SourceError,
)

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 1000  # the server's max_limit since Alyx 3.6.0
OPENAPI_MEDIA_TYPE = "application/vnd.oai.openapi+json"
INVALID_TOKEN = "Invalid token."

#: Computed subject fields that change daily or with other records, not with the subject.
SUBJECT_VOLATILE = frozenset(
    {
        "age_weeks", "alive", "reference_weight", "expected_water", "remaining_water",
        "last_water_restriction", "session_projects", "url",
    }
)  # fmt: skip

#: Session detail fields owned by other records (they change without bumping auto_datetime),
#: the timestamp itself (a no-op PATCH bumps it) and the Host-dependent url.
SESSION_VOLATILE = frozenset(
    {
        "auto_datetime", "url", "wateradmin_session_related", "data_dataset_session_related",
        "probe_insertion", "field_of_view", "notes",
    }
)  # fmt: skip

#: Streams that name their subject by nickname only. Nicknames repeat across labs, so these are
#: read lab by lab (``?django=subject__lab__name,<lab>``) and each record gets ``subject_lab``,
#: which makes (lab, nickname) identify the subject.
_BY_SUBJECT_LAB = frozenset(
    {"weighings", "water_administrations", "water_restrictions", "surgeries"}
)

#: Streams whose key is the Django primary key: missing keys are looked up with pk__in.
_PK_STREAMS = frozenset(
    {"users", "subjects", "sessions", "surgeries", "weighings", "water_administrations"}
)


class AlyxSettings(ConnectorSettings):
    """Settings of an Alyx connector instance (``[connectors.<name>]`` with ``type = "alyx"``)."""

    type: Literal["alyx"] = "alyx"
    base_url: str
    """The API root, possibly with a path prefix (``https://host/api``)."""
    username: str
    password: SecretStr | None = None
    token: SecretStr | None = None
    """A REST token to use instead of logging in (identity-provider accounts)."""
    rate_limit_per_minute: float | None = Field(500.0, gt=0)
    """Below the server's 550/minute per user, leaving room for other clients."""
    page_size: int = Field(250, ge=1, le=MAX_PAGE_SIZE)
    session_details: bool = True
    """Fetch ``/sessions/{id}`` for new and changed sessions (the list is a summary). When off,
    session records are summaries, which carry no ``auto_datetime``: the cursor cannot advance
    and every run lists all sessions (still cheap: the list is small per session)."""
    detail_workers: int = Field(4, ge=1, le=16)
    per_lab_scans: bool = True
    """Read nickname-keyed streams lab by lab so duplicate nicknames stay unambiguous."""
    """Concurrent session-detail requests (they share the rate limit)."""

    @field_validator("base_url")
    @classmethod
    def _normalise_base_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("base_url must be an http(s) URL such as https://alyx.example.org")
        if parts.username or parts.password:
            raise ValueError("base_url must not contain credentials; use username and password")
        if parts.query or parts.fragment:
            raise ValueError("base_url must not have a query or fragment")
        return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"

    @model_validator(mode="after")
    def _password_or_token(self) -> Self:
        if self.password is None and self.token is None:
            raise ValueError("either password or token is required")
        return self


class AlyxConnector(Connector):
    """Reads labs, users, projects, procedures, subjects, sessions and water/weight records."""

    type_name = "alyx"
    settings_model = AlyxSettings
    paginator = LimitOffset(page_size=250, max_page_size=MAX_PAGE_SIZE)
    streams = Streams(
        Stream("labs", "labs", models.Lab, key=("name",)),
        Stream("users", "users", models.User, key=("id",)),
        Stream("projects", "projects", models.Project, key=("name",)),
        Stream("procedures", "procedures", models.ProcedureType, key=("id",)),
        Stream("water_types", "water-type", models.WaterType, key=("name",), volatile={"url"}),
        Stream("subjects", "subjects", models.Subject, key=("id",), volatile=SUBJECT_VOLATILE),
        Stream(
            "sessions",
            "sessions",
            models.Session,
            key=("id",),
            cursor=Cursor("auto_datetime", lookback=timedelta(days=1)),
            volatile=SESSION_VOLATILE,
            description="session details (summaries when session_details is off)",
        ),
        Stream("weighings", "weighings", models.Weighing, key=("id",), volatile={"url"}),
        Stream(
            "water_administrations",
            "water-administrations",
            models.WaterAdministration,
            key=("id",),
            volatile={"url"},
        ),
        Stream(
            "water_restrictions",
            "water-restriction",
            models.WaterRestriction,
            key=("id",),
            description="id derived from (subject, start_time)",
        ),
        Stream("surgeries", "surgeries", models.Surgery, key=("id",)),
    )

    settings: AlyxSettings

    def __init__(
        self, name: str, settings: ConnectorSettings, *, session: requests.Session | None = None
    ) -> None:
        super().__init__(name, settings, session=session)
        assert isinstance(settings, AlyxSettings)  # checked by the base class
        self._token = settings.token.get_secret_value() if settings.token else None
        self._auth_lock = threading.Lock()
        self._notices: set[str] = set()
        self.filters = FilterGuard(self._load_schema)

    # --- auth -----------------------------------------------------------------------------------

    def retry_post_urls(self) -> Sequence[str]:
        return (self.url("auth-token"),)

    def secrets(self) -> list[str]:
        return [*super().secrets(), *([self._token] if self._token else [])]

    def open(self) -> None:
        """Log in unless a token is configured (or a login already happened)."""
        with self._auth_lock:
            if self._token is None:
                self._token = self._login()
        self._opened = True

    def _login(self) -> str:
        url = self.url("auth-token")
        if self.settings.password is None:
            raise AuthenticationError(
                "POST", redact_url(url), 403, "the token was refused and no password is configured"
            )
        form = {
            "username": self.settings.username,
            "password": self.settings.password.get_secret_value(),
        }
        response = send(self.session, "POST", url, data=form, secrets=self.secrets())
        if response.status_code == 400:
            raise AuthenticationError(
                "POST",
                redact_url(url),
                400,
                f"the server refused the username/password of user {self.settings.username!r}",
            )
        raise_for_response(response, secrets=self.secrets())
        try:
            token = response.json().get("token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise SourceError(f"POST {redact_url(url)}: the response holds no token")
        log.info("logged in to %s as %s", redact_url(self.base_url), self.settings.username)
        return token

    def _renew_token(self, rejected: str | None) -> None:
        with self._auth_lock:
            if self._token != rejected:
                return  # another thread already logged in again
            log.warning("Alyx refused the token; logging in again")
            self._token = None
            self._token = self._login()

    def _request(
        self, url: str, params: Mapping[str, Any] | None, headers: Mapping[str, str] | None = None
    ) -> requests.Response:
        token = self._token
        response = send(
            self.session,
            "GET",
            url,
            params=dict(params or {}),
            headers={**(headers or {}), "Authorization": f"Token {token}"},
            secrets=self.secrets(),
        )
        notice = response.headers.get("Alyx-API-Notice")
        if notice and notice not in self._notices:
            # The server's lifecycle notices; "!!!" marks one that needs action.
            self._notices.add(notice)
            level = logging.WARNING if notice.startswith("!!!") else logging.INFO
            log.log(level, "Alyx API notice: %s", notice)
        return response

    def get(
        self,
        url: str,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """An authenticated GET; on "Invalid token." logs in again once and retries."""
        if not self._opened:
            self.open()
        rejected = self._token
        response = self._request(url, params, headers)
        if response.status_code == 403 and response_detail(response) == INVALID_TOKEN:
            self._renew_token(rejected)
            response = self._request(url, params, headers)
        raise_for_response(response, secrets=self.secrets())
        return response

    def _load_schema(self) -> Any:
        response = self.get(self.url("api/schema"), headers={"Accept": OPENAPI_MEDIA_TYPE})
        return response.json()

    # --- records --------------------------------------------------------------------------------

    def prepare_record(self, stream: str, record: Record) -> Record:
        """Add the derived ``id`` to weighings, water administrations and water restrictions."""
        if "id" in record:
            return record
        if stream in ("weighings", "water_administrations"):
            derived = models.uuid_from_url(record.get("url"))
        elif stream == "water_restrictions":
            derived = models.water_restriction_id(record)
        else:
            return record
        # Without an id the record stays as it is and fails validation (quarantine).
        return record if derived is None else {**record, "id": derived}

    def cursor_value(self, stream: str, record: Record) -> str | None:
        """``auto_datetime`` of a session detail, as a normalised ISO string."""
        value = super().cursor_value(stream, record)
        if value is None:
            return None
        try:
            return datetime.fromisoformat(value).isoformat()
        except ValueError:
            return None

    def _key(self, stream: Stream, record: Record) -> Key | None:
        try:
            return stream.key_from_raw(record)
        except (KeyError, pydantic.ValidationError):
            return None

    # --- sessions -------------------------------------------------------------------------------

    def read(self, stream: str, ctx: ReadContext) -> Iterator[Page]:
        """Pages of raw records; sessions get their own logic.

        Sessions: with ``session_details`` (the default) the yielded records are details.

        * Incremental with a cursor: only the sessions listed by
          ``?django=auto_datetime__gte,<cursor - lookback>``, each fetched in detail.
        * Full scan: the whole list, with details fetched only for sessions the ledger does not
          know (``ctx.known``) or that the changed-since query returned; the others are
          reported through ``ctx.seen`` so the engine counts them as present. Without
          ``ctx.seen``, or without a cursor, every session is fetched in detail.
        * Sessions the changed query returned but the list paging missed (rows shift while
          paging) are fetched at the end.
        """
        if stream in _BY_SUBJECT_LAB and self.settings.per_lab_scans:
            yield from self._read_per_lab(stream)
            return
        if stream != "sessions":
            yield from super().read(stream, ctx)
            return
        since = self.since(stream, ctx)
        decl = self.stream("sessions")
        yielded: dict[Key, tuple[str, str | None]] = {}  # key -> (id, auto_datetime)
        with ThreadPoolExecutor(self.settings.detail_workers, "alyx-session") as pool:
            if not ctx.full and since is not None:
                pages = self._changed_sessions(since, ctx, pool)
            else:
                pages = self._all_sessions(ctx, since, pool)
            for page in pages:
                for record in page:
                    key = self._key(decl, record)
                    if key is not None and "auto_datetime" in record:
                        yielded[key] = (str(record["id"]), self.cursor_value(stream, record))
                yield page
            if yielded and ctx.unhold is not None:
                self._settle(yielded, ctx.unhold, pool)

    def _read_per_lab(self, stream: str) -> Iterator[Page]:
        labs = [str(r["name"]) for page in self.list_pages("labs") for r in page]
        if any(c in lab for lab in labs for c in ",[]()"):
            # The server splits django= values on commas and evals brackets: such a lab name
            # cannot be filtered on, so read the whole list (records carry no subject_lab).
            yield from self.list_pages(stream)
            return
        path = self.stream(stream).path
        for lab in labs:
            params = {"django": f"subject__lab__name,{lab}"}
            self.filters.check(path, params)
            for page in self.list_pages(stream, params=params):
                for record in page:
                    record["subject_lab"] = lab
                yield page

    def _changed_query(self, since: datetime) -> dict[str, str]:
        params = {"django": f"auto_datetime__gte,{since.isoformat()}"}
        self.filters.check("sessions", params)
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
            yield from self.list_pages("sessions", params=self._changed_query(since))
            return
        try:
            # Read every slice before yielding: a refusal midway falls back cleanly.
            pages = [p for q in queries for p in self.list_pages("sessions", params=q)]
        except HTTPStatusError as exc:
            if exc.status not in (400, 414, 500):
                raise
            log.warning(
                "Alyx refused the changed-sessions filter that leaves out known versions "
                "(HTTP %s); listing every session of the window instead",
                exc.status,
            )
            pages = list(self.list_pages("sessions", params=self._changed_query(since)))
        yield from pages

    def _excluding_queries(self, since: datetime, ctx: ReadContext) -> list[dict[str, str]] | None:
        """The changed query in slices that exclude held versions, or None to use the plain one."""
        if ctx.versions is None or not self.settings.session_details:
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
            for value in excluding_slices("auto_datetime", since, held, self.url("sessions"))
        ]
        if not all(self.filters.check("sessions", q) for q in queries):
            return None  # no schema to check the filter against: list the whole window
        return queries

    def _changed_sessions(
        self, since: datetime, ctx: ReadContext, pool: ThreadPoolExecutor
    ) -> Iterator[Page]:
        decl = self.stream("sessions")
        done: set[Key] = set()
        for page in self._changed_listing(since, ctx):
            if not self.settings.session_details:
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
        decl = self.stream("sessions")
        changed: dict[Key, Record] | None = None
        if since is not None and self.settings.session_details and ctx.seen is not None:
            changed = {}
            for page in self._changed_listing(since, ctx):
                for summary in page:
                    key = self._key(decl, summary)
                    if key is not None:
                        changed[key] = summary
        done: set[Key] = set()
        for page in self.list_pages("sessions"):
            if not self.settings.session_details:
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
                fetched_as_changed = [d for d in details if self._key(decl, d) in changed]
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
        bound = newest - self.lookback("sessions")
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
            if detail is None or self.cursor_value("sessions", detail) != version:
                return True
        return False

    def _stamps_shared(self, window: dict[Key, tuple[str, str | None]]) -> bool:
        values = sorted({v for _, v in window.values() if v is not None})
        decl = self.stream("sessions")
        try:
            for batch in in_batches("auto_datetime", values, self.url("sessions")):
                params = {"django": in_list("auto_datetime", batch)}
                if not self.filters.check("sessions", params):
                    return True  # unverifiable: an ignored filter would list everything
                for page in self.list_pages("sessions", params=params, page_size=MAX_PAGE_SIZE):
                    if any(self._key(decl, s) not in window for s in page):
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
            key = self._key(decl, summary)
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
            body = self.get(self.url(f"sessions/{quote(session_id, safe='')}")).json()
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

    # --- deletes --------------------------------------------------------------------------------

    def confirm_gone(self, stream: str, keys: Sequence[Key]) -> set[Key]:
        """The keys the server really no longer has.

        Streams keyed by the Django primary key are looked up with ``?django=pk__in,[...]`` in
        batches that keep the URL under 6000 characters; the small tables without such a key or
        filter (labs, projects, procedures, water types, water restrictions) are listed again.
        A key is gone only when the server does not return it.
        """
        decl = self.stream(stream)
        if not keys:
            return set()
        if stream in _PK_STREAMS:
            return self._gone_by_pk(decl, keys)
        return self._gone_by_rescan(decl, keys)

    def _coerce(self, decl: Stream, key: Key) -> Key | None:
        try:
            return decl.key_from_raw(dict(zip(decl.key, key, strict=True)))
        except (ValueError, pydantic.ValidationError):
            return None

    def _gone_by_pk(self, decl: Stream, keys: Sequence[Key]) -> set[Key]:
        gone: set[Key] = set()
        by_id: dict[str, Key] = {}
        for key in keys:
            coerced = self._coerce(decl, key)
            if coerced is None or not isinstance(coerced[0], uuid.UUID):
                gone.add(key)  # not a UUID: the server cannot have it
            else:
                by_id[str(coerced[0])] = key
        for batch in pk_batches(list(by_id), self.url(decl.path)):
            params = {"django": pk_in(batch)}
            self.filters.check(decl.path, params)
            wanted = set(batch)
            found: set[str] = set()
            for page in self.list_pages(decl.name, params=params, page_size=len(batch)):
                for record in page:
                    record_key = self._key(decl, record)
                    got = str(record_key[0]) if record_key is not None else None
                    if got not in wanted:
                        raise ConfigError(
                            f"the server ignored the filter django=pk__in on /{decl.path}: it "
                            f"returned {got or 'a record without id'}, which was not asked for"
                        )
                    found.add(got)
            gone.update(by_id[i] for i in wanted - found)
        return gone

    def _gone_by_rescan(self, decl: Stream, keys: Sequence[Key]) -> set[Key]:
        present: set[Key] = set()
        for page in self.list_pages(decl.name, page_size=MAX_PAGE_SIZE):
            for record in page:
                key = self._key(decl, record)
                if key is not None:
                    present.add(key)
        return {key for key in keys if self._coerce(decl, key) not in present}

    # --- check ----------------------------------------------------------------------------------

    def check(self) -> list[CheckResult]:
        """The base checks, plus whether the OpenAPI schema (used to check filters) is readable."""
        results = super().check()
        if any(r.name == "auth" and r.ok for r in results):
            ok = self.filters.available
            detail = "filters checked against it" if ok else "unavailable: results are checked"
            results.append(CheckResult("openapi schema", True, detail))
        return results


def _parse_stamp(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None
