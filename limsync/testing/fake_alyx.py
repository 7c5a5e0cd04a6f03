"""A fake Alyx REST server on 127.0.0.1 for end-to-end tests, the demo and benchmarks.

It behaves like upstream Alyx 3.6.1 as captured in ``contracts/alyx.md`` and the fixtures: token
auth with 403s, limit/offset pages capped at ``max_limit`` with absolute ``next`` URLs, fixed
orders (and no order at all where Alyx has none), django-filter parameters, ``?django=`` lookups,
DRF-style error bodies with ``status_code``, an optional per-user throttle, and the OpenAPI
schema. Data comes from a :class:`~limsync.testing.alyx.colony.Colony`, which tests change while
the server runs::

    with FakeAlyx(Colony.generate(seed=1)) as alyx:
        token = requests.post(f"{alyx.url}/auth-token", data={...}).json()["token"]
        alyx.colony.rename_subject(subject_id, "SUBJ999")
        alyx.faults.set(error_burst=2)

Only the read side of the API and deletes are served; other writes answer 405.
"""

from __future__ import annotations

import hmac
import math
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from limsync.testing.alyx.colony import Colony
from limsync.testing.alyx.filters import build_query
from limsync.testing.alyx.lookups import QueryError
from limsync.testing.alyx.models import MODEL_NAMES
from limsync.testing.alyx.render import Renderer
from limsync.testing.fakeserver import FakeServer, Reply, Request

__all__ = ["FakeAlyx"]

SCHEMA_PATH = Path(__file__).parent / "data" / "alyx_openapi.json"

# collection path -> (record kind, Renderer method for list items)
_LISTS = {
    "/labs": ("lab", "lab"),
    "/users": ("user", "user"),
    "/projects": ("project", "project"),
    "/procedures": ("procedure", "procedure"),
    "/subjects": ("subject", "subject"),
    "/sessions": ("session", "session"),
    "/weighings": ("weighing", "weighing"),
    "/water-administrations": ("wateradmin", "water_administration"),
    "/water-restriction": ("waterrestriction", "water_restriction"),
    "/water-type": ("watertype", "water_type"),
    "/surgeries": ("surgery", "surgery"),
}

_NOT_FOUND_HTML = (
    '<!doctype html>\n<html lang="en">\n<head>\n  <title>Not Found</title>\n</head>\n<body>\n'
    "  <h1>Not Found</h1><p>The requested resource was not found on this server.</p>\n"
    "</body>\n</html>\n"
)


def _replace_param(url: str, key: str, value: int) -> str:
    """Set one query parameter; parameters come out sorted, as DRF's helper writes them."""
    scheme, netloc, path, query, fragment = urlsplit(url)
    params = parse_qs(query, keep_blank_values=True)
    params[key] = [str(value)]
    return urlunsplit(
        (scheme, netloc, path, urlencode(sorted(params.items()), doseq=True), fragment)
    )


def _remove_param(url: str, key: str) -> str:
    scheme, netloc, path, query, fragment = urlsplit(url)
    params = parse_qs(query, keep_blank_values=True)
    params.pop(key, None)
    return urlunsplit(
        (scheme, netloc, path, urlencode(sorted(params.items()), doseq=True), fragment)
    )


def _positive_int(raw: str | None, *, strict: bool) -> int:
    """DRF's rule: an int >= 0 (> 0 when ``strict``), else ``ValueError``."""
    if raw is None:
        raise ValueError("missing")
    number = int(raw)
    if number < 0 or (strict and number == 0):
        raise ValueError(raw)
    return number


