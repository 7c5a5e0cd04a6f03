"""The declarative connector API: settings, streams, and the :class:`Connector` base class.

A connector declares its streams in the class body::

    class ExampleConnector(Connector):
        type_name = "example"
        settings_model = ExampleSettings
        paginator = LimitOffset(page_size=100)
        streams = Streams(
            Stream("labs", "labs", LabRecord, key=("name",)),
            Stream("subjects", "subjects", SubjectRecord, key=("id",), volatile={"age_weeks"}),
        )

and everything in the declaration is checked when the class is defined: a wrong field name, a
duplicate stream or a parent that does not exist raises :class:`~limsync.errors.DeclarationError`
at import time instead of halfway through a sync.

Connectors know HTTP and the LIMS API, never the database: they hand the engine pages of raw
records, and the engine validates, hashes, maps and writes them.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, ClassVar, Literal, Self
from urllib.parse import quote

import pydantic
import requests
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, model_validator

from limsync.connectors.http import build_session, raise_for_response, scrub, send
from limsync.connectors.pagination import Page, Paginator, Record
from limsync.connectors.streams import (
    SNAKE_CASE,
    CheckResult,
    Cursor,
    Key,
    ReadContext,
    Stream,
    Streams,
    check_stream,
    declaration_error,
    nothing_known,
)
from limsync.errors import ConfigError, LimsyncError, RecordError

__all__ = [
    "CheckResult",
    "Connector",
    "ConnectorSettings",
    "Cursor",
    "Key",
    "ReadContext",
    "Stream",
    "StreamSettings",
    "Streams",
    "TableOverride",
    "nothing_known",
]

log = logging.getLogger(__name__)


def _user_agent() -> str:
    try:
        version = importlib.metadata.version("limsync")
    except importlib.metadata.PackageNotFoundError:
        version = "dev"
    return f"limsync/{version}"


# --- settings -------------------------------------------------------------------------------------


class TableOverride(BaseModel):
    """How the engine should adapt one default table of a stream's mapping (plain data)."""

    model_config = ConfigDict(extra="forbid")

    table: str | None = None
    """Write the rows of this default table into ``"schema.table"`` instead."""
    rename: dict[str, str] = {}
    """Default column name -> the user's column name."""
    exclude: list[str] = []
    """Default columns not to write."""


class StreamSettings(BaseModel):
    """Per-stream settings from ``[connectors.<name>.streams.<stream>]``."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    delete_policy: Literal["ignore", "flag", "delete"] = "flag"
    delete_threshold: float = Field(0.2, ge=0.0, le=1.0)
    """The largest fraction of known records one run may delete without ``--force``."""
    page_size: int | None = Field(None, ge=1)
    """Overrides the connector's page size for this stream."""
    lookback: timedelta | None = None
    """Overrides the overlap a cursor re-reads (clock skew, late commits)."""
    tables: dict[str, TableOverride] = {}
    """Engine-side mapping overrides, per default table name."""

    @model_validator(mode="after")
    def _lookback_not_negative(self) -> Self:
        if self.lookback is not None and self.lookback < timedelta(0):
            raise ValueError("lookback must not be negative")
        return self


class ConnectorSettings(BaseModel):
    """Settings every connector has; each connector's settings model extends this one.

    ``streams`` keys must be stream names of the connector. That is checked by
    :meth:`Connector.parse_settings` (which passes the names as validation context) and again
    when a connector is constructed.
    """

    model_config = ConfigDict(extra="forbid")

    type: str
    verify_tls: bool = True
    connect_timeout: float = Field(5.0, gt=0)
    read_timeout: float = Field(60.0, gt=0)
    max_retries: int = Field(5, ge=0)
    backoff_factor: float = Field(0.5, ge=0)
    backoff_max: float = Field(60.0, ge=0)
    retry_after_max: float = Field(300.0, ge=0)
    """Honour ``Retry-After`` up to this many seconds; a longer wait fails the request."""
    rate_limit_per_minute: float | None = Field(None, gt=0)
    page_size: int = Field(250, ge=1)
    streams: dict[str, StreamSettings] = {}

    @model_validator(mode="after")
    def _known_streams(self, info: ValidationInfo) -> Self:
        context = info.context if isinstance(info.context, dict) else {}
        names = context.get("stream_names")
        if names is not None:
            unknown = sorted(set(self.streams) - set(names))
            if unknown:
                raise ValueError(
                    f"unknown stream(s) {', '.join(unknown)}; known: {', '.join(names)}"
                )
        return self

    def secrets(self) -> list[str]:
        """The values of every secret setting, to keep them out of messages."""
        return [
            value.get_secret_value()
            for name in type(self).model_fields
            if isinstance(value := getattr(self, name), SecretStr)
        ]


