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
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, Self
from urllib.parse import urlsplit

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
    pk_batches,
    pk_in,
)
from limsync.connectors.alyx.sessions import MAX_PAGE_SIZE, SessionReader
from limsync.errors import (
    AuthenticationError,
    ConfigError,
    SourceError,
)

log = logging.getLogger(__name__)

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
    """Concurrent session-detail requests (they share the rate limit)."""
    full_session_list: bool = False
    """In a full scan, read the whole session list every time. By default it is read only when
    the server's count of sessions is not the ledger's present sessions plus the new ones the
    changed-since query found (a deletion, or a session imported with an old stamp)."""
    per_lab_scans: bool = True
    """Read nickname-keyed streams lab by lab so duplicate nicknames stay unambiguous."""

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
            cursor=Cursor("auto_datetime", lookback=timedelta(days=1), versions=True),
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
        """Pages of raw records. Sessions are read by :class:`SessionReader` (details only where
        needed); nickname-keyed streams are read lab by lab."""
        if stream in _BY_SUBJECT_LAB and self.settings.per_lab_scans:
            yield from self._read_per_lab(stream)
            return
        if stream != "sessions":
            yield from super().read(stream, ctx)
            return
        yield from SessionReader(self).read(ctx)

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