def _uuid_or_none(text: str) -> str | None:
    """The canonical form of a UUID path segment, or None (Django answers 404 for those)."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


class FakeAlyx(FakeServer):
    """The fake Alyx server. Start it with ``with FakeAlyx(...) as alyx:`` or :meth:`start`.

    ``colony``: the data (default: ``Colony.generate(seed=seed)``). ``page_size_default`` and
    ``max_limit``: pagination (Alyx: 250 and 1000). ``username``/``password``: the one account
    ``POST /auth-token`` accepts. ``base_path``: a prefix such as ``"/api"`` for every route.
    ``throttle_rate``: requests per minute per user before 429s (Alyx: 550), None for no limit.
    ``max_request_line``: gunicorn's ``limit_request_line`` (default 4094): a longer request
    line (``GET <target> HTTP/1.1``) gets gunicorn's 400 before Django sees it; None: no limit.
    """

    server_version = "gunicorn"
    DEFAULT_USERNAME = "admin"
    DEFAULT_PASSWORD = "alyxadmin"

    def __init__(
        self,
        colony: Colony | None = None,
        *,
        seed: int = 0,
        page_size_default: int = 250,
        max_limit: int = 1000,
        username: str = DEFAULT_USERNAME,
        password: str = DEFAULT_PASSWORD,
        base_path: str = "",
        throttle_rate: int | None = None,
        max_request_line: int | None = 4094,
    ) -> None:
        super().__init__(base_path=base_path)
        self.colony = colony if colony is not None else Colony.generate(seed=seed)
        self.page_size_default = page_size_default
        self.max_limit = max_limit
        self.username = username
        self._password = password
        self.throttle_rate = throttle_rate
        self.max_request_line = max_request_line
        self._tokens: dict[str, str] = {}  # token -> username
        self._auth_lock = threading.Lock()
        self._history: dict[str, deque[float]] = {}
        self._schema: bytes | None = None
        self._register()

    # --- tokens -----------------------------------------------------------------------------------

    def issue_token(self) -> str:
        """The token ``POST /auth-token`` gives the configured user (one per user, kept until
        revoked, like DRF's ``Token.objects.get_or_create``)."""
        with self._auth_lock:
            for token, user in self._tokens.items():
                if user == self.username:
                    return token
            token = secrets.token_hex(20)
            self._tokens[token] = self.username
            return token

    def revoke_tokens(self) -> None:
        """Delete every token: clients get 403 "Invalid token." and must log in again."""
        with self._auth_lock:
            self._tokens.clear()

    # --- replies in Alyx's format -----------------------------------------------------------------

    def error_reply(self, status: int, detail: str) -> Reply:
        return Reply(status, {}, {"status_code": status, "detail": detail})

    def throttled_reply(self, retry_after: int) -> Reply:
        unit = "second" if retry_after == 1 else "seconds"
        detail = f"Request was throttled. Expected available in {retry_after} {unit}."
        body = {"detail": detail, "status_code": 429}
        return Reply(429, {"Retry-After": str(retry_after)}, body)

    def not_found_reply(self, request: Request) -> Reply:
        # an unknown URL never reaches DRF: Django answers with its HTML page
        return Reply(404, {"Content-Type": "text/html; charset=utf-8"}, _NOT_FOUND_HTML)

    def _detail(self, status: int, detail: str) -> Reply:
        return Reply(status, {}, {"detail": detail, "status_code": status})

    def _no_match(self, kind: str) -> Reply:
        return self._detail(404, f"No {MODEL_NAMES[kind]} matches the given query.")

    # --- auth and throttling ----------------------------------------------------------------------

    def _authenticate(self, request: Request) -> str | Reply:
        """The user of the request's token, or the 403 DRF sends (never a 401: Alyx lists
        SessionAuthentication first, which has no WWW-Authenticate challenge)."""
        parts = (request.header("authorization") or "").split()
        if not parts or parts[0].lower() != "token":
            return self._detail(403, "Authentication credentials were not provided.")
        if len(parts) == 1:
            return self._detail(403, "Invalid token header. No credentials provided.")
        if len(parts) > 2:
            return self._detail(
                403, "Invalid token header. Token string should not contain spaces."
            )
        with self._auth_lock:
            user = self._tokens.get(parts[1])
        return user if user is not None else self._detail(403, "Invalid token.")

    def _throttle(self, user: str) -> Reply | None:
        """A sliding one-minute window per user, like DRF's ``SimpleRateThrottle``."""
        if not self.throttle_rate:
            return None
        now = time.monotonic()
        with self._auth_lock:
            history = self._history.setdefault(user, deque())
            while history and history[0] <= now - 60:
                history.popleft()
            if len(history) >= self.throttle_rate:
                return self.throttled_reply(max(1, math.ceil(60 - (now - history[0]))))
            history.append(now)
        return None

    def _api(self, handler: Callable[..., Reply]) -> Callable[..., Reply]:
        """Wrap a handler with token auth, the throttle and DRF-style error replies."""

        def guarded(request: Request, **params: str) -> Reply:
            too_long = self._request_line_too_long(request)
            if too_long is not None:
                return too_long
            user = self._authenticate(request)
            if isinstance(user, Reply):
                return user
            throttled = self._throttle(user)
            if throttled is not None:
                return throttled
            try:
                return handler(request, **params)
            except QueryError as exc:
                return Reply(exc.status, {}, exc.body)

        return guarded

    def _request_line_too_long(self, request: Request) -> Reply | None:
        """gunicorn's 400 for a request line above ``limit_request_line`` (HTTP/1.1 assumed)."""
        size = len(f"{request.method} {request.raw_target} HTTP/1.1")
        if self.max_request_line is None or size <= self.max_request_line:
            return None
        message = f"Request Line is too large ({size} &gt; {self.max_request_line})"
        body = (
            "<html>\n  <head>\n    <title>Bad Request</title>\n  </head>\n  <body>\n"
            f"    <h1><p>Bad Request</p></h1>\n    {message}\n  </body>\n</html>\n"
        )
        return Reply(400, {"Content-Type": "text/html"}, body)

    def _login(self, request: Request) -> Reply:
        """``POST /auth-token`` with form or JSON ``username`` and ``password``."""
        try:
            if "json" in (request.header("content-type") or ""):
                given = request.json()
                given = given if isinstance(given, dict) else {}
            else:
                given = request.form()
        except ValueError:
            return self._detail(400, "JSON parse error.")
        errors = {
            name: ["This field is required."]
            if name not in given
            else ["This field may not be blank."]
            for name in ("username", "password")
            if not given.get(name)
        }
        if errors:
            return Reply(400, {}, {**errors, "status_code": 400})
        user_ok = hmac.compare_digest(str(given["username"]).encode(), self.username.encode())
        password_ok = hmac.compare_digest(str(given["password"]).encode(), self._password.encode())
        if not (user_ok and password_ok):
            message = "Unable to log in with provided credentials."
            return Reply(400, {}, {"non_field_errors": [message], "status_code": 400})
        return Reply(200, {}, {"token": self.issue_token()})

    # --- routes -----------------------------------------------------------------------------------

    def _register(self) -> None:
        self.route("POST", "/auth-token", self._login)
        self.route("GET", "/api/schema", self._openapi)
        for path, (kind, method) in _LISTS.items():
            self.route("GET", path, self._api(partial(self._list, kind=kind, method=method)))
        # the water-type detail route is wired to the list view upstream
        self.route(
            "GET",
            "/water-type/{name}",
            self._api(partial(self._list, kind="watertype", method="water_type")),
        )
        for path, kind, method in (
            ("/labs/{key}", "lab", "lab"),
            ("/users/{key}", "user", "user"),
            ("/projects/{key}", "project", "project"),
        ):
            self.route("GET", path, self._api(partial(self._named, kind=kind, method=method)))
        self.route("GET", "/subjects/{nickname}", self._api(self._subject))
        self.route("DELETE", "/subjects/{nickname}", self._api(self._delete_subject))
        for path, kind, method in (
            ("/sessions/{key}", "session", "session_detail"),
            ("/weighings/{key}", "weighing", "weighing"),
            ("/water-administrations/{key}", "wateradmin", "water_administration"),
            ("/surgeries/{key}", "surgery", "surgery"),
        ):
            self.route("GET", path, self._api(partial(self._by_id, kind=kind, method=method)))
            if kind != "surgery":
                self.route("DELETE", path, self._api(partial(self._delete, kind=kind)))

    def _base(self, request: Request) -> str:
        """The API root as the client addressed it (DRF builds URLs from the Host header)."""
        return f"http://{request.host}{self.base_path}"

    def _openapi(self, request: Request) -> Reply:
        if self._schema is None:
            self._schema = SCHEMA_PATH.read_bytes()
        return Reply(200, {"Content-Type": "application/vnd.oai.openapi+json"}, self._schema)

    def _page_bounds(self, request: Request) -> tuple[int, int]:
        try:
            limit = min(_positive_int(request.param("limit"), strict=True), self.max_limit)
        except ValueError:
            limit = self.page_size_default
        try:
            offset = _positive_int(request.param("offset"), strict=False)
        except ValueError:
            offset = 0
        return limit, offset

    def _list(self, request: Request, *, kind: str, method: str, **_: str) -> Reply:
        """One page of a collection in DRF's ``{count, next, previous, results}`` envelope."""
        query = build_query(self.colony, kind, request.query)
        limit, offset = self._page_bounds(request)
        colony = self.colony
        with colony.lock:
            rows = colony.select(query)
            count = len(rows)
            render = getattr(Renderer(colony, self._base(request)), method)
            results = [render(r) for r in rows[offset : offset + limit]] if offset < count else []
        url = request.absolute_url
        next_url = None
        if offset + limit < count:
            next_url = _replace_param(_replace_param(url, "limit", limit), "offset", offset + limit)
        previous = None
        if offset > 0:
            previous = _replace_param(url, "limit", limit)
            if offset - limit <= 0:
                previous = _remove_param(previous, "offset")
            else:
                previous = _replace_param(previous, "offset", offset - limit)
        body = {"count": count, "next": next_url, "previous": previous, "results": results}
        return Reply(200, {}, body)

    def _named(self, request: Request, key: str, *, kind: str, method: str) -> Reply:
        colony = self.colony
        with colony.lock:
            try:
                record = colony.table(kind)[colony.id_of(kind, key)]
            except ValueError:
                return self._no_match(kind)
            return Reply(200, {}, getattr(Renderer(colony, self._base(request)), method)(record))

    def _by_id(self, request: Request, key: str, *, kind: str, method: str) -> Reply:
        colony = self.colony
        with colony.lock:
            record = colony.table(kind).get(_uuid_or_none(key) or "")
            if record is None:
                return self._no_match(kind)
            return Reply(200, {}, getattr(Renderer(colony, self._base(request)), method)(record))

    def _subject_by_nickname(self, nickname: str) -> Any:
        """The subject, or the reply Alyx gives: 404, or 500 for a duplicated nickname."""
        found = self.colony.subjects_named(nickname)
        if not found:
            return self._no_match("subject")
        if len(found) > 1:
            detail = f"get() returned more than one Subject -- it returned {len(found)}!"
            return Reply(500, {}, {"status_code": 500, "detail": detail})
        return found[0]

    def _subject(self, request: Request, nickname: str) -> Reply:
        colony = self.colony
        with colony.lock:
            subject = self._subject_by_nickname(nickname)
            if isinstance(subject, Reply):
                return subject
            return Reply(200, {}, Renderer(colony, self._base(request)).subject_detail(subject))

    def _delete_subject(self, request: Request, nickname: str) -> Reply:
        with self.colony.lock:
            subject = self._subject_by_nickname(nickname)
            if isinstance(subject, Reply):
                return subject
            self.colony.delete_subject(subject.id)
        return Reply(204, {}, b"")

    def _delete(self, request: Request, key: str, *, kind: str) -> Reply:
        colony = self.colony
        delete = {
            "session": colony.delete_session,
            "weighing": colony.delete_weighing,
            "wateradmin": colony.delete_water_administration,
        }[kind]
        record_id = _uuid_or_none(key) or ""
        with colony.lock:
            if record_id not in colony.table(kind):
                return self._no_match(kind)
            delete(record_id)
        return Reply(204, {}, b"")
