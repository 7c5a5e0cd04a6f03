"""Settings of the declarative REST connector: ``[connectors.NAME]`` with ``type = "rest"``.

Everything a plain JSON API needs is data here: the base URL, one of five auth styles, one of
five paging styles, where the records are in a response, and the streams (path, key, cursor,
volatile fields, parent). The models are strict (``extra="forbid"``), so a misspelt option is
refused with its place (``streams.weights.parent.fields``) before anything is read; checks that
span several streams (a parent defined after its child, a path placeholder without a parent
field) are made by :meth:`RestConnector.define_streams <limsync.connectors.rest.RestConnector>`.
Passwords and tokens are :class:`~pydantic.SecretStr`: set them in the environment
(``LIMSYNC_CONNECTORS__MYLIMS__AUTH__PASSWORD``).
"""

from __future__ import annotations

import string
from datetime import timedelta
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, model_validator

from limsync.config.duration import parse_duration
from limsync.connectors import (
    ConnectorSettings,
    StreamSettings,
)

__all__ = [
    "Auth",
    "BasicAuthSettings",
    "CursorSettings",
    "HeaderTokenSettings",
    "NoAuthSettings",
    "PaginationSettings",
    "ParentSettings",
    "RestSettings",
    "RestStreamSettings",
    "TokenLoginSettings",
]

# Characters that cannot be in a field name used in a path template or as a top-level key.
_NOT_IN_NAME = set("{}[].:!")


def _field_path(value: str, what: str) -> str:
    """A field of a response body, nested with dots (``data.items``): each part a plain name."""
    if not value.strip():
        raise ValueError(f"{what} must not be blank")
    if any(not part for part in value.split(".")):
        raise ValueError(f"{what} {value!r} has an empty part (dots separate nested fields)")
    bad = sorted((_NOT_IN_NAME - {"."}) & set(value))
    if bad:
        raise ValueError(
            f"{what} {value!r} must be field names joined by dots (no {' '.join(bad)})"
        )
    return value


def _plain_name(value: str, what: str) -> str:
    """A top-level JSON field name: not blank, no dots or template characters."""
    if not value.strip():
        raise ValueError(f"{what} must not be blank")
    bad = sorted(_NOT_IN_NAME & set(value))
    if bad:
        raise ValueError(
            f"{what} {value!r} must be a top-level field name (no {' '.join(bad)}); nested "
            "fields are reached in the [[mappings]] columns with dotted names"
        )
    return value


def _model_field_name(value: str, what: str) -> str:
    """A field the stream's source model declares (key, cursor, parent fields)."""
    _plain_name(value, what)
    if value.startswith("_"):
        raise ValueError(f"{what} {value!r} must not start with '_'")
    if hasattr(BaseModel, value):
        raise ValueError(f"{what} {value!r} clashes with a pydantic model attribute")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- auth -----------------------------------------------------------------------------------------


class NoAuthSettings(_Strict):
    """``auth = { type = "none" }``: an open API (the default)."""

    type: Literal["none"]


class BasicAuthSettings(_Strict):
    """``auth = { type = "basic", username = "...", password = "..." }``: HTTP basic auth."""

    type: Literal["basic"]
    username: str = Field(min_length=1)
    password: SecretStr


class HeaderTokenSettings(_Strict):
    """A fixed token in a header: ``type = "bearer"`` (``Authorization: Bearer <token>``),
    ``type = "token"`` (``Authorization: Token <token>``), or any header and scheme: an API key
    is ``{ type = "token", token = "...", header = "X-Api-Key", scheme = "" }``."""

    type: Literal["bearer", "token"]
    token: SecretStr
    header: str = Field("Authorization", min_length=1)
    scheme: str | None = None
    """Text before the token; None: ``Bearer`` or ``Token`` after ``type``; "": none."""

    @property
    def prefix(self) -> str:
        """What precedes the token in the header, with its space."""
        scheme = self.scheme if self.scheme is not None else self.type.title()
        return f"{scheme} " if scheme else ""