# --- the connector --------------------------------------------------------------------------------


class Connector:
    """Base class of every connector. Subclasses declare, the base class reads.

    Class attributes to declare:

    * ``type_name``: lower snake case, the ``type`` in the config and the entry-point name;
    * ``settings_model``: a :class:`ConnectorSettings` subclass;
    * ``streams``: ``Streams(Stream(...), ...)``, parents before children (a mapping
      name -> Stream or a plain sequence is accepted too);
    * ``paginator``: for HTTP connectors, the default of streams that do not name one.

    Connectors whose streams are defined by configuration (files, SQL, a declarative REST
    source) set ``instance_streams = True`` instead of declaring ``streams`` and implement
    :meth:`define_streams`; each instance then has the streams its settings define, checked as
    strictly as class declarations but reported as configuration errors.

    Intermediate base classes pass ``abstract=True``: ``class HTTPBase(Connector, abstract=True)``.

    The default :meth:`read` pages through ``GET {base_url}/{stream.path}``; connectors override
    it, or the smaller hooks (:meth:`prepare_record`, :meth:`cursor_params`, :meth:`get`), where
    their API needs more.
    """

    type_name: ClassVar[str]
    settings_model: ClassVar[type[ConnectorSettings]] = ConnectorSettings
    # Not a ClassVar: instance-defined connectors give each instance its own streams.
    streams: Mapping[str, Stream] = Streams()
    instance_streams: ClassVar[bool] = False
    paginator: ClassVar[Paginator | None] = None
    user_agent: ClassVar[str] = _user_agent()

    def __init_subclass__(cls, abstract: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if abstract:
            return
        type_name = getattr(cls, "type_name", None)
        if not isinstance(type_name, str) or not SNAKE_CASE.match(type_name):
            raise declaration_error(cls, None, "type_name must be set, in lower snake case")
        if not (
            isinstance(cls.settings_model, type)
            and issubclass(cls.settings_model, ConnectorSettings)
        ):
            raise declaration_error(
                cls, None, "settings_model must be a ConnectorSettings subclass"
            )
        if cls.paginator is not None and not isinstance(cls.paginator, Paginator):
            raise declaration_error(cls, None, "paginator must be a Paginator")
        if cls.instance_streams:
            if cls.streams:
                raise declaration_error(
                    cls, None, "instance_streams connectors define streams in define_streams()"
                )
            defines = getattr(cls.define_streams, "__func__", None)
            if defines is getattr(Connector.define_streams, "__func__", None):
                raise declaration_error(cls, None, "instance_streams needs define_streams()")
            return
        declared: object = cls.streams
        entries: list[tuple[str, object]]
        if isinstance(declared, Streams):
            entries = [(getattr(s, "name", repr(s)), s) for s in declared.declared]
        elif isinstance(declared, Mapping):
            entries = list(declared.items())
        elif isinstance(declared, Sequence) and not isinstance(declared, str):
            entries = [(getattr(s, "name", repr(s)), s) for s in declared]
        else:
            raise declaration_error(
                cls, None, "streams must be Streams(...), a mapping or a sequence"
            )
        if not entries:
            raise declaration_error(cls, None, "declares no streams")
        checked: dict[str, Stream] = {}
        for entry, stream in entries:
            if not isinstance(stream, Stream):
                raise declaration_error(cls, str(entry), "is not a Stream")
            if stream.name in checked:
                raise declaration_error(cls, stream.name, "is declared twice")
            check_stream(cls, entry, stream, checked)
            checked[stream.name] = stream
        cls.streams = Streams(*checked.values())

    # --- construction ---------------------------------------------------------------------------

    @classmethod
    def parse_settings(
        cls, data: Mapping[str, Any], *, name: str = "", where: str | None = None
    ) -> ConnectorSettings:
        """Validate raw settings (from the config file) into ``settings_model``.

        Raises ConfigError listing each problem by location, never echoing the values (a
        password could be among them). ``where`` (the configuration file) makes each problem
        also say where to fix it: the file's ``[connectors.NAME]`` table or the
        ``LIMSYNC_CONNECTORS__NAME__…`` variable, since either may have set the value.
        """
        label = f"connector {name!r}" if name else f"{cls.type_name} connector"
        names = None if cls.instance_streams else list(cls.streams)
        try:
            settings = cls.settings_model.model_validate(
                dict(data), context={"stream_names": names}
            )
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(settings)'}: {err['msg']}"
                + _fix_hint(where, name, err["loc"])
                for err in exc.errors(include_input=False, include_url=False)
            )
            raise ConfigError(f"{label} settings: {problems}") from None
        if cls.instance_streams:
            cls.instance_streams_of(settings, name=name)  # a bad definition fails here
        return settings

    @classmethod
    def define_streams(cls, settings: ConnectorSettings) -> Sequence[Stream]:
        """The streams an instance with these settings reads (``instance_streams`` connectors).

        Called with validated settings; build one :class:`Stream` per configured stream, in
        the configured order. For a problem the settings model cannot see, raise ConfigError
        with a message that starts with the stream's name (``"subjects: ..."``); the caller
        puts the place in front.
        """
        raise NotImplementedError(f"{cls.__name__} does not define streams from settings")

    @classmethod
    def instance_streams_of(cls, settings: ConnectorSettings, *, name: str = "") -> Streams:
        """:meth:`define_streams`, checked like a class declaration; ConfigError naming the place.

        The place is ``connectors.<name>.streams.<stream>``, as the user wrote it.
        """
        place = f"connectors.{name or cls.type_name}.streams"
        checked: dict[str, Stream] = {}
        try:
            defined = list(cls.define_streams(settings))
        except ConfigError as exc:
            raise ConfigError(f"{place}.{exc}") from None
        for stream in defined:
            try:
                if stream.name in checked:
                    raise declaration_error(place, stream.name, "is defined twice")
                check_stream(place, stream.name, stream, checked, instance=True)
            except LimsyncError as exc:
                # "connectors.x.streams stream 'y': problem" -> "connectors.x.streams.y: problem"
                text = str(exc).replace(f"{place} stream {stream.name!r}", f"{place}.{stream.name}")
                raise ConfigError(text) from None
            checked[stream.name] = stream
        if not checked:
            raise ConfigError(f"{place}: define at least one stream")
        return Streams(*checked.values())

    def __init__(
        self, name: str, settings: ConnectorSettings, *, session: requests.Session | None = None
    ) -> None:
        if not isinstance(settings, self.settings_model):
            raise ConfigError(
                f"connector {name!r}: settings must be {self.settings_model.__name__}, "
                f"not {type(settings).__name__}"
            )
        if self.instance_streams:
            self.streams = self.instance_streams_of(settings, name=name)
        unknown = sorted(set(settings.streams) - set(self.streams))
        if unknown:
            raise ConfigError(
                f"connector {name!r}: unknown stream(s) {', '.join(unknown)}; "
                f"known: {', '.join(self.streams)}"
            )
        for stream_name, decl in self.streams.items():
            paginator = decl.paginator or self.paginator
            configured = settings.streams.get(stream_name)
            size = (configured.page_size if configured else None) or settings.page_size
            if paginator is not None:
                try:
                    paginator.page_size_for(size)
                except ConfigError as exc:
                    raise ConfigError(f"connector {name!r} stream {stream_name!r}: {exc}") from None
        self.name = name
        self.settings = settings
        self._session = session
        self._owns_session = session is None
        self._opened = False

    @property
    def session(self) -> requests.Session:
        """The HTTP session (built on first use from the settings, unless one was given)."""
        if self._session is None:
            self._session = build_session(
                self.settings, user_agent=self.user_agent, retry_post=self.retry_post_urls()
            )
        return self._session

    def retry_post_urls(self) -> Sequence[str]:
        """URL prefixes whose POST is safe to retry (a login endpoint); none by default."""
        return ()

    @property
    def base_url(self) -> str:
        """The API root; ``settings.base_url`` for HTTP connectors."""
        url = getattr(self.settings, "base_url", None)
        if not isinstance(url, str):
            raise NotImplementedError(
                f"{type(self).__name__} has no base_url setting; it must override read()"
            )
        return url.rstrip("/")

    def url(self, path: str) -> str:
        """Absolute URL of a path relative to the base URL."""
        return f"{self.base_url}/{path.lstrip('/')}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r} type={self.type_name!r}>"

    # --- lifecycle ------------------------------------------------------------------------------

    def open(self) -> None:
        """Prepare for reading (authenticate, ...). Idempotent; the base class has nothing to do."""
        self._opened = True

    def close(self) -> None:
        """Release the session if this connector created it."""
        if self._owns_session and self._session is not None:
            self._session.close()
            self._session = None
        self._opened = False

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- settings helpers -----------------------------------------------------------------------

    def stream(self, name: str) -> Stream:
        """The declaration of a stream; ConfigError naming the known ones if there is none."""
        try:
            return self.streams[name]
        except KeyError:
            raise ConfigError(
                f"connector {self.name!r} has no stream {name!r}; known: {', '.join(self.streams)}"
            ) from None

    def stream_settings(self, name: str) -> StreamSettings:
        """The configured settings of a stream, or the defaults."""
        self.stream(name)
        return self.settings.streams.get(name) or StreamSettings()

    def page_size(self, name: str) -> int:
        """The page size for a stream: its own setting, else the connector's."""
        return self.stream_settings(name).page_size or self.settings.page_size

    def lookback(self, name: str) -> timedelta:
        """The cursor lookback for a stream: its setting, else the cursor's declared default."""
        configured = self.stream_settings(name).lookback
        if configured is not None:
            return configured
        cursor = self.stream(name).cursor
        return cursor.lookback if cursor is not None else timedelta(0)

    def since(self, name: str, ctx: ReadContext) -> datetime | None:
        """Where an incremental read of a stream starts: the cursor minus the lookback."""
        if ctx.cursor is None or self.stream(name).cursor is None:
            return None
        try:
            value = datetime.fromisoformat(ctx.cursor)
        except ValueError:
            raise ConfigError(
                f"connector {self.name!r} stream {name!r}: stored cursor {ctx.cursor!r} is not "
                "an ISO datetime; reset the stream's state"
            ) from None
        return value - self.lookback(name)

    # --- reading --------------------------------------------------------------------------------

    def secrets(self) -> list[str]:
        """Secret values to scrub from messages (passwords, tokens)."""
        return self.settings.secrets()

    def get(self, url: str, params: Mapping[str, Any] | None = None) -> requests.Response:
        """GET with our error translation; raises HTTPStatusError for any status >= 400."""
        if not self._opened:
            self.open()
        response = send(self.session, "GET", url, params=dict(params or {}), secrets=self.secrets())
        raise_for_response(response, secrets=self.secrets())
        return response

    def _fetch(self, url: str, *, params: dict[str, Any]) -> requests.Response:
        return self.get(url, params)

    def paginator_for(self, name: str) -> Paginator:
        """The paginator of a stream (its own, else the connector's)."""
        paginator = self.stream(name).paginator or self.paginator
        if paginator is None:
            raise NotImplementedError(
                f"{type(self).__name__} declares no paginator for stream {name!r}; "
                "declare one or override read()"
            )
        return paginator

    def prepare_record(self, stream: str, record: Record) -> Record:
        """Adjust one raw record before the engine sees it (add derived fields); identity here."""
        return record

    def cursor_params(self, stream: str, since: datetime) -> Mapping[str, str]:
        """Query parameters that limit a listing to records changed since ``since``.

        The base class knows no generic filter and returns none, so an "incremental" read is a
        full read; correct, because the engine skips unchanged records by their content hash.
        """
        return {}

    def list_pages(
        self,
        stream: str,
        path: str | None = None,
        params: Mapping[str, Any] | None = None,
        *,
        page_size: int | None = None,
    ) -> Iterator[Page]:
        """Pages of prepared records from the stream's listing (or another ``path``)."""
        decl = self.stream(stream)
        query = {**decl.params, **(params or {})}
        pages = self.paginator_for(stream).pages(
            self._fetch,
            self.url(path if path is not None else decl.path),
            query,
            page_size=page_size or self.page_size(stream),
        )
        for page in pages:
            yield [self.prepare_record(stream, record) for record in page]

    def read(self, stream: str, ctx: ReadContext) -> Iterator[Page]:
        """Yield pages of raw records of a stream.

        Incremental reads (``ctx.full`` False) with a cursor add :meth:`cursor_params`. A child
        stream (``parent`` set) reads every parent record and lists ``path`` formatted with it.
        """
        decl = self.stream(stream)
        params: dict[str, Any] = {}
        since = self.since(stream, ctx)
        if not ctx.full and since is not None:
            params.update(self.cursor_params(stream, since))
        if decl.parent is None:
            yield from self.list_pages(stream, params=params)
            return
        parent_ctx = ReadContext(full=True, cursor=None, known=nothing_known)
        for parent_page in self.read(decl.parent, parent_ctx):
            for parent in parent_page:
                yield from self.list_pages(stream, path=_format_path(decl, parent), params=params)

    def cursor_value(self, stream: str, record: Record) -> str | None:
        """The cursor value of a raw record (ISO string), or None if the stream has no cursor."""
        cursor = self.stream(stream).cursor
        if cursor is None:
            return None
        value = record.get(cursor.field)
        if value is None:
            return None
        if isinstance(value, datetime):
            return value.isoformat()
        return str(value)

    def confirm_gone(self, stream: str, keys: Sequence[Key]) -> set[Key]:
        """Which of ``keys`` (missing from a full scan) are really gone; all of them by default."""
        self.stream(stream)
        return set(keys)

    def sample(self, stream: str, limit: int = 1) -> Page:
        """The first page of a stream with at most ``limit`` records (for :meth:`check`)."""
        decl = self.stream(stream)
        path = None
        if decl.parent is not None:
            parents = self.sample(decl.parent, 1)
            if not parents:
                return []
            path = _format_path(decl, parents[0])
        for page in self.list_pages(stream, path=path, page_size=limit):
            return page[:limit]
        return []

    def check(self) -> list[CheckResult]:
        """Check settings, authentication and one page of each enabled stream; never raises."""
        results = [CheckResult("settings", True, f"{len(self.streams)} streams declared")]
        try:
            self.open()
        except (LimsyncError, requests.RequestException) as exc:
            results.append(CheckResult("auth", False, self._describe(exc)))
            results.extend(
                CheckResult(f"stream {s}", False, "not checked: authentication failed")
                for s in self.streams
            )
            return results
        results.append(CheckResult("auth", True, "ok"))
        for name, decl in self.streams.items():
            label = f"stream {name}"
            if not self.stream_settings(name).enabled:
                results.append(CheckResult(label, True, "disabled"))
                continue
            try:
                records = self.sample(name)
                for record in records:
                    decl.model.model_validate(record)
            except pydantic.ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                    for e in exc.errors(include_input=False, include_url=False)
                )
                results.append(CheckResult(label, False, f"record does not validate: {problems}"))
            except Exception as exc:  # a stream failure is reported, whatever it is
                results.append(CheckResult(label, False, self._describe(exc)))
            else:
                results.append(CheckResult(label, True, f"{len(records)} record(s) read"))
        return results

    def _describe(self, exc: BaseException) -> str:
        text = str(exc) if isinstance(exc, LimsyncError) else f"{type(exc).__name__}: {exc}"
        return scrub(text, self.secrets())


def _format_path(stream: Stream, parent: Record) -> str:
    values = {}
    for name in stream.placeholders:
        if parent.get(name) is None:
            raise RecordError(
                f"stream {stream.name!r}: parent {stream.parent!r} record has no {name!r}"
            )
        values[name] = quote(str(parent[name]), safe="")
    return stream.path.format_map(values)


def _fix_hint(where: str | None, name: str, loc: tuple[int | str, ...]) -> str:
    """Where a connector setting can be fixed: the file's table, or its environment variable."""
    if where is None or not name:
        return ""
    table = f"{where} [connectors.{name}]"
    if not loc:
        return f" (in {table})"
    env = "__".join(["LIMSYNC_CONNECTORS", name, *(str(p) for p in loc)]).upper()
    return f" (set it in {table} or {env})"
