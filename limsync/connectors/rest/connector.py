"""The declarative REST connector: a plain JSON API read from configuration alone.

Each configured stream becomes a :class:`~limsync.connectors.base.Stream` (see
:meth:`RestConnector.define_streams`) with a permissive source model: every field of a record
passes through as the API sent it, only the key fields are checked (present, an int or a
non-blank string). Types, names and tables are the job of the ``[[mappings.NAME.STREAM]]``
sections, so a REST source needs no Python at all. ``docs/rest.md`` is the reference.

Reading reuses the shared plumbing: the session from :func:`~limsync.connectors.http.build_session`
(timeouts, retries, rate limit, TLS), the paginators of :mod:`limsync.connectors.pagination`,
the auth objects of :mod:`limsync.connectors.auth`. A ``token_login`` connector logs in when it
opens and, when a request is refused (401 or 403), logs in again once and repeats it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import quote

import requests
from pydantic import BaseModel, ConfigDict, create_model, field_validator
from pydantic_core import PydanticCustomError

from limsync.connectors import (
    BasicAuth,
    Connector,
    ConnectorSettings,
    Cursor,
    HeaderAuth,
    HeaderTotal,
    LimitOffset,
    NextLink,
    Page,
    PageNumber,
    Paginator,
    ReadContext,
    Record,
    SinglePage,
    Stream,
    field_at,
    nothing_known,
    raise_for_response,
    redact_url,
    send,
)
from limsync.connectors.rest.settings import (
    BasicAuthSettings,
    HeaderTokenSettings,
    PaginationSettings,
    RestSettings,
    RestStreamSettings,
    TokenLoginSettings,
)
from limsync.errors import (
    AuthenticationError,
    ConfigError,
    RecordError,
    SourceError,
)

__all__ = ["RestConnector", "build_paginator"]

log = logging.getLogger(__name__)


def build_paginator(conf: PaginationSettings, records: str) -> Paginator:
    """The paginator for one pagination section; ``records`` "" means the body is the list."""
    key = records or None
    cap = conf.max_page_size
    size = conf.page_size or min(100, cap or 100)
    if conf.style == "limit_offset":
        if key is None:
            # A bare array cannot carry a count: HeaderTotal without the header stops on the
            # first short page, which is exactly limit/offset paging without a count.
            return HeaderTotal(size, cap, conf.limit_param, conf.offset_param, conf.total_header)
        return LimitOffset(size, cap, conf.limit_param, conf.offset_param, key, conf.count_field)
    if conf.style == "header_total":
        return HeaderTotal(
            size, cap, conf.limit_param, conf.offset_param, conf.total_header, results_key=key
        )
    if conf.style == "page_number":
        return PageNumber(
            conf.page_param,
            conf.size_param or "page_size",
            key,
            page_size=size,
            max_page_size=cap,
            first_page=conf.first_page,
            count_key=conf.count_field,
        )
    if conf.style == "next_link":
        return NextLink(
            key,
            conf.next_field,
            size_param=conf.size_param,
            page_size=size,
            max_page_size=cap,
            count_key=conf.count_field,
        )
    return SinglePage(key)


# --- source models --------------------------------------------------------------------------------


def _camel(name: str) -> str:
    return "".join(part.title() for part in name.split("_") if part)


def _key_value(value: Any) -> Any:
    if isinstance(value, bool):
        raise PydanticCustomError("key_type", "a key field must be an integer or a string")
    if isinstance(value, str) and not value.strip():
        raise PydanticCustomError("blank_key", "key field is empty")
    return value


def source_model(stream: str, key: Sequence[str], optional: Sequence[str]) -> type[BaseModel]:
    """A permissive model: any fields; ``key`` ones required ints or non-blank strings;
    ``optional`` ones (a cursor, fields children read) declared, so the stream checks see them.
    """
    fields: dict[str, Any] = {name: (int | str, ...) for name in key}
    fields.update({name: (Any, None) for name in optional if name not in fields})
    validators: dict[str, Any] = {
        "key_value": field_validator(*key, mode="before")(_key_value),
    }
    return create_model(
        f"{_camel(stream)}Record",
        __config__=ConfigDict(extra="allow"),
        __validators__=validators,
        **fields,
    )


# --- the connector --------------------------------------------------------------------------------


class RestConnector(Connector):
    """A JSON API declared in ``[connectors.NAME]`` with ``type = "rest"`` (docs/rest.md)."""

    type_name = "rest"
    settings_model: ClassVar[type[ConnectorSettings]] = RestSettings
    instance_streams = True

    settings: RestSettings

    @classmethod
    def define_streams(cls, settings: ConnectorSettings) -> Sequence[Stream]:
        """One stream per ``streams`` entry, in the configured order (parents first)."""
        assert isinstance(settings, RestSettings)
        confs = settings.streams
        # Fields a parent's model must declare: those its children's paths read.
        wanted: dict[str, list[str]] = {name: [] for name in confs}
        for name, conf in confs.items():
            if conf.parent is not None:
                if conf.parent.stream not in confs:
                    raise ConfigError(
                        f"{name}.parent.stream: no stream {conf.parent.stream!r} "
                        f"(streams: {', '.join(confs)})"
                    )
                wanted[conf.parent.stream].extend(conf.parent.fields.values())
        streams = []
        for name, conf in confs.items():
            optional = list(wanted[name])
            if conf.cursor is not None:
                optional.append(conf.cursor.field)
            path = conf.path.lstrip("/")
            description = f"GET {conf.path}"
            if conf.parent is not None:
                # The declared path names the parent's fields, which is what the stream checks
                # verify and what the base class's sample() fills in.
                path = path.format_map({k: f"{{{v}}}" for k, v in conf.parent.fields.items()})
                description += f" for each {conf.parent.stream} record"
            records = conf.records if conf.records is not None else settings.records
            paging = conf.pagination or settings.pagination
            streams.append(
                Stream(
                    name,
                    path or "/",
                    source_model(name, conf.key, optional),
                    key=tuple(conf.key),
                    paginator=build_paginator(paging, records),
                    cursor=(
                        Cursor(conf.cursor.field, conf.cursor.lookback)
                        if conf.cursor is not None
                        else None
                    ),
                    volatile=frozenset(conf.volatile),
                    parent=conf.parent.stream if conf.parent is not None else None,
                    params=conf.params,
                    description=description,
                )
            )
        return streams

    def __init__(
        self, name: str, settings: ConnectorSettings, *, session: requests.Session | None = None
    ) -> None:
        super().__init__(name, settings, session=session)
        self._token: str | None = None

    # --- auth -----------------------------------------------------------------------------------

    @property
    def login_url(self) -> str | None:
        """The token login endpoint, when the auth style is ``token_login``."""
        auth = self.settings.auth
        if not isinstance(auth, TokenLoginSettings):
            return None
        return auth.path if "://" in auth.path else self.url(auth.path)

    def retry_post_urls(self) -> Sequence[str]:
        """The login endpoint: posting credentials again is harmless."""
        return (self.login_url,) if self.login_url else ()

    def secrets(self) -> list[str]:
        """Configured secrets and the session token."""
        return [*self.settings.secrets(), *([self._token] if self._token else [])]

    def open(self) -> None:
        """Attach the credentials to the session; a ``token_login`` connector logs in."""
        auth = self.settings.auth
        if isinstance(auth, BasicAuthSettings):
            self.session.auth = BasicAuth(auth.username, auth.password)
        elif isinstance(auth, HeaderTokenSettings):
            self.session.auth = HeaderAuth(auth.header, auth.token, auth.prefix)
        elif isinstance(auth, TokenLoginSettings) and self._token is None:
            self._login(auth)
        self._opened = True

    def close(self) -> None:
        """Forget the session token with the session."""
        self._token = None
        super().close()

    def _login(self, auth: TokenLoginSettings) -> None:
        url = self.login_url
        assert url is not None
        credentials = {
            auth.username_field: auth.username,
            auth.password_field: auth.password.get_secret_value(),
        }
        payload = {"json": credentials} if auth.body == "json" else {"data": credentials}
        response = send(self.session, "POST", url, secrets=self.secrets(), **payload)
        if response.status_code in (400, 401, 403):
            raise AuthenticationError(
                "POST",
                redact_url(url),
                response.status_code,
                f"the server refused the username/password of user {auth.username!r}",
            )
        raise_for_response(response, secrets=self.secrets())
        try:
            token = field_at(response.json(), auth.token_field)
        except ValueError:
            token = None
        if isinstance(token, int) and not isinstance(token, bool):
            token = str(token)
        if not isinstance(token, str) or not token:
            raise SourceError(
                f"POST {redact_url(url)}: the response holds no token at {auth.token_field!r} "
                f"(connectors.{self.name}.auth.token_field)"
            )
        self._token = token
        self.session.auth = HeaderAuth(auth.header, token, auth.prefix)
        log.info("logged in to %s as %s", redact_url(self.base_url), auth.username)

    def get(self, url: str, params: Mapping[str, Any] | None = None) -> requests.Response:
        """GET with error translation; a refused session token means one new login and retry."""
        if not self._opened:
            self.open()
        response = send(self.session, "GET", url, params=dict(params or {}), secrets=self.secrets())
        auth = self.settings.auth
        if response.status_code in (401, 403) and isinstance(auth, TokenLoginSettings):
            log.warning("%s refused the session token; logging in again", redact_url(url))
            self._token = None
            self._login(auth)
            response = send(
                self.session, "GET", url, params=dict(params or {}), secrets=self.secrets()
            )
        raise_for_response(response, secrets=self.secrets())
        return response

    # --- reading --------------------------------------------------------------------------------

    def rest_settings(self, stream: str) -> RestStreamSettings:
        """The configured settings of a stream."""
        self.stream(stream)
        return self.settings.streams[stream]

    def cursor_params(self, stream: str, since: datetime) -> Mapping[str, str]:
        """``{param: since}``, ISO 8601 unless the cursor gives a ``format``."""
        cursor = self.rest_settings(stream).cursor
        if cursor is None:
            return {}
        value = since.strftime(cursor.format) if cursor.format else since.isoformat()
        return {cursor.param: value}

    def cursor_value(self, stream: str, record: Record) -> str | None:
        """The cursor field as a comparable ISO string (UTC when it has a time zone).

        The engine keeps the largest value by string comparison, so every value is written the
        same way; a value that is not an ISO date-time is ignored (the read stays correct: the
        content hash still finds the changes).
        """
        value = super().cursor_value(stream, record)
        if value is None:
            return None
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            log.debug("stream %s: cursor value %r is not an ISO date-time", stream, value)
            return None
        if moment.tzinfo is not None:
            moment = moment.astimezone(UTC)
        return moment.isoformat()

    def _parent_values(self, stream: str, parent: Record) -> dict[str, Any]:
        conf = self.rest_settings(stream)
        assert conf.parent is not None
        values = {}
        for child, field in conf.parent.fields.items():
            value = parent.get(field)
            if value is None or value == "":
                raise RecordError(
                    f"stream {stream!r}: a {conf.parent.stream!r} record has no {field!r} "
                    f"(connectors.{self.name}.streams.{stream}.parent.fields.{child})"
                )
            values[child] = value
        return values

    def _child_pages(
        self,
        stream: str,
        parent: Record,
        params: Mapping[str, Any] | None = None,
        page_size: int | None = None,
    ) -> Iterator[Page]:
        values = self._parent_values(stream, parent)
        path = (
            self.rest_settings(stream)
            .path.lstrip("/")
            .format_map({k: quote(str(v), safe="") for k, v in values.items()})
        )
        for page in self.list_pages(stream, path=path, params=params, page_size=page_size):
            yield [{**values, **record} for record in page]

    def read(self, stream: str, ctx: ReadContext) -> Iterator[Page]:
        """Pages of a stream; a child stream lists its path once per parent record."""
        decl = self.stream(stream)
        if decl.parent is None:
            yield from super().read(stream, ctx)
            return
        params: dict[str, Any] = {}
        since = self.since(stream, ctx)
        if not ctx.full and since is not None:
            params.update(self.cursor_params(stream, since))
        parent_ctx = ReadContext(full=True, cursor=None, known=nothing_known)
        for parent_page in self.read(decl.parent, parent_ctx):
            for parent in parent_page:
                yield from self._child_pages(stream, parent, params)

    def sample(self, stream: str, limit: int = 1) -> Page:
        """The first records of a stream (a child's from its first parent's listing)."""
        decl = self.stream(stream)
        if decl.parent is None:
            return super().sample(stream, limit)
        parents = self.sample(decl.parent, 1)
        if not parents:
            return []
        for page in self._child_pages(stream, parents[0], page_size=limit):
            return page[:limit]
        return []