class TokenLoginSettings(_Strict):
    """``type = "token_login"``: POST username and password to ``path``, send the token got
    back in ``header`` with every request, and log in again once when it is refused."""

    type: Literal["token_login"]
    path: str = Field(min_length=1)
    """The login endpoint, relative to ``base_url`` (or an absolute URL)."""
    username: str = Field(min_length=1)
    password: SecretStr
    body: Literal["json", "form"] = "json"
    """How the credentials are posted: a JSON object or an HTML form."""
    username_field: str = Field("username", min_length=1)
    password_field: str = Field("password", min_length=1)
    token_field: str = Field("token", min_length=1)
    """Where the token is in the response; a dotted path reaches into nested objects."""
    header: str = Field("Authorization", min_length=1)
    scheme: str = "Token"
    """Text before the token in the header ("" for none)."""

    @property
    def prefix(self) -> str:
        """What precedes the token in the header, with its space."""
        return f"{self.scheme} " if self.scheme else ""


Auth = Annotated[
    NoAuthSettings | BasicAuthSettings | HeaderTokenSettings | TokenLoginSettings,
    Field(discriminator="type"),
]


# --- pagination -----------------------------------------------------------------------------------

Style = Literal["limit_offset", "header_total", "page_number", "next_link", "none"]

# The options each style reads; any other option given with a style is an error.
_STYLE_OPTIONS: dict[str, frozenset[str]] = {
    "limit_offset": frozenset({"limit_param", "offset_param", "count_field"}),
    "header_total": frozenset({"limit_param", "offset_param", "total_header"}),
    "page_number": frozenset({"page_param", "size_param", "first_page", "count_field"}),
    "next_link": frozenset({"next_field", "size_param", "count_field"}),
    "none": frozenset(),
}
_COMMON_OPTIONS = frozenset({"style", "page_size", "max_page_size"})


class PaginationSettings(_Strict):
    """How a listing is paged (see docs/rest.md for each style)."""

    style: Style = "limit_offset"
    page_size: int | None = Field(None, ge=1)
    """Records per page; the connector's top-level ``page_size`` wins when both are given."""
    max_page_size: int | None = Field(None, ge=1)
    """The API's cap: a larger configured page size is refused up front."""
    limit_param: str = Field("limit", min_length=1)
    offset_param: str = Field("offset", min_length=1)
    count_field: str = Field("count", min_length=1)
    """The body field with the total record count (limit_offset, page_number, next_link)."""
    total_header: str = Field("X-Total-Count", min_length=1)
    page_param: str = Field("page", min_length=1)
    size_param: str | None = Field(None, min_length=1)
    """page_number: default ``page_size``; next_link: sent on the first request only, if set."""
    first_page: int = Field(1, ge=0)
    next_field: str = Field("next", min_length=1)

    @model_validator(mode="after")
    def _options_of_style(self) -> Self:
        allowed = _STYLE_OPTIONS[self.style] | _COMMON_OPTIONS
        stray = sorted(self.model_fields_set - allowed)
        if stray:
            raise ValueError(
                f"{', '.join(stray)} do(es) not apply to style {self.style!r} "
                f"(its options: {', '.join(sorted(_STYLE_OPTIONS[self.style])) or 'none'})"
            )
        if self.max_page_size is not None and (self.page_size or 0) > self.max_page_size:
            raise ValueError(f"page_size {self.page_size} is above max_page_size")
        for name in ("count_field", "next_field"):
            if name in self.model_fields_set:
                _field_path(getattr(self, name), name)
        return self


# --- streams --------------------------------------------------------------------------------------


def _duration(value: Any) -> Any:
    if value in (0, "0", "0s"):
        return timedelta(0)
    if isinstance(value, timedelta):
        return value
    return timedelta(seconds=parse_duration(value))


class CursorSettings(_Strict):
    """``cursor = { field = "modified", param = "modified_after", lookback = "1h" }``.

    ``field`` holds an ISO 8601 date-time that grows on every change of a record; an
    incremental sync sends ``?param=<last value minus lookback>``, and the server must return
    the records whose field is at or after it.
    """

    field: str
    param: str = Field(min_length=1)
    lookback: Annotated[timedelta, BeforeValidator(_duration)] = timedelta(0)
    """Overlap re-read on each incremental sync (clock skew, late commits): "1h", "15m", 0."""
    format: str | None = None
    """A ``strftime`` format for the parameter's value; default ISO 8601."""

    @model_validator(mode="after")
    def _check(self) -> Self:
        _model_field_name(self.field, "cursor field")
        if self.format is not None and "%" not in self.format:
            raise ValueError("format is a strftime format such as %Y-%m-%dT%H:%M:%S")
        return self


