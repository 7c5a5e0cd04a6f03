"""The PyRAT connector (Scionics PyRAT REST API v3; contract: ``contracts/pyrat.md``).

What it handles beyond plain paging, quirk by quirk:

* **API root.** ``base_url`` may be the instance root or the API root: ``/api/v3`` is added when
  missing.
* **Auth.** HTTP Basic with the client token as user name and the user token as password, on
  every request. :meth:`PyratConnector.open` asks ``/credentials`` first, which says which of
  the two tokens is wrong; a 401 later (a token revoked mid-run) fails the stream with a message
  naming both tokens, and no partial batch is written.
* **List grammar.** ``k`` selects fields (an unknown one is a 400), ``s`` sorts, ``l``/``o``
  page with ``X-Total-Count``. Animals are sorted by ``eartag_or_id`` (``animalid`` is not
  sortable) and always requested in all three states, because the server's default is ``live``
  only.
* **Keys.** Animals are keyed by ``animalid``: eartags repeat (across facilities, after
  re-use). An animal may have more than two parents.
* **Spellings.** ``licence_*`` on animals, ``license_*`` on licenses and procedures, kept as
  they are.
* **Eartag filters.** ``eartags`` settings become repeated ``eartag=`` filters, split into
  batches that keep each URL under ``max_url_length``.
* **No modified-since filter.** Every run is a full scan; the engine skips unchanged records by
  content hash, and the per-animal child streams fetch only animals that are new or changed
  (:mod:`limsync.connectors.pyrat.children`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

import pydantic
import requests
from pydantic import Field, SecretStr, field_validator

from limsync.connectors import (
    CheckResult,
    Connector,
    ConnectorSettings,
    HeaderTotal,
    Key,
    Page,
    ReadContext,
    Stream,
    Streams,
    nothing_known,
    raise_for_response,
    redact_url,
    send,
)
from limsync.connectors.pyrat import children, models
from limsync.connectors.pyrat.query import (
    ALL_STATES,
    ANIMAL_KEYS,
    ANIMAL_SORT,
    CHILD_SIGNAL_KEYS,
    DEFAULT_MAX_URL,
    PUP_KEYS,
    eartag_batches,
    list_params,
)
from limsync.errors import AuthenticationError, ConfigError, SourceError

log = logging.getLogger(__name__)

API_ROOT = "/api/v3"

#: Fields computed from the clock or owned by the child streams: they change without an edit
#: of the animal itself, so they stay out of its content hash.
ANIMAL_VOLATILE = frozenset({"age_days", "age_weeks", "weight", "date_last_comment"})

#: Streams read from an animal list, and so restricted by the ``eartags`` setting.
_ANIMAL_LISTS = frozenset({"animals", "pups"})


class PyratSettings(ConnectorSettings):
    """Settings of a PyRAT connector instance (``[connectors.<name>]`` with ``type = "pyrat"``).

    The tokens come from the file or, better, from ``LIMSYNC_CONNECTORS__<NAME>__CLIENT_TOKEN``
    and ``LIMSYNC_CONNECTORS__<NAME>__USER_TOKEN``; they are never logged.
    """

    type: Literal["pyrat"] = "pyrat"
    base_url: str
    """The instance root (``https://host/pyrat``) or the API root (``.../api/v3``)."""
    client_token: SecretStr
    """The API client's token (HTTP Basic user name)."""
    user_token: SecretStr
    """The user's token for that client (HTTP Basic password)."""
    page_size: int = Field(200, ge=1, le=10_000)
    detail_workers: int = Field(4, ge=1, le=16)
    """Concurrent per-animal requests of the weights, comments and procedures streams."""
    children: Literal["changed", "all"] = "changed"
    """``changed``: fetch an animal's weights, comments and procedures only when the animal is
    new or its record changed since they were last read; ``all``: fetch them for every animal."""
    eartags: list[str] = []
    """Sync only the animals (and pups) with these eartags; ``*`` is a wildcard. Empty: all."""
    max_url_length: int = Field(DEFAULT_MAX_URL, ge=512)
    """The longest request URL the eartag batches may build."""

    @field_validator("base_url")
    @classmethod
    def _normalise_base_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("base_url must be an http(s) URL such as https://host/pyrat")
        if parts.username or parts.password:
            raise ValueError("base_url must not contain credentials; use the token settings")
        if parts.query or parts.fragment:
            raise ValueError("base_url must not have a query or fragment")
        path = parts.path.rstrip("/")
        if not path.endswith(API_ROOT):
            path += API_ROOT
        return f"{parts.scheme}://{parts.netloc}{path}"

    @field_validator("eartags")
    @classmethod
    def _no_blank_eartags(cls, value: list[str]) -> list[str]:
        if any(not tag.strip() for tag in value):
            raise ValueError("eartags must not be blank")
        return value


class TokensRefusedError(AuthenticationError):
    """``/credentials`` answered (HTTP 200) that a token is not valid; the message names it.

    An :class:`AuthenticationError` like a 401 (exit code 2), worded without a status the server
    did not send.
    """

    def __init__(self, url: str, detail: str) -> None:
        super().__init__("GET", url, 401, detail)
        self.args = (f"GET {url}: {detail}",)


def _animal_stream(name: str, model: type[pydantic.BaseModel], path: str) -> Stream:
    return Stream(
        name,
        path,
        model,
        key=("animalid", "checkpoint"),
        parent="animals",
        description=f"{path} for each new or changed animal, one bundle per animal",
    )


class PyratConnector(Connector):
    """Reads animals, pups, strains, users, projects, licenses and per-animal histories."""

    type_name = "pyrat"
    settings_model = PyratSettings
    default_mapping = "limsync.sync.maps.pyrat"
    paginator = HeaderTotal(page_size=200, max_page_size=10_000)
    streams = Streams(
        Stream(
            "strains",
            "strains",
            models.Strain,
            key=("id",),
            params=list_params(("id", "name", "official_name", "active"), sort="name:asc"),
        ),
        Stream(
            "users",
            "users",
            models.User,
            key=("userid",),
            params=list_params(("userid", "username", "fullname"), sort="username:asc"),
        ),
        Stream(
            "projects",
            "projects",
            models.Project,
            key=("id",),
            params=list_params(("id", "name", "status"), status=("active", "inactive")),
        ),
        Stream(
            "licenses",
            "licenses",
            models.License,
            key=("license_id",),
            params=list_params(("license_id", "license_number"), sort="license_id:asc"),
        ),
        Stream(
            "alleles",
            "animals",
            models.Mutation,
            key=("mutation_id",),
            description="the distinct mutations of all animals (PyRAT lists no alleles)",
        ),
        Stream(
            "animals",
            "animals",
            models.Animal,
            key=("animalid",),
            volatile=ANIMAL_VOLATILE,
            params=list_params(ANIMAL_KEYS, sort=ANIMAL_SORT, state=ALL_STATES),
            description="animals in every state (live, sacrificed, exported)",
        ),
        Stream(
            "pups",
            "pups",
            models.Pup,
            key=("pupid",),
            volatile={"age_days"},
            params=list_params(PUP_KEYS, sort=ANIMAL_SORT),
        ),
        _animal_stream("weights", models.AnimalWeights, "animals/{eartag_or_id}/weights"),
        _animal_stream("comments", models.AnimalComments, "animals/{eartag_or_id}/comments"),
        _animal_stream("procedures", models.AnimalProcedures, "animals/{eartag_or_id}/procedures"),
    )

    settings: PyratSettings

    def __init__(
        self, name: str, settings: ConnectorSettings, *, session: requests.Session | None = None
    ) -> None:
        super().__init__(name, settings, session=session)
        assert isinstance(settings, PyratSettings)  # checked by the base class
        self._auth = (
            settings.client_token.get_secret_value(),
            settings.user_token.get_secret_value(),
        )

    # --- auth -----------------------------------------------------------------------------------

    def open(self) -> None:
        """Check both tokens with ``GET /credentials``; AuthenticationError names a bad one."""
        if self._opened:
            return
        url = self.url("credentials")
        response = send(self.session, "GET", url, auth=self._auth, secrets=self.secrets())
        raise_for_response(response, secrets=self.secrets())
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise SourceError(f"GET {redact_url(url)}: the response is not a JSON object")
        bad = [
            f"{label} token (connectors.{self.name}.{label}_token)"
            for label, field in (("client", "client_valid"), ("user", "user_valid"))
            if body.get(field) is not True
        ]
        if bad:
            verb = "are" if len(bad) > 1 else "is"
            detail = f"PyRAT says the {' and the '.join(bad)} {verb} not valid"
            raise TokensRefusedError(redact_url(url), detail)
        self._opened = True

    def get(self, url: str, params: Mapping[str, Any] | None = None) -> requests.Response:
        """An authenticated GET; a 401 names the tokens to check, 414 the URL limit."""
        if not self._opened:
            self.open()
        response = send(
            self.session,
            "GET",
            url,
            params=dict(params or {}),
            auth=self._auth,
            secrets=self.secrets(),
        )
        if response.status_code == 401:
            raise AuthenticationError(
                "GET",
                redact_url(url),
                401,
                f"PyRAT refused the tokens (connectors.{self.name}.client_token / user_token); "
                "run `limsync check` to see which one",
            )
        if response.status_code == 414:
            raise ConfigError(
                f"GET {redact_url(url)}: the server refused the URL as too long (414); "
                f"lower connectors.{self.name}.max_url_length"
            )
        raise_for_response(response, secrets=self.secrets())
        return response

    # --- reading --------------------------------------------------------------------------------

    def list_filtered(
        self, stream: str, params: Mapping[str, Any] | None = None, page_size: int | None = None
    ) -> Iterator[Page]:
        """Pages of a list stream, in eartag batches when the ``eartags`` setting is used."""
        decl = self.stream(stream)
        if stream not in _ANIMAL_LISTS or not self.settings.eartags:
            yield from self.list_pages(stream, params=params, page_size=page_size)
            return
        fixed = {**decl.params, **(params or {})}
        try:
            batches = eartag_batches(
                self.settings.eartags, self.url(decl.path), fixed, self.settings.max_url_length
            )
        except ValueError as exc:
            raise ConfigError(f"connector {self.name!r} eartags: {exc}") from None
        for batch in batches:
            yield from self.list_pages(
                stream, params={**(params or {}), "eartag": batch}, page_size=page_size
            )

    def read(self, stream: str, ctx: ReadContext) -> Iterator[Page]:
        """Pages of raw records: list streams page through their list; child streams bundle."""
        if stream in children.CHILD_PATHS:
            yield from children.read_children(self, stream, ctx)
            return
        if stream == "alleles":
            yield from self._alleles()
            return
        yield from self.list_filtered(stream)

    def _alleles(self) -> Iterator[Page]:
        """Each mutation once, with only its id and name (the grade belongs to the animal)."""
        done: set[Any] = set()
        params = {"k": ["animalid", "mutations"]}
        for page in self.list_filtered("animals", params=params):
            out: Page = []
            for animal in page:
                for mutation in animal.get("mutations") or []:
                    if not isinstance(mutation, dict) or mutation.get("mutation_id") in done:
                        continue
                    done.add(mutation.get("mutation_id"))
                    out.append(
                        {
                            "mutation_id": mutation.get("mutation_id"),
                            "mutationname": mutation.get("mutationname"),
                        }
                    )
            if out:
                yield out

    def animal_signals(self) -> Iterator[Page]:
        """The animal list with only the fields child streams need (see ``children``)."""
        yield from self.list_filtered("animals", params={"k": list(CHILD_SIGNAL_KEYS)})

    def sample(self, stream: str, limit: int = 1) -> Page:
        """The first records of a stream; one animal's bundle for the child streams."""
        if stream == "alleles":
            for page in self._alleles():
                return page[:limit]
            return []
        if stream not in children.CHILD_PATHS:
            return super().sample(stream, limit)
        ctx = ReadContext(full=True, cursor=None, known=nothing_known)
        for page in children.read_children(self, stream, ctx, max_animals=limit):
            return page[:limit]
        return []

    # --- deletes --------------------------------------------------------------------------------

    def confirm_gone(self, stream: str, keys: Sequence[Key]) -> set[Key]:
        """Animals and pups missing from the scan are listed again before they count as gone.

        Offset paging skips a row when another is deleted ahead of the offset while paging, so
        one missing record is not yet proof. The second scan asks only for the key field. Child
        bundles are gone when the scan did not report them, which it always does for present
        animals it could read.
        """
        decl = self.stream(stream)
        if stream not in _ANIMAL_LISTS or not keys:
            return set(keys)
        field = decl.key[0]
        present: set[Key] = set()
        for page in self.list_filtered(stream, params={"k": [field]}):
            for record in page:
                try:
                    present.add(decl.key_from_raw(record))
                except (KeyError, pydantic.ValidationError):
                    continue
        return {key for key in keys if key not in present}

    # --- check ----------------------------------------------------------------------------------

    def check(self) -> list[CheckResult]:
        """The base checks (``auth`` says which token is wrong), plus the API version."""
        results = super().check()
        try:
            response = send(self.session, "GET", self.url("version"), secrets=self.secrets())
            raise_for_response(response, secrets=self.secrets())
            version = response.json()
        except Exception as exc:  # the version is informative: report, never raise
            results.append(CheckResult("api version", False, self._describe(exc)))
            return results
        if not isinstance(version, dict):
            version = {}
        api = version.get("api_version")
        detail = f"api_version {api}, PyRAT {version.get('pyrat_version', '?')}"
        if api != 3:
            results.append(CheckResult("api version", False, f"{detail}; limsync needs v3"))
        else:
            results.append(CheckResult("api version", True, detail))
        return results