class ParentSettings(_Strict):
    """``parent = { stream = "animals", fields = { animal_id = "id" } }``.

    One request per record of the parent stream; ``fields`` maps each ``{placeholder}`` of the
    child's path to the parent record's field that fills it, and the same value is added to each
    child record under the placeholder's name when the record lacks it (so it can be part of
    the child's key).
    """

    stream: str = Field(min_length=1)
    fields: dict[str, str] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> Self:
        for child, parent in self.fields.items():
            _model_field_name(child, "parent field name")
            _model_field_name(parent, "parent record field")
        return self


def _strip_path(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


class RestStreamSettings(StreamSettings):
    """One ``[connectors.NAME.streams.STREAM]`` of a REST connector."""

    path: Annotated[str, BeforeValidator(_strip_path)] = Field(min_length=1)
    """Relative to ``base_url``; ``{placeholders}`` come from the parent record."""
    key: list[str] = Field(min_length=1)
    """The record fields that identify a record (int or string values)."""
    records: str | None = None
    """Overrides the connector's ``records`` for this stream."""
    pagination: PaginationSettings | None = None
    """Overrides the connector's ``pagination`` for this stream."""
    cursor: CursorSettings | None = None
    volatile: list[str] = []
    """Fields left out of the content hash (computed values such as an age)."""
    parent: ParentSettings | None = None
    params: dict[str, str | list[str]] = {}
    """Fixed query parameters sent with every request of the stream."""

    @model_validator(mode="after")
    def _check(self) -> Self:
        if "://" in self.path:
            raise ValueError("path must be relative to base_url, not a full URL")
        try:
            names = [n for _, n, _, _ in string.Formatter().parse(self.path) if n is not None]
        except ValueError as exc:
            raise ValueError(f"path is not a valid template: {exc}") from None
        if self.parent is None and names:
            raise ValueError("path placeholders need a parent (parent = { stream, fields })")
        if self.parent is not None:
            if not names:
                raise ValueError("a child stream's path needs a {placeholder} from its parent")
            missing = [n for n in names if n not in self.parent.fields]
            if missing:
                raise ValueError(
                    f"path placeholder(s) {', '.join(missing)} not in parent.fields "
                    f'(give e.g. parent.fields = {{ {missing[0]} = "id" }})'
                )
        if len(set(self.key)) != len(self.key):
            raise ValueError("key repeats a field")
        for name in self.key:
            _model_field_name(name, "key field")
        if set(self.volatile) & set(self.key):
            raise ValueError("a key field cannot be volatile")
        if self.records is not None and self.records:
            _field_path(self.records, "records")
        if self.pagination is not None and self.pagination.page_size and self.page_size is None:
            self.page_size = self.pagination.page_size
        return self


class RestSettings(ConnectorSettings):
    """A declarative REST connector instance (``type = "rest"``)."""

    type: Literal["rest"] = "rest"
    base_url: str = Field(pattern=r"^https?://[^/\s]+")
    auth: Auth = NoAuthSettings(type="none")
    pagination: PaginationSettings = PaginationSettings()
    records: str = "results"
    """The field of each response body holding the record list; "" when the body is the list."""
    streams: dict[str, RestStreamSettings] = Field(min_length=1)  # type: ignore[assignment]

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.records:
            _field_path(self.records, "records")
        if "page_size" not in self.model_fields_set:
            # No page size given at the top: the pagination's, else the default within the cap.
            top_cap = self.pagination.max_page_size or self.page_size
            self.page_size = self.pagination.page_size or min(self.page_size, top_cap)
        for stream in self.streams.values():
            cap = stream.pagination.max_page_size if stream.pagination is not None else None
            if stream.page_size is None and cap is not None and self.page_size > cap:
                stream.page_size = cap
        return self

    def secrets(self) -> list[str]:
        """Top-level secrets plus the auth section's password or token."""
        found = super().secrets()
        for name in type(self.auth).model_fields:
            value = getattr(self.auth, name)
            if isinstance(value, SecretStr):
                found.append(value.get_secret_value())
        return found
